"""Torchvision architectures with local weights only (nothing is downloaded)."""
from typing import Optional

from torch import nn

from executors.errors import InputError
from executors.models.registry import register_builder
from executors.models.weights import read_state_dict


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
        model.load_state_dict(read_state_dict(weights_path))
    return model

