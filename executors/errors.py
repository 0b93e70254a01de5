"""Errors raised for bad user input, and the HTTP status each one maps to.

Every message names the offending field and says how to fix it, e.g.
``InputError("labels: expected one label per embedding (got 3 labels for 4 embeddings); pass labels of shape (4,)")``.
The service's HTTP gateway answers an :class:`InputError` (or a subclass) with its
``http_status`` and the message; any other exception is a fault of the service (500).
"""


class InputError(ValueError):
    """Bad user data or settings: the message names the field and the fix (HTTP 400)."""

    http_status = 400


class NotFoundError(InputError):
    """The request names something that does not exist (a doc id, a model version) (HTTP 404)."""

    http_status = 404


class ConflictError(InputError):
    """The request is valid but conflicts with the service's state (a fit already running,
    a swap in progress) (HTTP 409)."""

    http_status = 409


class TooLargeError(InputError):
    """The request or one of its documents is over a configured size limit (HTTP 413)."""

    http_status = 413


class RetryableError(RuntimeError):
    """Not the client's fault and not a lasting fault of the service: the request met a passing
    state (e.g. a query embedded by a model version whose index generation was dropped after a
    swap); sending it again works (HTTP 503)."""

    http_status = 503


def http_status_of(error_name: str) -> int:
    """The HTTP status for an exception class name as Jina reports it (500 if not a user error)."""
    for kind in (InputError, NotFoundError, ConflictError, TooLargeError, RetryableError):
        if kind.__name__ == error_name:
            return kind.http_status
    return 500


def positive_int(field: str, value) -> int:
    """``value`` if it is an ``int`` (not a bool) of at least 1, else InputError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f'{field}: must be a positive integer, got {value!r}')
    return value


def bounded_int(field: str, value, maximum: int, minimum: int = 1) -> int:
    """``value`` if it is an int in ``[minimum, maximum]``; else InputError (TooLargeError above
    ``maximum``) naming ``field`` and the bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f'{field}: must be an integer from {minimum} to {maximum}, got {value!r}')
    if value > maximum:
        raise TooLargeError(f'{field}: must be an integer from {minimum} to {maximum}, got {value!r}; '
                            f'the maximum is set in the executor\'s config.yml / uses_with')
    return value
