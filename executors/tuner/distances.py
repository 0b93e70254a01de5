"""Pairwise distances between embeddings.

``pairwise_distance(x [N, D], y [M, D] | None, distance) -> [N, M]`` with ``distance`` one of:

* ``'cosine'``: ``1 - <x, y> / (|x| |y|)``, in ``[0, 2]`` up to rounding (a zero vector is at distance 1
  from everything);
* ``'sqeuclidean'``: ``|x - y|^2 = |x|^2 + |y|^2 - 2 <x, y>``, clamped at 0;
* ``'euclidean'``: ``sqrt(max(|x - y|^2, SQRT_EPS))``: the clamp keeps the gradient finite (zero) at zero
  distance, so distances below ``sqrt(SQRT_EPS) = 1e-6`` read as ``1e-6``.

With ``y=None`` the distances are within ``x`` and the diagonal's squared distance is exactly 0.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from executors.errors import InputError

DISTANCES = ('cosine', 'euclidean', 'sqeuclidean')

#: floor on the squared euclidean distance before the square root
SQRT_EPS = 1e-12


def check_distance(distance, field: str = 'distance') -> str:
    """Return ``distance`` if it names one of :data:`DISTANCES`, else raise :class:`InputError` naming ``field``."""
    if not isinstance(distance, str) or distance not in DISTANCES:
        allowed = ', '.join(repr(name) for name in DISTANCES)
        raise InputError(f'{field}: unknown value {distance!r}; use one of {allowed}')
    return distance


def _check_matrix(value, field: str) -> None:
    if not isinstance(value, Tensor):
        raise InputError(f'{field}: expected a torch.Tensor of shape [N, D], got {type(value).__name__}')
    if value.dim() != 2:
        raise InputError(f'{field}: expected a 2-D tensor [N, D], got shape {tuple(value.shape)}')
    if not value.is_floating_point():
        raise InputError(f'{field}: expected a floating-point tensor, got {value.dtype}; convert with .float()')


def pairwise_distance(x: Tensor, y: Tensor = None, distance: str = 'cosine') -> Tensor:
    """Distance between every row of ``x [N, D]`` and every row of ``y [M, D]`` (``x`` itself if ``y`` is None).

    Returns ``[N, M]`` in the dtype of ``x``; see the module docstring for the formulas.
    """
    check_distance(distance)
    _check_matrix(x, 'x')
    if y is None:
        y, diagonal = x, torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        _check_matrix(y, 'y')
        if y.shape[1] != x.shape[1] or y.dtype != x.dtype or y.device != x.device:
            raise InputError(f'y: expected [M, {x.shape[1]}] {x.dtype} on {x.device} like x, '
                             f'got shape {tuple(y.shape)} {y.dtype} on {y.device}')
        diagonal = None
    if distance == 'cosine':
        result = 1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
        return result if diagonal is None else result.masked_fill(diagonal, 0.0)
    squared = (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2 * (x @ y.T)
    if diagonal is not None:
        squared = squared.masked_fill(diagonal, 0.0)
    squared = squared.clamp_min(0)
    return squared.clamp_min(SQRT_EPS).sqrt() if distance == 'euclidean' else squared
