"""Label assignment rules: one document's plain fields -> a class label string.

A rule's ``label(tags=..., uri=..., tensor=..., text=...)`` returns the label, or None when the
document lacks what the rule reads (no uri, no such tag, no regex match). Rules are dataclasses
whose init fields are their settings; ``build_rule(spec)`` makes one from a JSON-able spec such as
``{'rule': 'numeric_bins', 'column': 1, 'num_bins': 5}`` and ``rule.to_spec()`` writes it back, so a
trained model can store how its labels were made.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np

from executors.data.schema import tag_text
from executors.data.specs import build_from_spec
from executors.errors import InputError

LABEL_FIELDS = ('tags', 'uri', 'tensor', 'text')
"""Document fields a rule reads; ``assign_labels`` passes these keys of each document dict."""

PAIR_FILE_NAME_PATTERN = r'^(?P<pair>.+?)[_-](?P<side>left|right|a|b)\.\w+$'


def uri_path_segments(uri: str) -> list[str]:
    """Non-empty '/'-separated segments of a uri's path: 'file:///d/cats/1.jpg' -> ['d', 'cats', '1.jpg'].

    Backslashes count as separators; a scheme, host and query are dropped.
    """
    path = urlsplit(uri).path if '://' in uri else uri
    return [segment for segment in path.replace('\\', '/').split('/') if segment]


class LabelRule(ABC):
    """Maps one document's fields to a label string, or None when the document lacks what the rule reads."""

    name: ClassVar[str]

    @abstractmethod
    def label(self, *, tags: dict | None = None, uri: str | None = None, tensor: Any = None,
              text: str | None = None) -> str | None:
        """The document's label, or None when it has no value for this rule."""

    @property
    @abstractmethod
    def needs(self) -> str:
        """What a document must have to get a label, for error messages."""

    def to_spec(self) -> dict:
        """JSON-able spec that ``build_rule`` turns back into an equal rule."""
        return {'rule': self.name, **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}


@dataclass
class TagRule(LabelRule):
    """label = tag_text(tags[tag])."""

    name: ClassVar[str] = 'tag'
    tag: str = 'finetuner_label'

    def __post_init__(self):
        _check_nonempty_str('tag', self.tag)

    def label(self, *, tags=None, uri=None, tensor=None, text=None):
        if not tags or tags.get(self.tag) is None:
            return None
        return tag_text(tags[self.tag]) or None

    @property
    def needs(self):
        return f'tags[{self.tag!r}]'


@dataclass
class UriSegmentRule(LabelRule):
    """label = uri_path_segments(uri)[segment]; e.g. 'data/cats/001.jpg' with segment -2 -> 'cats'."""

    name: ClassVar[str] = 'uri_segment'
    segment: int = -2

    def __post_init__(self):
        self.segment = _checked_int('segment', self.segment)

    def label(self, *, tags=None, uri=None, tensor=None, text=None):
        if not uri:
            return None
        segments = uri_path_segments(uri)
        if not -len(segments) <= self.segment < len(segments):
            raise InputError(
                f'uri: {uri!r} has {len(segments)} path segment(s), so segment {self.segment} does not exist; '
                f"set the rule's 'segment' within {-len(segments)}..{len(segments) - 1} or store files as <label>/<file>")
        return segments[self.segment]

    @property
    def needs(self):
        return 'a uri'


@dataclass
class RegexRule(LabelRule):
    """label = re.search(pattern, value).group(group), value = the doc's uri, text or tags['<name>'] (field 'tags.<name>')."""

    name: ClassVar[str] = 'regex'
    pattern: str
    field: str = 'uri'
    group: int | str = 1
    _regex: re.Pattern = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._regex = _compile_pattern(self.pattern)
        is_tag_field = isinstance(self.field, str) and self.field.startswith('tags.') and len(self.field) > len('tags.')
        if self.field not in ('uri', 'text') and not is_tag_field:
            raise InputError(f"field: expected 'uri', 'text' or 'tags.<name>', got {self.field!r}")
        if isinstance(self.group, str):
            known = self.group in self._regex.groupindex
        else:
            self.group = _checked_int('group', self.group)
            known = 0 <= self.group <= self._regex.groups
        if not known:
            raise InputError(
                f'group: pattern {self.pattern!r} has no group {self.group!r}; use 0..{self._regex.groups} '
                f'or one of the named groups {sorted(self._regex.groupindex)}')

    def label(self, *, tags=None, uri=None, tensor=None, text=None):
        if self.field == 'uri':
            value = uri
        elif self.field == 'text':
            value = text
        else:
            tag = (tags or {}).get(self.field[len('tags.'):])
            value = None if tag is None else tag_text(tag)
        match = None if value is None else self._regex.search(value)
        return (match.group(self.group) or None) if match else None

    @property
    def needs(self):
        return f'{self.field} matching {self.pattern!r}'


@dataclass
class NumericBinsRule(LabelRule):
    """Equal-width bins of one vector entry: label = str(b) with b in 0..num_bins-1,

    b = min(num_bins - 1, max(0, floor((tensor[column] - low) / (high - low) * num_bins))).

    Values at ``high`` go in the last bin, values outside [low, high] in the end bins. ``low``/``high``
    left None are set by ``fit`` (to the batch's min/max) and then kept, so labels stay stable across
    requests.
    """

    name: ClassVar[str] = 'numeric_bins'
    column: int
    num_bins: int
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        self.column = _checked_int('column', self.column)
        self.num_bins = _checked_int('num_bins', self.num_bins, minimum=1)
        for setting in ('low', 'high'):
            value = getattr(self, setting)
            if value is not None:
                setattr(self, setting, _finite_float(setting, value))
        self._check_bounds_order()

    @property
    def is_fitted(self) -> bool:
        return self.low is not None and self.high is not None

    def fit(self, values: Sequence[float] | np.ndarray) -> NumericBinsRule:
        """Set whichever of low/high is None to min/max of ``values`` (the column's values in a batch)."""
        column_values = np.asarray(values, dtype=np.float64).ravel()
        if column_values.size == 0:
            raise InputError(f"tensor: no documents with a tensor to fit bins on column {self.column}; "
                             "send vectors or set 'low' and 'high' in the rule spec")
        if not np.isfinite(column_values).all():
            raise InputError(f'tensor: column {self.column} holds NaN or infinite values; clean the vectors')
        if self.low is None:
            self.low = float(column_values.min())
        if self.high is None:
            self.high = float(column_values.max())
        self._check_bounds_order()
        return self

    def column_value(self, tensor: Any) -> float:
        """tensor[column] of a 1-D vector, as a float."""
        vector = np.asarray(tensor)
        if vector.ndim != 1 or not -vector.shape[0] <= self.column < vector.shape[0]:
            raise InputError(f'tensor: expected a 1-D vector with a column {self.column}, got shape {vector.shape}')
        return float(vector[self.column])

    def bin_index(self, value: float) -> int:
        """The bin b of ``value`` (formula in the class docstring)."""
        if not self.is_fitted:
            raise InputError("low/high: the bins are not fitted; set 'low' and 'high' in the rule spec "
                             'or fit the rule on a batch (assign_labels does)')
        if not math.isfinite(value):
            raise InputError(f'tensor: column {self.column} is {value}; expected a finite number')
        position = math.floor((value - self.low) / (self.high - self.low) * self.num_bins)
        return min(self.num_bins - 1, max(0, position))

    def label(self, *, tags=None, uri=None, tensor=None, text=None):
        if tensor is None:
            return None
        return str(self.bin_index(self.column_value(tensor)))

    @property
    def needs(self):
        return f'a 1-D tensor with a column {self.column}'

    def _check_bounds_order(self):
        if self.is_fitted and not self.low < self.high:
            raise InputError(f'low/high: expected low < high, got low={self.low}, high={self.high} '
                             f'(column {self.column} may hold a single value); set distinct low and high in the rule spec')


@dataclass
class PairByFileNameRule(LabelRule):
    """label = the 'pair' group of ``pattern`` searched in the uri's file name: '0001_left.jpg' and '0001_right.jpg' -> '0001'."""

    name: ClassVar[str] = 'pair_by_file_name'
    pattern: str = PAIR_FILE_NAME_PATTERN
    _regex: re.Pattern = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._regex = _compile_pattern(self.pattern)
        if 'pair' not in self._regex.groupindex:
            raise InputError(f"pattern: {self.pattern!r} has no named group 'pair'; "
                             "mark the shared part of the file name with (?P<pair>...)")

    def label(self, *, tags=None, uri=None, tensor=None, text=None):
        segments = uri_path_segments(uri) if uri else []
        match = self._regex.search(segments[-1]) if segments else None
        return (match.group('pair') or None) if match else None

    @property
    def needs(self):
        return f'a uri whose file name matches {self.pattern!r}'


RULES: dict[str, type[LabelRule]] = {
    rule.name: rule for rule in (TagRule, UriSegmentRule, RegexRule, NumericBinsRule, PairByFileNameRule)}


def build_rule(spec: Mapping[str, Any]) -> LabelRule:
    """A rule from its spec: {'rule': <one of RULES>, **settings}; settings are the rule class's init fields."""
    return build_from_spec(spec, 'rule', RULES, 'label rule', 'label rule', "{'rule': 'tag', 'tag': 'finetuner_label'}")


def assign_labels(rule: LabelRule, docs_fields: Sequence[Mapping[str, Any]], require: bool = True) -> list[str | None]:
    """Label of each document dict (keys from LABEL_FIELDS; 'id' is used in messages; other keys are ignored).

    An unfitted NumericBinsRule is first fitted on this batch's tensors. With ``require`` a document
    without a label raises InputError naming its index, id and the rule.
    """
    if isinstance(rule, NumericBinsRule) and not rule.is_fitted:
        column_values = []
        for index, doc_fields in enumerate(docs_fields):
            with about_doc(index, doc_fields):
                if doc_fields.get('tensor') is not None:
                    column_values.append(rule.column_value(doc_fields['tensor']))
        rule.fit(column_values)
    labels = []
    for index, doc_fields in enumerate(docs_fields):
        with about_doc(index, doc_fields):
            label = rule.label(**{key: doc_fields.get(key) for key in LABEL_FIELDS})
            if label is None and require:
                raise InputError(f'no label from rule {rule.to_spec()}, which needs {rule.needs}; '
                                 'add that to the document or choose another rule')
        labels.append(label)
    return labels


@contextmanager
def about_doc(index: int, doc_fields: Any) -> Iterator[None]:
    """Prefix InputErrors raised inside with 'docs[index] (id ...): '; also rejects a document that is not a dict."""
    where = f'docs[{index}]'
    if isinstance(doc_fields, Mapping) and doc_fields.get('id') is not None:
        where += f" (id {doc_fields['id']!r})"
    if not isinstance(doc_fields, Mapping):
        raise InputError(f'{where}: expected a dict of document fields, got {type(doc_fields).__name__}')
    try:
        yield
    except InputError as error:
        raise InputError(f'{where}: {error}') from error


def _compile_pattern(pattern: Any) -> re.Pattern:
    _check_nonempty_str('pattern', pattern)
    try:
        return re.compile(pattern)
    except re.error as error:
        raise InputError(f'pattern: {pattern!r} is not a valid regular expression ({error}); fix the pattern') from error


def _check_nonempty_str(setting: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f'{setting}: expected a non-empty string, got {value!r}')


def _checked_int(setting: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (minimum is not None and value < minimum):
        bound = '' if minimum is None else f' >= {minimum}'
        raise InputError(f'{setting}: expected an integer{bound}, got {value!r}')
    return int(value)


def _finite_float(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InputError(f'{setting}: expected a finite number, got {value!r}')
    return float(value)
