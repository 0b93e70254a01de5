"""Named model builders: a model is described by JSON ``{"builder": name, "kwargs": {...}}``.

Storing the builder spec instead of a pickled module is what lets a saved model be rebuilt
without unpickling anything: ``build_model(spec)`` then ``load_state_dict`` from safetensors.
Every model built here carries its spec as ``model.builder_spec``.
"""
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from executors.errors import InputError

MODEL_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
SPEC_ATTRIBUTE = 'builder_spec'


def register_builder(name: str):
    """Decorator registering ``fn(**kwargs) -> nn.Module`` under ``name``."""

    def decorate(fn):
        MODEL_BUILDERS[name] = fn
        return fn

    return decorate


_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU, 'tanh': nn.Tanh, 'silu': nn.SiLU}


@register_builder('mlp')
def build_mlp(layer_sizes: Sequence[int], activation: str = 'relu', final_activation: bool = False) -> nn.Module:
    """MLP ``layer_sizes[0] -> ... -> layer_sizes[-1]``: Linear layers with ``activation`` between them.

    Input ``[B, layer_sizes[0]]``, output ``[B, layer_sizes[-1]]``. The swiss-roll model is
    ``layer_sizes=[3, 6, 6, 6]`` with ReLU.
    """
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise InputError(
            f'layer_sizes: need at least two positive sizes (input and output), got {list(layer_sizes)}'
        )
    if activation not in _ACTIVATIONS:
        raise InputError(f"activation: unknown value {activation!r}; use one of {sorted(_ACTIVATIONS)}")
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


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


@register_builder('embedding_model')
def build_embedding_model(base: Dict[str, Any], layer_name: Optional[str] = None, freeze=False,
                          projection_head: Optional[int] = None, input_size: Optional[Sequence[int]] = None,
                          input_dtype: str = 'float32') -> nn.Module:
    """A tailored model: ``to_embedding_model(build_model(base), layer_name, freeze, projection_head, ...)``."""
    from executors.models.tailor import to_embedding_model

    return to_embedding_model(build_model(base), layer_name=layer_name, freeze=freeze,
                              projection_head=projection_head, input_size=input_size, input_dtype=input_dtype)


def build_model(spec: Dict[str, Any], seed: int = None) -> nn.Module:
    """Build ``spec = {"builder": name, "kwargs": {...}}``; ``seed`` fixes the random init."""
    if not isinstance(spec, dict) or 'builder' not in spec:
        raise InputError(f'model: expected a spec like {{"builder": "mlp", "kwargs": {{...}}}}, got {spec!r}')
    name = spec['builder']
    if name not in MODEL_BUILDERS:
        raise InputError(f'model.builder: unknown builder {name!r}; use one of {sorted(MODEL_BUILDERS)}')
    kwargs = dict(spec.get('kwargs') or {})
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = MODEL_BUILDERS[name](**kwargs)
    except TypeError as e:
        raise InputError(f'model.kwargs: {e} (builder {name!r})') from e
    setattr(model, SPEC_ATTRIBUTE, {'builder': name, 'kwargs': kwargs})
    return model


def model_spec(model: nn.Module) -> Dict[str, Any]:
    """The builder spec a model was built from; InputError if it was not built by :func:`build_model`."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is None:
        raise InputError(
            'model: this module has no builder spec, so it cannot be rebuilt without pickle; '
            'build it with executors.build_model({"builder": ..., "kwargs": ...}) or register a builder'
        )
    return spec
