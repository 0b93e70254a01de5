"""Retrieval metrics over ranked neighbour lists, and embedding evaluation with faiss.

Shapes and conventions shared by the core metrics:

* ``relevance``: ``ndarray[Q, K]``, row ``q`` holds the relevance of the neighbours of query ``q`` in rank
  order (column 0 is the nearest). Values are 0/1 or non-negative graded gains. Every metric except NDCG
  treats ``relevance > 0`` as "relevant"; NDCG uses the gains themselves.
* ``num_relevant``: ``ndarray[Q]``, how many relevant items exist in the whole index for query ``q``
  (not only among the ``K`` returned neighbours), so it is at least the count of relevant entries in row ``q``.
* ``k``: rank cutoff, ``1 <= k <= K``; ``None`` means ``k = K``. Only the first ``k`` columns are used.
* Queries with ``num_relevant == 0`` have no defined score: the per-query functions return ``NaN`` for them
  and ``retrieval_metrics`` averages over the other queries only. If no query has a relevant item,
  ``retrieval_metrics`` raises ``InputError``.

Below, ``rel_i`` is the relevance at rank ``i`` (1-based), ``b_i = [rel_i > 0]``, ``R = num_relevant`` and
``P@i = (b_1 + ... + b_i) / i``.
"""

from collections import Counter
from typing import Iterable

import faiss
import numpy as np

from executors.errors import InputError

METRIC_NAMES = ("hit", "precision", "recall", "mAP", "NDCG", "MRR", "R-precision")
"""Names ``retrieval_metrics`` computes by default; result keys add ``@k`` to all but 'MRR' and 'R-precision'."""

EXTRA_METRIC_NAMES = ("mAP-retrieved",)
"""Further names ``retrieval_metrics(metrics=...)`` accepts (not computed by default)."""

DISTANCES = ("cosine", "euclidean")


def hit_at_k(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """hit@k per query: ``1`` if any of the top ``k`` neighbours is relevant, else ``0``. Returns ``ndarray[Q]``."""
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_hit(gains > 0), num_relevant)


def precision_at_k(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """precision@k per query: ``(b_1 + ... + b_k) / k``. Returns ``ndarray[Q]``.

    With label relevance (``label_relevance``) this is the label purity of the ``k``-neighbourhood: the
    fraction of the ``k`` nearest neighbours that share the query's label.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_precision(gains > 0), num_relevant)


def recall_at_k(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """recall@k per query: ``(b_1 + ... + b_k) / R``. Returns ``ndarray[Q]``."""
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_recall(gains > 0, num_relevant), num_relevant)


def average_precision_at_k(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """Average precision at ``k`` per query (its mean over queries is mAP@k). Returns ``ndarray[Q]``.

    ``AP@k = sum_{i<=k} P@i * b_i / min(k, R)``.

    Dividing by ``min(k, R)`` rather than ``R`` lets a perfect top-``k`` ranking score 1 even when ``R > k``.
    When the ranking covers every item (``k = K`` = index size, so ``min(k, R) = R``) this equals
    ``sklearn.metrics.average_precision_score(b, scores)`` for strictly decreasing ``scores``.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_average_precision(gains > 0, num_relevant), num_relevant)


def retrieved_average_precision_at_k(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """Average precision at ``k`` normalised by the relevant items *retrieved* (metric name ``'mAP-retrieved'``).

    ``AP_ret@k = sum_{i<=k} P@i * b_i / sum_{i<=k} b_i``, and 0 when the top ``k`` holds no relevant item.

    This is the mAP@k of the text scenario (and of docarray/Jina's ``average_precision``); it only
    judges the order of what was found, so it is >= :func:`average_precision_at_k`, equal when
    ``min(k, R)`` relevant items are retrieved.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_retrieved_average_precision(gains > 0), num_relevant)


def ndcg_at_k(relevance, num_relevant, k: int | None = None, ideal_gains=None) -> np.ndarray:
    """NDCG@k per query with linear gains. Returns ``ndarray[Q]``.

    ``DCG@k = sum_{i<=k} rel_i / log2(i + 1)`` and ``NDCG@k = DCG@k / IDCG@k``, where ``IDCG@k`` is the
    DCG@k of the best possible ranking:

    * binary relevance (``ideal_gains=None``, ``relevance`` must be 0/1): ``min(k, R)`` ones first,
      ``IDCG@k = sum_{i <= min(k, R)} 1 / log2(i + 1)``;
    * graded relevance: ``ideal_gains: ndarray[Q, M]`` holds the gains of all relevant index items of
      each query (any order, zero-padded); the ``k`` largest, sorted descending, give ``IDCG@k``.
      Row ``q`` must have exactly ``num_relevant[q]`` positive entries.

    Equals ``sklearn.metrics.ndcg_score(y_true, y_score, k=k)`` when ``y_true`` holds all items' gains,
    ``relevance`` is ``y_true`` ordered by strictly decreasing ``y_score`` and ``ideal_gains = y_true``.
    For exponential gains pass ``2 ** gain - 1`` as both ``relevance`` and ``ideal_gains``.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    ideal_gains = _validated_ideal_gains(ideal_gains, gains, num_relevant)
    return _nan_where_undefined(_ndcg(gains, num_relevant, ideal_gains), num_relevant)


def reciprocal_rank(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """Reciprocal rank per query (its mean is MRR): ``1 / i`` for the first ``i <= k`` with ``b_i = 1``, else ``0``.

    Returns ``ndarray[Q]``.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_reciprocal_rank(gains > 0), num_relevant)


def r_precision(relevance, num_relevant, k: int | None = None) -> np.ndarray:
    """R-precision per query, truncated at ``k``: ``P@c`` with ``c = min(R, k)``. Returns ``ndarray[Q]``.

    This is the exact R-precision ``P@R`` whenever the ranking is at least ``R`` deep (``k >= R``); for
    ``R > k`` it is ``P@k``, so, like ``average_precision_at_k``, a perfect top-``k`` ranking scores 1.
    """
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    return _nan_where_undefined(_r_precision(gains > 0, num_relevant), num_relevant)


def metric_keys(k: int, metrics: Iterable[str] | None = None) -> list[str]:
    """The result keys of ``retrieval_metrics`` at cutoff ``k``: ``'hit@k'``, ..., ``'MRR'``, ``'R-precision'``."""
    return [name if name in ("MRR", "R-precision") else f"{name}@{k}" for name in _validated_metric_names(metrics)]


def retrieval_metrics(
    relevance, num_relevant, k: int | None, metrics: Iterable[str] | None = None, ideal_gains=None
) -> dict[str, float]:
    """Mean of each per-query metric over the queries with ``num_relevant > 0``.

    ``metrics``: names from ``METRIC_NAMES`` (default: all). Keys of the result: ``'hit@k'``,
    ``'precision@k'``, ``'recall@k'``, ``'mAP@k'``, ``'NDCG@k'`` (with the value of ``k``; ``k=None`` means
    all ``K`` columns and keys with ``@K``), ``'MRR'`` and
    ``'R-precision'``; the last two also only see the top ``k`` (see ``reciprocal_rank``, ``r_precision``).
    ``ideal_gains`` is passed to ``ndcg_at_k`` for graded relevance.
    """
    names = _validated_metric_names(metrics)
    gains, num_relevant = _validated_ranking(relevance, num_relevant, k)
    is_relevant = gains > 0
    k = gains.shape[1]
    has_relevant = num_relevant > 0
    if not has_relevant.any():
        raise InputError(
            "num_relevant: every query has num_relevant == 0, so no metric is defined; "
            "evaluate queries that have at least one relevant item in the index"
        )
    per_query = {
        "hit": lambda: _hit(is_relevant),
        "precision": lambda: _precision(is_relevant),
        "recall": lambda: _recall(is_relevant, num_relevant),
        "mAP": lambda: _average_precision(is_relevant, num_relevant),
        "mAP-retrieved": lambda: _retrieved_average_precision(is_relevant),
        "NDCG": lambda: _ndcg(gains, num_relevant, _validated_ideal_gains(ideal_gains, gains, num_relevant)),
        "MRR": lambda: _reciprocal_rank(is_relevant),
        "R-precision": lambda: _r_precision(is_relevant, num_relevant),
    }
    result = {}
    for name in names:
        key = name if name in ("MRR", "R-precision") else f"{name}@{k}"
        result[key] = float(per_query[name]()[has_relevant].mean())
    return result


def label_relevance(query_labels, neighbour_labels) -> np.ndarray:
    """Binary relevance from labels: ``out[q, j] = 1.0 if neighbour_labels[q, j] == query_labels[q] else 0.0``.

    ``query_labels: [Q]``, ``neighbour_labels: [Q, K]`` -> ``ndarray[Q, K]`` (float).
    """
    query_labels = np.asarray(query_labels)
    neighbour_labels = np.asarray(neighbour_labels)
    if query_labels.ndim != 1:
        raise InputError(f"query_labels: expected a 1-D array of shape (Q,), got shape {query_labels.shape}")
    if neighbour_labels.ndim != 2 or neighbour_labels.shape[0] != len(query_labels):
        raise InputError(
            f"neighbour_labels: expected shape ({len(query_labels)}, K), one row per query label, "
            f"got shape {neighbour_labels.shape}"
        )
    return (neighbour_labels == query_labels[:, None]).astype(float)


def nearest_neighbours(
    query_embeddings, index_embeddings, k: int, distance: str = "cosine", exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-nearest neighbours with faiss.

    ``query_embeddings: [Q, D]``, ``index_embeddings: [N, D]`` (float) -> ``(indices, distances)``, both
    ``[Q, k]``, nearest first; ``indices`` are int64 rows of ``index_embeddings``, ``distances`` float32.

    * ``distance='cosine'``: inner product of L2-normalised vectors (``faiss.IndexFlatIP``), reported as
      ``1 - cos(q, x)``; zero vectors are rejected.
    * ``distance='euclidean'``: ``faiss.IndexFlatL2``, reported as ``||q - x||_2`` (not squared).

    ``exclude_self=True``: queries and index are the same set (``Q == N``), query ``i`` is index item ``i``
    and is never its own neighbour, so ``k <= N - 1``. Other items at distance 0 are still returned.
    The order of items at equal distance is faiss's.
    """
    queries = _validated_embeddings("query_embeddings", query_embeddings)
    index_vectors = _validated_embeddings("index_embeddings", index_embeddings)
    if queries.shape[1] != index_vectors.shape[1]:
        raise InputError(
            f"index_embeddings: dimension {index_vectors.shape[1]} differs from query_embeddings dimension "
            f"{queries.shape[1]}; embed both with the same model"
        )
    if distance not in DISTANCES:
        raise InputError(f"distance: got {distance!r}; use one of {DISTANCES}")
    if exclude_self and len(queries) != len(index_vectors):
        raise InputError(
            f"exclude_self: needs the query set to be the index set, got {len(queries)} queries and "
            f"{len(index_vectors)} index items; pass exclude_self=False for a separate index"
        )
    available = len(index_vectors) - 1 if exclude_self else len(index_vectors)
    _check_k(k, available, "index items other than the query itself" if exclude_self else "index items")

    if distance == "cosine":
        queries = _unit_rows("query_embeddings", queries)
        index_vectors = _unit_rows("index_embeddings", index_vectors)
        index = faiss.IndexFlatIP(queries.shape[1])
    else:
        index = faiss.IndexFlatL2(queries.shape[1])
    index.add(index_vectors)
    search_k = k + 1 if exclude_self else k
    scores, indices = index.search(queries, search_k)

    if exclude_self:
        is_other = indices != np.arange(len(queries))[:, None]
        # stable sort moves the (at most one) self match to the end and keeps the rest in rank order
        keep = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
        indices = np.take_along_axis(indices, keep, axis=1)
        scores = np.take_along_axis(scores, keep, axis=1)
    if distance == "cosine":
        distances = 1.0 - scores
    else:
        distances = np.sqrt(np.maximum(scores, 0.0))
    return indices.astype(np.int64), distances.astype(np.float32)


def evaluate_embeddings(
    query_embeddings,
    query_labels,
    index_embeddings=None,
    index_labels=None,
    k: int = 10,
    distance: str = "cosine",
    metrics: Iterable[str] | None = None,
) -> dict[str, float]:
    """Retrieval metrics of labelled embeddings: an index item is relevant to a query iff their labels are equal.

    ``query_embeddings: [Q, D]``, ``query_labels: [Q]``; optional ``index_embeddings: [N, D]`` with
    ``index_labels: [N]``. Without an index, each query is searched against the other queries
    (leave-one-out: the query itself is neither a neighbour nor counted in ``num_relevant``).
    ``num_relevant[q]`` = number of index items labelled ``query_labels[q]``; queries with none are left
    out of the averages. Returns ``retrieval_metrics(...)`` of the top-``k`` neighbours.
    """
    queries = _validated_embeddings("query_embeddings", query_embeddings)
    query_labels = _validated_labels("query_labels", query_labels, len(queries), "query_embeddings")
    leave_one_out = index_embeddings is None
    if leave_one_out:
        if index_labels is not None:
            raise InputError("index_labels: given without index_embeddings; pass both or neither")
        index_vectors, index_labels = queries, query_labels
    else:
        if index_labels is None:
            raise InputError("index_labels: required with index_embeddings; pass one label per index item")
        index_vectors = _validated_embeddings("index_embeddings", index_embeddings)
        index_labels = _validated_labels("index_labels", index_labels, len(index_vectors), "index_embeddings")
    _validated_metric_names(metrics)

    indices, _ = nearest_neighbours(queries, index_vectors, k, distance=distance, exclude_self=leave_one_out)
    relevance = label_relevance(query_labels, index_labels[indices])
    label_counts = Counter(index_labels.tolist())
    num_relevant = np.array([label_counts[label] for label in query_labels.tolist()], dtype=np.int64)
    if leave_one_out:
        num_relevant -= 1
    if not (num_relevant > 0).any():
        raise InputError(
            "query_labels: no query label occurs among the index labels (other than the query itself), "
            "so nothing can be retrieved; check that queries and index share labels"
        )
    return retrieval_metrics(relevance, num_relevant, k, metrics)


def _hit(is_relevant: np.ndarray) -> np.ndarray:
    return is_relevant.any(axis=1).astype(float)


def _precision(is_relevant: np.ndarray) -> np.ndarray:
    return is_relevant.sum(axis=1) / is_relevant.shape[1]


def _recall(is_relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    return is_relevant.sum(axis=1) / np.maximum(num_relevant, 1)


def _average_precision(is_relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    k = is_relevant.shape[1]
    precision_at_rank = np.cumsum(is_relevant, axis=1) / np.arange(1, k + 1)
    return (precision_at_rank * is_relevant).sum(axis=1) / np.maximum(np.minimum(num_relevant, k), 1)


def _retrieved_average_precision(is_relevant: np.ndarray) -> np.ndarray:
    k = is_relevant.shape[1]
    precision_at_rank = np.cumsum(is_relevant, axis=1) / np.arange(1, k + 1)
    return (precision_at_rank * is_relevant).sum(axis=1) / np.maximum(is_relevant.sum(axis=1), 1)


def _ndcg(gains: np.ndarray, num_relevant: np.ndarray, ideal_gains: np.ndarray | None) -> np.ndarray:
    k = gains.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = gains @ discounts
    if ideal_gains is None:
        ideal_dcg = np.cumsum(discounts)[np.clip(np.minimum(num_relevant, k) - 1, 0, None)]
    else:
        best_first = -np.sort(-ideal_gains, axis=1)[:, :k]
        ideal_dcg = best_first @ discounts[: best_first.shape[1]]
    return np.divide(dcg, ideal_dcg, out=np.zeros_like(dcg), where=ideal_dcg > 0)


def _reciprocal_rank(is_relevant: np.ndarray) -> np.ndarray:
    first_rank = is_relevant.argmax(axis=1) + 1
    return np.where(is_relevant.any(axis=1), 1.0 / first_rank, 0.0)


def _r_precision(is_relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    cutoff = np.clip(num_relevant, 1, is_relevant.shape[1])
    within_cutoff = np.arange(is_relevant.shape[1]) < cutoff[:, None]
    return (is_relevant & within_cutoff).sum(axis=1) / cutoff


def _nan_where_undefined(values: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    return np.where(num_relevant > 0, values, np.nan)


def _check_k(k, available: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected an integer >= 1, got {k!r}")
    if k > available:
        raise InputError(f"k: {k} is larger than the {available} {what}; use k <= {available}")


def _validated_ranking(relevance, num_relevant, k) -> tuple[np.ndarray, np.ndarray]:
    """Checks the shared inputs; returns (top-``k`` gains: float ``[Q, k]``, ``num_relevant``: int64 ``[Q]``)."""
    relevance = _validated_gains("relevance", relevance)
    num_relevant = np.asarray(num_relevant)
    if num_relevant.shape != (relevance.shape[0],):
        raise InputError(
            f"num_relevant: expected shape ({relevance.shape[0]},), one count per relevance row, "
            f"got shape {num_relevant.shape}"
        )
    if not np.issubdtype(num_relevant.dtype, np.number) or np.iscomplexobj(num_relevant):
        raise InputError(f"num_relevant: expected non-negative integer counts, got dtype {num_relevant.dtype}")
    if not (np.isfinite(num_relevant).all() and (num_relevant >= 0).all() and (num_relevant % 1 == 0).all()):
        raise InputError("num_relevant: expected non-negative integer counts")
    num_relevant = num_relevant.astype(np.int64)
    found = (relevance > 0).sum(axis=1)
    if (found > num_relevant).any():
        q = int(np.argmax(found > num_relevant))
        raise InputError(
            f"num_relevant: query {q} has {found[q]} relevant neighbours in relevance but num_relevant[{q}] = "
            f"{num_relevant[q]}; num_relevant must count all relevant items in the index"
        )
    if k is None:
        k = relevance.shape[1]
    _check_k(k, relevance.shape[1], "ranked neighbours per query (relevance columns)")
    return relevance[:, :k], num_relevant


def _validated_gains(field: str, gains) -> np.ndarray:
    gains = np.asarray(gains)
    if gains.ndim != 2 or 0 in gains.shape:
        raise InputError(f"{field}: expected a non-empty 2-D array (queries, items), got shape {gains.shape}")
    if gains.dtype != bool and (not np.issubdtype(gains.dtype, np.number) or np.iscomplexobj(gains)):
        raise InputError(f"{field}: expected real 0/1 or graded gains, got dtype {gains.dtype}")
    gains = gains.astype(float)
    if not (np.isfinite(gains).all() and (gains >= 0).all()):
        raise InputError(f"{field}: expected finite, non-negative gains")
    return gains


def _validated_ideal_gains(ideal_gains, gains: np.ndarray, num_relevant: np.ndarray) -> np.ndarray | None:
    if ideal_gains is None:
        if not np.isin(gains, (0.0, 1.0)).all():
            raise InputError(
                "relevance: graded gains need ideal_gains for the ideal DCG; pass ideal_gains=[Q, M] "
                "with the gains of each query's relevant items"
            )
        return None
    ideal_gains = _validated_gains("ideal_gains", ideal_gains)
    if ideal_gains.shape[0] != gains.shape[0]:
        raise InputError(
            f"ideal_gains: expected {gains.shape[0]} rows, one per query, got shape {ideal_gains.shape}"
        )
    if ((ideal_gains > 0).sum(axis=1) != num_relevant).any():
        raise InputError("ideal_gains: row q must have exactly num_relevant[q] positive gains")
    return ideal_gains


def _validated_metric_names(metrics) -> tuple[str, ...]:
    if metrics is None:
        return METRIC_NAMES
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [name for name in names if name not in METRIC_NAMES + EXTRA_METRIC_NAMES]
    if unknown or not names:
        raise InputError(f"metrics: unknown or empty {unknown or names}; "
                         f"choose from {METRIC_NAMES + EXTRA_METRIC_NAMES}")
    return names


def _validated_embeddings(field: str, embeddings) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or 0 in embeddings.shape:
        raise InputError(
            f"{field}: expected a non-empty 2-D array (items, dimensions), got shape {embeddings.shape}"
        )
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InputError(
            f"{field}: expected floating-point values, got dtype {embeddings.dtype}; cast with .astype(np.float32)"
        )
    if not np.isfinite(embeddings).all():
        raise InputError(f"{field}: contains NaN or infinite values; check the model outputs")
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def _validated_labels(field: str, labels, expected_length: int, embeddings_field: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != expected_length:
        raise InputError(
            f"{field}: expected one label per row of {embeddings_field}, shape ({expected_length},), "
            f"got shape {labels.shape}"
        )
    return labels


def _unit_rows(field: str, embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.argmax(norms[:, 0] == 0))
        raise InputError(
            f"{field}: row {row} is a zero vector, whose cosine distance is undefined; "
            "remove it or use distance='euclidean'"
        )
    return np.ascontiguousarray(embeddings / norms, dtype=np.float32)
