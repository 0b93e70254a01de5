"""Serving-side model versions: the active one that embeds traffic, and a prepared candidate.

A swap is ``prepare(v)`` (load v beside the active version), re-embedding the stored docs
with v, then ``activate(v)``. Between the two, :meth:`VersionedEncoder.embed_both` embeds
new documents with both versions so the next index generation stays complete.

``embed(..., stamp=True)`` counts the request under the version that embeds it (``stamped``),
choosing the version and counting under one lock, so :meth:`VersionedEncoder.record` taken after
a switch holds the final count of every version no longer embedded with (the drop rule of
:mod:`executors.search.retirement`).
"""
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from torch import nn

from executors.errors import InputError
from executors.models.inference import embed
from executors.models.store import ModelStore


class VersionedEncoder:
    """Embeds with versions of ``model_name`` from ``store``."""

    def __init__(self, store: ModelStore, model_name: str, batch_size: int = 256, device: str = 'cpu'):
        self.store, self.model_name, self.batch_size, self.device = store, model_name, batch_size, device
        self._lock = threading.RLock()
        self._models: Dict[int, nn.Module] = {}
        self.active_version: Optional[int] = None
        self.candidate_version: Optional[int] = None
        self.stamped: Dict[int, int] = {}  # query requests embedded per version (embed(..., stamp=True))

    def _load(self, version: Optional[int]) -> int:
        resolved = self.store.resolve(self.model_name, version)
        if resolved.version not in self._models:
            model, _ = self.store.load(self.model_name, resolved.version)
            self._models[resolved.version] = model.to(self.device)
        return resolved.version

    def ensure_active(self) -> int:
        """Load the store's current version if nothing is active yet; returns the active version."""
        with self._lock:
            if self.active_version is None:
                self.active_version = self._load(None)
            return self.active_version

    def follow(self, active: Optional[int], candidate: Optional[int]) -> None:
        """Serve ``active`` with ``candidate`` prepared (the search flow's persisted serving state,
        e.g. on restart or when another replica ran the swap); ``None`` leaves that role as is
        (active) or empty (candidate). Models of other versions are unloaded."""
        with self._lock:
            if active is not None and active != self.active_version:
                self.active_version = self._load(active)
            if candidate != self.candidate_version:
                self.candidate_version = None if candidate is None else self._load(candidate)
            for version in [v for v in self._models if v not in (self.active_version, self.candidate_version)]:
                del self._models[version]

    def prepare(self, version: Optional[int] = None) -> int:
        """Load ``version`` (default: the store's current) as the swap candidate."""
        with self._lock:
            self.ensure_active()
            loaded = self._load(version)
            if loaded == self.candidate_version:
                return loaded
            if loaded == self.active_version:
                raise InputError(f'version: {loaded} is already the active version; publish or name another one')
            self.candidate_version = loaded
            return loaded

    def activate(self, version: int) -> int:
        """Make the prepared candidate ``version`` active and unload the old one."""
        with self._lock:
            if version == self.active_version and self.candidate_version is None:
                return version  # already done (a retried activation)
            if version != self.candidate_version:
                raise InputError(f'version: {version} is not the prepared candidate '
                                 f'({self.candidate_version}); call /model/prepare first')
            old, self.active_version, self.candidate_version = self.active_version, version, None
            self._models.pop(old, None)
            return version

    def embed(self, contents: List[Any], version: Optional[int] = None, stamp: bool = False
              ) -> Tuple[np.ndarray, int]:
        """``(embeddings [N, D], version)`` with ``version`` (default: the active one); ``stamp``:
        count one query request under that version (see :meth:`unstamp` when it fails)."""
        with self._lock:
            version = self.ensure_active() if version is None else version
            if version not in (self.active_version, self.candidate_version):
                raise InputError(f'version: model version {version} is neither active ({self.active_version}) '
                                 f'nor prepared ({self.candidate_version})')
            model = self._models[version]
            if stamp:
                self.stamped[version] = self.stamped.get(version, 0) + 1
        try:
            return embed(contents, model, batch_size=self.batch_size, device=self.device), version
        except BaseException:
            if stamp:
                self.unstamp([version])
            raise

    def unstamp(self, versions: List[int]) -> None:
        """Uncount stamped requests that never left the Encoder (they failed here)."""
        with self._lock:
            for version in versions:
                self.stamped[version] = max(self.stamped.get(version, 0) - 1, 0)

    def record(self) -> Tuple[Optional[int], Optional[int], Dict[int, int]]:
        """``(active version, candidate version, stamped counts)`` at one instant."""
        with self._lock:
            return self.active_version, self.candidate_version, dict(self.stamped)

    def model(self, version: Optional[int] = None) -> nn.Module:
        """The loaded module of ``version`` (default: the active one); InputError if not loaded."""
        with self._lock:
            version = self.active_version if version is None else version
            if version not in self._models:
                raise InputError(f'version: model version {version} is not loaded (active {self.active_version}, '
                                 f'prepared {self.candidate_version})')
            return self._models[version]

    def input_transform(self, version: Optional[int] = None):
        """The input transform of a loaded version (default: the active one), or None."""
        from executors.data.transforms import transform_of

        with self._lock:
            model = self._models.get(self.active_version if version is None else version)
        return None if model is None else transform_of(model)

    def embed_both(self, contents: List[Any]):
        """``(active embeddings, active version, candidate embeddings or None, candidate version or None)``."""
        with self._lock:
            candidate = self.candidate_version
        vectors, version = self.embed(contents)
        if candidate is None:
            return vectors, version, None, None
        candidate_vectors, _ = self.embed(contents, candidate)
        return vectors, version, candidate_vectors, candidate

    def status(self) -> Dict[str, Any]:
        return {'model_name': self.model_name, 'active_version': self.active_version,
                'candidate_version': self.candidate_version,
                'store_current_version': self.store.current_version(self.model_name)}
