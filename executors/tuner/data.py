"""Training data: detect its kind and turn it into model inputs with integer labels.

Three kinds, as in the old Finetuner; a mix of kinds in one dataset is an error:

* class data: every item has a label (``doc.label`` or ``tags['finetuner_label']``);
* session data: a query doc whose ``matches`` are labelled ``+1`` (relevant) or ``-1``;
* instance data: no labels at all; each item becomes its own class and two views of it
  are made by ``preprocess_fn`` (which should augment randomly), i.e. self-supervised.

Accepted inputs: a sequence of :class:`executors.data.schema.Doc` (or any objects with the same
fields) or a tuple ``(inputs, labels)`` of arrays / lists of equal length.

Inputs holding NaN or inf are refused with an :class:`InputError` naming the item: as arrays when the
data is read, and as model input after ``preprocess_fn``/``collate_fn`` when a batch is built.

Session data is reduced to labels: a query and its ``+1`` matches share one label, every
``-1`` match gets a label of its own, so any class-data loss applies. Batches hold whole
sessions (``SessionSampler``); items of other sessions in a batch act as extra negatives,
as in-batch negatives do.
"""
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from docarray import BaseDoc

from executors.data.schema import LEGACY_LABEL_TAG, doc_label
from executors.errors import InputError
from executors.models.inference import default_collate, doc_content

CLASS, SESSION, INSTANCE = 'class', 'session', 'instance'


@dataclass
class LabeledItems:
    """``contents[i]`` (raw model input: array, text or uri) with class id ``labels[i]``."""

    kind: str
    contents: List[Any]
    labels: np.ndarray  # int64 [N]
    label_names: List[str]
    views_per_item: int = 1  # instance data: 2 augmented views per item
    sessions: Optional[np.ndarray] = None  # session data: session id per item [N] (batches keep sessions whole)
    field: str = 'train_data'  # the argument the items came from (named in errors)

    def __len__(self) -> int:
        return len(self.contents)


def _match_target(match) -> Optional[int]:
    value = match.label if getattr(match, 'label', None) is not None else match.tags.get(LEGACY_LABEL_TAG)
    if value is None:
        return None
    try:
        target = int(float(value))
    except (TypeError, ValueError):
        target = None
    if target not in (1, -1):
        raise InputError(f'matches[{match.id}].label: session matches are labelled +1 or -1, got {value!r}')
    return target


def _check_finite(value, where: str) -> None:
    """InputError naming ``where`` if ``value`` is a numeric array holding NaN or inf."""
    if isinstance(value, np.ndarray) and value.dtype.kind in 'fc' and not np.isfinite(value).all():
        raise InputError(f'{where}: holds NaN or inf values, which would turn every weight into NaN; '
                         'fix or drop this item')


def _item_where(field: str, index: int, doc=None) -> str:
    doc_id = getattr(doc, 'id', None)
    return f'{field}[{index}]' + (f' (id {doc_id})' if doc_id is not None else '')


def detect_kind(docs: Sequence, field: str = 'train_data') -> str:
    """``'class'``, ``'session'`` or ``'instance'``; InputError for an empty set or a mix."""
    if len(docs) == 0:
        raise InputError(f'{field}: is empty; send at least two labelled items')
    kinds = set()
    for doc in docs:
        if getattr(doc, 'matches', None):
            kinds.add(SESSION)
        elif doc_label(doc) is not None:
            kinds.add(CLASS)
        else:
            kinds.add(INSTANCE)
    if len(kinds) > 1:
        raise InputError(
            f'{field}: mixes {" and ".join(sorted(kinds))} data; use one kind per fit '
            '(label every item, or give every query labelled matches, or label none)'
        )
    return kinds.pop()


def _encode_labels(names: Sequence[str]):
    label_names = sorted(set(names), key=lambda s: (len(s), s))
    index = {name: i for i, name in enumerate(label_names)}
    return np.asarray([index[n] for n in names], dtype=np.int64), label_names


def to_labeled_items(data, require_classes: int = 2, field: str = 'train_data') -> LabeledItems:
    """Normalise ``data`` (docs or ``(inputs, labels)``) into :class:`LabeledItems`.

    ``require_classes``: class data with fewer distinct labels is rejected, since metric
    learning needs negatives. ``field`` names the argument in error messages.
    """
    if isinstance(data, tuple) and len(data) == 2 and not any(isinstance(x, BaseDoc) for x in data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise InputError(f'{field}: {len(inputs)} inputs but {len(labels)} labels; pass one label per input')
        # a numeric array stays one array, so make_batch can gather a batch in one step
        contents = inputs if isinstance(inputs, np.ndarray) and inputs.dtype.kind in 'biuf' else list(inputs)
        if isinstance(contents, np.ndarray) and contents.dtype.kind == 'f' and not np.isfinite(contents).all():
            bad = int(np.flatnonzero(~np.isfinite(contents.reshape(len(contents), -1)).all(axis=1))[0])
            _check_finite(contents[bad], f'{field}[0][{bad}]')
        elif not isinstance(contents, np.ndarray):
            for index, value in enumerate(contents):
                _check_finite(np.asarray(value) if isinstance(value, (list, tuple)) else value,
                              f'{field}[0][{index}]')
        ids, names = _encode_labels([str(x) for x in (labels.tolist() if hasattr(labels, 'tolist') else labels)])
        items = LabeledItems(CLASS, contents, ids, names)
    else:
        docs = list(data)
        kind = detect_kind(docs, field)
        for index, doc in enumerate(docs):
            tensor = getattr(doc, 'tensor', None)
            _check_finite(None if tensor is None else np.asarray(tensor), _item_where(field, index, doc))
            for position, match in enumerate(getattr(doc, 'matches', None) or []):
                tensor = getattr(match, 'tensor', None)
                _check_finite(None if tensor is None else np.asarray(tensor),
                              f'{_item_where(field, index, doc)}.matches[{position}]')
        if kind == CLASS:
            ids, names = _encode_labels([doc_label(d) for d in docs])
            items = LabeledItems(CLASS, [doc_content(d) for d in docs], ids, names)
        elif kind == INSTANCE:
            contents = [doc_content(d) for d in docs]
            items = LabeledItems(INSTANCE, contents, np.arange(len(docs), dtype=np.int64),
                                 [str(getattr(d, 'id', i)) for i, d in enumerate(docs)], views_per_item=2)
        else:
            contents, names, sessions = [], [], []
            for session, doc in enumerate(docs):
                contents.append(doc_content(doc))
                names.append(f'{doc.id}')
                sessions.extend([session] * (1 + len(doc.matches)))
                for match in doc.matches:
                    target = _match_target(match)
                    if target is None:
                        raise InputError(f'matches[{match.id}].label: missing; label each match +1 or -1')
                    contents.append(doc_content(match))
                    names.append(f'{doc.id}' if target == 1 else f'{doc.id}/neg/{match.id}')
            ids, label_names = _encode_labels(names)
            items = LabeledItems(SESSION, contents, ids, label_names, sessions=np.asarray(sessions, dtype=np.int64))
    if items.kind == CLASS and len(items.label_names) < require_classes:
        raise InputError(
            f'{field}: has {len(items.label_names)} class(es) {items.label_names[:5]}; '
            f'metric learning needs at least {require_classes} labels so that negatives exist'
        )
    items.field = field
    return items


def align_labels(items: LabeledItems, reference: LabeledItems) -> LabeledItems:
    """``items`` (class data) with labels numbered as in ``reference`` (the training data): a label name
    present in training gets its training id, an unseen one a new id ``>= len(reference.label_names)``.
    Other kinds are returned unchanged."""
    if items.kind != CLASS or reference.kind != CLASS:
        return items
    names = list(reference.label_names)
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for label in items.labels.tolist():
        name = items.label_names[label]
        if name not in index:
            index[name] = len(names)
            names.append(name)
        ids.append(index[name])
    return LabeledItems(items.kind, items.contents, np.asarray(ids, dtype=np.int64), names,
                        items.views_per_item, items.sessions, items.field)


def _check_finite_batch(items: LabeledItems, indices: np.ndarray, batch) -> None:
    """InputError naming the first item whose model input (a float tensor, or one per key) is not finite."""
    import torch

    tensors = batch.values() if isinstance(batch, Mapping) else [batch]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and len(tensor) == len(indices):
            finite = torch.isfinite(tensor.reshape(len(tensor), -1)).all(dim=1)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0, 0])
                raise InputError(f'{items.field}[{int(indices[row])}]: its model input (after preprocess_fn and '
                                 'collate_fn) holds NaN or inf values; fix or drop this item')


def make_batch(items: LabeledItems, indices: Sequence[int], preprocess_fn: Optional[Callable],
               collate_fn: Optional[Callable]):
    """``(model_input_batch, labels[B])`` for the given item indices (2 views each for instance data)."""
    import torch

    indices = np.repeat(np.asarray(indices, dtype=np.int64), items.views_per_item)  # views of an item adjacent
    if preprocess_fn is None and collate_fn is None and isinstance(items.contents, np.ndarray):
        batch = torch.from_numpy(items.contents[indices])  # what default_collate gives, without per-row stacking
        return (batch.float() if batch.is_floating_point() else batch), torch.from_numpy(items.labels[indices])
    contents = [items.contents[i] for i in indices]
    if preprocess_fn is not None:
        contents = [preprocess_fn(c) for c in contents]
    batch = (collate_fn or default_collate)(contents)
    _check_finite_batch(items, indices, batch)
    return batch, torch.from_numpy(items.labels[indices])
