"""Search filters on a document's ``label`` and ``tags``, compiled to a SQLite condition.

A filter is a mapping of field to condition; all conditions must hold (AND)::

    {'label': 'cat'}                                   equality
    {'label': {'$in': ['cat', 'dog']}}                 one of
    {'tags.color': {'$ne': 'red'}}                     not equal (docs without the tag match too)
    {'tags.price': {'$gte': 10, '$lt': 20}}            numeric range ($gt, $gte, $lt, $lte)
    {'tags.size.width': 3}                             a nested tag, by a dotted path

Fields are ``label`` or ``tags.<name>[.<name>...]`` (names of letters, digits, ``_``, ``-``);
values are strings, numbers or booleans. The compiled condition binds every value and path
as a parameter: nothing from a request becomes SQL text.
"""
import re
from typing import Any, List, Tuple

from executors.errors import InputError

OPERATORS = {'$eq': '=', '$ne': '!=', '$gt': '>', '$gte': '>=', '$lt': '<', '$lte': '<=', '$in': 'IN'}
MAX_CONDITIONS = 32
MAX_IN_VALUES = 1000
_TAG_NAME = re.compile(r'^[A-Za-z0-9_-]{1,64}$')


def _column(field: Any) -> Tuple[str, tuple]:
    if field == 'label':
        return 'label', ()
    if isinstance(field, str) and field.startswith('tags.'):
        names = field[len('tags.'):].split('.')
        if names and all(_TAG_NAME.match(n) for n in names):
            return 'json_extract(tags, ?)', ('$.' + '.'.join(f'"{n}"' for n in names),)
    raise InputError(f'parameters.filter: unknown field {field!r}; filter on "label" or "tags.<name>" '
                     '(names of letters, digits, "_" and "-", nested names joined by ".")')


def _scalar(field: str, value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    raise InputError(f'parameters.filter.{field}: expected a string, number or boolean, got {value!r}')


def compile_filter(spec: Any) -> Tuple[str, List[Any]]:
    """``(condition, args)`` for ``SELECT ... WHERE <condition>``; InputError naming the bad part."""
    if not isinstance(spec, dict) or not spec:
        raise InputError(f'parameters.filter: expected a non-empty mapping of field to condition, e.g. '
                         f'{{"label": "cat", "tags.price": {{"$lt": 10}}}}, got {spec!r}')
    clauses, args = [], []
    for field, condition in spec.items():
        column, column_args = _column(field)
        conditions = condition if isinstance(condition, dict) else {'$eq': condition}
        if not conditions:
            raise InputError(f'parameters.filter.{field}: empty condition; use a value or operators '
                             f'{sorted(OPERATORS)}')
        for op, value in conditions.items():
            if op not in OPERATORS:
                raise InputError(f'parameters.filter.{field}: unknown operator {op!r}; use {sorted(OPERATORS)}')
            if len(clauses) >= MAX_CONDITIONS:
                raise InputError(f'parameters.filter: more than {MAX_CONDITIONS} conditions')
            if op == '$in':
                if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
                    raise InputError(f'parameters.filter.{field}.$in: expected a list of 1 to {MAX_IN_VALUES} '
                                     f'values, got {value!r}')
                clauses.append(f'{column} IN ({",".join("?" * len(value))})')
                args.extend(column_args + tuple(_scalar(field, v) for v in value))
                continue
            value = _scalar(field, value)
            if op in ('$gt', '$gte', '$lt', '$lte') and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InputError(f'parameters.filter.{field}.{op}: expected a number, got {value!r}')
            if op == '$ne':
                clauses.append(f'({column} IS NULL OR {column} != ?)')
                args.extend(column_args + column_args + (value,))
            elif op == '$eq':
                clauses.append(f'{column} = ?')
                args.extend(column_args + (value,))
            else:  # numbers only: SQLite orders every text after every number
                clauses.append(f"(typeof({column}) IN ('integer', 'real') AND {column} {OPERATORS[op]} ?)")
                args.extend(column_args + column_args + (value,))
    return ' AND '.join(clauses), args
