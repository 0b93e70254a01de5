"""Pair losses get one (anchor, positive) pair per label per batch through fit."""
import numpy as np
import pytest

from executors.errors import InputError
from executors.tuner.trainer import fit
from tests.tuner.helpers import blobs, mlp


def _record_batches(monkeypatch):
    """Labels of every training batch fit builds."""
    import executors.tuner.trainer as trainer

    seen = []
    original = trainer.make_batch

    def recording(items, indices, *args):
        inputs, labels = original(items, indices, *args)
        seen.append(labels.numpy().copy())
        return inputs, labels

    monkeypatch.setattr(trainer, 'make_batch', recording)
    return seen


def test_mnrl_batches_hold_each_label_exactly_twice(monkeypatch):
    x, y = blobs(per_class=10, classes=4)
    seen = _record_batches(monkeypatch)
    fit(mlp(4, 8), (x, y), loss='MultipleNegativesRankingLoss', epochs=2, batch_size=8, progress_bar=False,
        seed=0)
    assert seen
    for labels in seen:
        _, counts = np.unique(labels, return_counts=True)
        assert (counts == 2).all() and len(labels) == 8
    # one epoch: every item once (10 per class -> 5 pairs per class, 20 pairs, 4 per batch -> 5 batches)
    assert len(seen) == 10
    first_epoch = np.concatenate(seen[:5])
    assert np.bincount(first_epoch).tolist() == [10] * 4


def test_mnrl_batch_size_capped_at_the_number_of_labels(monkeypatch):
    x, y = blobs(per_class=6, classes=3)
    seen = _record_batches(monkeypatch)
    with pytest.warns(UserWarning, match='batch_size is 6'):
        fit(mlp(4, 8), (x, y), loss='MultipleNegativesRankingLoss', epochs=1, batch_size=256, progress_bar=False)
    assert {len(labels) for labels in seen} == {6}


@pytest.mark.parametrize('settings, message', [
    ({'num_items_per_class': 4}, '^num_items_per_class: MultipleNegativesRankingLoss trains on'),
    ({'batch_size': 7}, '^batch_size: .*must be even'),
])
def test_bad_pair_settings(settings, message):
    x, y = blobs(per_class=10, classes=6)
    with pytest.raises(InputError, match=message):
        fit(mlp(4, 8), (x, y), loss='MultipleNegativesRankingLoss', epochs=1, progress_bar=False,
            **{'batch_size': 8, **settings})


def test_one_usable_label_is_refused():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with pytest.raises(InputError, match='^train_data: MultipleNegativesRankingLoss needs at least two labels'):
        fit(mlp(4, 8), (x, [0, 0, 0, 1, 2]), loss='MultipleNegativesRankingLoss', epochs=1, progress_bar=False)


def test_mnrl_with_eval_data_scores_pair_batches():
    """Validation cuts consecutive chunks, which are not pairs: the pair loss is scored on pair batches."""
    x, y = blobs(per_class=10, classes=4)
    x_eval, y_eval = blobs(per_class=5, classes=4, seed=1)
    from executors.tuner.callbacks import Callback

    seen = {}

    class Grab(Callback):
        def on_epoch_end(self, tuner):
            seen.update(tuner.state.metrics)

    fit(mlp(4, 8), (x, y), (x_eval, y_eval), loss='MultipleNegativesRankingLoss', epochs=2, batch_size=8,
        progress_bar=False, seed=0, callbacks=[Grab()])
    assert np.isfinite(seen['val_loss']) and seen['val_loss'] > 0 and 'mAP@10' in seen
