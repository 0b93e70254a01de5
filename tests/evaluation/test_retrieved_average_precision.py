"""mAP-retrieved: AP@k normalised by the relevant items found in the top k (the text scenario's mAP@10)."""
import numpy as np
import pytest

from executors.errors import InputError
from executors.evaluation.metrics import (
    average_precision_at_k,
    evaluate_embeddings,
    retrieval_metrics,
    retrieved_average_precision_at_k,
)


def test_hand_computed_values():
    relevance = np.array([[1, 0, 1, 0],    # (1/1 + 2/3) / 2
                          [0, 1, 0, 0],    # (1/2) / 1
                          [0, 0, 0, 0],    # nothing found: 0
                          [1, 1, 1, 1],    # 1
                          [0, 0, 0, 0]])   # no relevant item exists: undefined
    num_relevant = np.array([5, 1, 3, 4, 0])
    values = retrieved_average_precision_at_k(relevance, num_relevant)
    np.testing.assert_allclose(values[:4], [(1 + 2 / 3) / 2, 0.5, 0.0, 1.0])
    assert np.isnan(values[4])
    # the min(k, R)-normalised AP divides the first row by 4, not by the 2 found
    assert average_precision_at_k(relevance, num_relevant)[0] == pytest.approx((1 + 2 / 3) / 4)
    at_2 = retrieved_average_precision_at_k(relevance, num_relevant, k=2)
    np.testing.assert_allclose(at_2[:4], [1.0, 0.5, 0.0, 1.0])


def test_through_retrieval_metrics_and_not_by_default():
    relevance = np.array([[1, 0, 1], [0, 1, 1]])
    num_relevant = np.array([2, 2])
    chosen = retrieval_metrics(relevance, num_relevant, k=3, metrics=['mAP-retrieved', 'mAP'])
    assert chosen['mAP-retrieved@3'] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert chosen['mAP@3'] == pytest.approx(chosen['mAP-retrieved@3'])  # both relevant items found: equal
    assert 'mAP-retrieved@3' not in retrieval_metrics(relevance, num_relevant, k=3)


def test_evaluate_embeddings_brute_force():
    rng = np.random.default_rng(0)
    queries, index = rng.normal(size=(20, 4)), rng.normal(size=(50, 4))
    query_labels, index_labels = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    got = evaluate_embeddings(queries, query_labels, index, index_labels, k=5, metrics=['mAP-retrieved'])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = []
    for q in range(20):
        ranked = np.argsort(-(unit(index) @ unit(queries[q:q + 1])[0]))[:5]
        hits = index_labels[ranked] == query_labels[q]
        precisions = [hits[:r + 1].mean() for r in range(5)]
        expected.append(sum(p for p, h in zip(precisions, hits) if h) / hits.sum() if hits.any() else 0.0)
    assert got['mAP-retrieved@5'] == pytest.approx(np.mean(expected))


def test_unknown_metric_name_lists_the_extra_names():
    with pytest.raises(InputError, match='mAP-retrieved'):
        retrieval_metrics(np.ones((1, 2)), np.array([2]), k=2, metrics=['mAP-found'])
