"""Document storage in SQLite: one row per document id, with a stable integer row id.

``DocumentStore(path)`` keeps every document (id, label, text, uri, tags, tensor) so it can be
re-embedded when the model changes; the search index and the training service both use it.
Tensors are stored with ``np.save(allow_pickle=False)``: nothing is unpickled.
"""
import io
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np



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


def _tensor_to_bytes(tensor: Optional[np.ndarray]) -> Optional[bytes]:
    if tensor is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(tensor), allow_pickle=False)
    return buffer.getvalue()


def _tensor_from_bytes(blob: Optional[bytes]) -> Optional[np.ndarray]:
    return None if blob is None else np.load(io.BytesIO(blob), allow_pickle=False)


class DocumentStore:
    """SQLite table of :class:`StoredDoc` with a stable integer row id per document id."""

    def __init__(self, path):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute(
            'CREATE TABLE IF NOT EXISTS docs (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, '
            'label TEXT, text TEXT, uri TEXT, tags TEXT NOT NULL, tensor BLOB)'
        )
        self._lock = threading.Lock()

    def upsert(self, docs: Sequence[StoredDoc]) -> np.ndarray:
        """Insert or replace docs (by id) in one transaction; returns their row ids ``[N]``."""
        rows = []
        with self._lock:
            self._db.execute('BEGIN')
            try:
                for doc in docs:
                    self._db.execute(
                        'INSERT INTO docs (id, label, text, uri, tags, tensor) VALUES (?, ?, ?, ?, ?, ?) '
                        'ON CONFLICT(id) DO UPDATE SET label=excluded.label, text=excluded.text, '
                        'uri=excluded.uri, tags=excluded.tags, tensor=excluded.tensor',
                        (doc.id, doc.label, doc.text, doc.uri, json.dumps(doc.tags), _tensor_to_bytes(doc.tensor)),
                    )
                    rows.append(self._db.execute('SELECT row FROM docs WHERE id=?', (doc.id,)).fetchone()[0])
                self._db.execute('COMMIT')
            except Exception:
                self._db.execute('ROLLBACK')
                raise
        return np.asarray(rows, dtype=np.int64)

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
        if not ids:
            return {}
        marks = ','.join('?' * len(ids))
        with self._lock:
            return dict(self._db.execute(f'SELECT id, row FROM docs WHERE id IN ({marks})', tuple(ids)).fetchall())

    def all_rows(self) -> np.ndarray:
        with self._lock:
            return np.asarray([r for (r,) in self._db.execute('SELECT row FROM docs ORDER BY row')], dtype=np.int64)

    def count(self) -> int:
        with self._lock:
            return self._db.execute('SELECT COUNT(*) FROM docs').fetchone()[0]

    def label_counts(self) -> Dict[str, int]:
        """``{label: number of stored docs with it}`` (relevant-set sizes for evaluation)."""
        with self._lock:
            return dict(self._db.execute(
                'SELECT label, COUNT(*) FROM docs WHERE label IS NOT NULL GROUP BY label').fetchall())

    def close(self) -> None:
        self._db.close()
