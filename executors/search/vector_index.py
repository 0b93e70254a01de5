"""Search over stored documents with one FAISS generation per model version.

``SearchIndex(workspace, index_factory='Flat', metric='cosine')`` keeps

* ``docs.sqlite`` (:class:`DocumentStore`, WAL): the source of truth. Every indexed document
  (id, label, text, uri, tags, decoded tensor) and, in the same transaction, its
  embedding per model version with an increasing sequence number. A write is acknowledged
  once that transaction has committed, so acknowledged documents survive a SIGKILL;
* one :class:`FaissIndex` generation per model version in memory, of the configured
  ``index_factory`` type and metric (see :mod:`executors.search.faiss_index`);
* ``generations/<version>.npz``: snapshots of the generations (FAISS bytes from
  ``faiss.serialize_index`` plus the slot arrays and the sequence number they include), written
  by a background thread every ``snapshot_interval`` seconds when something changed, and by
  :meth:`close`. No request rewrites an index file: on start each generation is its last
  snapshot plus the embeddings stored after it (no re-embedding), minus rows deleted since;
* ``state.json``: the serving (active) version and the swap target being built (pending), so
  a restarted Indexer serves what it served before; a pending generation is restored too
  (``/model/prepare`` of the same version resumes its swap).

After :meth:`SearchIndex.activate` the old generation is *retiring*: in memory only, still answering
queries embedded by its version (deletes and replacements still remove rows from it) until
:meth:`SearchIndex.drop` (see :mod:`executors.search.retirement` for when). A query of a dropped
version gets a :class:`RetryableError` (resend it).

A query is answered only by the generation of the model version that embedded it; a
version with no generation is an error, so neighbours never come from another model.
Deleted and replaced vectors are tombstoned in FAISS and a generation with too many
tombstones is rebuilt from the store in the background (:meth:`FaissIndex.needs_compaction`).
Nothing is unpickled (``np.load(allow_pickle=False)``, ``faiss.deserialize_index``).
"""
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from executors.data.document_store import DocumentStore, StoredDoc
from executors.errors import InputError, RetryableError
from executors.search.faiss_index import FaissIndex, check_index_settings

log = logging.getLogger(__name__)


@dataclass
class Hits:
    """Search results for ``Q`` queries, in compact form: per query the matches' doc ids and
    scores (best first, ``n_q <= limit`` of them) and the requested stored fields."""

    ids: List[List[str]]
    scores: List[np.ndarray]
    fields: Dict[str, List[List[Any]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class SearchIndex:
    """Stored documents plus one :class:`FaissIndex` generation per model version.

    ``active_version`` is the version new documents are indexed with and whose generation
    answers queries; :meth:`prepare` / :meth:`reindex` / :meth:`activate` build the next
    generation while the active one keeps serving.
    """

    def __init__(self, workspace, index_factory: str = 'Flat', metric: str = 'cosine',
                 train_threshold: Optional[int] = None, snapshot_interval: float = 60.0,
                 compact_fraction: float = 0.2):
        check_index_settings(index_factory, metric)
        if train_threshold is not None and (isinstance(train_threshold, bool) or int(train_threshold) < 1):
            raise InputError(f'train_threshold: expected an integer >= 1, got {train_threshold!r}')
        if not 0 < float(compact_fraction) <= 1:
            raise InputError(f'compact_fraction: expected a number in (0, 1], got {compact_fraction!r}')
        if float(snapshot_interval) <= 0:
            raise InputError(f'snapshot_interval: expected seconds > 0, got {snapshot_interval!r}')
        self.settings = dict(factory=index_factory, metric=metric, train_threshold=train_threshold,
                             compact_fraction=float(compact_fraction))
        self.workspace = Path(workspace)
        self._snapshots = self.workspace / 'generations'
        self._snapshots.mkdir(parents=True, exist_ok=True)
        self.store = DocumentStore(self.workspace / 'docs.sqlite')
        self._state_path = self.workspace / 'state.json'
        self._lock = threading.RLock()
        self._snapshot_lock = threading.Lock()
        self.generations: Dict[int, FaissIndex] = {}
        self._dirty: set = set()
        self._compacting: set = set()
        self.active_version: Optional[int] = None
        self.pending_version: Optional[int] = None  # the swap target being built
        self.retiring: Dict[int, FaissIndex] = {}  # old generations still answering their in-flight queries
        self.dropped: Dict[int, int] = {}  # dropped version -> the version serving when it was dropped
        if self._state_path.is_file():
            state = json.loads(self._state_path.read_text())
            self.active_version, self.pending_version = state.get('active_version'), state.get('pending_version')
        serving = {v for v in (self.active_version, self.pending_version) if v is not None}
        for version in self.store.embedding_versions():
            if version not in serving:  # a generation of an earlier swap that outlived a crash
                self.store.drop_embeddings(version)
                self._snapshot_path(version).unlink(missing_ok=True)
        for version in serving:
            self._restore(version)
        self._stop = threading.Event()
        self._snapshotter = threading.Thread(target=self._snapshot_loop, args=(float(snapshot_interval),),
                                             name='faiss-snapshots', daemon=True)
        self._snapshotter.start()

    # --- generations, snapshots and recovery ------------------------------------------------------------
    def _new_generation(self, dim: int) -> FaissIndex:
        return FaissIndex(dim, **self.settings)

    def _snapshot_path(self, version: int) -> Path:
        return self._snapshots / f'{int(version)}.npz'

    def _restore(self, version: int) -> None:
        """Generation ``version`` = its last snapshot + embeddings stored after it - rows deleted since."""
        generation, seq = None, 0
        path = self._snapshot_path(version)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    if str(data['factory']) == self.settings['factory'] and str(data['metric']) == self.settings['metric']:
                        generation = FaissIndex.deserialized(data['index'], data, **self.settings)
                        seq = int(data['seq'])
            except (OSError, ValueError, KeyError, RuntimeError) as e:  # a torn or stale snapshot: rebuild
                log.warning('snapshot %s unusable (%s); rebuilding generation %s from the store', path, e, version)
                generation, seq = None, 0
        generation = self._catch_up(generation, version, seq)
        if generation is not None:
            self.generations[int(version)] = generation

    def _catch_up(self, generation: Optional[FaissIndex], version: int, after_seq: int,
                  live_rows: Optional[np.ndarray] = None) -> Optional[FaissIndex]:
        """Apply embeddings of ``version`` stored after ``after_seq``, then drop rows that are not
        in ``live_rows`` (default: the rows the store holds an embedding of ``version`` for)."""
        generation, _ = self._replay(generation, version, after_seq)
        if generation is not None:
            live = self.store.embedding_rows(version) if live_rows is None else live_rows
            generation.remove(np.setdiff1d(generation.live_rows(), live))
        return generation

    def _replay(self, generation: Optional[FaissIndex], version: int,
                after_seq: int) -> Tuple[Optional[FaissIndex], int]:
        """``(generation, last seq)``: the store's embeddings of ``version`` after ``after_seq`` upserted
        into ``generation`` (a new one when None and there are any)."""
        seq = after_seq
        while True:
            rows, vectors, next_seq = self.store.embeddings_after(version, seq)
            if not len(rows):
                return generation, seq
            if generation is None:
                generation = self._new_generation(vectors.shape[1])
            generation.upsert(rows, vectors)
            seq = next_seq

    def snapshot(self, versions: Optional[Sequence[int]] = None) -> List[int]:
        """Write snapshots of the changed generations (all changed ones by default); returns them."""
        written = []
        with self._snapshot_lock:
            with self._lock:
                todo = [v for v in (self._dirty if versions is None else versions) if v in self.generations]
            for version in todo:
                with self._lock:  # a consistent copy; the file is written outside the lock
                    if version not in self.generations:
                        continue
                    blob, arrays = self.generations[version].serialized()
                    seq = self.store.last_seq()
                    self._dirty.discard(version)
                path = self._snapshot_path(version)
                tmp = path.with_name(path.stem + '.tmp.npz')
                np.savez(tmp, index=blob, seq=np.int64(seq),
                         factory=np.str_(self.settings['factory']), metric=np.str_(self.settings['metric']), **arrays)
                with self._lock:
                    if version in self.generations:
                        os.replace(tmp, path)
                        written.append(version)
                    else:
                        tmp.unlink(missing_ok=True)
        return written

    def _snapshot_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.snapshot()
            except Exception:  # noqa: BLE001 - the store stays the source of truth; retry next time
                log.exception('background FAISS snapshot failed')

    def close(self) -> None:
        """Stop the snapshot thread and write the final snapshots."""
        self._stop.set()
        self._snapshotter.join(timeout=5)
        self.snapshot()

    def _compact(self, version: int) -> None:
        """Rebuild generation ``version`` without tombstones from the store, then swap it in."""
        try:
            with self._lock:
                current = self.generations.get(version)
                seq = self.store.last_seq()
            if current is None:
                return
            fresh, rows_seq = self._replay(None, version, 0)
            with self._lock:
                if self.generations.get(version) is not current or fresh is None:
                    return
                fresh = self._catch_up(fresh, version, max(seq, rows_seq), live_rows=current.live_rows())
                self.generations[version] = fresh
                self._dirty.add(version)
        finally:
            with self._lock:
                self._compacting.discard(version)

    def _after_write(self, versions) -> None:
        for version in versions:
            self._dirty.add(version)
            generation = self.generations.get(version)
            if generation is not None and generation.needs_compaction() and version not in self._compacting:
                self._compacting.add(version)
                threading.Thread(target=self._compact, args=(version,), name=f'compact-{version}', daemon=True).start()

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix('.tmp')
        tmp.write_text(json.dumps({'active_version': self.active_version, 'pending_version': self.pending_version}))
        os.replace(tmp, self._state_path)

    # --- writes -------------------------------------------------------------------------------------------
    def set_initial_version(self, version: int) -> None:
        """Fix the serving version of an index that has none yet (the Encoder's first version)."""
        with self._lock:
            if self.active_version is None:
                self.active_version = int(version)
                self._save_state()

    def add(self, docs: Sequence[StoredDoc], embeddings: Dict[int, np.ndarray]) -> np.ndarray:
        """Store docs (upsert by id) and index their embeddings, ``{model version: [N, D]}``;
        returns their rows.

        The first add fixes the active version. Every add must bring embeddings of the active
        version; while a swap is prepared the pending version's are added too when given
        (docs without them are listed by :meth:`docs_missing_from` and re-embedded before the
        swap can activate). Once the Encoder serves the pending version, embeddings of that
        version alone are accepted as well (the active generation lacks those docs until the
        swap activates a moment later). A replaced doc's old vectors leave every generation.
        """
        with self._lock:
            if self.active_version is None and self.pending_version is None:
                self.active_version = int(min(embeddings))
                self._save_state()
            if self.active_version not in embeddings and set(embeddings) != {self.pending_version}:
                old = sorted(set(embeddings) & (set(self.retiring) | set(self.dropped)))
                if old:
                    raise RetryableError(
                        f'model_version: these docs were embedded by model version {old[0]}, which the index '
                        f'stopped serving (it serves version {self.active_version} since a swap); resend the '
                        'request: it will be embedded by the new version')
                raise InputError(
                    f'model_version: docs were embedded by model version(s) {sorted(embeddings)} but the index '
                    f'serves version {self.active_version}; the Encoder and the Indexer disagree: finish the model '
                    'swap (or restart the search flow) and resend'
                )
            targets = {v for v in (self.active_version, self.pending_version) if v is not None} & set(embeddings)
            keep = {}
            for version in targets:
                vectors = np.asarray(embeddings[version], dtype=np.float32)
                if vectors.ndim != 2 or len(vectors) != len(docs):
                    raise InputError(f'embedding: {len(vectors)} embeddings for {len(docs)} docs')
                generation = self.generations.get(version)
                if generation is not None and vectors.shape[1] != generation.dim:
                    raise InputError(f'embedding: dimension {vectors.shape[1]} does not match the index '
                                     f'dimension {generation.dim} of model version {version}')
                if not np.isfinite(vectors).all():
                    raise InputError('embedding: vectors must be finite (no NaN or inf)')
                keep[version] = vectors
            rows = self.store.upsert(docs, keep)
            for version, vectors in keep.items():
                generation = self.generations.get(version)
                if generation is None:
                    generation = self.generations[version] = self._new_generation(vectors.shape[1])
                generation.upsert(rows, vectors)
            for version, generation in list(self.generations.items()) + list(self.retiring.items()):
                if version not in keep:  # a replaced doc's old vector must not answer for its new content
                    generation.remove(rows)
            self._after_write(list(self.generations))
            return rows

    def delete(self, ids: Sequence[str]) -> int:
        """Delete docs by id from the store and every generation at once; returns how many existed."""
        with self._lock:
            rows = self.store.delete(list(ids))
            for generation in list(self.generations.values()) + list(self.retiring.values()):
                generation.remove(rows)
            self._after_write(list(self.generations))
            return len(rows)

    # --- reads --------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, version: int, limit: int, allowed_rows: Optional[np.ndarray] = None,
               search_params: Optional[Dict] = None, fields: Sequence[str] = ('label',)) -> Hits:
        """The ``limit`` best matches of each query ``[Q, D]`` in the generation of ``version``.

        ``allowed_rows``: store rows to restrict the search to (a filter), applied inside FAISS;
        ``search_params``: ``nprobe`` / ``efSearch``; ``fields``: stored fields to return beside
        ids and scores (read from SQLite for the matches only; the tensor never is).
        """
        empty = Hits([[] for _ in range(len(queries))], [np.zeros(0, np.float32) for _ in range(len(queries))],
                     {name: [[] for _ in range(len(queries))] for name in fields})
        with self._lock:  # the active generation's path reads nothing from SQLite before FAISS
            generation = self.generations.get(int(version), self.retiring.get(int(version)))
            if allowed_rows is not None and len(allowed_rows) == 0:
                return empty
            if generation is None and (self.active_version is None or int(version) in (self.active_version,
                                                                                        self.pending_version)) \
                    and self.store.count() == 0:  # nothing indexed yet (a new index serves no version yet)
                return empty
            if int(version) == self.pending_version and self.missing_count(version):
                raise InputError(
                    f'model_version: the index generation of model version {version} is still being built '
                    f'({generation.size if generation else 0} of {self.store.count()} docs); '
                    'retry once the swap has finished'
                )
            if generation is None and int(version) in self.dropped:
                raise RetryableError(
                    f'model_version: the query was embedded by model version {version}, whose index generation '
                    f'was dropped after the swap to version {self.dropped[int(version)]}; resend the query: it '
                    'will be embedded by the serving version')
            if generation is None:
                raise InputError(
                    f'model_version: no index generation for model version {version} '
                    f'(serving {sorted(self.generations) or "none"}); the query was embedded by another model '
                    'than the indexed documents: reload the Encoder or wait for the swap to finish'
                )
            rows, scores = generation.search(queries, limit, allowed_rows, search_params)  # FAISS is not
            # safe to search while another thread adds to it
        found = rows >= 0
        names = ('id',) + tuple(f for f in fields if f != 'id')
        stored = self.store.fields(np.unique(rows[found]), names)
        hits = Hits([], [], {name: [] for name in fields})
        for row, score in zip(rows, scores):
            present = [i for i, r in enumerate(row) if r >= 0 and int(r) in stored]  # deleted meanwhile: skipped
            hits.ids.append([stored[int(row[i])][0] for i in present])
            hits.scores.append(np.asarray(score[present], dtype=np.float32))
            for name in fields:
                at = names.index(name)
                hits.fields[name].append([stored[int(row[i])][at] for i in present])
        return hits

    # --- model swaps --------------------------------------------------------------------------------------
    def prepare(self, version: int) -> None:
        """Start an empty generation for ``version`` (a swap target); the active one keeps serving.
        Preparing the version already pending resumes its swap (the generation is kept)."""
        with self._lock:
            version = int(version)
            if version == self.active_version:
                raise InputError(f'version: {version} is already the active version')
            if version != self.pending_version:
                if self.retiring.pop(version, None) is not None:  # built again from scratch
                    self.dropped[version] = self.active_version
                for stale in {self.pending_version, version} - {None}:
                    self.generations.pop(stale, None)
                    self.store.drop_embeddings(stale)
                    self._snapshot_path(stale).unlink(missing_ok=True)
                self.pending_version = version
                self._save_state()

    def reindex(self, ids: Sequence[str], embeddings: np.ndarray, version: int) -> int:
        """Add re-embedded stored docs (by doc id) to the generation of ``version`` (the pending
        one, or the active one to repair docs it lacks); returns how many were stored (ids
        deleted meanwhile are skipped)."""
        with self._lock:
            row_of = self.store.rows_for_ids(list(ids))
            keep = [i for i, doc_id in enumerate(ids) if doc_id in row_of]
            rows = np.asarray([row_of[ids[i]] for i in keep], dtype=np.int64)
            return self.reindex_rows(rows, np.asarray(embeddings, dtype=np.float32)[keep], version)

    def reindex_rows(self, rows: np.ndarray, embeddings: np.ndarray, version: int) -> int:
        """:meth:`reindex` by store rows, which must be stored: a caller racing deletes checks that
        while holding ``self._lock`` (an RLock) and calls this under it."""
        with self._lock:
            if int(version) not in (self.pending_version, self.active_version):
                raise InputError(f'version: no swap to version {version} is prepared; call prepare first')
            generation = self.generations.get(int(version))
            if generation is None and len(rows):
                generation = self._new_generation(embeddings.shape[1])
            if len(rows):
                generation.upsert(rows, embeddings)  # validates before anything is stored
                self.store.put_embeddings(rows, version, embeddings)
                self.generations[int(version)] = generation
                self._after_write([int(version)])
            return len(rows)

    def missing_count(self, version: int) -> int:
        """How many stored docs the generation of ``version`` lacks (it holds stored rows only)."""
        with self._lock:
            generation = self.generations.get(int(version))
            return self.store.count() - (generation.size if generation is not None else 0)

    def missing_rows(self, version: int) -> np.ndarray:
        """Rows of stored docs that the generation of ``version`` does not hold yet."""
        with self._lock:
            generation = self.generations.get(int(version))
            held = generation.live_rows() if generation is not None else np.zeros(0, dtype=np.int64)
        return np.setdiff1d(self.store.all_rows(), held)

    def docs_missing_from(self, version: int, limit: int) -> List[StoredDoc]:
        """Up to ``limit`` stored docs that the generation of ``version`` lacks (what to re-embed)."""
        rows = self.missing_rows(version)[:limit]
        docs = self.store.get_rows(rows)
        return [docs[r] for r in rows if r in docs]

    def activate(self, version: int) -> List[int]:
        """Serve ``version`` from now on; every stored doc must be in it. The older generations
        retire (they answer queries of their version until :meth:`drop`); their stored embeddings
        and snapshots are deleted now. Returns the retiring versions."""
        with self._lock:
            version = int(version)
            if version != self.pending_version:
                raise InputError(f'version: no swap to version {version} is prepared; call prepare first')
            missing = self.missing_rows(version)
            if len(missing):  # also covers a generation never started while docs are stored
                raise InputError(
                    f'version: generation {version} lacks {len(missing)} of {self.store.count()} stored docs; '
                    'reindex them before activating'
                )
            self.active_version = version
            self.pending_version = None
            self._save_state()
            self.dropped.pop(version, None)
            for old in [v for v in self.generations if v != version]:
                self.retiring[old] = self.generations.pop(old)
                self._dirty.discard(old)
            for old in self.store.embedding_versions():
                if old != version:
                    self.store.drop_embeddings(old)
            for path in self._snapshots.glob('*.npz'):
                if path.stem != str(version):
                    path.unlink(missing_ok=True)
            self._dirty.add(version)
            return sorted(self.retiring)

    def drop(self, version: int) -> bool:
        """Drop the retiring generation of ``version`` (its queries now get a RetryableError);
        returns whether there was one."""
        with self._lock:
            if self.retiring.pop(int(version), None) is None:
                return False
            self.dropped[int(version)] = self.active_version
            return True

    def count(self) -> int:
        return self.store.count()
