"""Vectors: decoding (a checked float32 [D]) and the model input transform x' = (x - mean) / std."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from executors.data.decoding import Decoder
from executors.data.specs import number, optional_int
from executors.data.transforms import InputTransform
from executors.errors import InputError


def check_vector(tensor: Any, dim: int | None = None) -> np.ndarray:
    """float32 [D] of a 1-D numeric vector (list, ndarray or CPU torch tensor); checks D == dim when given, and finiteness."""
    if tensor is None:
        raise InputError('tensor: missing; give each document a 1-D vector')
    try:
        vector = np.asarray(tensor, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f'tensor: expected a vector of numbers, got {type(tensor).__name__} ({error})') from error
    if vector.ndim != 1 or vector.size == 0 or (dim is not None and vector.shape[0] != dim):
        expected = 'a non-empty 1-D vector' if dim is None else f'a 1-D vector of length {dim}'
        raise InputError(f'tensor: expected {expected}, got shape {vector.shape}')
    if not np.isfinite(vector).all():
        bad_positions = np.flatnonzero(~np.isfinite(vector))[:5].tolist()
        raise InputError(f'tensor: NaN or infinite values at positions {bad_positions}; give finite numbers')
    return vector


@dataclass
class VectorDecoder(Decoder):
    """tensor -> float32 [dim] (``check_vector``)."""

    modality: ClassVar[str] = 'vector'
    dim: int | None = None

    def __post_init__(self):
        self.dim = optional_int('dim', self.dim)

    def decode(self, fields):
        return check_vector(fields.get('tensor'), self.dim)


@dataclass
class VectorTransform(InputTransform):
    """float32 [D] -> (x - mean) / std, float32 [D]; ``mean``/``std`` are a number or a list of D
    numbers (None: 0 and 1, the identity). ``dim`` checks D. No augmentation."""

    modality: ClassVar[str] = 'vector'
    dim: int | None = None
    mean: float | list[float] | None = None
    std: float | list[float] | None = None

    def __post_init__(self):
        self.dim = optional_int('dim', self.dim)
        self.mean = self._per_component('mean', self.mean, positive=False)
        self.std = self._per_component('std', self.std, positive=True)

    def _per_component(self, setting: str, value: Any, positive: bool):
        if value is None:
            return None
        check = (lambda v: number(setting, v, low=0, low_inclusive=False)) if positive else (lambda v: number(setting, v))
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) == 0 or (self.dim is not None and len(value) != self.dim):
                raise InputError(f'{setting}: expected a number or a list of {self.dim or "D"} numbers, got {value!r}')
            return [check(v) for v in value]
        return check(value)

    def _standardise(self, vectors: np.ndarray) -> np.ndarray:
        """vectors [..., D] -> (vectors - mean) / std; a list mean/std must have D entries."""
        for setting in ('mean', 'std'):
            value = getattr(self, setting)
            if isinstance(value, list) and len(value) != vectors.shape[-1]:
                raise InputError(f'tensor: vectors have {vectors.shape[-1]} components but the transform\'s '
                                 f'{setting} has {len(value)}; give vectors of length {len(value)}')
        if self.mean is not None:
            vectors = vectors - np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            vectors = vectors / np.asarray(self.std, dtype=np.float32)
        return vectors.astype(np.float32, copy=False)

    def apply(self, value, augment=False, rng=None):
        return self._standardise(check_vector(value, self.dim))

    def batch(self, values, augment=False, rng=None):
        if isinstance(values, (list, tuple)) and values and all(
                isinstance(v, np.ndarray) and v.ndim == 1 and v.shape == values[0].shape for v in values):
            values = np.stack(values)  # rows of a training array: one vectorised pass
        if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype.kind in 'biuf':
            stacked = values.astype(np.float32, copy=False)  # a numeric array: check it whole
            if (self.dim is not None and stacked.shape[1] != self.dim) or not np.isfinite(stacked).all():
                return super().batch(list(values), augment, rng)  # per row, for an error naming the row
            return torch.from_numpy(np.ascontiguousarray(self._standardise(stacked)))
        return super().batch(values, augment, rng)
