"""Training callbacks with the hook order of the old Finetuner.

Per fit::

    on_fit_begin
      for each epoch:
        on_epoch_begin
          on_train_epoch_begin
            (on_train_batch_begin, on_train_batch_end) per batch
          on_train_epoch_end
          on_val_begin                      # only with eval data
            (on_val_batch_begin, on_val_batch_end) per batch
          on_val_end                        # tuner.state.metrics holds this epoch's metrics
        on_epoch_end
    on_fit_end
    on_exception(exc) / on_keyboard_interrupt   # instead of the rest, then re-raised

Every hook receives the running :class:`executors.tuner.trainer.Tuner`; a callback stops
training by setting ``tuner.state.stop_training = True``.
"""
import sys


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_begin(self, tuner): ...
    def on_epoch_begin(self, tuner): ...
    def on_train_epoch_begin(self, tuner): ...
    def on_train_batch_begin(self, tuner): ...
    def on_train_batch_end(self, tuner): ...
    def on_train_epoch_end(self, tuner): ...
    def on_val_begin(self, tuner): ...
    def on_val_batch_begin(self, tuner): ...
    def on_val_batch_end(self, tuner): ...
    def on_val_end(self, tuner): ...
    def on_epoch_end(self, tuner): ...
    def on_fit_end(self, tuner): ...
    def on_exception(self, tuner, exception): ...
    def on_keyboard_interrupt(self, tuner): ...


class ProgressBar(Callback):
    """A tqdm bar per epoch showing the running train loss; silent when not in a terminal
    unless ``always=True``."""

    def __init__(self, always: bool = False):
        self.always = always
        self._bar = None

    def on_train_epoch_begin(self, tuner):
        from tqdm.auto import tqdm

        state = tuner.state
        self._bar = tqdm(total=state.num_batches, desc=f'epoch {state.epoch + 1}/{state.num_epochs}',
                         leave=False, disable=not (self.always or sys.stderr.isatty()))

    def on_train_batch_end(self, tuner):
        self._bar.update(1)
        self._bar.set_postfix(loss=f'{tuner.state.current_loss:.4f}')

    def on_train_epoch_end(self, tuner):
        self._bar.close()

    on_exception = on_keyboard_interrupt = lambda self, *args: self._bar and self._bar.close()
