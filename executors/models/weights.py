"""Local weights files -> state dicts, without unpickling anything."""
from pathlib import Path
from typing import Dict

import torch

from executors.errors import InputError


def read_state_dict(path, field: str = 'weights_path') -> Dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file, or a ``.pth`` read with ``torch.load(weights_only=True)``
    (tensors and plain containers only, never arbitrary objects); InputError naming ``field`` otherwise."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f'{field}: {str(path)!r} is not a file; give a local .safetensors or .pth state dict')
    if file.suffix == '.safetensors':
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        return torch.load(str(file), map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for a bad or unsafe file
        raise InputError(f'{field}: cannot read {str(path)!r} as a weights-only state dict ({error})') from error
