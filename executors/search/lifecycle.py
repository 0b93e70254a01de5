"""The search flow follows the model store's promoted (CURRENT) version by itself.

:class:`ModelFollower` runs in the Indexer's process. When the store's CURRENT pointer moves
(a fit passed the promotion gate, or ``/model/rollback``) it swaps the running flow to that
version without a restart or any user command:

1. ``prepare``: the index opens a generation for the new version and records it as pending
   (``state.json``); every Encoder replica follows that file (within its ``follow_interval``) and
   embeds new documents with both versions; the follower waits until every live replica's record
   says it loaded the candidate (at most ``replica_timeout`` s), so documents indexed from now on
   carry the new embedding.
2. Re-embed: the stored documents the new generation lacks are embedded here with the new
   version (same :class:`VersionedEncoder` code as the Encoder) and added, in batches; progress
   (done / total, seconds left) is reported by :meth:`status`. A version that only changes a
   head over the frozen base of stored base embeddings gets the head applied to those instead
   (:func:`executors.search.head_swap.fill_from_base`; ``progress.head_swap`` counts the routes).
3. Switch: the index activates the new version (``state.json``); the Encoder replicas follow and
   embed queries with it. The old generation retires: it answers the queries stamped with the old
   version still on their way and is dropped once none can be (the Indexer's
   :class:`~executors.search.retirement.QueryLedger`: every replica switched and the Indexer
   finished as many old-stamped queries as the replicas stamped).

The follower reacts to pointer *moves* (it remembers the last pointer it followed in
``lifecycle.json``), so a manual swap with ``executors.search.swap`` is left alone, and a flow
restarted after a promotion catches up. ``served`` in ``lifecycle.json`` lists the versions the
flow served, newest last, for ``/model/rollback`` without a version.
"""
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from executors.data.transforms import transform_of
from executors.errors import InputError
from executors.models.heads import WithHead
from executors.models.inference import doc_content, embed
from executors.models.serving import VersionedEncoder
from executors.models.store import ModelStore
from executors.search.head_swap import fill_from_base
from executors.search.retirement import QueryLedger, candidate_loaded
from executors.search.vector_index import SearchIndex

log = logging.getLogger(__name__)


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ModelFollower:
    """Swaps ``index`` to the store's CURRENT version of ``model_name`` whenever the pointer moves."""

    def __init__(self, index: SearchIndex, store: ModelStore, model_name: str, poll_interval: float = 1.0,
                 batch_size: int = 256, device: str = 'cpu', ledger: Optional[QueryLedger] = None,
                 replica_timeout: float = 60.0):
        self.index, self.store, self.model_name = index, store, model_name
        self.poll_interval, self.batch_size = float(poll_interval), int(batch_size)
        self.ledger, self.replica_timeout = ledger, float(replica_timeout)
        self.encoder = VersionedEncoder(store, model_name, batch_size=batch_size, device=device)
        self._path = index.workspace / 'lifecycle.json'
        self._state = self._load()
        self.progress: Dict[str, Any] = {}
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name='model-follower', daemon=True)
        self._thread.start()

    def _load(self) -> Dict[str, Any]:
        try:
            state = json.loads(self._path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {'followed': self.store.current_version(self.model_name), 'served': []}
            _write_json(self._path, state)
        return state

    def _save(self) -> None:
        _write_json(self._path, self._state)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def served(self) -> List[int]:
        served = list(self._state.get('served', []))
        if self.index.active_version is not None and (not served or served[-1] != self.index.active_version):
            served.append(self.index.active_version)
        return served

    def rollback(self, version: Optional[int] = None) -> int:
        """Move the store's pointer back to ``version`` (default: the version served before the
        current one); the follower then swaps the flow to it. Returns the target version."""
        served = self.served()
        if version is None:
            if len(served) < 2:
                raise InputError(f'parameters.version: no earlier served version to roll back to (served: {served}); '
                                 'name the version to serve')
            version = served[-2]
        self.store.resolve(self.model_name, version)  # InputError for an unknown version
        self.store.set_current(self.model_name, int(version))
        self._wake.set()
        return int(version)

    def status(self) -> Dict[str, Any]:
        return {'serving': self.index.active_version, 'building': self.index.pending_version,
                'promoted': self.store.current_version(self.model_name), 'followed': self._state.get('followed'),
                'served': self.served(), 'progress': dict(self.progress), 'error': self.error}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once()
                self.error = None
            except Exception as e:  # noqa: BLE001 - reported by status(), retried next time
                self.error = f'{type(e).__name__}: {e}'
                log.exception('model swap failed; retrying')
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _follow_once(self) -> None:
        target = self.store.current_version(self.model_name)
        if target is None or target == self._state.get('followed') and self.index.pending_version is None:
            return
        if self.index.active_version is None:  # nothing indexed yet: the first /index fixes the version
            self._state['followed'] = target
            self._save()
            return
        if target != self.index.active_version:
            self.swap(target)
        self._state['followed'] = target
        self._save()

    def _base_embedder(self, version: int):
        """``contents -> [N, D_base]`` with the frozen base of ``version`` if it is base + head, else None."""
        model = self.encoder.model(version)
        if not isinstance(model, WithHead):
            return None
        transform = transform_of(model)
        return lambda contents: embed(contents, model.base, batch_size=self.batch_size, device=self.encoder.device,
                                      collate_fn=None if transform is None else transform.batch)

    def swap(self, version: int) -> None:
        """Re-embed the stored docs with ``version`` and make it the served version (steps 1-3)."""
        index = self.index
        old = index.active_version
        index.prepare(version)
        self.encoder.follow(version, None)
        self.progress = {'version': version, 'done': 0, 'total': index.count(), 'seconds_left': None,
                         'stage': 'loading the new version in the Encoders'}
        deadline = time.monotonic() + self.replica_timeout
        while self.ledger is not None and not self._stop.is_set() and time.monotonic() < deadline \
                and not candidate_loaded(self.ledger.replicas(), version):
            time.sleep(0.05)
        started = time.monotonic()
        self.progress.update(stage='re-embedding')
        routes = fill_from_base(index, self.store, self.model_name, version, embed_base=self._base_embedder(version),
                                batch_size=self.batch_size, progress=self.progress, stop=self._stop.is_set)
        self.progress['head_swap'] = routes
        done = routes['head_only'] + routes['base_embedded']
        while not self._stop.is_set():
            docs = index.docs_missing_from(version, self.batch_size)
            if not docs:
                break
            vectors, _ = self.encoder.embed([doc_content(d) for d in docs])
            done += index.reindex([d.id for d in docs], vectors, version)
            left = index.missing_count(version)
            rate = done / max(time.monotonic() - started, 1e-6)
            self.progress.update(done=done, total=done + left, seconds_left=round(left / rate, 1) if rate else None)
        if self._stop.is_set():
            return
        self.progress.update(stage='switching')
        for _ in range(10):  # docs indexed meanwhile with the old version only are re-embedded first
            for docs in iter(lambda: index.docs_missing_from(version, self.batch_size), []):
                vectors, _ = self.encoder.embed([doc_content(d) for d in docs])
                index.reindex([d.id for d in docs], vectors, version)
            try:
                index.activate(version)
                break
            except InputError:
                continue
        else:
            raise RuntimeError(f'could not activate version {version}: documents kept arriving without it')
        served = [v for v in self._state.get('served', []) if v is not None]
        if old is not None and (not served or served[-1] != old):
            served.append(old)
        self._state['served'] = (served + [version])[-20:]
        self._save()
        self.progress.update(stage='done', seconds_left=0, finished=time.time())
        log.info('now serving model version %s (was %s)', version, old)
