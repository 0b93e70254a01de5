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

Callbacks run in list order. Those reading ``tuner.state.metrics`` at ``on_epoch_end``
(:class:`EarlyStopping`, :class:`BestModelCheckpoint`, :class:`MetricsLogger`, the loggers) see the
metrics of :class:`EvaluationCallback` only when they come after it in the list.

Metric keys: ``train_loss``; with ``fit(eval_data=...)`` also ``val_loss`` and the retrieval metrics
``hit@k``, ``precision@k``, ``recall@k``, ``mAP@k``, ``NDCG@k``, ``MRR``, ``R-precision``; each
:class:`EvaluationCallback` adds those retrieval metrics again under its ``prefix`` (``eval/hit@k``, ...).
"""
import csv
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np

from executors.errors import InputError


class Callback:
    """Base class: override the hooks you need.

    ``main_process_only``: in a multi-process (torchrun) fit, True callbacks run on rank 0 only (they
    write files or show progress); the others run in every process.
    """

    main_process_only = False

    def metric_names(self, tuner) -> Optional[Iterable[str]]:
        """The ``tuner.state.metrics`` keys this callback adds each epoch; None: unknown (may add any).

        The callbacks of this module add none (:class:`EvaluationCallback` overrides this). A callback
        defined elsewhere is taken to add none unless it overrides ``on_train_epoch_end``, ``on_val_end`` or
        ``on_epoch_end`` (where per-epoch metrics are added): then None, unless it overrides this method,
        and a ``monitor`` listed after it is checked only when the epoch ends."""
        if type(self).__module__ == __name__:
            return ()
        cls = type(self)
        epoch_hooks = ('on_train_epoch_end', 'on_val_end', 'on_epoch_end')
        return None if any(getattr(cls, hook) is not getattr(Callback, hook) for hook in epoch_hooks) else ()

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

    main_process_only = True

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


def _positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f'{field}: must be a positive integer, got {value!r}')
    return int(value)


def _eval_items(field: str, data):
    """``(contents, label_names_per_item)`` of labelled docs or ``(inputs, labels)``."""
    from executors.tuner.data import INSTANCE, to_labeled_items

    items = to_labeled_items(data, require_classes=1, field=field)
    if items.kind == INSTANCE:
        raise InputError(f'{field}: has no labels; retrieval evaluation needs labelled items '
                         '(doc.label, or (inputs, labels))')
    return items.contents, np.asarray(items.label_names)[items.labels]


class EvaluationCallback(Callback):
    """Retrieval evaluation at every ``on_epoch_end``; writes no files.

    Embeds ``query_data`` (and ``index_data``) with ``tuner.model`` and adds the metrics of
    :func:`executors.evaluation.metrics.evaluate_embeddings` to ``tuner.state.metrics`` and to this epoch's
    ``tuner.state.history`` entry, each key prefixed with ``prefix``: ``'eval/hit@10'``, ``'eval/MRR'``, ...
    (the prefix keeps them apart from the ``fit(eval_data=...)`` metrics, which have none). The last
    results are also in ``self.metrics``. Callbacks reading them must come after this one.

    Data: docs or ``(inputs, labels)`` as for ``fit``; a query and an index item are relevant iff their
    labels are equal. Without ``index_data`` each query is searched among the other queries
    (leave-one-out). ``k`` is capped at the number of candidates (as ``fit`` does), and the keys show
    the ``k`` used. Inputs go through ``preprocess_fn`` (default none: no augmentation) and ``collate_fn``
    (default: the fit's).
    """

    def __init__(self, query_data, index_data=None, k: int = 10, distance: str = 'cosine',
                 batch_size: int = 256, *, prefix: str = 'eval/', preprocess_fn: Optional[Callable] = None,
                 collate_fn: Optional[Callable] = None):
        from executors.evaluation.metrics import DISTANCES

        _positive_int('k', k)
        self.batch_size = _positive_int('batch_size', batch_size)
        if distance not in DISTANCES:
            raise InputError(f'distance: must be one of {DISTANCES}, got {distance!r}')
        self.distance, self.prefix = distance, str(prefix)
        self.preprocess_fn, self.collate_fn = preprocess_fn, collate_fn
        self._query = _eval_items('query_data', query_data)
        self._index = _eval_items('index_data', index_data) if index_data is not None else None
        candidates = len(self._index[0]) if self._index is not None else len(self._query[0]) - 1
        if candidates < 1:
            raise InputError('query_data: leave-one-out evaluation needs at least two items; '
                             'add queries or pass index_data')
        self.k = min(int(k), candidates)
        self.metrics: Dict[str, float] = {}

    def metric_names(self, tuner):
        from executors.evaluation.metrics import metric_keys

        return [self.prefix + key for key in metric_keys(self.k)]

    def _embed(self, tuner, contents):
        from executors.models.inference import embed

        return embed(contents, tuner.model, batch_size=self.batch_size, device=tuner.device,
                     preprocess_fn=self.preprocess_fn, collate_fn=self.collate_fn or tuner.collate_fn)

    def on_epoch_end(self, tuner):
        from executors.evaluation.metrics import evaluate_embeddings

        query_embeddings = self._embed(tuner, self._query[0])
        index_embeddings, index_labels = None, None
        if self._index is not None:
            index_embeddings, index_labels = self._embed(tuner, self._index[0]), self._index[1]
        results = evaluate_embeddings(query_embeddings, self._query[1], index_embeddings, index_labels,
                                      k=self.k, distance=self.distance)
        self.metrics = {self.prefix + key: float(value) for key, value in results.items()}
        tuner.state.metrics.update(self.metrics)
        history = tuner.state.history
        if history and history[-1].get('epoch') == tuner.state.epoch + 1:
            history[-1].update(self.metrics)


_MAX_HINTS = ('@', 'mrr', 'precision', 'recall', 'map', 'ndcg', 'hit', 'acc', 'f1', 'auc')
# the old Finetuner's metric names -> ours (without the '@k' cutoff, which the run's k completes)
_OLD_METRIC_NAMES = {'precision_at_k': 'precision@', 'recall_at_k': 'recall@', 'hit_at_k': 'hit@',
                     'average_precision': 'mAP@', 'ndcg_at_k': 'NDCG@', 'reciprocal_rank': 'MRR',
                     'r_precision': 'R-precision'}


def _old_name_hint(monitor: str, names) -> str:
    stem = monitor.split('/')[-1]
    prefix = monitor[:len(monitor) - len(stem)]
    if stem not in _OLD_METRIC_NAMES:
        return ''
    new = [name for name in names if name.startswith(prefix + _OLD_METRIC_NAMES[stem])]
    return f" (the old Finetuner's {stem!r} is {new[0]!r} here)" if new else ''


class _Monitor:
    """Tracks the best value of one metric of ``tuner.state.metrics``."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0, baseline: Optional[float] = None):
        if not isinstance(monitor, str) or not monitor:
            raise InputError(f'monitor: must be a metric name such as "val_loss", got {monitor!r}')
        if mode not in ('auto', 'min', 'max'):
            raise InputError(f"mode: must be 'auto', 'min' or 'max', got {mode!r}")
        # 'auto' stays unresolved for other names and fails at the first epoch end, after the check
        # that lists the available metrics (which catches typos)
        if mode == 'auto':
            name = monitor.lower()
            if 'loss' in name:
                mode = 'min'
            elif any(hint in name for hint in _MAX_HINTS):
                mode = 'max'
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise InputError(f'min_delta: must be a number >= 0, got {min_delta!r}')
        self.monitor, self.mode, self.min_delta, self.baseline = monitor, mode, float(min_delta), baseline
        self.best: Optional[float] = None
        self.reset()

    def reset(self) -> None:
        self.best = None if self.baseline is None else float(self.baseline)

    def check_produced(self, tuner, callback, owner: str) -> None:
        """Before training: InputError unless the run will produce ``monitor`` for ``callback`` (listing the
        metrics it will produce), or ``mode='auto'`` cannot tell the direction. Skipped when an earlier
        callback does not say which metrics it adds."""
        expected = getattr(tuner, 'expected_metrics', None)
        names = expected(callback) if expected is not None else None
        if names is None:
            return
        if self.monitor not in names:
            later = expected(None) or []
            order = (f'; it is added by a callback listed after {owner}: list {owner} after it'
                     if self.monitor in later else '')
            raise InputError(f'monitor: {owner} watches {self.monitor!r}, which this run never produces; '
                             f'its metrics are {names}{_old_name_hint(self.monitor, later or names)}{order}'
                             + ('' if 'val_loss' in names else '; pass eval_data to fit for val_loss and '
                                'retrieval metrics'))
        if self.mode == 'auto':
            raise InputError(f"mode: cannot tell whether {self.monitor!r} should grow or shrink; "
                             f"pass {owner}(..., mode='min') or mode='max'")

    def value(self, tuner, owner: str) -> float:
        metrics = tuner.state.metrics
        if self.monitor not in metrics:
            raise InputError(
                f'monitor: {self.monitor!r} is not among the metrics of this epoch {sorted(metrics)}; '
                f'use one of them (metrics added by a callback, such as EvaluationCallback, are seen '
                f'only by callbacks listed after it, so list {owner} after it)')
        if self.mode == 'auto':
            raise InputError(f"mode: cannot tell whether {self.monitor!r} should grow or shrink; "
                             f"pass {owner}(..., mode='min') or mode='max'")
        return float(metrics[self.monitor])

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == 'min':
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class _MonitorCallback(Callback):
    _monitor: _Monitor

    @property
    def mode(self) -> str:
        """``'min'`` or ``'max'`` (``'auto'`` only while it cannot be told from the name)."""
        return self._monitor.mode

    @property
    def best(self) -> Optional[float]:
        """Best monitored value so far (or the baseline), None before the first epoch."""
        return self._monitor.best


class EarlyStopping(_MonitorCallback):
    """Stops training (``tuner.state.stop_training = True``) once ``monitor`` has not improved for
    ``patience`` epochs in a row; writes no files.

    ``mode``: ``'min'``, ``'max'``, or ``'auto'``: ``'min'`` for names containing ``loss``, ``'max'`` for
    retrieval metrics (names with ``@``, ``MRR``, ``precision``, ``recall``, ``mAP``, ``NDCG``, ``hit``, ...);
    for other names ``'auto'`` is an InputError at the first epoch end.
    An epoch improves if its value beats the best so far by more than ``min_delta``; with ``baseline``
    the best starts at ``baseline`` (so the monitored value must beat it within ``patience`` epochs).
    NaN never improves. A ``monitor`` missing from ``tuner.state.metrics`` is an InputError listing
    the available keys. When resuming, the counter is rebuilt from the restored ``tuner.state.history``.
    ``self.stopped_epoch`` is the (1-based) epoch after which training stopped, or None.
    """

    def __init__(self, monitor: str = 'val_loss', mode: str = 'auto', patience: int = 2,
                 min_delta: float = 0.0, baseline: Optional[float] = None):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise InputError(f'patience: must be an integer >= 0, got {patience!r}')
        self._monitor = _Monitor(monitor, mode, min_delta, baseline)
        self.monitor, self.patience = monitor, patience
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None

    def _update(self, value: float, epoch: int) -> None:
        if self._monitor.improves(value):
            self._monitor.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1

    def on_fit_begin(self, tuner):
        self._monitor.check_produced(tuner, self, 'EarlyStopping')
        self._monitor.reset()
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None
        for entry in tuner.state.history:  # resumed fit: replay the epochs already done
            if self.monitor in entry and self.mode != 'auto':
                self._update(float(entry[self.monitor]), int(entry['epoch']))

    def on_epoch_end(self, tuner):
        self._update(self._monitor.value(tuner, 'EarlyStopping'), tuner.state.epoch + 1)
        if self.wait >= max(1, self.patience):
            self.stopped_epoch = tuner.state.epoch + 1
            tuner.state.stop_training = True


BEST_DIR = 'best'
BEST_INFO_FILE = 'best.json'


class BestModelCheckpoint(_MonitorCallback):
    """Saves the model whenever ``monitor`` improves (see :class:`EarlyStopping` for ``mode``), to
    ``save_dir/best/``, replacing the previous best:

    * ``weights.safetensors``: the model's state dict;
    * ``model.json`` (only for models built with :func:`executors.models.build_model`, which carry a
      builder spec): spec plus the ``best`` info, so :func:`executors.models.serialization.load` rebuilds it;
    * ``best.json``: ``{"monitor", "mode", "value", "epoch"}`` (always; the only JSON for a model without
      builder spec, whose weights then load into a model you build yourself).

    The saved model is the one ``fit`` returns (without the wrapper for losses with parameters).
    A resumed fit (``tuner.start_epoch > 0``) starts from the value in an existing ``best.json``.
    """

    main_process_only = True

    def __init__(self, save_dir, monitor: str = 'val_loss', mode: str = 'auto'):
        self.save_dir = Path(save_dir)
        self._monitor = _Monitor(monitor, mode)
        self.monitor = monitor
        self.best_epoch: Optional[int] = None

    @property
    def path(self) -> Path:
        return self.save_dir / BEST_DIR

    def on_fit_begin(self, tuner):
        self._monitor.check_produced(tuner, self, 'BestModelCheckpoint')
        self._monitor.reset()
        self.best_epoch = None
        info_path = self.path / BEST_INFO_FILE
        if tuner.start_epoch > 0 and info_path.is_file():
            info = json.loads(info_path.read_text())
            if info.get('monitor') == self.monitor and info.get('value') is not None:
                self._monitor.best, self.best_epoch = float(info['value']), info.get('epoch')

    def on_epoch_end(self, tuner):
        value = self._monitor.value(tuner, 'BestModelCheckpoint')
        if not self._monitor.improves(value):
            return
        epoch = tuner.state.epoch + 1
        self._monitor.best, self.best_epoch = value, epoch
        self._save(tuner.embedding_model, {'monitor': self.monitor, 'mode': self.mode, 'value': value,
                                              'epoch': epoch})

    def _save(self, model, info: Dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from executors.models import serialization
        from executors.models.builders import SPEC_ATTRIBUTE
        from executors.tuner.checkpoint import replace_dir

        tmp = self.save_dir / (BEST_DIR + '.tmp')
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if getattr(model, SPEC_ATTRIBUTE, None) is not None:
            serialization.save(model, tmp, metadata={'best': info})
        else:
            state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / serialization.WEIGHTS_FILE))
        (tmp / BEST_INFO_FILE).write_text(json.dumps(info, indent=2))
        replace_dir(tmp, self.path)


class TrainingCheckpoint(Callback):
    """After every epoch ``n`` (1-based) writes ``save_dir/epoch-<n>/`` with everything needed to resume
    with ``fit(..., resume_from=save_dir/'epoch-<n>')``: ``model.safetensors``, ``state.safetensors`` and
    ``state.json`` (optimizer, scheduler, grad scaler, RNG states, epoch, history; no pickle), see
    :mod:`executors.tuner.checkpoint`. Keeps the newest ``last_k_epochs`` of them: older ``epoch-<m>``
    directories (``m <= n - last_k_epochs``) in ``save_dir`` are deleted.
    Resuming gives the same weights as an uninterrupted run (same data, settings and device).
    """

    main_process_only = True

    def __init__(self, save_dir, last_k_epochs: int = 1):
        self.save_dir = Path(save_dir)
        self.last_k_epochs = _positive_int('last_k_epochs', last_k_epochs)

    def on_epoch_end(self, tuner):
        from executors.tuner.checkpoint import save_training_checkpoint

        epoch = tuner.state.epoch + 1
        save_training_checkpoint(tuner, self.save_dir / f'epoch-{epoch}')
        for path in self.save_dir.glob('epoch-*'):
            number = path.name[len('epoch-'):]
            if path.is_dir() and number.isdigit() and int(number) <= epoch - self.last_k_epochs:
                shutil.rmtree(path)


def _epoch_row(tuner) -> Dict[str, Any]:
    return {'epoch': tuner.state.epoch + 1, **{k: float(v) for k, v in tuner.state.metrics.items()}}


class MetricsLogger(Callback):
    """Appends one row per epoch, ``{"epoch": n, **tuner.state.metrics}``, to ``path``: a CSV file if the
    name ends with ``.csv`` (header from the first row; when a later row brings new keys the file is
    rewritten with the extended header, missing cells left empty), else JSON lines (one object per line,
    NaN written as null). The file is opened and closed at each epoch end, so it can be read during training.
    """

    main_process_only = True

    def __init__(self, path):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == '.csv'

    def on_epoch_end(self, tuner):
        row = _epoch_row(tuner)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.csv:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            with self.path.open('a') as f:
                f.write(json.dumps(clean, allow_nan=False) + '\n')
            return
        header, rows = [], []
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(newline='') as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                if not set(row) <= set(header):
                    rows = list(reader)
        if header and set(row) <= set(header):
            with self.path.open('a', newline='') as f:
                csv.DictWriter(f, fieldnames=header, restval='').writerow(row)
            return
        header = header + [k for k in row if k not in header]
        with self.path.open('w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=header, restval='')
            writer.writeheader()
            writer.writerows(rows + [row])


def _global_step(tuner) -> int:
    state = tuner.state
    return state.epoch * state.num_batches + state.batch_index + 1


class WandBLogger(Callback):
    """Logs to Weights & Biases: ``train/loss`` after every batch and ``tuner.state.metrics`` (plus
    ``epoch``) after every epoch, on one step axis (batches seen). ``wandb.init(**wandb_init_kwargs)``
    runs at ``on_fit_begin``; the run is finished at the end of the fit (exit code 1 on an error).
    Writes only what wandb itself writes (``./wandb`` unless ``dir`` is given). Needs ``pip install wandb``.
    """

    main_process_only = True

    def __init__(self, **wandb_init_kwargs):
        try:
            import wandb
        except ImportError as e:
            raise InputError('WandBLogger: the wandb package is not installed; install it with '
                             '`pip install wandb` or drop this callback') from e
        self._wandb, self.init_kwargs, self.run = wandb, wandb_init_kwargs, None

    def on_fit_begin(self, tuner):
        self.run = self._wandb.init(**self.init_kwargs)

    def on_train_batch_end(self, tuner):
        self.run.log({'train/loss': tuner.state.current_loss}, step=_global_step(tuner))

    def on_epoch_end(self, tuner):
        self.run.log(_epoch_row(tuner), step=_global_step(tuner))

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def on_fit_end(self, tuner):
        self._finish(0)

    def on_exception(self, tuner, exception):
        self._finish(1)

    def on_keyboard_interrupt(self, tuner):
        self._finish(1)


class TensorBoardLogger(Callback):
    """Logs to TensorBoard event files in ``log_dir`` (created at ``on_fit_begin``): scalar
    ``train/loss`` after every batch (step = batches seen) and each of ``tuner.state.metrics`` after
    every epoch (step = epoch, 1-based). Needs ``pip install tensorboard``.
    """

    main_process_only = True

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise InputError('TensorBoardLogger: the tensorboard package is not installed; install it with '
                             '`pip install tensorboard` or drop this callback') from e
        self._writer_class, self.log_dir, self.writer = SummaryWriter, str(log_dir), None

    def on_fit_begin(self, tuner):
        self.writer = self._writer_class(log_dir=self.log_dir)

    def on_train_batch_end(self, tuner):
        self.writer.add_scalar('train/loss', tuner.state.current_loss, _global_step(tuner))

    def on_epoch_end(self, tuner):
        for key, value in tuner.state.metrics.items():
            self.writer.add_scalar(key, float(value), tuner.state.epoch + 1)
        self.writer.flush()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_fit_end(self, tuner):
        self._close()

    def on_exception(self, tuner, exception):
        self._close()

    def on_keyboard_interrupt(self, tuner):
        self._close()
