"""Named model builders: a model is described by JSON ``{"builder": name, "kwargs": {...}}``.

Storing the builder spec instead of a pickled module is what lets a saved model be rebuilt
without unpickling anything: ``build_model(spec)`` then ``load_state_dict`` from safetensors.
Every model built here carries its spec as ``model.builder_spec``.

The ``import`` builder rebuilds a user's own class from its import path:
``{"builder": "import", "kwargs": {"path": "mypkg.mod:MyNet", "kwargs": {...}}}``. Importing names from a
spec runs code, so it is refused unless the caller passes ``allow_import=True`` (a spec from a request
never gets that).
"""
import importlib
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from executors.errors import InputError
from executors.models import efficientnet, heads, mlp, point_cloud, torchvision_models, transformer  # noqa: F401  (the families register their builders)
from executors.models.registry import MODEL_BUILDERS, SPEC_ATTRIBUTE, register_builder

IMPORT_BUILDER = 'import'


@register_builder('embedding_model')
def build_embedding_model(base: Dict[str, Any], layer_name: Optional[str] = None, freeze=False,
                          projection_head: Optional[int] = None, input_size: Optional[Sequence[int]] = None,
                          input_dtype: str = 'float32') -> nn.Module:
    """A tailored model: ``to_embedding_model(build_model(base), layer_name, freeze, projection_head, ...)``."""
    from executors.models.tailor import to_embedding_model

    return to_embedding_model(build_model(base), layer_name=layer_name, freeze=freeze,
                              projection_head=projection_head, input_size=input_size, input_dtype=input_dtype)


def _build_imported(path: str, kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """``module:attr`` imported and called with ``kwargs``; must return an ``nn.Module``."""
    if not isinstance(path, str) or path.count(':') != 1:
        raise InputError(f'model.kwargs.path: expected "package.module:ClassName", got {path!r}')
    module_name, attribute = path.split(':')
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split('.'):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise InputError(f'model.kwargs.path: cannot import {path!r} ({error}); install the package that '
                         'defines it or fix the path') from None
    model = target(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise InputError(f'model.kwargs.path: {path!r} returned {type(model).__name__}, not a torch.nn.Module')
    return model


def build_model(spec: Dict[str, Any], seed: int = None, allow_import: bool = False) -> nn.Module:
    """Build ``spec = {"builder": name, "kwargs": {...}}``; ``seed`` fixes the random init.
    ``allow_import``: permit the ``import`` builder (user code named in the spec); only for trusted specs."""
    if not isinstance(spec, dict) or 'builder' not in spec:
        raise InputError(f'model: expected a spec like {{"builder": "mlp", "kwargs": {{...}}}}, got {spec!r}')
    name = spec['builder']
    if name == IMPORT_BUILDER:
        if not allow_import:
            raise InputError('model.builder: "import" runs the code the spec names, so it is only built by '
                             'build_model(spec, allow_import=True) in your own code, never from a request')
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = dict(spec.get('kwargs') or {})
        try:
            model = _build_imported(**kwargs)
        except TypeError as e:
            raise InputError(f'model.kwargs: {e} (builder "import" takes path and kwargs)') from e
        setattr(model, SPEC_ATTRIBUTE, {'builder': name, 'kwargs': kwargs})
        return model
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

