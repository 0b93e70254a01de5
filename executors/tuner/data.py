"""Training data: detect its kind and turn it into model inputs with integer labels.

Three kinds, as in the old Finetuner; a mix of kinds in one dataset is an error:

* class data: every item has a label (``doc.label`` or ``tags['finetuner_label']``);
* session data: a query doc whose ``matches`` are labelled ``+1`` (relevant) or ``-1``;
* instance data: no labels at all; each item becomes its own class and two views of it
  are made by ``preprocess_fn`` (which should augment randomly), i.e. self-supervised.

Accepted inputs: a sequence of :class:`executors.data.schema.Doc` (or any objects with the same
fields) or a tuple ``(inputs, labels)`` of arrays / lists of equal length.

Session data is reduced to labels: a query and its ``+1`` matches share one label, every
``-1`` match gets a label of its own, so any class-data loss applies. Batches hold whole
sessions (``SessionSampler``); items of other sessions in a batch act as extra negatives,
as in-batch negatives do.
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from docarray import BaseDoc

from executors.models.inference import default_collate, doc_content
from executors.errors import InputError
from executors.data.schema import LEGACY_LABEL_TAG, doc_label

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
        ids, names = _encode_labels([str(x) for x in (labels.tolist() if hasattr(labels, 'tolist') else labels)])
        items = LabeledItems(CLASS, contents, ids, names)
    else:
        docs = list(data)
        kind = detect_kind(docs, field)
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
    return items


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
    return batch, torch.from_numpy(items.labels[indices])
