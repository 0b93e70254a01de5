"""Tests of the training callbacks and of resumable training checkpoints."""
import csv
import json
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from executors.errors import InputError
from executors.evaluation.metrics import evaluate_embeddings
from executors.models import serialization
from executors.models.inference import embed
from executors.tuner.callbacks import (
    BestModelCheckpoint,
    Callback,
    EarlyStopping,
    EvaluationCallback,
    MetricsLogger,
    TensorBoardLogger,
    TrainingCheckpoint,
    WandBLogger,
)
from executors.tuner.checkpoint import flatten_state, unflatten_state
from executors.tuner.trainer import fit
from tests.tuner.helpers import blobs, mlp

HOOKS = ('on_fit_begin', 'on_epoch_begin', 'on_train_epoch_begin', 'on_train_batch_begin', 'on_train_batch_end',
         'on_train_epoch_end', 'on_val_begin', 'on_val_batch_begin', 'on_val_batch_end', 'on_val_end',
         'on_epoch_end', 'on_fit_end', 'on_keyboard_interrupt')


def quick_fit(callbacks, epochs=3, eval_data=None, model=None, **kwargs):
    kwargs.setdefault('batch_size', 8)
    return fit(model or mlp(4, 8, 3), blobs(per_class=8), eval_data, epochs=epochs, callbacks=callbacks, seed=0,
               progress_bar=False, **kwargs)


class Recorder(Callback):
    """Records every hook call as ``(hook, epoch, batch_index)`` (and the exception for on_exception)."""

    def __init__(self):
        self.calls, self.metrics, self.history = [], [], None
        for name in HOOKS:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def record(tuner):
            self.calls.append(name)
            if name == 'on_epoch_end':
                self.metrics.append(dict(tuner.state.metrics))
            if name == 'on_fit_end':
                self.history = [dict(entry) for entry in tuner.state.history]
        return record

    def on_exception(self, tuner, exception):
        self.calls.append(('on_exception', exception))

    @property
    def epochs(self):
        return sum(call == 'on_epoch_end' for call in self.calls)


class Raise(Callback):
    def __init__(self, hook, exception, at_call=1):
        self.remaining = at_call
        setattr(self, hook, self._maybe_raise)
        self.exception = exception

    def _maybe_raise(self, tuner):
        self.remaining -= 1
        if self.remaining == 0:
            raise self.exception


class Script(Callback):
    """Sets ``metrics[name] = values[epoch]`` at on_epoch_end (lists before the callbacks under test)."""

    def __init__(self, values, name='score'):
        self.values, self.name = values, name

    def on_epoch_end(self, tuner):
        tuner.state.metrics[self.name] = self.values[tuner.state.epoch]


def epoch_calls(train_batches, val_batches):
    calls = ['on_epoch_begin', 'on_train_epoch_begin']
    calls += ['on_train_batch_begin', 'on_train_batch_end'] * train_batches + ['on_train_epoch_end']
    if val_batches:
        calls += ['on_val_begin'] + ['on_val_batch_begin', 'on_val_batch_end'] * val_batches + ['on_val_end']
    return calls + ['on_epoch_end']


# ---------------------------------------------------------------- hook order


def test_hook_order_of_a_two_epoch_fit_with_eval_data():
    recorder = Recorder()
    # 24 train items in batches of 10 -> 3 batches; 15 eval items in batches of 10 -> 2 batches
    quick_fit([recorder], epochs=2, eval_data=blobs(per_class=5, seed=1), batch_size=10)
    assert recorder.calls == ['on_fit_begin'] + epoch_calls(3, 2) * 2 + ['on_fit_end']


def test_on_exception_sees_the_error_of_a_callback_then_it_propagates():
    recorder, error = Recorder(), RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'):
        quick_fit([recorder, Raise('on_train_batch_end', error, at_call=2)], batch_size=10)
    assert recorder.calls == ['on_fit_begin', 'on_epoch_begin', 'on_train_epoch_begin',
                              'on_train_batch_begin', 'on_train_batch_end',
                              'on_train_batch_begin', 'on_train_batch_end', ('on_exception', error)]


def test_keyboard_interrupt_calls_on_keyboard_interrupt_not_on_exception():
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        quick_fit([recorder, Raise('on_epoch_begin', KeyboardInterrupt(), at_call=2)], epochs=3, batch_size=10)
    assert recorder.calls == (['on_fit_begin'] + epoch_calls(3, 0)
                              + ['on_epoch_begin', 'on_keyboard_interrupt'])


# ---------------------------------------------------------------- evaluation


def test_evaluation_callback_adds_prefixed_metrics_seen_by_later_callbacks():
    recorder = Recorder()
    query, index = blobs(per_class=4, seed=1), blobs(per_class=6, seed=2)
    evaluation = EvaluationCallback(query, index, k=5)
    model = quick_fit([evaluation, recorder], epochs=2)
    assert recorder.epochs == 2
    assert {'eval/hit@5', 'eval/mAP@5', 'eval/MRR', 'train_loss'} <= set(recorder.metrics[-1])
    expected = evaluate_embeddings(embed(list(query[0]), model), query[1].astype(str),
                                   embed(list(index[0]), model), index[1].astype(str), k=5)
    for key, value in expected.items():
        assert recorder.metrics[-1]['eval/' + key] == pytest.approx(value)
        assert recorder.history[-1]['eval/' + key] == pytest.approx(value)


def test_evaluation_callback_leave_one_out_caps_k_and_rejects_unlabelled_data():
    from executors.data.schema import Doc

    recorder = Recorder()
    quick_fit([EvaluationCallback(blobs(per_class=2), k=50, prefix='q/'), recorder], epochs=1)
    assert 'q/hit@5' in recorder.metrics[0]    # 6 items, leave-one-out: 5 candidates
    with pytest.raises(InputError, match='query_data: has no labels'):
        EvaluationCallback([Doc(tensor=np.zeros(4, dtype=np.float32)) for _ in range(3)])
    with pytest.raises(InputError, match='distance'):
        EvaluationCallback(blobs(per_class=8), distance='manhattan')


# ---------------------------------------------------------------- early stopping


def stopped_after(values, **early_stopping_kwargs):
    """Epochs run (max len(values)) with the monitored metric (default ``score``) scripted to ``values``."""
    recorder = Recorder()
    early = EarlyStopping(**{'monitor': 'score', **early_stopping_kwargs})
    quick_fit([Script(values, name=early.monitor), early, recorder], epochs=len(values))
    assert early.stopped_epoch in (recorder.epochs, None)
    return recorder.epochs


@pytest.mark.parametrize('values, kwargs, epochs', [
    ([1.0, 0.9, 0.95, 0.92, 0.8, 0.7], {'mode': 'min', 'patience': 2}, 4),
    ([1.0, 0.9, 0.95, 0.85, 0.86, 0.87], {'mode': 'min', 'patience': 2}, 6),   # counter resets at 0.85
    ([1.0, 0.9, 0.95, 0.8], {'mode': 'min', 'patience': 0}, 3),
    ([0.1, 0.2, 0.15, 0.12, 0.3], {'mode': 'max', 'patience': 2}, 4),
    ([0.1, 0.2, 0.15, 0.12, 0.3], {'mode': 'max', 'patience': 3}, 5),
    ([1.0, 0.95, 0.93, 0.7, 0.6], {'mode': 'min', 'patience': 2, 'min_delta': 0.1}, 3),
    ([1.0, 0.95, 0.85, 0.8, 0.6], {'mode': 'min', 'patience': 2, 'min_delta': 0.1}, 5),
    ([0.3, 0.4, 0.6, 0.7], {'mode': 'max', 'patience': 2, 'baseline': 0.5}, 2),
    ([0.3, 0.4, 0.6, 0.5, 0.5, 0.5], {'mode': 'max', 'patience': 3, 'baseline': 0.5}, 6),
    ([0.3, float('nan'), float('nan'), 0.1], {'mode': 'min', 'patience': 2}, 3),
])
def test_early_stopping_stops_at_the_right_epoch(values, kwargs, epochs):
    assert stopped_after(values, **kwargs) == epochs


def test_early_stopping_auto_mode():
    assert EarlyStopping('val_loss').mode == 'min'
    assert EarlyStopping('eval/my_loss').mode == 'min'
    for name in ('hit@10', 'eval/mAP@5', 'MRR', 'R-precision', 'precision@3', 'eval/NDCG@10'):
        assert EarlyStopping(name).mode == 'max'
    assert stopped_after([0.1, 0.2, 0.15, 0.12, 0.3], monitor='hit@1', patience=2) == 4
    recorder = Recorder()
    quick_fit([Script([1.0, 0.9, 0.95, 0.92, 0.8], name='my_loss'), EarlyStopping('my_loss'), recorder], epochs=5)
    assert recorder.epochs == 4
    with pytest.raises(InputError, match=r"mode: cannot tell whether 'lr'.*mode='min'"):
        quick_fit([Script([0.1], name='lr'), EarlyStopping('lr')], epochs=1)


def test_early_stopping_bad_settings_and_unknown_monitor():
    with pytest.raises(InputError, match='mode'):
        EarlyStopping(mode='best')
    with pytest.raises(InputError, match='patience'):
        EarlyStopping(patience=-1)
    with pytest.raises(InputError, match='min_delta'):
        EarlyStopping(min_delta=-0.1)
    recorder = Recorder()
    # checked before the first batch (issue 6), naming the metrics the run produces
    with pytest.raises(InputError, match=r"monitor: EarlyStopping watches 'val_los', which this run never "
                                         r"produces; its metrics are \['train_loss'\]") as info:
        quick_fit([recorder, EarlyStopping('val_los')], epochs=3)
    assert recorder.calls[-1] == ('on_exception', info.value)
    assert recorder.epochs == 0


# ---------------------------------------------------------------- best model


class CaptureWeights(Callback):
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, tuner):
        self.weights.append({k: v.detach().clone() for k, v in tuner.model.state_dict().items()})


def test_best_model_checkpoint_keeps_the_best_epoch(tmp_path):
    capture = CaptureWeights()
    best = BestModelCheckpoint(tmp_path, monitor='score', mode='max')
    final = quick_fit([Script([0.1, 0.5, 0.3, 0.2]), best, capture], epochs=4)
    model, config = serialization.load(tmp_path / 'best')
    assert config['best'] == {'monitor': 'score', 'mode': 'max', 'value': 0.5, 'epoch': 2}
    assert json.loads((tmp_path / 'best' / 'best.json').read_text())['epoch'] == 2
    assert best.best == 0.5 and best.best_epoch == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, capture.weights[1][key])
    assert not torch.equal(model.state_dict()['0.weight'], final.state_dict()['0.weight'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best']


def test_best_model_checkpoint_of_a_model_without_builder_spec(tmp_path):
    from safetensors.torch import load_file

    capture = CaptureWeights()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    quick_fit([Script([0.5, 0.2, 0.3]), BestModelCheckpoint(tmp_path, monitor='score', mode='min'), capture],
              model=model)
    assert sorted(p.name for p in (tmp_path / 'best').iterdir()) == ['best.json', 'weights.safetensors']
    assert json.loads((tmp_path / 'best' / 'best.json').read_text())['value'] == 0.2
    saved = load_file(str(tmp_path / 'best' / 'weights.safetensors'))
    assert all(torch.equal(saved[k], v) for k, v in capture.weights[1].items())


# ---------------------------------------------------------------- resumable checkpoints


def noisy(x):
    """Augmentation drawing from all three global RNGs, so resuming must restore each of them."""
    x = torch.as_tensor(x)
    return x + 0.05 * torch.randn_like(x) + 0.05 * float(np.random.randn()) + 0.05 * random.gauss(0, 1)


def adam_with_step_lr(model):
    # step_size=2: the decay after epoch 2 depends on the restored last_epoch, not only on the lr
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)


def resumable_fit(callbacks, resume_from=None):
    return fit(mlp(4, 8, 3), blobs(per_class=8), blobs(per_class=4, seed=1), epochs=3, batch_size=8,
               configure_optimizer=adam_with_step_lr, scheduler_step='epoch', preprocess_fn=noisy,
               callbacks=callbacks, seed=0, progress_bar=False, resume_from=resume_from)


def test_resuming_from_a_training_checkpoint_matches_an_uninterrupted_run(tmp_path):
    recorder_a, recorder_b = Recorder(), Recorder()
    model_a = resumable_fit([TrainingCheckpoint(tmp_path / 'all', last_k_epochs=3),
                             TrainingCheckpoint(tmp_path / 'last', last_k_epochs=1), recorder_a])
    assert sorted(p.name for p in (tmp_path / 'all').iterdir()) == ['epoch-1', 'epoch-2', 'epoch-3']
    assert sorted(p.name for p in (tmp_path / 'last').iterdir()) == ['epoch-3']
    files = [p for p in tmp_path.rglob('*') if p.is_file()]
    assert {p.suffix for p in files} == {'.safetensors', '.json'}
    assert sorted(p.name for p in (tmp_path / 'all' / 'epoch-1').iterdir()) == [
        'model.safetensors', 'state.json', 'state.safetensors']

    model_b = resumable_fit([recorder_b], resume_from=tmp_path / 'all' / 'epoch-1')
    assert recorder_b.epochs == 2
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert recorder_b.history == recorder_a.history


def test_a_checkpoint_resumed_from_its_last_epoch_runs_no_more_epochs(tmp_path):
    model_a = resumable_fit([TrainingCheckpoint(tmp_path)])
    recorder = Recorder()
    model_b = resumable_fit([recorder], resume_from=tmp_path / 'epoch-3')
    assert recorder.epochs == 0
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


def test_resumed_early_stopping_replays_the_restored_history(tmp_path):
    class ScriptWithHistory(Script):
        def on_epoch_end(self, tuner):
            super().on_epoch_end(tuner)
            tuner.state.history[-1][self.name] = self.values[tuner.state.epoch]

    values = [1.0, 0.9, 0.95, 0.92, 0.8]
    quick_fit([ScriptWithHistory(values), TrainingCheckpoint(tmp_path, last_k_epochs=5)], epochs=5)
    recorder, early = Recorder(), EarlyStopping('score', mode='min', patience=2)
    quick_fit([ScriptWithHistory(values), early, recorder], epochs=5, resume_from=tmp_path / 'epoch-3')
    assert recorder.epochs == 1 and early.stopped_epoch == 4 and early.best_epoch == 2


def test_resume_with_a_loss_that_has_parameters(tmp_path):
    from executors.tuner.losses import ArcFaceLoss

    def run(callbacks, resume_from=None):
        return fit(mlp(4, 8, 3), blobs(per_class=8), blobs(per_class=4, seed=1), loss=ArcFaceLoss(3, 3), epochs=2,
                   batch_size=8, callbacks=callbacks, seed=0, progress_bar=False, resume_from=resume_from)

    model_a = run([TrainingCheckpoint(tmp_path / 'ckpt', last_k_epochs=2), BestModelCheckpoint(tmp_path)])
    model_b = run([], resume_from=tmp_path / 'ckpt' / 'epoch-1')
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    best, _ = serialization.load(tmp_path / 'best')    # the user's model, without the loss weights
    assert set(best.state_dict()) == set(model_a.state_dict())


def test_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match='resume_from: .* is not a training checkpoint'):
        resumable_fit([], resume_from=tmp_path)
    quick_fit([TrainingCheckpoint(tmp_path)], epochs=1)
    with pytest.raises(InputError, match='resume_from: the checkpoint has no scheduler state'):
        resumable_fit([], resume_from=tmp_path / 'epoch-1')
    with pytest.raises(InputError, match='resume_from: the checkpoint does not fit the model'):
        quick_fit([], model=mlp(4, 5, 3), resume_from=tmp_path / 'epoch-1')


def test_flatten_state_round_trips_optimizer_state_and_rng_tuples():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {'optimizer': optimizer.state_dict(), 'python': random.getstate(), 'numpy': np.random.get_state(),
             'nan': float('nan'), 'inf': float('-inf'), 'marker-like': {'__tensor__': 'x'}}
    tensors, structure = flatten_state(state)
    json.dumps(structure, allow_nan=False)
    restored = unflatten_state(tensors, json.loads(json.dumps(structure)))
    assert set(restored['optimizer']['state']) == {0, 1}
    assert torch.equal(restored['optimizer']['state'][0]['exp_avg'], optimizer.state_dict()['state'][0]['exp_avg'])
    assert restored['optimizer']['param_groups'] == optimizer.state_dict()['param_groups']
    assert restored['python'] == state['python']
    assert restored['numpy'][0] == 'MT19937' and np.array_equal(restored['numpy'][1], state['numpy'][1])
    assert restored['numpy'][1].dtype == state['numpy'][1].dtype
    assert np.isnan(restored['nan']) and restored['inf'] == float('-inf')
    assert restored['marker-like'] == {'__tensor__': 'x'}
    with pytest.raises(InputError, match='fn: a function cannot be saved without pickle'):
        flatten_state({'fn': lambda: None})


# ---------------------------------------------------------------- metric logging


def test_metrics_logger_writes_one_row_per_epoch(tmp_path):
    csv_path, jsonl_path = tmp_path / 'metrics.csv', tmp_path / 'logs' / 'metrics.jsonl'
    quick_fit([MetricsLogger(csv_path), MetricsLogger(jsonl_path)], epochs=3,
              eval_data=blobs(per_class=4, seed=1))
    with csv_path.open(newline='') as f:
        rows = list(csv.DictReader(f))
    assert [int(row['epoch']) for row in rows] == [1, 2, 3]
    assert {'train_loss', 'val_loss', 'MRR'} <= set(rows[0])
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [line['epoch'] for line in lines] == [1, 2, 3]
    assert [float(row['val_loss']) for row in rows] == pytest.approx([line['val_loss'] for line in lines])


def test_metrics_logger_csv_appends_and_extends_its_header(tmp_path):
    path = tmp_path / 'metrics.csv'
    quick_fit([MetricsLogger(path)], epochs=2)
    quick_fit([Script([0.5]), MetricsLogger(path)], epochs=1)
    with path.open(newline='') as f:
        rows = list(csv.DictReader(f))
    assert [row['epoch'] for row in rows] == ['1', '2', '1']
    assert [row['score'] for row in rows] == ['', '', '0.5']


# ---------------------------------------------------------------- external loggers


def test_wandb_logger_without_wandb_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)
    with pytest.raises(InputError, match='pip install wandb'):
        WandBLogger(project='x')


def test_wandb_logger_logs_batches_and_epochs(monkeypatch):
    import types

    logged, finished = [], []
    run = types.SimpleNamespace(log=lambda data, step: logged.append((step, data)),
                                finish=lambda exit_code: finished.append(exit_code))
    init_kwargs = []
    fake = types.SimpleNamespace(init=lambda **kwargs: init_kwargs.append(kwargs) or run)
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    quick_fit([WandBLogger(project='p')], epochs=2, batch_size=12)   # 24 items: 2 batches per epoch
    assert init_kwargs == [{'project': 'p'}] and finished == [0]
    assert [step for step, _ in logged] == [1, 2, 2, 3, 4, 4]
    assert set(logged[0][1]) == {'train/loss'}
    assert logged[2][1]['epoch'] == 1 and 'train_loss' in logged[2][1]


def test_tensorboard_logger_without_tensorboard_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    with pytest.raises(InputError, match='pip install tensorboard'):
        TensorBoardLogger('runs')


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip('tensorboard')
    quick_fit([TensorBoardLogger(tmp_path / 'tb')], epochs=2)
    assert any(p.name.startswith('events.out.tfevents') for p in (tmp_path / 'tb').iterdir())
