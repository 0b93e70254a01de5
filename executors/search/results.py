"""Client helpers for the search flow's compact answers and bulk ingest.

A ``/search`` answer carries its matches on each query doc (no nested documents)::

    {"id": "...", "model_version": 2,
     "match_ids": ["p17", "p4", ...],                  # best first
     "match_scores": [0.93, 0.91, ...],                # similarity, higher is closer
     "match_fields": {"label": ["a", "b", ...]}}       # the `fields` asked for, one value per match

:func:`matches` turns one answer (a ``Doc`` or its JSON dict) into ``[{'id', 'score', <field>...}]``;
:func:`bulk_batches` cuts ids + an ``[N, ...]`` array into :class:`Batch` docs for ``/index/bulk``
(or, without ids, queries for ``/search/bulk``, whose answers :func:`bulk_matches` reads).
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from executors.data.schema import Batch


def matches(answer) -> List[Dict[str, Any]]:
    """``[{'id': ..., 'score': ..., **fields}]`` of one answered query, best first."""
    get = answer.get if isinstance(answer, dict) else lambda name: getattr(answer, name)
    ids = list(get('match_ids') or [])
    scores = get('match_scores')
    scores = [] if scores is None else np.asarray(scores, dtype=np.float64).tolist()
    fields = get('match_fields') or {}
    return [{'id': doc_id, 'score': score, **{name: values[i] for name, values in fields.items()}}
            for i, (doc_id, score) in enumerate(zip(ids, scores))]


def bulk_matches(answer) -> List[List[Dict[str, Any]]]:
    """Per query row of a ``/search/bulk`` answer (a ``Batch`` or its JSON dict), its matches as
    :func:`matches` gives them."""
    get = answer.get if isinstance(answer, dict) else lambda name: getattr(answer, name)
    counts = np.asarray(get('match_counts') if get('match_counts') is not None else [], dtype=np.int64)
    scores = np.asarray(get('match_scores') if get('match_scores') is not None else np.zeros((0, 0)), dtype=np.float64)
    ids, fields = list(get('match_ids') or []), get('match_fields') or {}
    k = scores.shape[1] if scores.ndim == 2 else 0
    return [[{'id': ids[row * k + j], 'score': float(scores[row, j]),
              **{name: values[row * k + j] for name, values in fields.items()}} for j in range(int(n))]
            for row, n in enumerate(counts)]


def bulk_batches(ids: Optional[Sequence[str]], tensor: np.ndarray, labels: Optional[Sequence[Optional[str]]] = None,
                 tags: Optional[Sequence[Dict[str, Any]]] = None, batch_size: int = 1000) -> Iterator[Batch]:
    """:class:`Batch` docs of up to ``batch_size`` rows: ``client.post('/index/bulk', list(...))``,
    or pass them one per request (``request_size=1``; for queries add ``results_in_order=True``: Jina's
    client otherwise returns answers in the order they complete)."""
    tensor = np.asarray(tensor)
    if ids is None:  # queries for /search/bulk
        for start in range(0, len(tensor), batch_size):
            yield Batch(tensor=tensor[start:start + batch_size])
        return
    if len(ids) != len(tensor):
        raise ValueError(f'ids: {len(ids)} ids for {len(tensor)} rows of tensor')
    for start in range(0, len(ids), batch_size):
        end = start + batch_size
        yield Batch(ids=list(ids[start:end]), tensor=tensor[start:end],
                    labels=None if labels is None else list(labels[start:end]),
                    tags=None if tags is None else [dict(t) for t in tags[start:end]])
