"""Build a settings dataclass from a JSON-able spec ``{<kind key>: <name>, **settings}``.

Label rules (``{'rule': 'numeric_bins', ...}``) and preprocessing pipelines
(``{'modality': 'image', ...}``) are both made this way, with errors naming the bad key.
"""
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, Dict


def build_from_spec(spec: Any, kind_key: str, registry: Dict[str, type], field: str, what: str, example: str):
    """``registry[spec[kind_key]](**settings)``; InputError for a non-dict spec, an unknown name,
    an unknown setting or a missing required one (settings = the class's init fields). ``field``
    names the whole spec in errors, ``what`` the kind of thing ``spec[kind_key]`` names."""
    from executors.errors import InputError

    if not isinstance(spec, Mapping):
        raise InputError(f'{field}: expected a dict like {example}, got {type(spec).__name__}')
    name = spec.get(kind_key)
    if name not in registry:
        raise InputError(f"{kind_key}: unknown {what} {name!r}; allowed: {', '.join(registry)}")
    cls = registry[name]
    settings = {key: value for key, value in spec.items() if key != kind_key}
    init_fields = [f for f in fields(cls) if f.init]
    allowed = [f.name for f in init_fields]
    for key in settings:
        if key not in allowed:
            raise InputError(f"{key}: not a setting of {kind_key} {name!r}; allowed settings: "
                             f"{', '.join(allowed) or 'none'}")
    for f in init_fields:
        if f.default is MISSING and f.default_factory is MISSING and f.name not in settings:
            raise InputError(f"{f.name}: required by {kind_key} {name!r} (settings: {', '.join(allowed)})")
    return cls(**settings)
