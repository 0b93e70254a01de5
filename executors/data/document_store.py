"""Document storage in SQLite (WAL): one row per document id, with a stable integer row id.

``DocumentStore(path)`` keeps every document (id, label, text, uri, tags, tensor) so it can be
re-embedded when the model changes; the search index and the training service both use it.
Tensors are stored with ``np.save(allow_pickle=False)``: nothing is unpickled.

It is also the search index's source of truth for vectors: table ``embeddings`` holds each
row's embedding per model version (raw float32 bytes) with an increasing sequence number
``seq``, written in the same transaction as the documents, so a FAISS generation is rebuilt
after a crash from its last snapshot plus the embeddings with a larger ``seq``.

Table ``base_embeddings`` holds, per row, the embedding of a frozen base model named by its
fingerprint (``model.json``'s ``base_fingerprint``), with a CRC32 of the vector bytes; a swap to
another head over that base re-embeds from these (:mod:`executors.search.head_swap`). They are
deleted with their doc and when its content is replaced.
"""
import functools
import io
import json
import sqlite3
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from executors.errors import InputError

SQL_CHUNK = 900  # values per IN (...) list: below SQLite's default limit of 999 variables a statement


def _chunks(values: Sequence, size: int = SQL_CHUNK, convert=None):
    """``(chunk, marks)`` pieces of ``values``: a tuple of at most ``size`` values (each passed through
    ``convert`` when given) and its ``'?,?,...'`` placeholder list."""
    for start in range(0, len(values), size):
        chunk = tuple(values[start:start + size] if convert is None else map(convert, values[start:start + size]))
        yield chunk, ','.join('?' * len(chunk))


@dataclass
class StoredDoc:
    """One stored document; ``tensor`` (or ``text``) is the decoded value it is re-embedded from,
    through the input transform of whichever model version embeds it."""

    id: str
    label: Optional[str] = None
    text: Optional[str] = None
    uri: Optional[str] = None
    tags: Dict = field(default_factory=dict)
    tensor: Optional[np.ndarray] = None


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {'descr': descr, 'fortran_order': False, 'shape': shape})
    return buffer.getvalue()


def _tensor_to_bytes(tensor: Optional[np.ndarray]) -> Optional[bytes]:
    """The ``.npy`` bytes ``np.save(allow_pickle=False)`` writes, with the header built once per
    dtype and shape (``np.save`` per document was most of a bulk write's time)."""
    if tensor is None:
        return None
    array = np.asarray(tensor, order='C')
    if array.dtype.hasobject:
        raise ValueError('tensor: object arrays cannot be stored (they would need pickle)')
    return _npy_header(np.lib.format.dtype_to_descr(array.dtype), array.shape) + array.tobytes()


def _tensor_from_bytes(blob: Optional[bytes]) -> Optional[np.ndarray]:
    return None if blob is None else np.load(io.BytesIO(blob), allow_pickle=False)


class DocumentStore:
    """SQLite table of :class:`StoredDoc` with a stable integer row id per document id."""

    def __init__(self, path):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute('PRAGMA journal_mode=WAL')
        # commits reach the OS before they are acknowledged (a SIGKILL loses nothing); fsync at checkpoints
        self._db.execute('PRAGMA synchronous=NORMAL')
        self._db.execute(
            'CREATE TABLE IF NOT EXISTS docs (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, '
            'label TEXT, text TEXT, uri TEXT, tags TEXT NOT NULL, tensor BLOB)'
        )
        self._db.execute(
            'CREATE TABLE IF NOT EXISTS embeddings (seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL, '
            'version INTEGER NOT NULL, vector BLOB NOT NULL, UNIQUE(row, version))'
        )
        self._db.execute('CREATE INDEX IF NOT EXISTS embeddings_version ON embeddings (version, seq)')
        self._db.execute(
            'CREATE TABLE IF NOT EXISTS base_embeddings (row INTEGER NOT NULL, fingerprint TEXT NOT NULL, '
            'vector BLOB NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (fingerprint, row))'
        )
        self._lock = threading.Lock()

    def upsert(self, docs: Sequence[StoredDoc], embeddings: Optional[Dict[int, np.ndarray]] = None) -> np.ndarray:
        """Insert or replace docs (by id) and their ``{version: [N, D]}`` embeddings in one
        transaction; returns their row ids ``[N]``."""
        records = [(doc.id, doc.label, doc.text, doc.uri, json.dumps(doc.tags) if doc.tags else '{}',
                    _tensor_to_bytes(doc.tensor)) for doc in docs]
        ids = [doc.id for doc in docs]
        with self._lock:
            self._db.execute('BEGIN')
            try:
                row_of = self._rows_of(ids)  # the ids stored before: their content is replaced
                existing = set(row_of.values())
                self._db.executemany(
                    'INSERT INTO docs (id, label, text, uri, tags, tensor) VALUES (?, ?, ?, ?, ?, ?) '
                    'ON CONFLICT(id) DO UPDATE SET label=excluded.label, text=excluded.text, '
                    'uri=excluded.uri, tags=excluded.tags, tensor=excluded.tensor', records)
                row_of.update(self._rows_of([doc_id for doc_id in ids if doc_id not in row_of]))
                rows = [row_of[doc_id] for doc_id in ids]
                # replaced content: embeddings of other versions no longer describe it (new rows have none)
                given = sorted(int(v) for v in (embeddings or {}))
                self._db.executemany(
                    f'DELETE FROM embeddings WHERE row=? AND version NOT IN ({",".join("?" * len(given))})',
                    [(int(r), *given) for r in rows if r in existing])
                self._db.executemany('DELETE FROM base_embeddings WHERE row=?', [(int(r),) for r in rows if r in existing])
                for version, vectors in (embeddings or {}).items():
                    self._put_embeddings(rows, version, vectors)
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise
        return np.asarray(rows, dtype=np.int64)

    def _rows_of(self, ids: Sequence[str]) -> Dict[str, int]:
        """``{id: row}`` of the stored ones among ``ids`` (queried in chunks under SQLite's variable limit)."""
        row_of = {}
        for chunk, marks in _chunks(ids):
            row_of.update(self._db.execute(f'SELECT id, row FROM docs WHERE id IN ({marks})', chunk).fetchall())
        return row_of

    def _put_embeddings(self, rows: Sequence[int], version: int, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # a replaced (row, version) is deleted and inserted again, so it gets a new, larger seq
        self._db.executemany('INSERT OR REPLACE INTO embeddings (row, version, vector) VALUES (?, ?, ?)',
                             [(int(r), int(version), v.tobytes()) for r, v in zip(rows, vectors)])

    def put_embeddings(self, rows: Sequence[int], version: int, vectors: np.ndarray) -> None:
        """Store ``vectors [N, D]`` as the embeddings of ``rows`` under model ``version``."""
        with self._lock:
            self._db.execute('BEGIN')
            try:
                self._put_embeddings(rows, version, vectors)
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise

    def embeddings_after(self, version: int, after_seq: int = 0, limit: int = 50_000
                         ) -> Tuple[np.ndarray, np.ndarray, int]:
        """``(rows [n], vectors [n, D], last seq)`` of up to ``limit`` embeddings of ``version`` with
        ``seq > after_seq``, in seq order (page on with the returned seq)."""
        with self._lock:
            result = self._db.execute('SELECT seq, row, vector FROM embeddings WHERE version=? AND seq>? '
                                      'ORDER BY seq LIMIT ?', (int(version), int(after_seq), int(limit))).fetchall()
        if not result:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), int(after_seq)
        rows = np.asarray([r for _, r, _ in result], dtype=np.int64)
        vectors = np.frombuffer(b''.join(v for _, _, v in result), dtype=np.float32).reshape(len(result), -1)
        return rows, vectors, int(result[-1][0])

    def put_base_embeddings(self, rows: Sequence[int], fingerprint: str, vectors: np.ndarray) -> None:
        """Store ``vectors [N, D]`` as the base embeddings of ``rows`` under a base ``fingerprint``
        (rows deleted meanwhile are skipped)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        records = [(int(r), str(fingerprint), v.tobytes(), zlib.crc32(v.tobytes())) for r, v in zip(rows, vectors)]
        with self._lock:
            self._db.execute('BEGIN')
            try:
                self._db.executemany('INSERT OR REPLACE INTO base_embeddings (row, fingerprint, vector, crc) '
                                     'SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM docs WHERE row=?)',
                                     [(*record, record[0]) for record in records])
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise

    def base_embeddings(self, fingerprint: str, rows: Sequence[int], dim: int
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found rows [n], vectors [n, dim], bad rows [m])``: the stored base embeddings of ``rows``
        under ``fingerprint``. A vector whose CRC32 or length does not match, or that is not finite,
        is returned in ``bad`` (never as a vector); rows without one are in neither."""
        found, vectors, bad = [], [], []
        with self._lock:
            for chunk, marks in _chunks(rows, convert=int):
                result = self._db.execute(
                    f'SELECT row, vector, crc FROM base_embeddings WHERE fingerprint=? AND row IN ({marks})',
                    (str(fingerprint), *chunk)).fetchall()
                for row, blob, crc in result:
                    vector = np.frombuffer(blob, dtype=np.float32) if len(blob) == 4 * dim else None
                    if vector is None or zlib.crc32(blob) != crc or not np.isfinite(vector).all():
                        bad.append(row)
                    else:
                        found.append(row)
                        vectors.append(vector)
        order = np.argsort(found, kind='stable')
        stacked = np.stack(vectors)[order] if vectors else np.zeros((0, dim), np.float32)
        return (np.asarray(found, dtype=np.int64)[order], stacked, np.asarray(sorted(bad), dtype=np.int64))

    def base_rows(self, fingerprint: str, among: Optional[Sequence[int]] = None) -> np.ndarray:
        """Rows holding a base embedding under ``fingerprint`` (only those ``among`` the given rows), ascending."""
        with self._lock:
            if among is None:
                found = [r for (r,) in self._db.execute('SELECT row FROM base_embeddings WHERE fingerprint=?',
                                                        (str(fingerprint),))]
            else:
                found = []
                for chunk, marks in _chunks(among, convert=int):
                    found += [r for (r,) in self._db.execute(
                        f'SELECT row FROM base_embeddings WHERE fingerprint=? AND row IN ({marks})',
                        (str(fingerprint), *chunk))]
        return np.asarray(sorted(found), dtype=np.int64)

    def base_fingerprints(self) -> List[str]:
        with self._lock:
            return [f for (f,) in self._db.execute('SELECT DISTINCT fingerprint FROM base_embeddings ORDER BY 1')]

    def drop_base_embeddings(self, fingerprint: str, rows: Optional[Sequence[int]] = None) -> None:
        """Forget the base embeddings under ``fingerprint`` (only of ``rows`` when given)."""
        with self._lock:
            if rows is None:
                self._db.execute('DELETE FROM base_embeddings WHERE fingerprint=?', (str(fingerprint),))
            else:
                self._db.executemany('DELETE FROM base_embeddings WHERE fingerprint=? AND row=?',
                                     [(str(fingerprint), int(r)) for r in rows])

    def embedding_rows(self, version: int) -> np.ndarray:
        """Rows that hold an embedding of ``version``."""
        with self._lock:
            return np.asarray([r for (r,) in self._db.execute('SELECT row FROM embeddings WHERE version=?',
                                                               (int(version),))], dtype=np.int64)

    def embedding_versions(self) -> List[int]:
        with self._lock:
            return [v for (v,) in self._db.execute('SELECT DISTINCT version FROM embeddings ORDER BY version')]

    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute('SELECT COALESCE(MAX(seq), 0) FROM embeddings').fetchone()[0])

    def drop_embeddings(self, version: int) -> None:
        """Forget every embedding of ``version`` (its generation is gone)."""
        with self._lock:
            self._db.execute('DELETE FROM embeddings WHERE version=?', (int(version),))

    def delete(self, ids: Sequence[str]) -> np.ndarray:
        """Delete docs by id with their embeddings, in one transaction; returns the deleted rows."""
        if not ids:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            self._db.execute('BEGIN')
            try:
                rows = []
                for chunk, marks in _chunks(ids, 500):
                    rows += [r for (r,) in self._db.execute(f'DELETE FROM docs WHERE id IN ({marks}) RETURNING row',
                                                            chunk)]
                for chunk, marks in _chunks(rows, 500):
                    self._db.execute(f'DELETE FROM embeddings WHERE row IN ({marks})', chunk)
                    self._db.execute(f'DELETE FROM base_embeddings WHERE row IN ({marks})', chunk)
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise
        return np.asarray(sorted(rows), dtype=np.int64)

    def fields(self, rows: Sequence[int], names: Sequence[str]) -> Dict[int, tuple]:
        """``{row: (value of each name)}`` reading only the named columns (``id``, ``label``, ``text``,
        ``uri``, ``tags``; never the tensor)."""
        unknown = set(names) - {'id', 'label', 'text', 'uri', 'tags'}
        if unknown:
            raise InputError(f'parameters.fields: unknown field(s) {sorted(unknown)}; known: id, label, text, uri, tags')
        if len(rows) == 0:
            return {}
        columns = ', '.join(('row',) + tuple(names))
        out = {}
        with self._lock:
            for chunk, marks in _chunks(rows, convert=int):
                for record in self._db.execute(f'SELECT {columns} FROM docs WHERE row IN ({marks})', chunk):
                    out[record[0]] = record[1:]
        if 'tags' in names:
            at = list(names).index('tags')
            out = {r: v[:at] + (json.loads(v[at]),) + v[at + 1:] for r, v in out.items()}
        return out

    def _docs(self, query: str, args: tuple) -> List[Tuple[int, StoredDoc]]:
        with self._lock:
            result = self._db.execute(f'SELECT row, id, label, text, uri, tags, tensor FROM docs {query}', args)
            return [(row, StoredDoc(id_, label, text, uri, json.loads(tags), _tensor_from_bytes(tensor)))
                    for row, id_, label, text, uri, tags, tensor in result.fetchall()]

    def get_rows(self, rows: Sequence[int]) -> Dict[int, StoredDoc]:
        """``{row: doc}`` for the given row ids (missing rows are absent)."""
        if len(rows) == 0:
            return {}
        marks = ','.join('?' * len(rows))
        return dict(self._docs(f'WHERE row IN ({marks})', tuple(int(r) for r in rows)))

    def page(self, after_row: int = 0, limit: int = 100) -> List[Tuple[int, StoredDoc]]:
        """Up to ``limit`` ``(row, doc)`` pairs with ``row > after_row``, in row order."""
        return self._docs('WHERE row > ? ORDER BY row LIMIT ?', (int(after_row), int(limit)))

    def rows_for_ids(self, ids: Sequence[str]) -> Dict[str, int]:
        """``{doc id: row}`` for the stored ones among ``ids``."""
        with self._lock:
            return self._rows_of(ids)

    def all_rows(self) -> np.ndarray:
        with self._lock:
            return np.asarray([r for (r,) in self._db.execute('SELECT row FROM docs ORDER BY row')], dtype=np.int64)

    def rows_matching(self, condition: str, args: Sequence) -> np.ndarray:
        """Row ids of the docs that satisfy a compiled filter condition
        (:func:`executors.search.filters.compile_filter`), ascending."""
        with self._lock:
            return np.asarray([r for (r,) in self._db.execute(f'SELECT row FROM docs WHERE {condition} ORDER BY row',
                                                               tuple(args))], dtype=np.int64)

    def get_ids(self, ids: Sequence[str]) -> Dict[str, Tuple[int, StoredDoc]]:
        """``{doc id: (row, doc)}`` for the stored ones among ``ids``."""
        if not ids:
            return {}
        marks = ','.join('?' * len(ids))
        return {doc.id: (row, doc) for row, doc in self._docs(f'WHERE id IN ({marks})', tuple(ids))}

    def update_fields(self, updates: Sequence[Tuple[str, Dict]]) -> int:
        """Set ``label`` and/or ``tags`` of stored docs, ``[(doc id, {field: value})]``, in one
        transaction (content and row ids unchanged); returns how many docs were updated."""
        updated = 0
        with self._lock:
            self._db.execute('BEGIN')
            try:
                for doc_id, fields_ in updates:
                    sets, args = [], []
                    for name, value in fields_.items():
                        if name not in ('label', 'tags'):
                            raise ValueError(f'update_fields: cannot update {name!r}')
                        sets.append(f'{name}=?')
                        args.append(json.dumps(value) if name == 'tags' else value)
                    if sets:
                        updated += self._db.execute(f'UPDATE docs SET {", ".join(sets)} WHERE id=?',
                                                    (*args, doc_id)).rowcount
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise
        return updated

    def count(self) -> int:
        with self._lock:
            return self._db.execute('SELECT COUNT(*) FROM docs').fetchone()[0]

    def label_counts(self) -> Dict[str, int]:
        """``{label: number of stored docs with it}`` (relevant-set sizes for evaluation)."""
        with self._lock:
            return dict(self._db.execute(
                'SELECT label, COUNT(*) FROM docs WHERE label IS NOT NULL GROUP BY label').fetchall())

    def label_counts_where(self, condition: str, args: Sequence) -> Dict[str, int]:
        """:meth:`label_counts` among the docs that satisfy a compiled filter condition."""
        with self._lock:
            return dict(self._db.execute(
                f'SELECT label, COUNT(*) FROM docs WHERE label IS NOT NULL AND ({condition}) GROUP BY label',
                tuple(args)).fetchall())

    def close(self) -> None:
        self._db.close()


def ids_stored_at(path, ids: Sequence[str]) -> set:
    """The ids among ``ids`` stored in the document store at ``path``, read through a read-only
    connection (another process may be writing it; WAL lets both proceed). Empty if it does not exist."""
    path = Path(path)
    if not ids or not path.is_file():
        return set()
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True, check_same_thread=False)
    try:
        found = set()
        for chunk, marks in _chunks(ids):
            found.update(i for (i,) in db.execute(f'SELECT id FROM docs WHERE id IN ({marks})', chunk))
        return found
    finally:
        db.close()
