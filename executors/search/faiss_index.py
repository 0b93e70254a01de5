"""One FAISS index of one model version, of any ``index_factory`` type, with deletes and filters.

``FaissIndex(dim, factory='Flat', metric='cosine')`` builds ``faiss.index_factory(dim, factory,
metric)``: ``Flat``, ``HNSW32``, ``IVF1024,Flat``, ``IVF1024,PQ32``, ...

* **Slots.** Vectors are appended; the i-th added vector has FAISS id ``i`` (its *slot*).
  ``row_of_slot[slot]`` is the document-store row it belongs to and ``slot_of_row[row]`` the
  live slot of a row (-1: none). Replacing a row appends a new slot and tombstones the old one;
  deleting tombstones it. Tombstoned slots are excluded from every search by an ``IDSelector``
  (so this works for HNSW too, which cannot ``remove_ids``); :meth:`compacted` rebuilds without
  them once they exceed ``compact_fraction`` of the slots (the caller does it in the background).
* **Training.** Types that need training (IVF, PQ, SQ ...) answer by exact search from an
  ``IndexFlat`` until ``train_threshold`` vectors have arrived (default
  ``max(39 * nlist, 9984 if PQ)``: FAISS's 39 points per centroid, 39 x 256 per PQ codebook),
  then are trained once on every vector so far and switch over.
* **Scores** are similarities, higher is closer: ``cosine`` = cos(q, x) (vectors L2-normalised),
  ``inner_product`` = q . x, ``l2`` = -||q - x||^2.
* **Filters.** ``search(..., allowed_rows=rows)`` restricts the search to those rows inside FAISS
  (``IDSelectorBatch``); when an approximate index returns fewer than ``min(limit, matching)``
  results (a selective filter missed by HNSW's graph walk or IVF's probed lists), the matching
  vectors are scored exactly (up to ``EXACT_FALLBACK_MAX`` of them), so ``limit`` results come
  back whenever that many match.
* **Per-query settings:** ``nprobe`` (IVF) and ``efSearch`` (HNSW) through FAISS
  ``SearchParameters``; a setting the index type does not have is an error. Defaults (better
  recall than FAISS's 1 and 16): ``nprobe = max(1, nlist // 32)``, ``efSearch = 64``.
"""
import re
from typing import Dict, Optional, Tuple

import faiss
import numpy as np

from executors.errors import InputError

METRICS = {'cosine': faiss.METRIC_INNER_PRODUCT, 'inner_product': faiss.METRIC_INNER_PRODUCT,
           'l2': faiss.METRIC_L2}
SEARCH_PARAMETERS = ('nprobe', 'efSearch')
EXACT_FALLBACK_MAX = 100_000  # most candidates scored exactly when an approximate search comes back short


def _grown(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    if size <= len(array):
        return array
    bigger = np.full(max(size, 2 * len(array), 1024), fill, dtype=array.dtype)
    bigger[:len(array)] = array
    return bigger


def check_index_settings(factory: str, metric: str, dim: int = 8) -> None:
    """InputError naming the field when ``factory`` or ``metric`` is not usable."""
    if metric not in METRICS:
        raise InputError(f'metric: expected one of {sorted(METRICS)}, got {metric!r}')
    if not isinstance(factory, str) or not factory.strip():
        raise InputError(f'index_factory: expected a FAISS index_factory string such as "Flat", "HNSW32" or '
                         f'"IVF1024,Flat", got {factory!r}')
    if re.search(r'IDMap', factory):
        raise InputError('index_factory: leave out IDMap; ids are managed by the index')
    try:
        faiss.index_factory(dim * 8, factory, METRICS[metric])  # dim*8: PQm needs m | dim
    except RuntimeError as e:
        raise InputError(f'index_factory: FAISS cannot build {factory!r}: {str(e).strip().splitlines()[-1]}') from e


class FaissIndex:
    """Vectors of one model version in a FAISS ``index_factory`` index (see module docstring)."""

    def __init__(self, dim: int, factory: str = 'Flat', metric: str = 'cosine',
                 train_threshold: Optional[int] = None, compact_fraction: float = 0.2):
        if metric not in METRICS:
            raise InputError(f'metric: expected one of {sorted(METRICS)}, got {metric!r}')
        self.dim, self.factory, self.metric = int(dim), factory, metric
        self.compact_fraction = compact_fraction
        try:
            self.index = faiss.index_factory(self.dim, factory, METRICS[metric])
        except RuntimeError as e:
            raise InputError(f'index_factory: FAISS cannot build {factory!r} for dimension {dim}: '
                             f'{str(e).strip().splitlines()[-1]}') from e
        self.kind = self._kind(self.index)
        if self.kind == 'ivf':
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = max(1, ivf.nlist // 32)
        elif self.kind == 'hnsw':
            faiss.downcast_index(self.index).hnsw.efSearch = 64
        self.train_threshold = None
        self.exact: Optional[faiss.Index] = None  # answers until the real index is trained
        if not self.index.is_trained:
            self.train_threshold = int(train_threshold or self._default_train_threshold())
            self.exact = faiss.IndexFlat(self.dim, METRICS[metric])
        self.row_of_slot = np.zeros(0, dtype=np.int64)
        self.slot_of_row = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.num_slots = 0
        self.num_live = 0
        self._bitmap: Optional[np.ndarray] = None  # packed live bits, rebuilt after a change

    @staticmethod
    def _kind(index: faiss.Index) -> str:
        try:
            faiss.extract_index_ivf(index)
            return 'ivf'
        except (RuntimeError, TypeError):
            pass
        hnsw = faiss.downcast_index(index)
        return 'hnsw' if hasattr(hnsw, 'hnsw') else 'flat'

    def _default_train_threshold(self) -> int:
        threshold = 1
        if self.kind == 'ivf':
            threshold = 39 * faiss.extract_index_ivf(self.index).nlist
        if re.search(r'PQ\d', self.factory):
            threshold = max(threshold, 39 * 256)
        return max(threshold, 39)

    @property
    def trained(self) -> bool:
        return self.exact is None

    @property
    def tombstones(self) -> int:
        return self.num_slots - self.num_live

    def needs_compaction(self) -> bool:
        return self.tombstones > max(1000, self.compact_fraction * self.num_slots) if self.num_slots else False

    # --- writes -------------------------------------------------------------------------------------------
    def _prepared(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(f'embedding: expected vectors of dimension {self.dim}, got shape {vectors.shape}')
        if not np.isfinite(vectors).all():
            raise InputError('embedding: vectors must be finite (no NaN or inf)')
        if self.metric == 'cosine':
            vectors = vectors.copy()
            faiss.normalize_L2(vectors)
        return vectors

    def upsert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors [N, dim]`` for store ``rows [N]``; an earlier vector of a row is tombstoned."""
        rows = np.asarray(rows, dtype=np.int64)
        vectors = self._prepared(vectors)
        if len(rows) != len(vectors):
            raise InputError(f'embedding: {len(vectors)} embeddings for {len(rows)} docs')
        if len(rows) == 0:
            return
        if len(np.unique(rows)) != len(rows):  # the last vector of a repeated row wins
            _, last = np.unique(rows[::-1], return_index=True)
            keep = np.sort(len(rows) - 1 - last)
            rows, vectors = rows[keep], vectors[keep]
        self.remove(rows)
        start, end = self.num_slots, self.num_slots + len(rows)
        self.row_of_slot = _grown(self.row_of_slot, end, -1)
        self.live = _grown(self.live, end, False)
        self.slot_of_row = _grown(self.slot_of_row, int(rows.max()) + 1, -1)
        self.row_of_slot[start:end] = rows
        self.live[start:end] = True
        self.slot_of_row[rows] = np.arange(start, end)
        self.num_slots, self.num_live = end, self.num_live + len(rows)
        self._bitmap = None
        if self.exact is not None:
            self.exact.add(vectors)
            if self.exact.ntotal >= self.train_threshold:
                self._train()
        else:
            self.index.add(vectors)

    def _train(self) -> None:
        vectors = self.exact.reconstruct_n(0, self.exact.ntotal)
        self.index.train(vectors)
        self.index.add(vectors)
        self.exact = None
        if self.kind == 'ivf':
            faiss.extract_index_ivf(self.index).make_direct_map()

    def remove(self, rows: np.ndarray) -> int:
        """Tombstone the live vectors of ``rows``; returns how many there were."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(self.slot_of_row))]
        slots = self.slot_of_row[rows]
        slots = np.unique(slots[slots >= 0])
        if len(slots):
            self.live[slots] = False
            self.slot_of_row[self.row_of_slot[slots]] = -1
            self.num_live -= len(slots)
            self._bitmap = None
        return len(slots)

    def live_rows(self) -> np.ndarray:
        return self.row_of_slot[:self.num_slots][self.live[:self.num_slots]]

    def has_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= 0) & (rows < len(self.slot_of_row))
        out = np.zeros(len(rows), dtype=bool)
        out[inside] = self.slot_of_row[rows[inside]] >= 0
        return out

    @property
    def size(self) -> int:
        return self.num_live

    def compacted(self, rows: np.ndarray, vectors: np.ndarray) -> 'FaissIndex':
        """A fresh index of the same settings holding ``vectors`` for ``rows`` (no tombstones)."""
        fresh = FaissIndex(self.dim, self.factory, self.metric, self.train_threshold, self.compact_fraction)
        fresh.upsert(rows, vectors)
        return fresh

    # --- reads --------------------------------------------------------------------------------------------
    def _search_parameters(self, options: Dict, selector) -> faiss.SearchParameters:
        options = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = set(options) - set(SEARCH_PARAMETERS)
        if unknown:
            raise InputError(f'parameters.{sorted(unknown)[0]}: unknown search setting; known: nprobe, efSearch')
        for name, value in options.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f'parameters.{name}: expected an integer >= 1, got {value!r}')
        if 'nprobe' in options and self.kind != 'ivf':
            raise InputError(f'parameters.nprobe: applies to IVF indexes; this index is {self.factory!r}')
        if 'efSearch' in options and self.kind != 'hnsw':
            raise InputError(f'parameters.efSearch: applies to HNSW indexes; this index is {self.factory!r}')
        if self.exact is not None or self.kind == 'flat':
            return faiss.SearchParameters(sel=selector)
        if self.kind == 'ivf':
            nprobe = int(options.get('nprobe', faiss.extract_index_ivf(self.index).nprobe))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        ef = int(options.get('efSearch', faiss.downcast_index(self.index).hnsw.efSearch))
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)

    def search(self, queries: np.ndarray, limit: int, allowed_rows: Optional[np.ndarray] = None,
               search_params: Optional[Dict] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(rows [Q, limit], scores [Q, limit])``, best first; row -1 pads when fewer match."""
        queries = self._prepared(queries)
        keep_alive = []
        if allowed_rows is not None:
            allowed = np.asarray(allowed_rows, dtype=np.int64).reshape(-1)
            allowed = allowed[(allowed >= 0) & (allowed < len(self.slot_of_row))]
            slots = self.slot_of_row[allowed]
            slots = np.ascontiguousarray(np.unique(slots[slots >= 0]), dtype=np.int64)
            matching = len(slots)
            selector = faiss.IDSelectorBatch(slots) if matching else None
            if matching > self.num_slots // 32:  # a broad filter: a bitmap beats a hash set
                bits = np.zeros(self.num_slots, dtype=bool)
                bits[slots] = True
                keep_alive.append(np.packbits(bits, bitorder='little'))
                selector = faiss.IDSelectorBitmap(self.num_slots, faiss.swig_ptr(keep_alive[-1]))
        else:
            slots, matching = None, self.num_live
            selector = None
            if self.tombstones:
                if self._bitmap is None:
                    self._bitmap = np.packbits(self.live[:self.num_slots], bitorder='little')
                keep_alive.append(self._bitmap)
                selector = faiss.IDSelectorBitmap(self.num_slots, faiss.swig_ptr(self._bitmap))
        params = self._search_parameters(search_params, selector)
        want = min(int(limit), matching)
        out_rows = np.full((len(queries), int(limit)), -1, dtype=np.int64)
        out_scores = np.full((len(queries), int(limit)), -np.inf, dtype=np.float32)
        if want == 0:
            return out_rows, out_scores
        index = self.exact if self.exact is not None else self.index
        distances, found = index.search(queries, want, params=params)
        short = (found >= 0).sum(axis=1) < want
        if short.any() and matching <= EXACT_FALLBACK_MAX:  # an approximate index missed matching
            # vectors (a selective filter, many tombstones): score the candidates exactly
            if slots is None:
                slots = np.flatnonzero(self.live[:self.num_slots]).astype(np.int64)
            exact = faiss.IndexFlat(self.dim, METRICS[self.metric])
            exact.add(index.reconstruct_batch(slots))
            d2, f2 = exact.search(queries[short], want)
            distances[short], found[short] = d2, np.where(f2 >= 0, slots[np.maximum(f2, 0)], -1)
        valid = found >= 0
        out_rows[:, :want] = np.where(valid, self.row_of_slot[np.maximum(found, 0)], -1)
        scores = -distances if self.metric == 'l2' else distances
        out_scores[:, :want] = np.where(valid, scores, -np.inf)
        del keep_alive
        return out_rows, out_scores

    # --- persistence --------------------------------------------------------------------------------------
    def serialized(self) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """``(FAISS index as uint8 [bytes], slot arrays)`` for a snapshot (``faiss.serialize_index``,
        one copy of the index; no pickle)."""
        index = self.exact if self.exact is not None else self.index
        return (faiss.serialize_index(index),
                {'row_of_slot': self.row_of_slot[:self.num_slots], 'live': self.live[:self.num_slots]})

    @classmethod
    def deserialized(cls, blob: np.ndarray, arrays: Dict[str, np.ndarray], factory: str, metric: str,
                   train_threshold: Optional[int] = None, compact_fraction: float = 0.2) -> 'FaissIndex':
        loaded = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        self = cls(loaded.d, factory, metric, train_threshold, compact_fraction)
        if self.exact is not None and loaded.is_trained and not isinstance(loaded, faiss.IndexFlat):
            self.exact = None
        if self.exact is not None:
            self.exact = loaded
        else:
            self.index = loaded
            if self.kind == 'ivf':
                faiss.extract_index_ivf(self.index).make_direct_map()
        rows, live = np.asarray(arrays['row_of_slot'], np.int64), np.asarray(arrays['live'], bool)
        if len(rows) != loaded.ntotal or len(live) != len(rows):
            raise ValueError(f'snapshot holds {loaded.ntotal} vectors but {len(rows)} slots')
        self.num_slots, self.num_live = len(rows), int(live.sum())
        self.row_of_slot, self.live = rows.copy(), live.copy()
        self.slot_of_row = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=np.int64)
        self.slot_of_row[rows[live]] = np.flatnonzero(live)
        return self
