"""File paths named by documents (``uri``), confined to a data root directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from executors.errors import InputError


def resolve_uri(uri: Any, root: str | os.PathLike) -> Path:
    """Absolute path of an existing file named by ``uri`` inside ``root``.

    Relative uris are taken from root; absolute paths and 'file://' uris must lie inside it. The
    check runs on the resolved path (symlinks followed), so '..' or links cannot escape root.
    """
    if not isinstance(uri, str) or not uri:
        raise InputError(f'uri: expected a non-empty file path, got {uri!r}')
    parts = urlsplit(uri)
    if parts.scheme == 'file':
        relative_or_absolute = unquote(parts.path)
    elif '://' in uri:
        raise InputError(f'uri: scheme {parts.scheme!r} of {uri!r} is not supported; give a file path inside the root directory')
    else:
        relative_or_absolute = uri
    root_path = Path(root).resolve()
    try:
        path = (root_path / relative_or_absolute).resolve()
        is_file = path.is_file()
    except (OSError, ValueError) as error:  # e.g. a NUL byte or a name too long
        raise InputError(f'uri: {uri!r} is not a usable file path ({error})') from error
    if not path.is_relative_to(root_path):
        raise InputError(f'uri: {uri!r} points outside the root directory; give a path inside it')
    if not is_file:
        raise InputError(f'uri: file {uri!r} not found in the root directory')
    return path


def resolve_in_root(uri: Any, root: str | None) -> Path:
    """:func:`resolve_uri`, refusing every uri when no root is configured."""
    if root is None:
        raise InputError("uri: file paths are refused because no root directory is configured; "
                         "set 'root' in the decoding spec (the Preprocessor's data_root) to the directory holding the files")
    return resolve_uri(uri, root)
