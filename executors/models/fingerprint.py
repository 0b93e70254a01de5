"""Fingerprints: what a module computes, as one sha256 hex string (written to ``model.json``).

``fingerprint(module, spec, transform_spec, files_dir)`` hashes, in this order:

* the canonical JSON of ``{'model': spec, 'input_transform': transform_spec}`` with the parts that
  only say *where* files are removed (a transformer spec's ``path`` and ``pretrained``, a text
  transform's ``tokenizer_path``);
* each file under ``files_dir`` (the version's bundled tokenizer), sorted by name: name, bytes;
* each tensor of ``module.state_dict()``, sorted by name: name, dtype, shape, raw bytes.

Two modules with equal fingerprints map equal inputs to equal outputs (same architecture spec,
same input transform and tokenizer, same weights). ``ModelStore.publish`` records the model's
``fingerprint`` and, for a frozen base plus a head (:class:`executors.models.heads.WithHead`),
the base's ``base_fingerprint``: a search index that stored base embeddings under that
fingerprint re-embeds a head-only version by applying the head alone
(:mod:`executors.search.head_swap`).
"""
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

_LOCATION_KEYS = {'transformer': ('path', 'pretrained')}


def portable_spec(spec: Any) -> Any:
    """``spec`` without the keys that only locate files (recursively, for nested specs)."""
    if isinstance(spec, list):
        return [portable_spec(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    drop = ()
    if spec.get('builder') in _LOCATION_KEYS and isinstance(spec.get('kwargs'), dict):
        drop = _LOCATION_KEYS[spec['builder']]
        spec = {**spec, 'kwargs': {k: v for k, v in spec['kwargs'].items() if k not in drop}}
    return {key: portable_spec(value) for key, value in spec.items()}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b''


def fingerprint(module: nn.Module, spec: Optional[Dict[str, Any]], transform_spec: Optional[Dict[str, Any]] = None,
                files_dir: Optional[Path] = None) -> str:
    """sha256 of ``module``'s spec, input transform, bundled files and weights (see the module docstring)."""
    digest = hashlib.sha256()
    transform = None if transform_spec is None else {k: v for k, v in transform_spec.items() if k != 'tokenizer_path'}
    digest.update(json.dumps({'model': portable_spec(spec), 'input_transform': transform}, sort_keys=True).encode())
    if files_dir is not None and Path(files_dir).is_dir():
        for file in sorted(p for p in Path(files_dir).rglob('*') if p.is_file()):
            digest.update(str(file.relative_to(files_dir)).encode() + b'\0')
            digest.update(file.read_bytes())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode() + b'\0')
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()
