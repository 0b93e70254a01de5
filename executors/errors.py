"""Errors raised for bad user input.

Every message names the offending field and says how to fix it, e.g.
``InputError("labels: expected one label per embedding (got 3 labels for 4 embeddings); pass labels of shape (4,)")``.
"""


class InputError(ValueError):
    """Bad user data or settings: the message names the field and the fix."""


def positive_int(field: str, value) -> int:
    """``value`` if it is an ``int`` (not a bool) of at least 1, else InputError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f'{field}: must be a positive integer, got {value!r}')
    return value
