"""Input transforms: decoded values -> model input batches (model-specific; they travel with the model).

Each modality's :class:`InputTransform` lives in ``executors/data/<modality>.py`` beside its decoder:

========  =====================================================  ===========================================
modality  model input batch                                       train-time augmentation (``augment=True``)
========  =====================================================  ===========================================
vector    float32 [B, D], x' = (x - mean) / std                   none
image     float32 [B, 3, H, W]: resize, centre crop, normalise    flip, random resized crop, colour jitter
mesh      float32 [B, num_points, 3]: subsample, centre, scale    rotation about z, scaling, jitter
text      {'input_ids', 'attention_mask'}: int64 [B, L]            none
========  =====================================================  ===========================================

A model version owns its transform: :func:`attach_transform` sets ``model.input_transform`` (an
InputTransform), ``executors.models.save``/``ModelStore.publish`` write its spec to ``model.json``
under ``"input_transform"`` and ``load`` attaches it again. ``embed`` and ``fit`` run the model's
transform when no ``preprocess_fn``/``collate_fn`` is given (``fit`` augments training batches only),
so the trainer, the Encoder and a swap's re-embedding all feed a version the inputs it was made for.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from executors.data.decoding import load_modalities
from executors.data.specs import build_from_spec, spec_of
from executors.errors import InputError

TRANSFORMS: dict[str, type['InputTransform']] = {}
TRANSFORM_ATTRIBUTE = 'input_transform'
"""Attribute of a model that holds its InputTransform; also the key of its spec in ``model.json``."""


@dataclass
class InputTransform(ABC):
    """One model's input transform: decoded values -> model input. Subclass fields are its settings."""

    modality: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'modality' in cls.__dict__:
            TRANSFORMS[cls.modality] = cls

    @abstractmethod
    def apply(self, value: Any, augment: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
        """Model input of one decoded value (no batch axis); ``augment`` adds random train-time
        augmentation drawn from ``rng`` (a fresh unseeded generator when None)."""

    def batch(self, values: Sequence[Any], augment: bool = False,
              rng: np.random.Generator | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """``apply`` on each value, stacked to a float32 tensor [B, ...]; errors name the position (``inputs[i]``)."""
        if len(values) == 0:
            raise InputError('inputs: expected at least one item')
        if augment and rng is None:
            rng = np.random.default_rng()  # one generator for the whole batch
        inputs = []
        for index, value in enumerate(values):
            try:
                inputs.append(self.apply(value, augment, rng))
            except InputError as error:
                raise InputError(f'inputs[{index}]: {error}') from error
            if inputs[-1].shape != inputs[0].shape:
                raise InputError(f"inputs[{index}]: model input shape {inputs[-1].shape} differs from the first "
                                 f"item's {inputs[0].shape}; give items of one shape")
        return torch.from_numpy(np.stack(inputs)).float()

    def to_spec(self) -> dict:
        """JSON-able spec that :func:`build_transform` turns back into an equal transform."""
        return spec_of(self, 'modality', self.modality)


def build_transform(spec: Mapping[str, Any] | InputTransform) -> InputTransform:
    """A transform from its spec ``{'modality': <one of TRANSFORMS>, **settings}`` (a transform passes through)."""
    if isinstance(spec, InputTransform):
        return spec
    return build_from_spec(spec, 'modality', load_modalities(TRANSFORMS), 'input_transform', 'modality',
                           "{'modality': 'image', 'size': [224, 224]}")


def attach_transform(model: nn.Module, transform: Mapping[str, Any] | InputTransform | None) -> nn.Module:
    """Give ``model`` its input transform (a spec or an InputTransform; None removes it); returns the model."""
    existing = getattr(model, TRANSFORM_ATTRIBUTE, None)
    if existing is not None and not isinstance(existing, InputTransform):
        raise InputError(f'model: already has an attribute {TRANSFORM_ATTRIBUTE!r} of type {type(existing).__name__}, '
                         'so it cannot carry an input transform; rename that attribute')
    if transform is None:
        model.__dict__.pop(TRANSFORM_ATTRIBUTE, None)
    else:
        setattr(model, TRANSFORM_ATTRIBUTE, build_transform(transform))
    return model


def transform_of(model: nn.Module) -> InputTransform | None:
    """The model's input transform, or None when it has none."""
    transform = getattr(model, TRANSFORM_ATTRIBUTE, None)
    return transform if isinstance(transform, InputTransform) else None


class TransformCollate:
    """``collate_fn`` that runs a model's transform: ``transform.batch(values, augment=model.training, rng)``.

    ``fit`` uses it, so training batches (model in train mode) are augmented and validation and
    embedding batches (eval mode) are not.
    """

    def __init__(self, transform: InputTransform, model: nn.Module, rng: np.random.Generator | None = None):
        self.transform, self.model = transform, model
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self, values: Sequence[Any]):
        training = self.model.training
        return self.transform.batch(values, augment=training, rng=self.rng if training else None)
