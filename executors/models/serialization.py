"""Save and load models as ``weights.safetensors`` + ``model.json`` (no pickle anywhere).

``model.json`` holds the builder spec (``"model"``), the model's input transform spec
(``"input_transform"``, when the model carries one; see :mod:`executors.data.transforms`) and the
caller's metadata; ``load`` rebuilds the model and attaches its transform again.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from safetensors.torch import load_file, save_file
from torch import nn

from executors.data.transforms import TRANSFORM_ATTRIBUTE, attach_transform, transform_of
from executors.errors import InputError
from executors.models.builders import build_model, model_spec

WEIGHTS_FILE = 'weights.safetensors'
CONFIG_FILE = 'model.json'


def save(model: nn.Module, path, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``path/weights.safetensors`` (state dict) and ``path/model.json`` (spec, the model's
    input transform spec, ``metadata``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {'model': model_spec(model), **(metadata or {})}
    transform = transform_of(model)
    if transform is not None:
        config[TRANSFORM_ATTRIBUTE] = transform.to_spec()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    tmp = path / (CONFIG_FILE + '.tmp')
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, path / CONFIG_FILE)
    return path


def read_config(path) -> Dict[str, Any]:
    """The ``model.json`` of a saved model directory."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f'path: {str(path)!r} holds no {CONFIG_FILE}; pass a directory written by save()')
    return json.loads(config_path.read_text())


def load(path) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model saved at ``path`` (with its input transform, if it was saved with one);
    returns ``(model, config)``, model in eval mode."""
    config = read_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f'path: {str(path)!r} holds no {WEIGHTS_FILE}; pass a directory written by save()')
    model = build_model(config['model'])
    model.load_state_dict(load_file(str(weights)))
    if config.get(TRANSFORM_ATTRIBUTE) is not None:
        attach_transform(model, config[TRANSFORM_ATTRIBUTE])
    model.eval()
    return model, config
