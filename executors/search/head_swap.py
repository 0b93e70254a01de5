"""Head-only swaps: a new version that changes only a head over a frozen base is re-embedded from
stored base embeddings, without running the base (e.g. MiniLM) again.

Design:

* ``model.json`` of a frozen base plus a head (:class:`executors.models.heads.WithHead`, e.g. MiniLM +
  a :class:`~executors.tuner.head_tuners.FeedForwardTuner` head) records ``base_fingerprint``, the
  :func:`~executors.models.fingerprint.fingerprint` of its base (spec, input transform, tokenizer
  files, weights); every version records its own ``fingerprint``.
* The Indexer's document store keeps per doc the base embedding ``b = base(x)`` (float32 ``[D_base]``,
  with a CRC32) under that fingerprint (table ``base_embeddings`` of
  :class:`~executors.data.document_store.DocumentStore`, in ``docs.sqlite``, so it survives restarts).
  They come from (1) the served generation when the served version *is* the base (its fingerprint
  equals the target's ``base_fingerprint``: its embeddings are copied), (2) the swap itself: docs
  without one are embedded by the base once, stored, then given the head.
* :func:`fill_from_base` (called when a swap's target generation is built) gives every doc of the
  target generation ``head(b)`` (``[N, D_base] -> [N, D]``, the head alone, batched) where ``b`` is
  stored and valid. A stored vector with a wrong CRC32 or length, or not finite, is dropped and
  its doc re-embedded in full, never served. A target that is not base + head, or whose base
  fingerprint differs (e.g. a full fine-tune changed the base), gets nothing here: the swap
  re-embeds it with the whole model as before.
* Automatic swaps (:class:`executors.search.lifecycle.ModelFollower`, in the Indexer's process)
  call it with ``embed_base`` (the target's base), so docs lacking a base embedding get one.
  Manual swaps: the Indexer calls it on ``/model/prepare`` when it knows the model store
  (``store_dir`` + ``model_name``, or ``follow_store``) without ``embed_base``; what stays missing
  is returned by ``/model/missing`` and re-embedded by the Encoder as before.
* Only the base fingerprints of the served version and of the target are kept; others are
  dropped when a head-only swap starts.
"""
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from executors.errors import InputError
from executors.models.builders import build_model
from executors.models.serialization import WEIGHTS_FILE, read_config
from executors.models.store import ModelStore
from executors.search.vector_index import SearchIndex

log = logging.getLogger(__name__)
HEAD_PREFIX = 'head.'
HEAD_BATCH = 4096  # docs per batch given the head from stored base embeddings (the head is cheap)


@dataclass
class HeadOverBase:
    """The head of a version over a frozen base identified by ``base_fingerprint``."""

    version: int
    base_fingerprint: str
    head: nn.Module
    in_dim: int

    @torch.no_grad()
    def apply(self, base_embeddings: np.ndarray) -> np.ndarray:
        """``head(b)``: ``[N, in_dim] -> [N, D]`` float32."""
        return self.head(torch.from_numpy(np.ascontiguousarray(base_embeddings, dtype=np.float32))).float().numpy()


def head_over_base(store: ModelStore, model_name: str, version: int) -> Optional[HeadOverBase]:
    """The head of ``version`` if its model is a frozen base plus a head with a recorded
    ``base_fingerprint`` (read from its ``model.json`` and the ``head.*`` tensors of its weights, the
    base is not loaded); None for any other model."""
    resolved = store.resolve(model_name, version)
    config = read_config(resolved.path)
    spec, fingerprint = config.get('model') or {}, config.get('base_fingerprint')
    if spec.get('builder') != 'with_head' or not isinstance(fingerprint, str) or not fingerprint:
        return None
    head_kwargs = (spec.get('kwargs') or {}).get('head')
    head = build_model({'builder': 'head', 'kwargs': head_kwargs})
    with safe_open(str(resolved.path / WEIGHTS_FILE), framework='pt') as weights:
        state = {key[len(HEAD_PREFIX):]: weights.get_tensor(key) for key in weights.keys()
                 if key.startswith(HEAD_PREFIX)}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f'model: the head weights of {model_name!r} version {resolved.version} do not fit its '
                         f'spec ({error}); publish the version again') from None
    return HeadOverBase(resolved.version, fingerprint, head.eval(), int(head_kwargs['in_dim']))


def _batches(rows: np.ndarray, size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _seed_from_served(index: SearchIndex, fingerprint: str) -> int:
    """Copy the served generation's embeddings as base embeddings under ``fingerprint`` for the rows
    lacking one (the served version is that base); returns how many were copied."""
    version, seq, copied = index.active_version, 0, 0
    have = index.store.base_rows(fingerprint)
    while True:
        rows, vectors, seq = index.store.embeddings_after(version, seq)
        if not len(rows):
            return copied
        new = ~np.isin(rows, have)
        if new.any():
            index.store.put_base_embeddings(rows[new], fingerprint, vectors[new])
            copied += int(new.sum())


def fill_from_base(index: SearchIndex, store: ModelStore, model_name: str, version: int,
                   embed_base: Optional[Callable[[List[Any]], np.ndarray]] = None, batch_size: int = 1024,
                   progress: Optional[Dict[str, Any]] = None, stop: Optional[Callable[[], bool]] = None
                   ) -> Dict[str, Any]:
    """Fill the (prepared) generation of ``version`` from stored base embeddings (module docstring).

    ``embed_base(contents) -> [N, D_base]``: the target's base, to embed the docs lacking a stored base
    embedding, ``batch_size`` at a time (None: leave them missing for the caller's full re-embedding). ``progress``: a dict
    updated with ``done``/``total``. Returns ``{'route': 'head'|'full', 'head_only': docs given the head
    from stored base embeddings, 'base_embedded': docs run through the base here, 'seeded': base
    embeddings copied from the served generation, 'rejected': stored base embeddings found corrupt}``.
    """
    counts = {'route': 'full', 'head_only': 0, 'base_embedded': 0, 'seeded': 0, 'rejected': 0}
    target = head_over_base(store, model_name, version)
    if target is None:
        return counts
    counts['route'] = 'head'
    fingerprint = target.base_fingerprint
    served = {}
    if index.active_version is not None and index.active_version in store.versions(model_name):
        served = read_config(store.resolve(model_name, index.active_version).path)
    keep = {fingerprint, served.get('base_fingerprint')}
    for other in index.store.base_fingerprints():
        if other not in keep:
            index.store.drop_base_embeddings(other)
    if served.get('fingerprint') == fingerprint:
        counts['seeded'] = _seed_from_served(index, fingerprint)

    def add(rows: np.ndarray, base: np.ndarray) -> int:
        vectors = target.apply(base)
        with index._lock:  # a doc replaced or deleted meanwhile lost its base embedding: skipped here
            current = np.isin(rows, index.store.base_rows(fingerprint, among=rows))  # so these are stored
            return index.reindex_rows(rows[current], vectors[current], version)

    missing = index.missing_rows(version)
    if progress is not None:
        progress.update(done=0, total=len(missing), route='head')
    for chunk in _batches(missing, max(batch_size, HEAD_BATCH)):
        if stop is not None and stop():
            return counts
        rows, base, bad = index.store.base_embeddings(fingerprint, chunk, target.in_dim)
        if len(bad):
            log.warning('%d stored base embeddings are corrupt (checksum, length or non-finite); '
                        're-embedding those docs in full', len(bad))
            index.store.drop_base_embeddings(fingerprint, bad)
            counts['rejected'] += len(bad)
        if len(rows):
            counts['head_only'] += add(rows, base)
        if progress is not None:
            progress.update(done=counts['head_only'])
    if embed_base is None:
        return counts
    from executors.models.inference import doc_content

    for chunk in _batches(index.missing_rows(version), batch_size):
        if stop is not None and stop():
            return counts
        docs = index.store.get_rows(chunk)
        rows = np.asarray([r for r in chunk if int(r) in docs], dtype=np.int64)
        if not len(rows):
            continue
        base = np.asarray(embed_base([doc_content(docs[int(r)]) for r in rows]), dtype=np.float32)
        index.store.put_base_embeddings(rows, fingerprint, base)
        counts['base_embedded'] += add(rows, base)
        if progress is not None:
            progress.update(done=counts['head_only'] + counts['base_embedded'])
    return counts
