"""Merging the answers of index shards (Jina-free).

With ``shards: N`` and ``polling`` ALL for every endpoint every shard answers every request from the documents it
holds (:func:`shard_of`); the :class:`~executors.shard_merger.ShardMerger` turns the ``N`` answers
into the answer one index holding everything gives:

* ``/search``: :func:`merge_top_k`, the ``limit`` best by score (descending; equal scores keep
  shard order), with their fields;
* ``/search/evaluate``: each shard answers its top-k with labels and, per query label, how many of
  its docs carry it (:func:`evaluation_part`); :func:`merge_evaluation` merges the top-k, sums the
  relevant counts and computes the metrics (:func:`evaluation_report`, the unsharded computation);
* ``/get``: each shard answers every asked id in order, its stored doc or a bare ``Doc(id)``
  placeholder (:func:`merge_get`: the stored one wins; an id no shard holds is a 404);
* ``/delete``: each shard reports as ``not_found`` the ids it does not hold; an id is not found
  when no shard holds it (:func:`merge_delete`); counts are summed (``/count``, ``/update``...).

A shard never raises for an id another shard may hold (an error of one shard is lost in Jina's
merge); bad input fails in every shard alike, and reaches the client.
"""
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from executors.errors import NotFoundError
from executors.evaluation.metrics import label_relevance, retrieval_metrics

EVALUATION_METRICS = ['hit', 'precision', 'recall', 'mAP', 'NDCG']


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that owns ``doc_id``: ``crc32(utf-8 id) mod shards`` (stable across processes)."""
    return zlib.crc32(doc_id.encode()) % shards


def merge_top_k(answers: Sequence[Tuple[List[str], np.ndarray, Dict[str, List[Any]]]], limit: int
                ) -> Tuple[List[str], np.ndarray, Dict[str, List[Any]]]:
    """``answers``: per shard ``(ids [n_s], scores [n_s], {field: [n_s values]})`` of one query;
    returns the merged ``(ids [k], scores [k], fields)`` with ``k = min(limit, sum n_s)``."""
    ids = [i for shard_ids, _, _ in answers for i in shard_ids]
    scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for _, s, _ in answers]) if answers \
        else np.zeros(0, np.float32)
    names = list(answers[0][2]) if answers else []
    order = np.argsort(-scores, kind='stable')[:int(limit)]
    fields = {name: [v for _, _, f in answers for v in f.get(name, [])] for name in names}
    return [ids[i] for i in order], scores[order], {name: [values[i] for i in order] for name, values in fields.items()}


def not_indexed(field: str, unknown: Sequence[str], fix: str = '') -> NotFoundError:
    """The 404 for ids no shard holds (the same text sharded or not)."""
    return NotFoundError(f'{field}: {len(unknown)} id(s) not indexed: {list(unknown[:10])}{fix}')


def merge_get(answers: Sequence[Sequence[Any]]) -> List[Any]:
    """Per position the doc some shard holds (placeholders carry no label, content or tags);
    raises the 404 naming the ids no shard holds."""
    merged, unknown = [], []
    for docs in zip(*answers):
        held = [d for d in docs if not is_placeholder(d)]
        merged.append(held[0] if held else docs[0])
        if not held:
            unknown.append(docs[0].id)
    if unknown:
        raise not_indexed('parameters.ids', unknown)
    return merged


def is_placeholder(doc) -> bool:
    """A bare ``Doc(id)`` a shard answers ``/get`` with for an id it does not hold."""
    return doc.label is None and doc.text is None and doc.uri is None and doc.tensor is None and not doc.tags


def merge_delete(reports: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``deleted`` and ``num_docs`` summed; ``not_found``: the ids every shard reports missing, in order."""
    missing = [set(r['not_found']) for r in reports[1:]]
    return {'deleted': sum(r['deleted'] for r in reports),
            'not_found': [i for i in reports[0]['not_found'] if all(i in m for m in missing)],
            'num_docs': sum(r['num_docs'] for r in reports)}


def evaluation_report(version: Optional[int], k: int, query_labels: Sequence[str],
                      match_labels: Sequence[Sequence[Optional[str]]], label_counts: Dict[str, int]) -> Dict[str, Any]:
    """``/search/evaluate``'s answer: relevance ``b[q, j] = 1`` iff match ``j`` of query ``q`` has its
    label, ``R_q = label_counts[label_q]`` (stored docs with the label, all shards); hit@k,
    precision@k, recall@k, mAP@k, NDCG@k averaged over the queries with ``R_q > 0``."""
    labels = np.empty((len(query_labels), k), dtype=object)
    for i, row in enumerate(match_labels):
        labels[i, :len(row)] = row
    relevance = label_relevance(np.asarray(query_labels, dtype=object), labels)
    num_relevant = np.asarray([label_counts.get(label, 0) for label in query_labels])
    metrics = retrieval_metrics(relevance, num_relevant, k, metrics=EVALUATION_METRICS)
    return {'model_version': version, 'k': k, 'num_queries': len(query_labels),
            'num_queries_with_relevant': int((num_relevant > 0).sum()), 'metrics': metrics}


def evaluation_part(version: Optional[int], k: int, query_labels: Sequence[str], ids: Sequence[Sequence[str]],
                    scores: Sequence[np.ndarray], match_labels: Sequence[Sequence[Optional[str]]],
                    label_counts: Dict[str, int]) -> Dict[str, Any]:
    """One shard's part of ``/search/evaluate`` (JSON-able): its top-k per query and its counts of
    the query labels."""
    return {'shard_part': {'model_version': version, 'k': k, 'query_labels': list(query_labels),
                           'ids': [list(i) for i in ids], 'scores': [np.asarray(s, np.float64).tolist() for s in scores],
                           'labels': [list(row) for row in match_labels],
                           'label_counts': {label: int(label_counts.get(label, 0)) for label in set(query_labels)}}}


def merge_evaluation(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The unsharded ``/search/evaluate`` answer from the shards' :func:`evaluation_part`\ s."""
    first = parts[0]
    k, query_labels = int(first['k']), first['query_labels']
    merged_labels = []
    for q in range(len(query_labels)):
        _, _, fields = merge_top_k([(p['ids'][q], np.asarray(p['scores'][q], np.float32), {'label': p['labels'][q]})
                                    for p in parts], k)
        merged_labels.append(fields['label'])
    counts: Dict[str, int] = {}
    for part in parts:
        for label, n in part['label_counts'].items():
            counts[label] = counts.get(label, 0) + int(n)
    return evaluation_report(first['model_version'], k, query_labels, merged_labels, counts)
