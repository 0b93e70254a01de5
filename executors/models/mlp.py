"""Multi-layer perceptrons (the swiss-roll model family)."""
from typing import Sequence

from torch import nn

from executors.errors import InputError
from executors.models.registry import register_builder

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
