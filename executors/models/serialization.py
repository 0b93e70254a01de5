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
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from safetensors.torch import load_model, save_model
from torch import nn

from executors.data.transforms import TRANSFORM_ATTRIBUTE, attach_transform, transform_of
from executors.errors import InputError
from executors.models.builders import IMPORT_BUILDER, SPEC_ATTRIBUTE, build_model

WEIGHTS_FILE = 'weights.safetensors'
CONFIG_FILE = 'model.json'


def _spec_or_class(model: nn.Module) -> Dict[str, Any]:
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cls = type(model)
    return {'builder': None, 'class': f'{cls.__module__}:{cls.__qualname__}'}


def save(model: nn.Module, path, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``path/weights.safetensors`` (state dict) and ``path/model.json`` (spec, the model's input
    transform spec, ``metadata``), replacing what ``path`` held only once both are complete."""
    if not isinstance(model, nn.Module):
        raise InputError(f'model: expected a torch.nn.Module, got {type(model).__name__}')
    path = Path(path)
    config = {'model': _spec_or_class(model), **(metadata or {})}
    transform = transform_of(model)
    if transform is not None:
        config[TRANSFORM_ATTRIBUTE] = transform.to_spec()
    try:
        text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as error:
        raise InputError(f'metadata: must be JSON-serialisable ({error})') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.saving-', dir=path.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(text)
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
    """The model saved at ``path`` (with its input transform, if saved with one) and its config, model
    in eval mode: ``(model, config)``.

    ``model``: a module you built with the saved architecture; its weights are replaced (needed when
    ``model.json`` names no builder). ``allow_import=True`` lets a spec with the ``import`` builder import
    and call the user code it names: pass it only for directories you trust.
    """
    config = read_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f'path: {str(path)!r} holds no {WEIGHTS_FILE}; pass a directory written by save()')
    spec = config.get('model') or {}
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
    if config.get(TRANSFORM_ATTRIBUTE) is not None:
        attach_transform(model, config[TRANSFORM_ATTRIBUTE])
    model.eval()
    return model, config
