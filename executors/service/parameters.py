"""Every endpoint's request parameters, in one place, and their validation.

A Flow hands the same ``parameters`` to every executor on a request's path, so each
executor validates against the whole endpoint's vocabulary, not only its own. Unknown
names are errors (a typo must not be silently ignored). gRPC sends numbers as floats;
integral floats are accepted for ``int`` parameters.
"""
from typing import Any, Dict

from executors.errors import InputError

_FIT = {
    'epochs': int, 'batch_size': int, 'learning_rate': float, 'loss': str, 'loss_kwargs': dict,
    'optimizer': str, 'num_items_per_class': int, 'seed': int, 'eval_fraction': float, 'eval_k': int,
    'wait': bool, 'from_scratch': bool, 'miner': dict, 'lr_scheduler': dict,
    'scheduler': str, 'warmup_ratio': float, 'weight_decay': float,
}

ENDPOINT_PARAMETERS: Dict[str, Dict[str, type]] = {
    '/train': {},
    '/train/clear': {},
    '/fit': _FIT,
    '/fit/cancel': {},
    '/status': {},
    '/index': {},
    '/index/bulk': {},
    '/search': {'limit': int, 'filter': dict, 'nprobe': int, 'efSearch': int, 'fields': list},
    '/search/bulk': {'limit': int, 'filter': dict, 'nprobe': int, 'efSearch': int, 'fields': list},
    '/update': {},
    '/delete': {'ids': list},
    '/get': {'ids': list},
    '/count': {'filter': dict},
    '/evaluate': {'k': int, 'version': int},
    '/model/prepare': {'version': int},
    '/model/reindex': {'version': int},
    '/model/activate': {'version': int},
    '/model/missing': {'version': int, 'limit': int},
    '/model/status': {},
    '/model/rollback': {'version': int},
    '/search/evaluate': {'k': int, 'filter': dict},
}


def _coerce(endpoint: str, name: str, value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f'parameters.{name}: expected {kind.__name__} for {endpoint}, got {value!r}')
    return value


def validate_parameters(endpoint: str, parameters: Dict[str, Any]) -> Dict[str, Any]:
    """Typed copy of ``parameters`` for ``endpoint``; InputError names unknown or mistyped ones.

    Keys starting with ``__`` are Jina's own and are dropped.
    """
    allowed = ENDPOINT_PARAMETERS[endpoint]
    checked = {}
    for name, value in (parameters or {}).items():
        if name.startswith('__'):
            continue
        if name not in allowed:
            known = ', '.join(sorted(allowed)) or 'none'
            raise InputError(f'parameters.{name}: unknown parameter for {endpoint}; known: {known}')
        checked[name] = _coerce(endpoint, name, value, allowed[name])
    return checked


def required_parameter(endpoint: str, options: Dict[str, Any], name: str) -> Any:
    """``options[name]``; InputError if the request did not give it."""
    if options.get(name) is None:
        raise InputError(f'parameters.{name}: required for {endpoint}')
    return options[name]


def require_docs(endpoint: str, docs) -> None:
    """InputError for an empty request to an endpoint that works on documents."""
    if docs is None or len(docs) == 0:
        raise InputError(f'docs: the request to {endpoint} holds no documents; send at least one')
