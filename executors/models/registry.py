"""The registry of model families: ``{"builder": name, "kwargs": {...}}`` names a function here.

Each family module (``mlp.py``, ``torchvision_models.py``, ...) registers its builders with
:func:`register_builder`; :mod:`executors.models.builders` imports them all and builds specs.
"""
from typing import Callable, Dict

from torch import nn

MODEL_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
SPEC_ATTRIBUTE = 'builder_spec'


def register_builder(name: str):
    """Decorator registering ``fn(**kwargs) -> nn.Module`` under ``name``."""

    def decorate(fn):
        MODEL_BUILDERS[name] = fn
        return fn

    return decorate
