"""Torchvision architectures with local weights only (nothing is downloaded)."""
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from executors.errors import InputError
from executors.models.registry import register_builder


@register_builder('torchvision')
def build_torchvision(arch: str, weights_path: Optional[str] = None, **arch_kwargs) -> nn.Module:
    """``torchvision.models.<arch>(weights=None, **arch_kwargs)``, with weights from a local
    ``weights_path`` (``.safetensors``, or a ``.pth`` state dict read with ``weights_only=True``).
    No weights are downloaded."""
    import torchvision

    if not hasattr(torchvision.models, arch) or arch.startswith('_'):
        raise InputError(f'arch: torchvision has no model {arch!r}; use e.g. resnet18, resnet50, efficientnet_b0')
    model = getattr(torchvision.models, arch)(weights=None, **arch_kwargs)
    if weights_path is not None:
        model.load_state_dict(_read_state_dict(weights_path))
    return model


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f'weights_path: {path!r} is not a file; give a local .safetensors or .pth state dict')
    if file.suffix == '.safetensors':
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(str(file), map_location='cpu', weights_only=True)  # never unpickles arbitrary objects
