import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from executors.errors import InputError
from executors.tuner.samplers import ClassSampler, SessionSampler, ShuffleSampler


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def assert_class_batches(batches, labels, classes_per_batch, items_per_class):
    for batch in batches:
        assert len(batch) == len(set(batch)) == classes_per_batch * items_per_class
        counts = Counter(labels[batch].tolist())
        assert len(counts) == classes_per_batch
        assert set(counts.values()) == {items_per_class}


# class sizes 5, 9, 4, 13, 8 with m = 4 -> slots 2, 3, 1, 4, 2 (T = 12)
LABELS = np.repeat(np.arange(5), [5, 9, 4, 13, 8])


@pytest.mark.parametrize(
    "batch_size, m, drop_last, expected_len",
    [
        (8, 4, False, 6),  # P = 2: ceil(12 / 2)
        (12, 4, False, 4),  # P = 3: ceil(12 / 3)
        (20, 4, False, 3),  # P = 5: ceil(12 / 5); class of 13 items capped at 3 slots
        (20, 4, True, 2),  # floor(12 / 5)
        (6, 2, False, 7),  # slots 3, 5, 2, 7, 4 (T = 21), P = 3
        (4, 1, False, 10),  # T = 39 slots of 1 item, P = 4
    ],
)
def test_class_batches_have_exact_composition(batch_size, m, drop_last, expected_len):
    sampler = ClassSampler(LABELS, batch_size, m, seed=0, drop_last=drop_last)
    assert len(sampler) == expected_len
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == expected_len
        assert_class_batches(batches, LABELS, batch_size // m, m)


def test_class_sampler_covers_every_item_each_epoch():
    sampler = ClassSampler(LABELS, 8, 4, seed=3)
    for epoch in range(5):
        assert set(np.concatenate(epoch_batches(sampler, epoch))) == set(range(len(LABELS)))


def test_class_larger_than_epoch_is_in_every_batch():
    labels = np.repeat(np.arange(3), [40, 4, 4])  # 10 + 1 + 1 slots of 4; P = 2 -> 6 batches
    sampler = ClassSampler(labels, 8, 4, seed=1)
    batches = list(sampler)
    assert len(batches) == 6
    assert_class_batches(batches, labels, 2, 4)
    assert all(0 in labels[batch] for batch in batches)
    # the 24 slots of class 0 take distinct items: no repeat before all 40 are used
    class_0_items = [i for batch in batches for i in batch if labels[i] == 0]
    assert len(set(class_0_items)) == 24


def test_small_classes_are_skipped_with_warning():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3])
    with pytest.warns(UserWarning, match="2 classes \\(3 items\\)"):
        sampler = ClassSampler(labels, 6, 3, seed=0)
    batches = list(sampler)
    assert_class_batches(batches, labels, 2, 3)
    assert set(np.concatenate(batches)) == set(range(6))


def test_class_sampler_is_deterministic_and_reshuffles_each_epoch():
    first, second = ClassSampler(LABELS, 8, 4, seed=7), ClassSampler(LABELS, 8, 4, seed=7)
    assert epoch_batches(first, 0) == epoch_batches(second, 0)
    assert epoch_batches(first, 1) == epoch_batches(second, 1)
    assert epoch_batches(first, 0) != epoch_batches(first, 1)
    assert list(first) == list(first)  # same epoch, same order
    assert epoch_batches(ClassSampler(LABELS, 8, 4, seed=8), 0) != epoch_batches(second, 0)
    unseeded = ClassSampler(LABELS, 8, 4)
    assert list(unseeded) == list(unseeded)


def test_class_sampler_accepts_string_labels_and_feeds_a_dataloader():
    names = np.array(["cat", "dog", "cow"])[LABELS % 3]
    sampler = ClassSampler(names, 6, 3, seed=0)
    loader = DataLoader(TensorDataset(torch.arange(len(names))), batch_sampler=sampler)
    batches = [batch.tolist() for (batch,) in loader]
    assert batches == list(sampler)
    assert_class_batches(batches, names, 2, 3)


@pytest.mark.parametrize(
    "labels, batch_size, m, field",
    [
        (LABELS, 10, 4, "batch_size"),  # not a multiple of m
        (LABELS, 0, 4, "batch_size"),
        (LABELS, 8.0, 4, "batch_size"),
        (LABELS, 8, 0, "num_items_per_class"),
        (LABELS, 8, True, "num_items_per_class"),
        (LABELS, 24, 4, "labels"),  # P = 6 > 5 classes
        (LABELS, 30, 10, "labels"),  # P = 3, but only 1 class with >= 10 items
        (LABELS.reshape(1, -1), 8, 4, "labels"),
        ([], 8, 4, "labels"),
    ],
)
def test_class_sampler_rejects_invalid_settings(labels, batch_size, m, field):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(InputError, match=f"^{field}:"):
            ClassSampler(labels, batch_size, m)


def test_seed_and_epoch_are_validated():
    with pytest.raises(InputError, match="^seed:"):
        ShuffleSampler(4, 2, seed=-1)
    with pytest.raises(InputError, match="^epoch:"):
        ShuffleSampler(4, 2).set_epoch(-1)


# sessions: 0 -> {0, 1, 9}, 1 -> {2}, 2 -> {3, 4, 5}, 3 -> {6}, 4 -> {7, 8}
SESSIONS = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 0])


def test_session_batches_keep_sessions_whole():
    sampler = SessionSampler(SESSIONS, 4, seed=0)
    members = {s: set(np.flatnonzero(SESSIONS == s)) for s in set(SESSIONS.tolist())}
    orders = set()
    for epoch in range(6):
        batches = epoch_batches(sampler, epoch)
        assert len(sampler) == len(batches)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(SESSIONS)))
        for batch in batches:
            assert len(batch) <= 4
            for session in set(SESSIONS[batch].tolist()):
                assert members[session] <= set(batch)
        orders.add(tuple(map(tuple, batches)))
    assert len(orders) > 1


def test_session_packing_is_exact_for_equal_sessions():
    session_ids = np.repeat(np.arange(7), 2)  # 7 sessions of 2 items, 3 per batch of 6
    sampler = SessionSampler(session_ids, 6, seed=2)
    batches = list(sampler)
    assert [len(batch) for batch in batches] == [6, 6, 2]
    assert len(sampler) == 3


def test_session_sampler_is_deterministic():
    first, second = SessionSampler(SESSIONS, 5, seed=4), SessionSampler(SESSIONS, 5, seed=4)
    assert epoch_batches(first, 3) == epoch_batches(second, 3)
    assert list(first) == list(first)


def test_session_larger_than_batch_raises():
    with pytest.raises(InputError, match="^session_ids: session 0 has 3 items"):
        SessionSampler(SESSIONS, 2)
    with pytest.raises(InputError, match="^batch_size:"):
        SessionSampler(SESSIONS, 0)


@pytest.mark.parametrize("drop_last, sizes", [(False, [3, 3, 3, 1]), (True, [3, 3, 3])])
def test_shuffle_batches(drop_last, sizes):
    sampler = ShuffleSampler(10, 3, seed=0, drop_last=drop_last)
    batches = epoch_batches(sampler, 0)
    assert [len(batch) for batch in batches] == sizes
    assert len(sampler) == len(sizes)
    items = np.concatenate(batches)
    assert len(set(items)) == len(items) and set(items) <= set(range(10))
    assert epoch_batches(sampler, 1) != batches
    assert epoch_batches(sampler, 0) == batches == epoch_batches(ShuffleSampler(10, 3, seed=0, drop_last=drop_last), 0)
    if not drop_last:
        assert sorted(items) == list(range(10))


def test_shuffle_sampler_rejects_invalid_settings():
    with pytest.raises(InputError, match="^n:"):
        ShuffleSampler(0, 2)
    with pytest.raises(InputError, match="^batch_size:"):
        ShuffleSampler(4, 0)
    with pytest.raises(InputError, match="^batch_size:"):
        ShuffleSampler(4, 5, drop_last=True)
