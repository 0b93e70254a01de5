"""Tests of :func:`executors.tuner.trainer.fit` and :func:`executors.models.inference.embed`."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from executors.data.schema import Doc, Match
from executors.errors import InputError
from executors.evaluation.metrics import evaluate_embeddings
from executors.models.inference import embed
from executors.tuner.callbacks import Callback
from executors.tuner.losses import SiameseLoss, TripletLoss
from executors.tuner.miners import TripletEasyHardMiner
from executors.tuner.trainer import fit
from tests.tuner.helpers import blobs, mlp


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


class Recording(nn.Module):
    """Model wrapper that keeps every input batch it sees (and the dtype of its output)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs, self.out_dtypes = net, [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        out = self.net(x)
        self.out_dtypes.append(out.dtype)
        return out


class RecordingLoss(nn.Module):
    """Loss wrapper that keeps every label batch it sees."""

    def __init__(self, loss=None):
        super().__init__()
        self.inner, self.labels = loss or SiameseLoss(), []

    def forward(self, embeddings, labels):
        self.labels.append(labels.clone())
        return self.inner(embeddings, labels)


class StateRecorder(Callback):
    """Keeps ``tuner.state`` at the end of fit and the learning rate at each train batch."""

    def __init__(self):
        self.state, self.lrs = None, []

    def on_train_batch_begin(self, tuner):
        self.lrs.append(tuner.optimizer.param_groups[0]['lr'])

    def on_fit_end(self, tuner):
        self.state = tuner.state


def groups(inputs, labels, key):
    """The partition of items (by ``key(row)``) into classes, as a set of frozensets."""
    by_label = {}
    for row, label in zip(inputs, labels.tolist()):
        by_label.setdefault(label, set()).add(key(row))
    return {frozenset(g) for g in by_label.values()}


# --- quality ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('seed', [0, 1])
def test_digits_triplet_hard_mining_beats_random_init(seed):
    """10 epochs (~0.2 s) of triplet + hard mining lift held-out mAP@10 by >= 0.15 over random init."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = (scaler.transform(a).astype(np.float32) for a in (X_train, X_test))
    model = mlp(64, 256, 64, seed=seed)
    before = evaluate_embeddings(embed(X_test, model), y_test, k=10)['mAP@10']
    fit(model, (X_train, y_train), loss=TripletLoss(miner=TripletEasyHardMiner('hard', 'hard')),
        num_items_per_class=8, batch_size=80, epochs=10, learning_rate=1e-3, seed=seed, progress_bar=False)
    after = evaluate_embeddings(embed(X_test, model), y_test, k=10)['mAP@10']
    assert after >= before + 0.15, (before, after)


# --- data kinds ------------------------------------------------------------------------------------------------


def _first_coord(row):
    return round(float(row[0]), 3)


@pytest.mark.parametrize('legacy', [False, True])
def test_class_docs_train_with_their_labels(legacy):
    """Docs labelled by ``label`` or legacy ``tags['finetuner_label']`` (a gRPC float) reach the loss grouped
    by label; the model changes."""
    X, y = blobs(per_class=4, classes=3)
    X[:, 0] = np.arange(len(X))  # item id
    docs = [Doc(tensor=x, tags={'finetuner_label': float(c)}) if legacy else Doc(tensor=x, label=f'c{c}')
            for x, c in zip(X, y)]
    model, loss = Recording(mlp(4, 8)), RecordingLoss()
    start = weights(model)
    fit(model, docs, loss=loss, epochs=1, batch_size=len(docs), seed=0, progress_bar=False)
    assert groups(model.inputs[0], loss.labels[0], _first_coord) == \
        {frozenset(np.flatnonzero(y == c).tolist()) for c in range(3)}
    assert not same_weights(start, weights(model))


def test_session_docs_group_query_with_positives_and_isolate_negatives():
    """A query and its '+1' matches share a label; every '-1' match (also via the legacy tag) gets its own."""
    texts = ['q0', 'p0a', 'p0b', 'n0', 'q1', 'p1', 'n1a', 'n1b']
    vectors = {t: np.random.default_rng(i).normal(size=4).astype(np.float32) for i, t in enumerate(texts)}
    docs = [
        Doc(text='q0', matches=[Match(text='p0a', label='+1'), Match(text='p0b', label='1'),
                                Match(text='n0', label='-1')]),
        Doc(text='q1', matches=[Match(text='p1', label='+1'), Match(text='n1a', label='-1'),
                                Match(text='n1b', tags={'finetuner_label': -1.0})]),
    ]
    model, loss = Recording(mlp(4, 8)), RecordingLoss()
    fit(model, docs, loss=loss, epochs=1, batch_size=len(texts), preprocess_fn=vectors.__getitem__, seed=0,
        progress_bar=False)
    key = {tuple(v.tolist()): t for t, v in vectors.items()}
    found = groups(model.inputs[0].numpy(), loss.labels[0], lambda row: key[tuple(row.tolist())])
    assert found == {frozenset({'q0', 'p0a', 'p0b'}), frozenset({'n0'}), frozenset({'q1', 'p1'}),
                     frozenset({'n1a'}), frozenset({'n1b'})}


@pytest.mark.parametrize('label', ['0', 'yes', None])
def test_session_match_without_a_valid_label_is_an_input_error(label):
    docs = [Doc(text='q', matches=[Match(text='a', label='+1'), Match(text='b', label=label)])]
    with pytest.raises(InputError, match='matches'):
        fit(mlp(4, 8), docs, epochs=1, preprocess_fn=lambda t: np.zeros(4, np.float32), progress_bar=False)


def test_instance_docs_give_two_augmented_views_of_every_item():
    """Unlabelled docs: each epoch every item is preprocessed exactly twice (two random views, one label)."""
    n = 10
    seen = []
    rng = np.random.default_rng(0)

    def augment(x):
        seen.append(int(x[0]))
        return (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)

    docs = [Doc(tensor=np.full(4, i, dtype=np.float32)) for i in range(n)]
    model, loss = Recording(mlp(4, 8)), RecordingLoss()
    fit(model, docs, loss=loss, epochs=2, batch_size=4, preprocess_fn=augment, seed=0, progress_bar=False)
    assert sorted(seen) == sorted(list(range(n)) * 4)
    for inputs, labels in zip(model.inputs, loss.labels):
        assert len(labels) == len(inputs) and len(labels) % 2 == 0
        for label in labels.unique():
            views = inputs[labels == label]
            assert len(views) == 2
            assert round(float(views[0, 0])) == round(float(views[1, 0]))  # the same item ...
            assert not torch.equal(views[0], views[1])                      # ... augmented differently


def test_array_inputs_train_exactly_like_lists_of_rows():
    """``(array, labels)`` (gathered in one step) and ``(list of rows, labels)`` (stacked) give the same fit;
    integer arrays stay integer (e.g. token ids)."""
    X, y = blobs(per_class=8, classes=4)
    results = []
    for inputs in (X.astype(np.float64), [row for row in X]):
        model = Recording(mlp(4, 8))
        fit(model, (inputs, y), (inputs, y), epochs=2, batch_size=8, seed=0, progress_bar=False)
        assert {x.dtype for x in model.inputs} == {torch.float32}
        results.append(weights(model))
    assert same_weights(*results)

    ids = np.arange(32).reshape(16, 2) % 10
    model = Recording(nn.Sequential(nn.Embedding(10, 4), nn.Flatten()))
    fit(model, (ids, np.arange(16) % 4), epochs=1, batch_size=8, seed=0, progress_bar=False)
    assert {x.dtype for x in model.inputs} == {torch.int64}


def test_instance_data_rejects_num_items_per_class():
    docs = [Doc(tensor=np.full(4, i, dtype=np.float32)) for i in range(8)]
    with pytest.raises(InputError, match='num_items_per_class'):
        fit(mlp(4, 8), docs, num_items_per_class=2, batch_size=4, epochs=1, progress_bar=False)


def _labelled(i):
    return Doc(tensor=np.ones(4, np.float32) * i, label=str(i % 2))


@pytest.mark.parametrize('data, message', [
    ([_labelled(0), _labelled(1), Doc(tensor=np.ones(4, np.float32))], 'mixes'),
    ([_labelled(0), _labelled(1), Doc(text='q', matches=[Match(text='m', label='+1')])], 'mixes'),
    ([Doc(tensor=np.ones(4, np.float32) * i, label='only') for i in range(4)], 'class'),
    ((np.ones((4, 4), np.float32), [7, 7, 7, 7]), 'class'),
    ([], 'empty'),
    ((np.zeros((0, 4), np.float32), []), 'class'),
    ((np.ones((4, 4), np.float32), [0, 1, 0]), 'labels'),
])
def test_bad_training_data_is_an_input_error(data, message):
    with pytest.raises(InputError, match=message) as error:
        fit(mlp(4, 8), data, epochs=1, progress_bar=False)
    assert str(error.value).startswith('train_data:')


@pytest.mark.parametrize('eval_data', [
    [Doc(tensor=np.ones(4, np.float32))],            # one unlabelled item: nothing to retrieve
    (np.ones((3, 4), np.float32), [5, 5, 5]),         # one class
    (np.ones((3, 4), np.float32), [0, 1]),            # labels do not match inputs
    [],
])
def test_bad_eval_data_is_an_input_error_naming_eval_data(eval_data):
    with pytest.raises(InputError, match='^eval_data:'):
        fit(mlp(4, 8), blobs(), eval_data, epochs=1, progress_bar=False)


# --- arguments -------------------------------------------------------------------------------------------------


def test_unknown_keyword_is_pythons_type_error():
    model = mlp(4, 8)
    start = weights(model)
    with pytest.raises(TypeError, match='epoch') as error:
        fit(model, blobs(), epoch=3, progress_bar=False)
    assert not isinstance(error.value, InputError)
    assert same_weights(start, weights(model))


@pytest.mark.parametrize('field, value', [
    ('epochs', 0), ('epochs', 1.5), ('epochs', True), ('batch_size', 0), ('batch_size', -4), ('batch_size', '8'),
    ('gradient_accumulation_steps', 0), ('eval_k', 0), ('scheduler_step', 'step'), ('scheduler_step', None),
    ('optimizer', 'adamax'), ('num_workers', 2),
])
def test_bad_settings_are_input_errors_naming_the_field(field, value):
    with pytest.raises(InputError) as error:
        fit(mlp(4, 8), blobs(), progress_bar=False, **{field: value})
    assert str(error.value).startswith(f'{field}:')


def test_model_that_is_not_a_module_is_an_input_error():
    with pytest.raises(InputError, match='^model:'):
        fit(lambda x: x, blobs(), progress_bar=False)


def test_model_returning_3d_output_in_fit_is_an_input_error():
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)))
    with pytest.raises(InputError, match='2-D'):
        fit(model, blobs(), epochs=1, progress_bar=False)


@pytest.mark.parametrize('name, cls', [('sgd', torch.optim.SGD), ('AdamW', torch.optim.AdamW)])
def test_optimizer_by_name_uses_learning_rate_and_kwargs(name, cls):
    """The named optimizer is built with ``learning_rate`` and ``optimizer_kwargs``."""
    class Grab(Callback):
        def on_fit_begin(self, tuner):
            self.optimizer = tuner.optimizer

    grab = Grab()
    fit(mlp(4, 8), blobs(), optimizer=name, learning_rate=0.0123, optimizer_kwargs={'weight_decay': 0.25},
        epochs=1, callbacks=[grab], progress_bar=False)
    assert type(grab.optimizer) is cls
    assert grab.optimizer.param_groups[0]['lr'] == 0.0123
    assert grab.optimizer.param_groups[0]['weight_decay'] == 0.25


@pytest.mark.parametrize('name, kwargs, fused', [
    ('adam', {}, True), ('AdamW', {'weight_decay': 0.1}, True),
    ('adamw', {'foreach': True}, None),  # the caller's choice of implementation wins
    ('adam', {'fused': False}, False), ('sgd', {}, None)])
def test_adam_steps_use_the_fused_kernel_unless_told_otherwise(name, kwargs, fused):
    class Grab(Callback):
        def on_fit_begin(self, tuner):
            self.optimizer = tuner.optimizer

    grab = Grab()
    model = mlp(4, 8)
    start = weights(model)
    fit(model, blobs(), optimizer=name, optimizer_kwargs=kwargs, epochs=1, callbacks=[grab], progress_bar=False)
    assert grab.optimizer.param_groups[0].get('fused') == fused
    assert not same_weights(start, weights(model))  # it trained


def test_fused_and_per_tensor_adamw_take_the_same_steps():
    results = []
    for kwargs in ({}, {'fused': False}):
        model = mlp(4, 8, seed=0)
        fit(model, blobs(), optimizer='adamw', optimizer_kwargs=kwargs, epochs=2, batch_size=10, seed=0,
            progress_bar=False)
        results.append(weights(model))
    for fused, per_tensor in zip(*results):
        torch.testing.assert_close(fused, per_tensor, atol=1e-5, rtol=1e-4)


# --- optimizer and scheduler -----------------------------------------------------------------------------------


def test_configure_optimizer_returning_an_optimizer_is_the_one_used():
    """An optimizer over the first layer only: only that layer changes (``learning_rate`` is ignored)."""
    model = mlp(4, 8, 8)
    start = weights(model)
    fit(model, blobs(), configure_optimizer=lambda m: torch.optim.SGD(m[0].parameters(), lr=0.1),
        learning_rate=0.0, epochs=2, batch_size=10, seed=0, progress_bar=False)
    end = weights(model)
    assert not torch.equal(start[0], end[0]) and not torch.equal(start[1], end[1])
    assert same_weights(start[2:], end[2:])


@pytest.mark.parametrize('scheduler_step', ['batch', 'epoch'])
def test_scheduler_steps_per_batch_or_per_epoch(scheduler_step):
    """LambdaLR ``lr = 0.1 / (1 + t)``: ``t`` counts batches or epochs, seen at every batch and at the end."""
    batches_per_epoch, epochs = 4, 3

    def configure(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + t))

    recorder = StateRecorder()
    holder = {}
    fit(mlp(4, 8), blobs(per_class=10, classes=4), epochs=epochs, batch_size=10, scheduler_step=scheduler_step,
        configure_optimizer=lambda m: holder.setdefault('pair', configure(m)), callbacks=[recorder],
        progress_bar=False)
    per_batch = scheduler_step == 'batch'
    steps = [b if per_batch else b // batches_per_epoch for b in range(batches_per_epoch * epochs)]
    assert recorder.lrs == pytest.approx([0.1 / (1 + t) for t in steps])
    total = batches_per_epoch * epochs if per_batch else epochs
    assert holder['pair'][0].param_groups[0]['lr'] == pytest.approx(0.1 / (1 + total))


def test_configure_optimizer_errors():
    with pytest.raises(InputError, match='^optimizer:'):
        fit(mlp(4, 8), blobs(), optimizer='sgd', configure_optimizer=lambda m: torch.optim.SGD(m.parameters()),
            progress_bar=False)
    with pytest.raises(InputError, match='^configure_optimizer:'):
        fit(mlp(4, 8), blobs(), configure_optimizer=lambda m: 'sgd', progress_bar=False)


# --- gradient accumulation and clipping ------------------------------------------------------------------------


def _watched_sgd(model, on_step, lr=0.1):
    """SGD whose ``step`` first calls ``on_step(optimizer)``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    original = optimizer.step

    def step(*args, **kwargs):
        on_step(optimizer)
        return original(*args, **kwargs)

    optimizer.step = step
    return optimizer


@pytest.mark.parametrize('accumulation, windows', [(1, [1] * 5), (2, [2, 2, 1]), (3, [3, 2]), (8, [5])])
def test_gradient_accumulation_steps_once_per_window_with_the_mean_gradient(accumulation, windows):
    """5 batches per epoch: one step per ``accumulation`` batches, plus one for the last short window. A full
    window's gradient is the mean of its batches' gradients at the same weights; a short one's is parallel to
    the sum of its batches' gradients."""
    net = mlp(4, 8, 4, seed=0)
    model, loss = Recording(net), RecordingLoss()
    params = list(net.parameters())
    seen = {'batches': 0}
    window_sizes = []

    def check(optimizer):
        new = len(model.inputs) - seen['batches']
        window_sizes.append(new)
        expected = [torch.zeros_like(p) for p in params]
        for x, labels in zip(model.inputs[-new:], loss.labels[-new:]):
            grads = torch.autograd.grad(loss.inner(net(x), labels), params)
            expected = [e + g for e, g in zip(expected, grads)]
        actual = torch.cat([p.grad.flatten() for p in params])
        expected = torch.cat([e.flatten() for e in expected])
        if new == accumulation:
            torch.testing.assert_close(actual, expected / accumulation, rtol=1e-4, atol=1e-6)
        else:
            assert torch.nn.functional.cosine_similarity(actual, expected, dim=0) > 0.9999
        seen['batches'] = len(model.inputs)

    fit(model, blobs(per_class=10, classes=5), loss=loss, epochs=2, batch_size=10, seed=0,
        gradient_accumulation_steps=accumulation, configure_optimizer=lambda m: _watched_sgd(m, check),
        progress_bar=False)
    assert len(model.inputs) == 10
    assert window_sizes == windows * 2


def _grad_norm(model):
    return float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm())


@pytest.mark.parametrize('accumulation', [1, 2])
def test_max_grad_norm_bounds_the_gradient_the_optimizer_sees(accumulation):
    max_norm = 0.01
    norms = {}
    for clip in (None, max_norm):
        norms[clip] = []
        fit(mlp(4, 16, 4), blobs(), epochs=2, batch_size=10, seed=0, max_grad_norm=clip,
            gradient_accumulation_steps=accumulation,
            configure_optimizer=lambda m: _watched_sgd(m, lambda opt: norms[clip].append(_grad_norm(m))),
            progress_bar=False)
    assert max(norms[None]) > 10 * max_norm  # clipping has something to do
    assert len(norms[max_norm]) == len(norms[None])
    assert max(norms[max_norm]) <= max_norm * (1 + 1e-4)
    assert min(norms[max_norm]) >= max_norm * 0.99  # rescaled, not zeroed


# --- determinism, precision ------------------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights():
    def run(seed):
        model = mlp(4, 16, 4, seed=0)
        fit(model, blobs(per_class=12, classes=4), epochs=2, batch_size=16, seed=seed, progress_bar=False)
        return weights(model)

    first, again, other = run(1), run(1), run(2)
    assert same_weights(first, again)
    assert not same_weights(first, other)


@pytest.mark.parametrize('num_items_per_class', [None, 5])
def test_each_epoch_visits_every_item_in_a_new_order(num_items_per_class):
    X, y = blobs(per_class=10, classes=4)
    X[:, 0] = np.arange(len(X))
    model = Recording(mlp(4, 8))
    fit(model, (X, y), epochs=2, batch_size=10, num_items_per_class=num_items_per_class, seed=0,
        progress_bar=False)
    epochs = [torch.cat(model.inputs[:4])[:, 0].tolist(), torch.cat(model.inputs[4:])[:, 0].tolist()]
    assert len(model.inputs) == 8
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize('mixed_precision', [False, True])
def test_mixed_precision_on_cpu_autocasts_to_bf16_and_keeps_float32_weights(mixed_precision):
    X, y = blobs(per_class=8, classes=4)
    model = Recording(mlp(4, 16, 4))
    start = weights(model)
    recorder = StateRecorder()
    fit(model, (X, y), (X, y), epochs=2, batch_size=16, seed=0, mixed_precision=mixed_precision,
        callbacks=[recorder], progress_bar=False)
    assert set(model.out_dtypes) == {torch.bfloat16 if mixed_precision else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not same_weights(start, weights(model))
    assert all(math.isfinite(h['train_loss']) and math.isfinite(h['val_loss']) for h in recorder.state.history)


# --- embed -----------------------------------------------------------------------------------------------------


def test_embed_returns_float32_rows_and_sets_doc_embeddings():
    X, _ = blobs(per_class=5, classes=2)
    model = mlp(4, 8, 3)
    model.train()
    docs = [Doc(tensor=x.astype(np.float64)) for x in X]  # float64 inputs are cast to the model's float32
    out = embed(docs, model, batch_size=3)
    assert out.shape == (10, 3) and out.dtype == np.float32
    for doc, row in zip(docs, out):
        np.testing.assert_array_equal(np.asarray(doc.embedding), row)
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed(list(X), model, batch_size=100), out, rtol=1e-5, atol=1e-6)
    assert model.training  # mode restored


def test_embed_rejects_3d_output():
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)))
    with pytest.raises(InputError, match=r'^model:.*\[B, D\]'):
        embed(np.ones((3, 4), np.float32), model)


def test_embed_of_nothing_is_empty():
    assert embed([], mlp(4, 8)).shape[0] == 0


# --- preprocess_fn, collate_fn ---------------------------------------------------------------------------------


def test_preprocess_fn_and_collate_fn_are_used_in_fit_eval_and_embed():
    """Strings -> vectors by ``preprocess_fn``; ``collate_fn`` builds a dict batch the model reads."""
    words = [f'w{i}' for i in range(12)]
    vectors = {w: np.random.default_rng(i).normal(size=4).astype(np.float32) for i, w in enumerate(words)}
    calls = {'preprocess': 0, 'collate': 0}

    def preprocess(word):
        calls['preprocess'] += 1
        return vectors[word]

    def collate(items):
        calls['collate'] += 1
        return {'x': torch.from_numpy(np.stack(items))}

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(4, 8)

        def forward(self, batch):
            return self.net(batch['x'])

    model = DictModel()
    labels = [i % 3 for i in range(12)]
    fit(model, (words, labels), (words[:6], labels[:6]), epochs=2, batch_size=4, preprocess_fn=preprocess,
        collate_fn=collate, progress_bar=False)
    assert calls == {'preprocess': 2 * (12 + 6), 'collate': 2 * (3 + 2)}
    out = embed(words, model, preprocess_fn=preprocess, collate_fn=collate)
    expected = model.net(torch.from_numpy(np.stack([vectors[w] for w in words]))).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# --- evaluation and history ------------------------------------------------------------------------------------


def test_history_has_train_and_val_loss_and_retrieval_metrics_per_epoch():
    """Each epoch's history row holds the losses and metrics; the last one matches an independent evaluation."""
    X, y = blobs(per_class=15, classes=4, seed=0)
    X_eval, y_eval = blobs(per_class=8, classes=4, seed=0)
    recorder = StateRecorder()
    loss = SiameseLoss()
    model = fit(mlp(4, 16, 4), (X, y), (X_eval, y_eval), loss=loss, epochs=3, batch_size=32, eval_k=5, seed=0,
                callbacks=[recorder], progress_bar=False)
    history = recorder.state.history
    assert [h['epoch'] for h in history] == [1, 2, 3]
    for row in history:
        assert {'train_loss', 'val_loss', 'mAP@5', 'hit@5', 'NDCG@5', 'MRR'} <= set(row)
        assert all(math.isfinite(v) for v in row.values())
    assert history[-1]['train_loss'] < history[0]['train_loss']
    with torch.no_grad():
        embeddings = model(torch.from_numpy(X_eval))
        assert history[-1]['val_loss'] == pytest.approx(float(loss(embeddings, torch.from_numpy(y_eval))), rel=1e-5)
    expected = evaluate_embeddings(embeddings.numpy(), y_eval, k=5)
    assert history[-1]['mAP@5'] == pytest.approx(expected['mAP@5'], rel=1e-6)
    assert recorder.state.metrics == {k: v for k, v in history[-1].items() if k != 'epoch'}


def test_instance_eval_data_scores_the_other_view():
    """Unlabelled eval docs: each item's two views are each other's relevant neighbour."""
    docs = [Doc(tensor=np.random.default_rng(i).normal(size=4).astype(np.float32)) for i in range(12)]
    recorder = StateRecorder()
    fit(mlp(4, 8), docs, docs, epochs=1, batch_size=8, eval_k=3, seed=0, callbacks=[recorder],
        preprocess_fn=lambda x: x + np.float32(0.001), loss='NTXentLoss', progress_bar=False)
    assert recorder.state.history[0]['hit@3'] == 1.0


def test_stop_training_from_a_callback_ends_fit_after_the_epoch():
    class StopAfterFirst(Callback):
        def on_epoch_end(self, tuner):
            tuner.state.stop_training = True

    recorder = StateRecorder()
    fit(mlp(4, 8), blobs(), epochs=5, batch_size=10, callbacks=[StopAfterFirst(), recorder], progress_bar=False)
    assert len(recorder.state.history) == 1
    assert len(recorder.lrs) == 3


@pytest.mark.parametrize('kwargs, field', [({'learning_rate': 0.0}, 'learning_rate'),
                                           ({'learning_rate': -1}, 'learning_rate'),
                                           ({'max_grad_norm': 0}, 'max_grad_norm')])
def test_non_positive_rates_and_norms_are_refused(kwargs, field):
    with pytest.raises(InputError, match=field):
        fit(mlp(4, 8, 8), blobs(), epochs=1, progress_bar=False, **kwargs)


def test_session_batches_keep_sessions_whole():
    """Session data is sampled by whole sessions: a recording loss sees each query with all its matches."""
    rng = np.random.default_rng(0)
    sessions = [Doc(id=f'q{s}', tensor=rng.normal(size=4).astype(np.float32),
                    matches=[Match(id=f'q{s}m{j}', label='+1' if j == 0 else '-1',
                                   tensor=rng.normal(size=4).astype(np.float32)) for j in range(3)])
                for s in range(6)]
    seen = []

    class RecordingLoss(torch.nn.Module):
        def forward(self, embeddings, labels):
            seen.append(len(labels))
            return embeddings.sum() * 0.0 + embeddings.pow(2).mean()

    fit(mlp(4, 8, 8), sessions, loss=RecordingLoss(), epochs=1, batch_size=9, progress_bar=False, seed=0)
    assert seen and all(n % 4 == 0 for n in seen)  # 4 items per session, never split


# --- regressions (issue 6): each failed before its fix ------------------------------------------------------------


def _pairs(num_pairs, dim=4, seed=0, interleaved=False):
    """``(X [2K, dim], y)`` with every label exactly twice; interleaved: labels 0..K-1, 0..K-1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (num_pairs, dim))
    y = np.tile(np.arange(num_pairs), 2) if interleaved else np.repeat(np.arange(num_pairs), 2)
    return (centres[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize('num_items_per_class', [2, None])
def test_multiple_negatives_ranking_loss_with_eval_data_keeps_pairs_in_validation(num_items_per_class):
    """Validation used to cut consecutive chunks, splitting the pairs (InputError after epoch 1); now whole
    classes go into each validation batch: 6 pairs with batch_size 8 are the batches [p0..p3], [p4, p5]."""
    from executors.tuner.losses import MultipleNegativesRankingLoss

    X_eval, y_eval = _pairs(6, seed=1, interleaved=True)
    recorder = StateRecorder()
    model = fit(mlp(4, 8), _pairs(8), (X_eval, y_eval), loss='MultipleNegativesRankingLoss', epochs=2,
                batch_size=8, num_items_per_class=num_items_per_class, seed=0, callbacks=[recorder],
                progress_bar=False)
    assert len(recorder.state.history) == 2
    embeddings = torch.from_numpy(embed(X_eval, model))
    labels = torch.from_numpy(y_eval)
    loss = MultipleNegativesRankingLoss()
    first, second = np.isin(y_eval, [0, 1, 2, 3]), np.isin(y_eval, [4, 5])
    expected = (8 * float(loss(embeddings[first], labels[first])) + 4 * float(loss(embeddings[second], labels[second])))
    assert recorder.state.val_loss == pytest.approx(expected / 12, rel=1e-5)


def test_multiple_negatives_ranking_loss_scores_eval_labels_that_are_not_pairs():
    """A held-out set with 3 items of a label (as the flow's stratified split gives) is scored on
    sampled pair batches of its embeddings, not refused."""
    X_eval, y_eval = _pairs(3)
    recorder = StateRecorder()
    fit(mlp(4, 8), _pairs(4), (X_eval, np.array([0, 0, 0, 1, 2, 2])), loss='MultipleNegativesRankingLoss',
        epochs=1, progress_bar=False, callbacks=[recorder])
    assert np.isfinite(recorder.state.val_loss)
    with pytest.raises(InputError, match='^num_items_per_class:'):
        fit(mlp(4, 8), _pairs(4), loss='MultipleNegativesRankingLoss', num_items_per_class=4, batch_size=8,
            epochs=1, progress_bar=False)


def test_prototypes_come_from_this_runs_training_batches_only():
    """fit starts a loss instance with no prototypes (an earlier run's would belong to other weights) and
    records those of the training labels, not of the validation data."""
    from executors.tuner.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(prototype_weight=1.0)
    loss(torch.randn(2, 8, requires_grad=True), torch.tensor([999, 999]))  # state of another run
    X_eval, y_eval = _pairs(2, seed=1)
    recorder = StateRecorder()
    model = fit(mlp(4, 8), _pairs(8), (X_eval, y_eval + 100), loss=loss, epochs=1, batch_size=8,
                seed=0, callbacks=[recorder], progress_bar=False)
    assert loss.prototype_labels.tolist() == list(range(8))  # fit's label ids of the 8 training labels
    assert np.isfinite(recorder.state.val_loss)
    assert embed(X_eval, model).shape == (4, 8)


def test_arcface_val_loss_maps_eval_labels_with_the_training_label_map():
    """Eval data with a subset of the training labels used to be numbered on its own ('c', 'd' -> 0, 1),
    hitting the class centres of 'a' and 'b'; the val loss must equal the loss with the training ids."""
    from executors.tuner.losses import ArcFaceLoss

    X, y = blobs(per_class=8, classes=4)
    names = np.array(['a', 'b', 'c', 'd'])[y]
    keep = np.isin(names, ['c', 'd'])
    arcface = ArcFaceLoss(num_classes=4, embedding_dim=8)
    recorder = StateRecorder()
    model = fit(mlp(4, 8), (X, names), (X[keep], names[keep]), loss=arcface, epochs=2, batch_size=16, seed=0,
                callbacks=[recorder], progress_bar=False)
    with torch.no_grad():
        expected = float(arcface(torch.from_numpy(embed(X[keep], model)), torch.from_numpy(y[keep])))
        wrong = float(arcface(torch.from_numpy(embed(X[keep], model)), torch.from_numpy(y[keep] - 2)))
    assert recorder.state.val_loss == pytest.approx(expected, rel=1e-5)
    assert abs(expected - wrong) > 1e-3  # the old numbering would give a measurably different value


def test_arcface_val_loss_leaves_out_eval_labels_unseen_in_training():
    from executors.tuner.losses import ArcFaceLoss

    X, y = blobs(per_class=8, classes=4)
    names = np.array(['a', 'b', 'c', 'e'])[y]
    arcface = ArcFaceLoss(num_classes=3, embedding_dim=8)
    recorder = StateRecorder()
    train = names != 'e'
    model = fit(mlp(4, 8), (X[train], names[train]), (X, names), loss=arcface, epochs=1, batch_size=16, seed=0,
                callbacks=[recorder], progress_bar=False)
    seen = names != 'e'
    with torch.no_grad():
        expected = float(arcface(torch.from_numpy(embed(X[seen], model)), torch.from_numpy(y[seen])))
    assert recorder.state.val_loss == pytest.approx(expected, rel=1e-5)
    assert 'hit@10' in recorder.state.metrics  # retrieval metrics still use every eval item


def test_to_device_moves_any_mapping_and_keeps_its_type():
    """A transformers BatchEncoding is a Mapping, not a dict: it used to stay where it was."""
    from types import MappingProxyType

    from transformers import BatchEncoding

    from executors.models.inference import to_device

    encoding = BatchEncoding({'input_ids': torch.ones(2, 3, dtype=torch.long), 'attention_mask': torch.ones(2, 3)})
    moved = to_device(encoding, 'meta')
    assert isinstance(moved, BatchEncoding)
    assert moved.input_ids.device.type == 'meta' and moved['attention_mask'].device.type == 'meta'
    proxy = to_device(MappingProxyType({'x': torch.ones(2)}), 'meta')
    assert proxy['x'].device.type == 'meta'
    assert to_device([torch.ones(1), 'text'], 'meta')[0].device.type == 'meta'
    assert to_device(['a', 'b'], 'meta') == ['a', 'b']


def test_fit_and_embed_move_a_batch_encoding_from_collate_fn():
    """The model sees the collate_fn's BatchEncoding on the fit device (checked with the device's type)."""
    from transformers import BatchEncoding

    seen = []

    class MappingModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(4, 8)

        def forward(self, batch):
            seen.append((type(batch).__name__, batch['x'].device.type))
            return self.net(batch['x'])

    def collate(rows):
        return BatchEncoding({'x': torch.from_numpy(np.stack(rows))})

    model = fit(MappingModel(), blobs(), epochs=1, batch_size=10, collate_fn=collate, progress_bar=False)
    embed(blobs()[0], model, collate_fn=collate)
    assert seen and all(entry == ('BatchEncoding', 'cpu') for entry in seen)


def test_non_finite_inputs_are_refused_naming_the_item():
    X, y = blobs()
    X[7, 2] = np.nan
    model = mlp(4, 8)
    start = weights(model)
    with pytest.raises(InputError, match=r'^train_data\[0\]\[7\]: holds NaN or inf'):
        fit(model, (X, y), epochs=1, progress_bar=False)
    docs = [Doc(id=f'd{i}', tensor=x, label=str(label)) for i, (x, label) in enumerate(zip(*blobs()))]
    docs[4].tensor = np.array([1.0, np.inf, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(InputError, match=r'^eval_data\[4\] \(id d4\): holds NaN or inf'):
        fit(model, blobs(), docs, epochs=1, progress_bar=False)
    with pytest.raises(InputError, match=r'^train_data\[\d+\]: its model input .* NaN or inf'):
        fit(model, blobs(), preprocess_fn=lambda x: np.full_like(x, np.inf) if x[0] > 1 else x, epochs=1,
            progress_bar=False)
    assert same_weights(start, weights(model))


class _NonFiniteOnCall(nn.Module):
    """SiameseLoss that turns non-finite on call ``bad_call``: the loss itself, or only its gradient."""

    def __init__(self, bad_call, where):
        super().__init__()
        self.inner, self.calls, self.bad_call, self.where = SiameseLoss(), 0, bad_call, where

    def forward(self, embeddings, labels):
        self.calls += 1
        loss = self.inner(embeddings, labels)
        if self.calls == self.bad_call:
            if self.where == 'loss':
                return loss * float('nan')
            embeddings.register_hook(lambda grad: grad * float('inf'))
        return loss


@pytest.mark.parametrize('where', ['loss', 'gradient'])
def test_a_non_finite_loss_stops_the_run_with_the_last_finite_weights(where):
    """One bad batch used to turn every parameter into NaN silently; now the run stops, warns, and the
    returned model holds the weights after the last finite update (batch 4 of epoch 2, batch 5 is bad)."""

    class WeightsAfterEachBatch(Callback):
        def __init__(self):
            self.snapshots = []

        def on_train_batch_end(self, tuner):
            self.snapshots.append(weights(tuner.model))

    snapshots, recorder = WeightsAfterEachBatch(), StateRecorder()
    with pytest.warns(RuntimeWarning, match='non-finite loss: at epoch 2, batch 1'):
        model = fit(mlp(4, 8), blobs(per_class=10, classes=4), loss=_NonFiniteOnCall(5, where), epochs=5,
                    batch_size=10, seed=0, callbacks=[snapshots, recorder], progress_bar=False)
    assert len(snapshots.snapshots) == 4  # 4 batches per epoch; the 5th call (epoch 2, batch 1) stopped it
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same_weights(weights(model), snapshots.snapshots[-1])
    assert recorder.state.stopped_reason.startswith('non-finite loss') and len(recorder.state.history) == 2
