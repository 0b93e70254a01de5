"""FAISS vector search with one index generation per model version.

``SearchIndex(workspace)`` keeps

* ``docs.sqlite``: every indexed document (id, label, text, uri, tags, decoded tensor),
  so it can be re-embedded when the model changes;
* ``generations/<version>.faiss``: one FAISS index per model version whose embeddings it
  holds (``IndexIDMap2`` over ``IndexFlatIP`` of L2-normalised vectors, i.e. cosine
  similarity; scores are cosine similarities in ``[-1, 1]``), keyed by the store's row ids;
* ``state.json``: the active version.

A query is answered only by the generation of the model version that embedded it; a
version with no generation is an error, so neighbours never come from another model.
Tensors are stored with ``np.save(allow_pickle=False)`` and FAISS indexes with
``faiss.write_index``: nothing is unpickled.
"""
import json
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from executors.data.document_store import DocumentStore, StoredDoc
from executors.errors import InputError


class VectorIndex:
    """One FAISS generation: cosine similarity over vectors of one model version."""

    def __init__(self, dim: int, index: Optional[faiss.Index] = None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @staticmethod
    def _normalised(vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
        faiss.normalize_L2(vectors)
        return vectors

    def upsert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors [N, dim]`` under ``rows [N]``, replacing earlier vectors of those rows."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(f'embedding: expected vectors of dimension {self.dim}, got shape {vectors.shape}')
        self.index.remove_ids(np.asarray(rows, dtype=np.int64))
        self.index.add_with_ids(self._normalised(vectors), np.asarray(rows, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(rows [Q, k], cosine similarities [Q, k])``, best first; row -1 pads when fewer exist."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f'embedding: expected query vectors of dimension {self.dim}, got shape {queries.shape}')
        scores, rows = self.index.search(self._normalised(queries), k)
        return rows, scores

    def rows(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    @property
    def size(self) -> int:
        return self.index.ntotal

    def save(self, path: Path) -> None:
        tmp = path.with_suffix('.tmp')
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> 'VectorIndex':
        index = faiss.read_index(str(path))
        return cls(index.d, index)


class SearchIndex:
    """Stored documents plus one :class:`VectorIndex` generation per model version.

    ``active_version`` is the version new documents are indexed with and whose generation
    answers queries; :meth:`prepare` / :meth:`reindex` / :meth:`activate` build the next
    generation while the active one keeps serving.
    """

    def __init__(self, workspace):
        self.workspace = Path(workspace)
        (self.workspace / 'generations').mkdir(parents=True, exist_ok=True)
        self.store = DocumentStore(self.workspace / 'docs.sqlite')
        self._state_path = self.workspace / 'state.json'
        self._lock = threading.RLock()
        self.generations: Dict[int, VectorIndex] = {}
        self.active_version: Optional[int] = None
        self.pending_version: Optional[int] = None  # the swap target being built
        if self._state_path.is_file():
            self.active_version = json.loads(self._state_path.read_text()).get('active_version')
        for path in (self.workspace / 'generations').glob('*.faiss'):
            self.generations[int(path.stem)] = VectorIndex.load(path)

    def _generation_path(self, version: int) -> Path:
        return self.workspace / 'generations' / f'{int(version)}.faiss'

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix('.tmp')
        tmp.write_text(json.dumps({'active_version': self.active_version}))
        os.replace(tmp, self._state_path)

    def add(self, docs: Sequence[StoredDoc], embeddings: Dict[int, np.ndarray]) -> None:
        """Store docs and index their embeddings, ``{model version: [N, D]}``.

        The first add fixes the active version. Every add must bring embeddings of the
        active version and, while a swap is prepared, of the pending version too (the
        Encoder embeds with both then), so that no generation ever misses a stored doc
        and one generation never mixes models. Once the Encoder serves the pending
        version, embeddings of that version alone are accepted as well.
        """
        with self._lock:
            if self.active_version is None and self.pending_version is None:
                self.active_version = int(min(embeddings))
                self._save_state()
            needed = {v for v in (self.active_version, self.pending_version) if v is not None}
            if not needed <= set(embeddings) and set(embeddings) != {self.pending_version}:
                raise InputError(
                    f'model_version: docs were embedded by model version(s) {sorted(embeddings)} but the index '
                    f'needs {sorted(needed)}; reload the Encoder (or finish the model swap) and resend'
                )
            for version, vectors in embeddings.items():
                if len(vectors) != len(docs):
                    raise InputError(f'embedding: {len(vectors)} embeddings for {len(docs)} docs')
                generation = self.generations.get(version)
                if generation is not None and vectors.shape[1] != generation.dim:
                    raise InputError(f'embedding: dimension {vectors.shape[1]} does not match the index '
                                     f'dimension {generation.dim} of model version {version}')
            rows = self.store.upsert(docs)
            for version in needed & set(embeddings):
                generation = self.generations.get(version)
                if generation is None:
                    generation = self.generations[version] = VectorIndex(embeddings[version].shape[1])
                generation.upsert(rows, embeddings[version])
                if version == self.active_version:
                    generation.save(self._generation_path(version))

    def search(self, queries: np.ndarray, version: int, limit: int) -> List[List[Tuple[StoredDoc, float]]]:
        """Per query, up to ``limit`` ``(doc, cosine similarity)`` pairs, best first."""
        with self._lock:
            if self.store.count() == 0 and int(version) in (self.active_version, self.pending_version):
                return [[] for _ in range(len(queries))]
            generation = self.generations.get(int(version))
            if int(version) == self.pending_version and self.missing_count(version):
                raise InputError(
                    f'model_version: the index generation of model version {version} is still being built '
                    f'({generation.size if generation else 0} of {self.store.count()} docs); '
                    'retry once the swap has finished'
                )
            if generation is None:
                raise InputError(
                    f'model_version: no index generation for model version {version} '
                    f'(serving {sorted(self.generations) or "none"}); the query was embedded by another model '
                    'than the indexed documents: reload the Encoder or wait for the swap to finish'
                )
            rows, scores = generation.search(queries, limit)
        docs = self.store.get_rows(np.unique(rows[rows >= 0]))
        return [[(docs[r], float(s)) for r, s in zip(row, score) if r >= 0 and r in docs]
                for row, score in zip(rows, scores)]

    def prepare(self, version: int) -> None:
        """Start an empty generation for ``version`` (a swap target); the active one keeps serving."""
        with self._lock:
            if int(version) == self.active_version:
                raise InputError(f'version: {version} is already the active version')
            self.generations.pop(int(version), None)
            self._generation_path(version).unlink(missing_ok=True)
            self.pending_version = int(version)

    def reindex(self, ids: Sequence[str], embeddings: np.ndarray, version: int) -> int:
        """Add re-embedded stored docs (by doc id) to the generation of ``version``; returns
        how many were stored (ids deleted meanwhile are skipped)."""
        with self._lock:
            if int(version) != self.pending_version:
                raise InputError(f'version: no swap to version {version} is prepared; call prepare first')
            row_of = self.store.rows_for_ids(list(ids))
            keep = [i for i, doc_id in enumerate(ids) if doc_id in row_of]
            rows = np.asarray([row_of[ids[i]] for i in keep], dtype=np.int64)
            embeddings = embeddings[keep]
            generation = self.generations.get(int(version))
            if generation is None:
                generation = self.generations[int(version)] = VectorIndex(embeddings.shape[1])
            generation.upsert(rows, embeddings)
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
            held = generation.rows() if generation is not None else np.zeros(0, dtype=np.int64)
        return np.setdiff1d(self.store.all_rows(), held)

    def docs_missing_from(self, version: int, limit: int) -> List[StoredDoc]:
        """Up to ``limit`` stored docs that the generation of ``version`` lacks (what to re-embed)."""
        rows = self.missing_rows(version)[:limit]
        docs = self.store.get_rows(rows)
        return [docs[r] for r in rows if r in docs]

    def activate(self, version: int) -> None:
        """Serve ``version`` from now on and drop older generations; every stored doc must be in it."""
        with self._lock:
            version = int(version)
            missing = self.missing_rows(version)
            if version != self.pending_version:
                raise InputError(f'version: no swap to version {version} is prepared; call prepare first')
            if len(missing):  # also covers a generation never started while docs are stored
                raise InputError(
                    f'version: generation {version} lacks {len(missing)} of {self.store.count()} stored docs; '
                    'reindex them before activating'
                )
            if version in self.generations:
                self.generations[version].save(self._generation_path(version))
            for old in [v for v in self.generations if v != version]:
                del self.generations[old]
                self._generation_path(old).unlink(missing_ok=True)
            self.active_version = version
            self.pending_version = None
            self._save_state()

    def count(self) -> int:
        return self.store.count()
