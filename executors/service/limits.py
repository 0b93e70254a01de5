"""Size limits on what a request may bring in, set per executor in ``config.yml`` / ``uses_with``
(``limits: {max_docs: 1000, ...}``).

A document over a limit is refused before anything is stored (HTTP 413 through the service's
gateway), so no stored document can break a later search (e.g. tags nested deeper than
protobuf's recursion limit, or a huge text returned with every match).
"""
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

import numpy as np

from executors.errors import InputError, TooLargeError, bounded_int


@dataclass(frozen=True)
class RequestLimits:
    """``max_docs``: documents per request; ``max_text_chars``/``max_uri_chars``: string lengths;
    ``max_tags_depth``: nesting of ``tags`` (a flat dict is depth 1); ``max_tags_bytes``: size of
    ``tags`` as JSON; ``max_tensor_elements``: elements of ``tensor``; ``max_limit``: the largest
    ``limit`` of ``/search``; ``max_page``: the largest page (``/model/missing`` ``limit``, ids per
    ``/get`` or ``/delete``)."""

    max_docs: int = 1000
    max_text_chars: int = 100_000
    max_uri_chars: int = 4096
    max_tags_depth: int = 4
    max_tags_bytes: int = 65_536
    max_tensor_elements: int = 4_000_000
    max_limit: int = 1000
    max_page: int = 10_000

    @classmethod
    def from_config(cls, config: Optional[Dict[str, Any]]) -> 'RequestLimits':
        """Limits from a ``limits`` mapping; unknown names and non-positive values are errors."""
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise InputError(f'limits: unknown limit(s) {sorted(unknown)}; known: {sorted(known)}')
        for name, value in config.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f'limits.{name}: must be a positive integer, got {value!r}')
        return cls(**config)

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)

    def check_count(self, endpoint: str, count: int) -> None:
        if count > self.max_docs:
            raise TooLargeError(f'docs: {count} documents in one request to {endpoint}; at most {self.max_docs} '
                                f'(limits.max_docs) are accepted: send them in several requests')

    def check_docs(self, endpoint: str, docs) -> None:
        """TooLargeError naming ``docs[i].<field>`` for the first document over a limit."""
        self.check_count(endpoint, len(docs))
        for i, doc in enumerate(docs):
            self.check_doc(f'docs[{i}]', doc)

    def check_doc(self, where: str, doc) -> None:
        for name, maximum in (('text', self.max_text_chars), ('uri', self.max_uri_chars)):
            value = getattr(doc, name, None)
            if value is not None and len(value) > maximum:
                raise TooLargeError(f'{where}.{name}: {len(value)} characters; at most {maximum} '
                                    f'(limits.max_{name}_chars)')
        tensor = getattr(doc, 'tensor', None)
        if tensor is not None and np.size(tensor) > self.max_tensor_elements:
            raise TooLargeError(f'{where}.tensor: {np.size(tensor)} elements; at most {self.max_tensor_elements} '
                                '(limits.max_tensor_elements)')
        tags = getattr(doc, 'tags', None) or {}
        depth = nesting_depth(tags)
        if depth > self.max_tags_depth:
            raise TooLargeError(f'{where}.tags: nested {depth} levels deep; at most {self.max_tags_depth} '
                                '(limits.max_tags_depth)')
        try:
            size = len(json.dumps(tags))
        except (TypeError, ValueError) as e:
            raise InputError(f'{where}.tags: not JSON-serialisable ({e}); use strings, numbers, booleans, '
                             'lists and mappings') from e
        if size > self.max_tags_bytes:
            raise TooLargeError(f'{where}.tags: {size} bytes as JSON; at most {self.max_tags_bytes} '
                                '(limits.max_tags_bytes)')

    def check_limit(self, field: str, value: Any) -> int:
        return bounded_int(field, value, self.max_limit)

    def check_page(self, field: str, value: Any) -> int:
        return bounded_int(field, value, self.max_page)


def nesting_depth(value: Any, _depth: int = 0) -> int:
    """Levels of mappings/lists in ``value`` (a scalar is 0, ``{}`` or ``{'a': 1}`` is 1);
    stops counting a few levels past any sane limit, so a deep value costs little."""
    if _depth > 64:
        return _depth
    if isinstance(value, dict):
        return 1 + max((nesting_depth(v, _depth + 1) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((nesting_depth(v, _depth + 1) for v in value), default=0)
    return 0
