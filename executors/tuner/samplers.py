"""Batch samplers: iterables of index lists, for ``torch.utils.data.DataLoader(dataset, batch_sampler=...)``.

Every sampler's order is a deterministic function of ``(seed, epoch)``. Call ``set_epoch(epoch)`` before
each epoch to get a new order (as with ``DistributedSampler``); without it, every pass repeats the same
batches. ``seed=None`` draws a random seed once, at construction.
"""

import math
import warnings
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from executors.errors import InputError


class _EpochSampler(Sampler[list[int]]):
    """Holds the seed and the epoch; ``_rng()`` is the random generator of the current epoch."""

    def __init__(self, seed: int | None):
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        _check_int("seed", seed, minimum=0)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of epoch ``epoch`` (>= 0)."""
        _check_int("epoch", epoch, minimum=0)
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])


class ShuffleSampler(_EpochSampler):
    """Shuffled batches of ``range(n)``: a fresh permutation per epoch, cut into ``batch_size`` pieces.

    ``len = ceil(n / batch_size)``, or ``floor(n / batch_size)`` with ``drop_last=True`` (the short last batch
    is dropped).
    """

    def __init__(self, n: int, batch_size: int, seed: int | None = None, drop_last: bool = False):
        super().__init__(seed)
        _check_int("n", n, minimum=1)
        _check_int("batch_size", batch_size, minimum=1)
        if drop_last and batch_size > n:
            raise InputError(
                f"batch_size: {batch_size} is larger than the {n} items, so drop_last=True leaves no batch; "
                f"use batch_size <= {n} or drop_last=False"
            )
        self.n, self.batch_size, self.drop_last = int(n), int(batch_size), drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._rng().permutation(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size].tolist()


class ClassSampler(_EpochSampler):
    """Batches of ``P = batch_size // m`` distinct classes with exactly ``m = num_items_per_class`` distinct items each.

    ``labels: [N]`` (any hashable values). Classes with fewer than ``m`` items are never sampled (a
    ``UserWarning`` says how many): filling them up would repeat an item inside a batch, i.e. pair an
    item with itself as a positive.

    One epoch: each class ``c`` with ``n_c`` items gives ``s_c = ceil(n_c / m)`` slots; with ``T = sum s_c``
    there are ``B = ceil(T / P)`` batches (``floor(T / P)`` with ``drop_last=True``), which is ``len``.
    A class fills at most one slot per batch, so a class is given ``min(s_c, B)`` slots, then random slots
    are added (classes below ``B``) or removed until exactly ``B * P`` are left. Each slot takes the next
    ``m`` items of its class from a shuffled pass over the class, reshuffled when used up; an item repeats
    within an epoch only after all items of its class were used. Hence, with ``drop_last=False`` every item
    is seen at least once per epoch unless its class has more than ``B * m`` items; with ``drop_last=True``
    fewer than ``P`` slots (plus any such excess) are left out.
    Items of a class are consecutive within a batch.
    """

    def __init__(
        self,
        labels,
        batch_size: int,
        num_items_per_class: int,
        seed: int | None = None,
        drop_last: bool = False,
    ):
        super().__init__(seed)
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("num_items_per_class", num_items_per_class, minimum=1)
        if batch_size % num_items_per_class:
            raise InputError(
                f"batch_size: {batch_size} is not a multiple of num_items_per_class={num_items_per_class}; "
                f"use e.g. batch_size={max(1, batch_size // num_items_per_class) * num_items_per_class}"
            )
        self.batch_size, self.num_items_per_class, self.drop_last = int(batch_size), int(num_items_per_class), drop_last
        self.classes_per_batch = batch_size // num_items_per_class

        items_by_label = _group_indices("labels", labels)
        self._class_items = [items for items in items_by_label.values() if len(items) >= num_items_per_class]
        num_small = len(items_by_label) - len(self._class_items)
        if num_small:
            num_small_items = sum(len(items) for items in items_by_label.values() if len(items) < num_items_per_class)
            warnings.warn(
                f"ClassSampler: {num_small} classes ({num_small_items} items) have fewer than "
                f"num_items_per_class={num_items_per_class} items and are never sampled",
                stacklevel=2,
            )
        if len(self._class_items) < self.classes_per_batch:
            raise InputError(
                f"labels: a batch needs {self.classes_per_batch} classes with >= {num_items_per_class} items "
                f"(batch_size // num_items_per_class), but only {len(self._class_items)} classes have that many; "
                "lower batch_size or num_items_per_class, or add data"
            )
        self._slots_per_class = np.array(
            [math.ceil(len(items) / num_items_per_class) for items in self._class_items], dtype=np.int64
        )
        total_slots = int(self._slots_per_class.sum())
        self._num_batches = (total_slots // self.classes_per_batch if drop_last
                             else math.ceil(total_slots / self.classes_per_batch))

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        num_batches, num_classes = self._num_batches, len(self._class_items)
        slots = self._balanced_slots(rng)
        # Lay each class's slots out as one contiguous run and fill a (P, B) grid row by row; grid column b is
        # batch b. A run is at most B long, so a class's slots fall in distinct batches.
        class_order = rng.permutation(num_classes)
        runs = np.repeat(class_order, slots[class_order])
        classes_in_batch = runs.reshape(self.classes_per_batch, num_batches).T
        chunks = {
            c: iter(_distinct_chunks(self._class_items[c], int(slots[c]), self.num_items_per_class, rng))
            for c in class_order
            if slots[c]
        }
        for batch in rng.permutation(num_batches):
            classes = rng.permutation(classes_in_batch[batch])
            yield np.concatenate([next(chunks[c]) for c in classes]).tolist()

    def _balanced_slots(self, rng: np.random.Generator) -> np.ndarray:
        """Slots per class: ``min(s_c, B)``, then randomly adjusted (staying within ``[0, B]``) to sum to ``B * P``."""
        slots = np.minimum(self._slots_per_class, self._num_batches)
        excess = int(slots.sum()) - self._num_batches * self.classes_per_batch
        if excess > 0:
            owners = np.repeat(np.arange(len(slots)), slots)
            slots -= np.bincount(rng.choice(owners, excess, replace=False), minlength=len(slots))
        elif excess < 0:
            owners = np.repeat(np.arange(len(slots)), self._num_batches - slots)
            slots += np.bincount(rng.choice(owners, -excess, replace=False), minlength=len(slots))
        return slots


class SessionSampler(_EpochSampler):
    """Batches of whole sessions: items sharing a session id are always in the same batch.

    ``session_ids: [N]`` (any hashable values; a session's items need not be adjacent). Each epoch the
    sessions are shuffled and packed in that order: a session joins the current batch if it fits within
    ``batch_size`` items, otherwise it starts the next batch. Batches therefore hold at most ``batch_size``
    items, and their number can differ slightly between epochs; ``len`` is that of the current epoch.
    Within a session, items keep their index order.
    """

    def __init__(self, session_ids, batch_size: int, seed: int | None = None):
        super().__init__(seed)
        _check_int("batch_size", batch_size, minimum=1)
        self.batch_size = int(batch_size)
        items_by_session = _group_indices("session_ids", session_ids)
        for session, items in items_by_session.items():
            if len(items) > batch_size:
                raise InputError(
                    f"session_ids: session {session!r} has {len(items)} items, more than batch_size={batch_size}, "
                    f"and a session is never split; use batch_size >= {len(items)} or split the session"
                )
        self._sessions = list(items_by_session.values())
        self._cached_epoch_batches: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        if self._cached_epoch_batches is None or self._cached_epoch_batches[0] != self.epoch:
            batches, batch = [], []
            for session in self._rng().permutation(len(self._sessions)):
                items = self._sessions[session].tolist()
                if len(batch) + len(items) > self.batch_size:
                    batches.append(batch)
                    batch = []
                batch.extend(items)
            batches.append(batch)
            self._cached_epoch_batches = (self.epoch, batches)
        return [list(batch) for batch in self._cached_epoch_batches[1]]


def _distinct_chunks(items: np.ndarray, num_chunks: int, chunk_size: int, rng: np.random.Generator) -> np.ndarray:
    """``[num_chunks, chunk_size]`` items, each row distinct, read off consecutive shuffled passes over ``items``.

    When a pass runs out mid-row, the next pass starts with the row's items so far (then the others in random
    order), so the row stays distinct and each pass still uses every item once. Needs ``len(items) >= chunk_size``.
    """
    chunks = np.empty((num_chunks, chunk_size), dtype=np.int64)
    current_pass, position = rng.permutation(items), 0
    for row in range(num_chunks):
        chunk = current_pass[position : position + chunk_size]
        if len(chunk) < chunk_size:
            fresh = rng.permutation(items)
            current_pass = np.concatenate([chunk, fresh[~np.isin(fresh, chunk)]])
            position = 0
            chunk = current_pass[:chunk_size]
        chunks[row] = chunk
        position += chunk_size
    return chunks


def _group_indices(field: str, keys) -> dict:
    """``{key: int64 array of the positions holding key}``, keys in order of first appearance."""
    keys = np.asarray(keys)
    if keys.ndim != 1 or len(keys) == 0:
        raise InputError(f"{field}: expected a non-empty 1-D sequence, one value per item, got shape {keys.shape}")
    positions: dict = {}
    for index, key in enumerate(keys.tolist()):
        positions.setdefault(key, []).append(index)
    return {key: np.array(indices, dtype=np.int64) for key, indices in positions.items()}


def _check_int(field: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{field}: expected an integer >= {minimum}, got {value!r}")
