"""Save and load models as ``weights.safetensors`` + ``model.json`` (no pickle anywhere).

``save(model, path)`` works for any ``torch.nn.Module``. ``model.json`` holds the model's builder spec
(``{"builder": ..., "kwargs": ...}``) when it has one (built by :func:`executors.models.build_model`), else
``{"builder": null, "class": "package.module:ClassName"}``; then ``load(path, model=skeleton)`` fills a
module you build yourself. A user class given by import path plus kwargs is rebuildable with the
``import`` builder (see :func:`executors.models.builders.build_model`, ``allow_import``). Weights are
written with ``safetensors.torch.save_model`` (tied/shared tensors are stored once) and read with
``load_model`` (strict: every parameter and buffer must match).

A save writes into a temporary sibling directory and renames it to ``path``: a failed save leaves
``path`` as it was (absent, or the previous complete save).

``model.json`` also holds the model's input transform spec (``"input_transform"``, when the model carries
one; see :mod:`executors.data.transforms`); ``load`` attaches the transform again.

A saved directory is self-contained: files the model needs besides its weights are copied into it
and listed under ``"bundled"``; the stored specs name them relative to the directory:

* ``transformer/config.json``: the architecture of a :class:`~executors.models.transformer.TransformerEncoder`
  (one per model), saved from the module itself; the stored transformer spec says ``"path": "transformer"``
  and ``load`` builds it from there (``pretrained=False``: the weights come from ``weights.safetensors``);
* ``tokenizer/``: a text transform's tokenizer (``save_pretrained``: ``tokenizer.json``,
  ``tokenizer_config.json``, ...); the stored transform says ``"tokenizer_path": "tokenizer"``.

So a version loads with the original model directory or package gone. ``load`` only ever joins these
fixed names to the directory it reads (a ``model.json`` cannot point it elsewhere).

``model.json`` records ``"fingerprint"`` (:func:`executors.models.fingerprint.fingerprint` of the model)
and, for a frozen base plus a head (:class:`executors.models.heads.WithHead`), ``"base_fingerprint"``.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from safetensors.torch import load_model, save_model
from torch import nn

from executors.data.transforms import TRANSFORM_ATTRIBUTE, attach_transform, transform_of
from executors.errors import InputError
from executors.models.builders import IMPORT_BUILDER, SPEC_ATTRIBUTE, build_model
from executors.models.fingerprint import fingerprint
from executors.models.heads import WithHead
from executors.models.transformer import TransformerEncoder

WEIGHTS_FILE = 'weights.safetensors'
CONFIG_FILE = 'model.json'
BUNDLE_KEY = 'bundled'
TRANSFORMER_DIR = 'transformer'
TOKENIZER_DIR = 'tokenizer'
BUNDLE_DIRS = {'transformer': TRANSFORMER_DIR, 'tokenizer': TOKENIZER_DIR}


def _transformer_specs(spec: Any) -> List[Dict[str, Any]]:
    """The transformer builder specs inside ``spec`` (nested specs included)."""
    if isinstance(spec, list):
        return [found for item in spec for found in _transformer_specs(item)]
    if not isinstance(spec, dict):
        return []
    own = [spec] if spec.get('builder') == 'transformer' else []
    return own + [found for value in spec.values() for found in _transformer_specs(value)]


def _with_transformer_path(spec: Any, path: str, only_from: Optional[str] = None) -> Any:
    """``spec`` with every transformer spec's ``path`` set to ``path`` (and ``pretrained=False``);
    ``only_from``: only the ones whose path is that."""
    if isinstance(spec, list):
        return [_with_transformer_path(item, path, only_from) for item in spec]
    if not isinstance(spec, dict):
        return spec
    out = {key: _with_transformer_path(value, path, only_from) for key, value in spec.items()}
    if spec.get('builder') == 'transformer' and isinstance(spec.get('kwargs'), dict) \
            and (only_from is None or spec['kwargs'].get('path') == only_from):
        out['kwargs'] = {**spec['kwargs'], 'path': path, 'pretrained': False}
    return out


def _bundle(model: nn.Module, spec: Dict[str, Any], transform, directory: Path):
    """Copy what ``model`` needs besides its weights into ``directory``; returns the stored spec, the
    stored transform spec and the bundled names (see the module docstring)."""
    bundled = {}
    transform_spec = None if transform is None else transform.to_spec()
    encoders = [m for m in model.modules() if isinstance(m, TransformerEncoder)]
    if len(encoders) == 1 and len(_transformer_specs(spec)) == 1:
        encoders[0].backbone.config.save_pretrained(str(directory / TRANSFORMER_DIR))
        spec = _with_transformer_path(spec, TRANSFORMER_DIR)
        bundled['transformer'] = TRANSFORMER_DIR
    if transform_spec is not None and transform_spec.get('modality') == 'text':
        transform.tokenizer.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        transform_spec = {**transform_spec, 'tokenizer_path': TOKENIZER_DIR}
        bundled['tokenizer'] = TOKENIZER_DIR
    return spec, transform_spec, bundled


def _unbundle(config: Dict[str, Any], path: Path) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The spec and transform spec of a saved directory with bundled names resolved inside ``path``."""
    bundled = config.get(BUNDLE_KEY) or {}
    if not isinstance(bundled, dict) or any(BUNDLE_DIRS.get(k) != v for k, v in bundled.items()):
        raise InputError(f'{BUNDLE_KEY}: {str(path)!r} lists unknown bundled files {bundled!r}; '
                         f'expected names among {BUNDLE_DIRS}')
    for name in bundled.values():
        if not (path / name).is_dir():
            raise InputError(f'{BUNDLE_KEY}: {str(path)!r} lacks its bundled directory {name!r}; '
                             'the saved model is incomplete: publish it again')
    spec = config.get('model') or {}
    if 'transformer' in bundled:
        spec = _with_transformer_path(spec, str(path / TRANSFORMER_DIR), only_from=TRANSFORMER_DIR)
    transform_spec = config.get(TRANSFORM_ATTRIBUTE)
    if 'tokenizer' in bundled and isinstance(transform_spec, dict):
        transform_spec = {**transform_spec, 'tokenizer_path': str(path / TOKENIZER_DIR)}
    return spec, transform_spec


def _spec_or_class(model: nn.Module) -> Dict[str, Any]:
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cls = type(model)
    return {'builder': None, 'class': f'{cls.__module__}:{cls.__qualname__}'}


def save(model: nn.Module, path, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``path/weights.safetensors`` (state dict), the bundled files and ``path/model.json`` (spec,
    the model's input transform spec, fingerprints, ``metadata``), replacing what ``path`` held only once
    all are complete."""
    if not isinstance(model, nn.Module):
        raise InputError(f'model: expected a torch.nn.Module, got {type(model).__name__}')
    path = Path(path)
    try:
        json.dumps(metadata or {})
    except TypeError as error:
        raise InputError(f'metadata: must be JSON-serialisable ({error})') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.saving-', dir=path.parent))
    try:
        spec = _spec_or_class(model)
        transform = transform_of(model)
        stored_spec, transform_spec, bundled = _bundle(model, spec, transform, tmp)
        config = {'model': stored_spec, **(metadata or {})}
        if transform_spec is not None:
            config[TRANSFORM_ATTRIBUTE] = transform_spec
        if bundled:
            config[BUNDLE_KEY] = bundled
        tokenizer_dir = tmp / TOKENIZER_DIR if 'tokenizer' in bundled else None
        config['fingerprint'] = fingerprint(model, spec, transform_spec, tokenizer_dir)
        if isinstance(model, WithHead):
            config['base_fingerprint'] = fingerprint(model.base, _spec_or_class(model.base), transform_spec,
                                                     tokenizer_dir)
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` to ``final``; an existing ``final`` is moved aside first, then removed."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f'.{final.name}.old-', dir=final.parent))
        final.rename(old / final.name)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:  # put the previous save back
            (old / final.name).rename(final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_config(path) -> Dict[str, Any]:
    """The ``model.json`` of a saved model directory."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f'path: {str(path)!r} holds no {CONFIG_FILE}; pass a directory written by save()')
    return json.loads(config_path.read_text())


def load(path, model: Optional[nn.Module] = None, allow_import: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model saved at ``path`` (with its input transform, if saved with one) and its config (bundled
    names resolved to directories inside ``path``), model in eval mode: ``(model, config)``.

    ``model``: a module you built with the saved architecture; its weights are replaced (needed when
    ``model.json`` names no builder). ``allow_import=True`` lets a spec with the ``import`` builder import
    and call the user code it names: pass it only for directories you trust.
    """
    config = read_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f'path: {str(path)!r} holds no {WEIGHTS_FILE}; pass a directory written by save()')
    spec, transform_spec = _unbundle(config, Path(path))
    if model is None:
        if spec.get('builder') is None:
            raise InputError(f'model: {str(path)!r} holds a {spec.get("class", "module")} without a builder spec, '
                             'so it cannot be rebuilt from JSON; build that module yourself and pass it: '
                             'load(path, model=MyModule(...))')
        if spec['builder'] == IMPORT_BUILDER and not allow_import:
            raise InputError(f'model: {str(path)!r} names user code ({spec.get("kwargs", {}).get("path")!r}); '
                             'pass load(path, allow_import=True) if you trust this directory, or '
                             'load(path, model=MyModule(...))')
        model = build_model(spec, allow_import=allow_import)
    elif not isinstance(model, nn.Module):
        raise InputError(f'model: expected a torch.nn.Module to fill, got {type(model).__name__}')
    try:
        load_model(model, str(weights), strict=True)
    except RuntimeError as error:
        raise InputError(f'model: the weights in {str(path)!r} do not fit this module ({error}); pass a module '
                         'with the saved architecture') from None
    if transform_spec is not None:
        attach_transform(model, transform_spec)
    model.eval()
    if config.get(BUNDLE_KEY):  # the specs as loaded: bundled names resolved inside ``path``
        config = {**config, 'model': spec, TRANSFORM_ATTRIBUTE: transform_spec}
    return model, config
