"""Settings dataclasses built from JSON-able specs ``{<kind key>: <name>, **settings}``, and the
checks their ``__post_init__`` runs on each setting.

Label rules (``{'rule': 'numeric_bins', ...}``), decoders and input transforms
(``{'modality': 'image', ...}``) are all made this way, with errors naming the bad key.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any, Dict

import numpy as np

from executors.errors import InputError


def build_from_spec(spec: Any, kind_key: str, registry: Dict[str, type], field: str, what: str, example: str):
    """``registry[spec[kind_key]](**settings)``; InputError for a non-dict spec, an unknown name,
    an unknown setting or a missing required one (settings = the class's init fields). ``field``
    names the whole spec in errors, ``what`` the kind of thing ``spec[kind_key]`` names."""
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


def spec_of(settings: Any, kind_key: str, name: str) -> dict:
    """``{kind_key: name, **init fields}`` of a settings dataclass, tuples as lists (JSON-able)."""
    return {kind_key: name, **{f.name: jsonable(getattr(settings, f.name)) for f in fields(settings) if f.init}}


def jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------- setting checks (InputError names the setting)

def optional_root(root: Any) -> str | None:
    """A directory path setting (str) or None."""
    if root is not None and (not isinstance(root, (str, os.PathLike)) or not str(root)):
        raise InputError(f'root: expected a directory path or None, got {root!r}')
    return None if root is None else str(root)


def number_list(setting: str, value: Any, length: int) -> Sequence:
    """``value`` if it is a list/tuple of ``length`` items (checked one by one by the caller)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != length:
        raise InputError(f'{setting}: expected a list of {length} numbers, got {value!r}')
    return value


def boolean(setting: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f'{setting}: expected true or false, got {value!r}')
    return bool(value)


def checked_int(setting: str, value: Any, minimum: int = 1) -> int:
    """An int (not a bool) of at least ``minimum``; gRPC/JSON integral floats are not accepted here."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f'{setting}: expected an integer >= {minimum}, got {value!r}')
    return int(value)


def optional_int(setting: str, value: Any, minimum: int = 1) -> int | None:
    return None if value is None else checked_int(setting, value, minimum)


def number(setting: str, value: Any, low: float | None = None, high: float | None = None,
           low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """A finite number within the given bounds, as float."""
    is_number = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    above_low = low is None or (is_number and (value >= low if low_inclusive else value > low))
    below_high = high is None or (is_number and (value <= high if high_inclusive else value < high))
    if not (is_number and above_low and below_high):
        interval = ('(-inf' if low is None else ('[' if low_inclusive else '(') + f'{low:g}') + ', ' + \
                   ('inf)' if high is None else f'{high:g}' + (']' if high_inclusive else ')'))
        raise InputError(f'{setting}: expected a number in {interval}, got {value!r}')
    return float(value)


def ordered_pair(setting: str, value: Any, low: float, high: float | None = None) -> tuple[float, float]:
    """``(min, max)`` with low < min <= max <= high."""
    first, second = (number(setting, item, low, high, low_inclusive=False) for item in number_list(setting, value, 2))
    if first > second:
        raise InputError(f'{setting}: expected [min, max] with min <= max, got {value!r}')
    return first, second
