"""A directory of immutable, numbered model versions with an atomically moved pointer.

Layout::

    <root>/<model-name>/<version>/weights.safetensors   # version = 1, 2, ... (zero-padded dirs)
    <root>/<model-name>/<version>/model.json            # spec + metadata (metrics, parent, ...)
    <root>/<model-name>/CURRENT                         # the current version number

A version directory is written under a temporary name and renamed into place, and the
pointer is replaced with ``os.replace``, so a reader sees either the old or the new state,
never a half-written one. Rolling back is :meth:`ModelStore.set_current`.
"""
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from executors.errors import InputError
from executors.models.serialization import load, read_config, save

POINTER_FILE = 'CURRENT'
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path


def _version_dir(version: int) -> str:
    return f'{version:06d}'


class ModelStore:
    """Versioned models under ``root`` (a local directory or a mounted volume)."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name) or '..' in name:
            raise InputError(
                f'model_name: {name!r} is not a valid name; use letters, digits, "_", "-", "." (no "..")'
            )
        return self.root / name

    def versions(self, name: str) -> List[int]:
        """All published versions of ``name``, ascending."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def current_version(self, name: str) -> Optional[int]:
        """The version the pointer names, or None if nothing was published."""
        pointer = self._model_dir(name) / POINTER_FILE
        try:
            return int(pointer.read_text().strip())
        except FileNotFoundError:
            return None

    def publish(self, name: str, model: nn.Module, metadata: Optional[Dict[str, Any]] = None,
                make_current: bool = True) -> ModelVersion:
        """Write ``model`` as the next version of ``name`` and (by default) point CURRENT at it."""
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.staging-', dir=model_dir))
        try:
            while True:
                version = max(self.versions(name), default=0) + 1
                save(model, staging, {**(metadata or {}), 'name': name, 'version': version})
                try:
                    os.rename(staging, model_dir / _version_dir(version))
                    break
                except OSError:  # another writer took this number: try the next one
                    continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if make_current:
            self.set_current(name, version)
        return ModelVersion(name, version, model_dir / _version_dir(version))

    def set_current(self, name: str, version: int) -> None:
        """Move the pointer (publish or roll back); the version must exist."""
        if version not in self.versions(name):
            raise InputError(
                f'version: {name!r} has no version {version}; published versions: {self.versions(name)}'
            )
        pointer = self._model_dir(name) / POINTER_FILE
        tmp = pointer.with_name(f'.{POINTER_FILE}.{os.getpid()}.tmp')
        tmp.write_text(f'{version}\n')
        os.replace(tmp, pointer)

    def resolve(self, name: str, version: Optional[int] = None) -> ModelVersion:
        """The given version, or the current one; InputError if there is none."""
        if version is None:
            version = self.current_version(name)
            if version is None:
                raise InputError(
                    f'model_name: no version of {name!r} is published in {str(self.root)!r} yet; '
                    'run a fit on the training flow first'
                )
        version = int(version)
        if version not in self.versions(name):
            raise InputError(
                f'version: {name!r} has no version {version}; published versions: {self.versions(name)}'
            )
        return ModelVersion(name, version, self._model_dir(name) / _version_dir(version))

    def load(self, name: str, version: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
        """``(model, config)`` of the given or current version."""
        return load(self.resolve(name, version).path)

    def config(self, name: str, version: Optional[int] = None) -> Dict[str, Any]:
        """The ``model.json`` of the given or current version."""
        return read_config(self.resolve(name, version).path)
