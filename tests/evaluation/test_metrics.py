import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from executors.errors import InputError
from executors.evaluation.metrics import (
    METRIC_NAMES,
    average_precision_at_k,
    evaluate_embeddings,
    hit_at_k,
    label_relevance,
    ndcg_at_k,
    nearest_neighbours,
    precision_at_k,
    r_precision,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
)

# rows: two hits, R < k | hits at ranks 2-4, R = k | no hit | perfect | R = 0 (undefined)
RELEVANCE = np.array(
    [
        [1, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)
NUM_RELEVANT = np.array([2, 5, 3, 2, 0])


def dcg(*gains):
    """DCG of gains at ranks 1, 2, ...: sum_i g_i / log2(i + 1)."""
    return sum(gain / np.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


EXPECTED_AT_5 = {
    hit_at_k: [1, 1, 0, 1, np.nan],
    precision_at_k: [2 / 5, 3 / 5, 0, 2 / 5, np.nan],
    recall_at_k: [2 / 2, 3 / 5, 0, 2 / 2, np.nan],
    # sum_i P@i * b_i / min(k, R)
    average_precision_at_k: [(1 / 1 + 2 / 3) / 2, (1 / 2 + 2 / 3 + 3 / 4) / 5, 0, (1 + 1) / 2, np.nan],
    ndcg_at_k: [dcg(1, 0, 1) / dcg(1, 1), dcg(0, 1, 1, 1) / dcg(1, 1, 1, 1, 1), 0, 1, np.nan],
    reciprocal_rank: [1, 1 / 2, 0, 1, np.nan],
    r_precision: [1 / 2, 3 / 5, 0, 2 / 2, np.nan],  # P@R
}

EXPECTED_AT_2 = {
    hit_at_k: [1, 1, 0, 1, np.nan],
    precision_at_k: [1 / 2, 1 / 2, 0, 1, np.nan],
    recall_at_k: [1 / 2, 1 / 5, 0, 1, np.nan],
    average_precision_at_k: [1 / 2, (1 / 2) / 2, 0, 1, np.nan],
    ndcg_at_k: [dcg(1) / dcg(1, 1), dcg(0, 1) / dcg(1, 1), 0, 1, np.nan],
    reciprocal_rank: [1, 1 / 2, 0, 1, np.nan],
    r_precision: [1 / 2, 1 / 2, 0, 1, np.nan],  # P@min(R, k)
}


@pytest.mark.parametrize("metric", list(EXPECTED_AT_5), ids=lambda f: f.__name__)
def test_metric_matches_hand_computed_values(metric):
    np.testing.assert_allclose(metric(RELEVANCE, NUM_RELEVANT), EXPECTED_AT_5[metric])
    np.testing.assert_allclose(metric(RELEVANCE, NUM_RELEVANT, k=5), EXPECTED_AT_5[metric])
    np.testing.assert_allclose(metric(RELEVANCE, NUM_RELEVANT, k=2), EXPECTED_AT_2[metric])


def test_graded_ndcg_with_ideal_gains():
    relevance = np.array([[0, 3, 1], [2, 2, 1], [2, 0, 2]])
    ideal_gains = np.array([[3, 1, 2, 0], [2, 1, 2, 0], [2, 2, 1, 1]])
    num_relevant = np.array([3, 3, 4])
    expected = [
        dcg(0, 3, 1) / dcg(3, 2, 1),
        1.0,  # tied gains 2, 2: either order is ideal
        dcg(2, 0, 2) / dcg(2, 2, 1),
    ]
    np.testing.assert_allclose(ndcg_at_k(relevance, num_relevant, ideal_gains=ideal_gains), expected)
    np.testing.assert_allclose(
        ndcg_at_k(relevance, num_relevant, k=1, ideal_gains=ideal_gains), [0 / 3, 2 / 2, 2 / 2]
    )


def test_graded_gains_count_as_relevant_for_binary_metrics():
    relevance = np.array([[0, 3, 0.5]])
    np.testing.assert_allclose(precision_at_k(relevance, [2]), [2 / 3])
    np.testing.assert_allclose(reciprocal_rank(relevance, [2]), [1 / 2])


def test_ranks_after_k_are_ignored():
    relevance = np.array([[0, 0, 1, 1]])
    assert hit_at_k(relevance, [2], k=2)[0] == 0
    assert reciprocal_rank(relevance, [2], k=2)[0] == 0
    assert reciprocal_rank(relevance, [2])[0] == pytest.approx(1 / 3)


def test_average_precision_matches_sklearn_on_full_rankings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 2, size=12)
        truth[rng.integers(12)] = 1
        scores = rng.permutation(12).astype(float)  # distinct, so the ranking has no ties
        relevance = truth[np.argsort(-scores)][None, :]
        ours = average_precision_at_k(relevance, [truth.sum()], k=12)[0]
        assert ours == pytest.approx(average_precision_score(truth, scores))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_ndcg_matches_sklearn(k):
    rng = np.random.default_rng(k)
    gains = rng.integers(0, 4, size=(6, 8)).astype(float)
    gains[:, 0] += 1  # every query has a relevant item
    scores = np.stack([rng.permutation(8) for _ in range(6)]).astype(float)
    relevance = np.take_along_axis(gains, np.argsort(-scores, axis=1), axis=1)
    num_relevant = (gains > 0).sum(axis=1)
    ours = ndcg_at_k(relevance, num_relevant, k=k, ideal_gains=gains)
    expected = [ndcg_score(gains[q : q + 1], scores[q : q + 1], k=k) for q in range(6)]
    np.testing.assert_allclose(ours, expected)

    binary = (gains > 1).astype(float)
    keep = binary.sum(axis=1) > 0
    binary_relevance = np.take_along_axis(binary, np.argsort(-scores, axis=1), axis=1)[keep]
    ours = ndcg_at_k(binary_relevance, binary.sum(axis=1)[keep], k=k)
    np.testing.assert_allclose(ours, [ndcg_score(b[None], s[None], k=k) for b, s in zip(binary[keep], scores[keep])])


def test_retrieval_metrics_averages_over_queries_with_relevant_items():
    result = retrieval_metrics(RELEVANCE, NUM_RELEVANT, k=2)
    assert list(result) == ["hit@2", "precision@2", "recall@2", "mAP@2", "NDCG@2", "MRR", "R-precision"]
    for name, metric in zip(METRIC_NAMES, EXPECTED_AT_2):
        key = name if name in ("MRR", "R-precision") else f"{name}@2"
        assert result[key] == pytest.approx(np.mean(EXPECTED_AT_2[metric][:4]))  # query 4 has R = 0


def test_retrieval_metrics_subset_and_graded():
    result = retrieval_metrics([[2, 0, 1]], [2], k=3, metrics=["NDCG", "MRR"], ideal_gains=[[2, 1]])
    assert result == {"NDCG@3": pytest.approx(dcg(2, 0, 1) / dcg(2, 1)), "MRR": 1.0}


def test_label_relevance():
    relevance = label_relevance(["a", "b"], [["a", "b", "a"], ["c", "c", "b"]])
    np.testing.assert_array_equal(relevance, [[1, 0, 1], [0, 0, 1]])


def test_nearest_neighbours_cosine_and_euclidean():
    index = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    indices, distances = nearest_neighbours([[2.0, 0.0]], index, k=3)
    np.testing.assert_array_equal(indices, [[0, 2, 1]])
    np.testing.assert_allclose(distances, [[0.0, 1 - 1 / np.sqrt(2), 1.0]], atol=1e-6)

    indices, distances = nearest_neighbours([[0.0, -1.0]], index, k=2, distance="euclidean")
    np.testing.assert_array_equal(indices, [[0, 1]])
    np.testing.assert_allclose(distances, [[np.sqrt(2), 3.0]], atol=1e-6)


def test_exclude_self_with_tied_duplicates():
    # five identical vectors: each query ties at distance 0 with itself and four others
    points = np.vstack([np.ones((5, 3)), [[1.0, -1.0, 0.0]]]).astype(np.float32)
    indices, distances = nearest_neighbours(points, points, k=2, exclude_self=True)
    for query in range(5):
        assert query not in indices[query]
        assert set(indices[query]) <= set(range(5)) - {query}
        np.testing.assert_allclose(distances[query], 0.0, atol=1e-6)
    assert 5 not in indices[5]
    indices, _ = nearest_neighbours(points, points, k=5, distance="euclidean", exclude_self=True)
    assert all(query not in row for query, row in enumerate(indices))


# points on a line; labels a a b b a; no tied distances
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0], [4.5, 0.0]])
LINE_LABELS = np.array(["a", "a", "b", "b", "a"])


def test_evaluate_leave_one_out():
    # neighbours (k=2): 0->[1,4] 1->[0,4] 2->[3,4] 3->[2,4] 4->[1,0]; num_relevant = [2, 2, 1, 1, 2]
    result = evaluate_embeddings(LINE, LINE_LABELS, k=2, distance="euclidean")
    expected = {"hit@2": 1, "precision@2": (1 + 1 + 1 / 2 + 1 / 2 + 1) / 5, "recall@2": 1, "mAP@2": 1,
                "NDCG@2": 1, "MRR": 1, "R-precision": 1}
    assert result == pytest.approx(expected)


def test_evaluate_separate_index():
    queries = np.array([[0.2, 0.0], [10.4, 0.0], [5.0, 0.0]])
    # neighbours (k=3): q0->[0,1,4] all a (R=3); q1->[2,3,4] = b b a (R=2); q2 has label c, absent: excluded
    result = evaluate_embeddings(queries, ["a", "b", "c"], LINE, LINE_LABELS, k=3, distance="euclidean",
                                 metrics=["precision", "recall", "mAP"])
    assert result == pytest.approx({"precision@3": (1 + 2 / 3) / 2, "recall@3": 1, "mAP@3": 1})


def test_evaluate_cosine_default():
    embeddings = np.array([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 1.05]])
    # neighbours (k=1): 0->1, 1->0, 2->3, 3->2, 4->3 (label 0 vs 1: miss)
    result = evaluate_embeddings(embeddings, [0, 0, 1, 1, 0], k=1, metrics="hit")
    assert result == {"hit@1": pytest.approx(4 / 5)}


@pytest.mark.parametrize(
    "relevance, num_relevant, k, field",
    [
        ([1, 0], [1], None, "relevance"),
        ([[1, -1]], [1], None, "relevance"),
        ([[1, np.nan]], [1], None, "relevance"),
        ([["a", "b"]], [1], None, "relevance"),
        ([[1, 0]], [1, 1], None, "num_relevant"),
        ([[1, 0]], [-1], None, "num_relevant"),
        ([[1, 0]], [1.5], None, "num_relevant"),
        ([[1, 1]], [1], None, "num_relevant"),
        ([[1, 0]], [1], 0, "k"),
        ([[1, 0]], [1], 3, "k"),
        ([[1, 0]], [1], 1.0, "k"),
    ],
)
def test_bad_ranking_inputs(relevance, num_relevant, k, field):
    for metric in EXPECTED_AT_5:
        with pytest.raises(InputError, match=f"^{field}:"):
            metric(relevance, num_relevant, k=k)


def test_bad_ndcg_and_aggregate_inputs():
    with pytest.raises(InputError, match="^relevance: graded"):
        ndcg_at_k([[2, 0]], [1])
    with pytest.raises(InputError, match="^ideal_gains:"):
        ndcg_at_k([[2, 0]], [1], ideal_gains=[[2, 1]])
    with pytest.raises(InputError, match="^ideal_gains:"):
        ndcg_at_k([[2, 0]], [1], ideal_gains=[[2], [1]])
    with pytest.raises(InputError, match="^num_relevant: every query"):
        retrieval_metrics([[0, 0]], [0], k=2)
    with pytest.raises(InputError, match="^metrics:"):
        retrieval_metrics([[1, 0]], [1], k=2, metrics=["map"])
    with pytest.raises(InputError, match="^metrics:"):
        retrieval_metrics([[1, 0]], [1], k=2, metrics=[])
    with pytest.raises(InputError, match="^neighbour_labels:"):
        label_relevance([1, 2], [[1, 2]])
    with pytest.raises(InputError, match="^query_labels:"):
        label_relevance([[1]], [[1]])


@pytest.mark.parametrize(
    "queries, index, kwargs, field",
    [
        (np.ones(3), np.ones((3, 3)), {}, "query_embeddings"),
        (np.ones((2, 3), dtype=int), np.ones((3, 3)), {}, "query_embeddings"),
        (np.full((2, 3), np.nan), np.ones((3, 3)), {}, "query_embeddings"),
        (np.ones((2, 3)), np.ones((3, 4)), {}, "index_embeddings"),
        (np.ones((2, 3)), np.zeros((3, 3)), {}, "index_embeddings"),  # zero vectors under cosine
        (np.ones((2, 3)), np.ones((3, 3)), {"distance": "dot"}, "distance"),
        (np.ones((2, 3)), np.ones((3, 3)), {"exclude_self": True}, "exclude_self"),
        (np.ones((2, 3)), np.ones((3, 3)), {"k": 4}, "k"),
        (np.ones((3, 3)), np.ones((3, 3)), {"k": 3, "exclude_self": True}, "k"),
    ],
)
def test_bad_nearest_neighbour_inputs(queries, index, kwargs, field):
    with pytest.raises(InputError, match=f"^{field}:"):
        nearest_neighbours(queries, index, **{"k": 1, **kwargs})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"query_labels": LINE_LABELS[:4]}, "query_labels"),
        ({"index_labels": LINE_LABELS}, "index_labels"),
        ({"index_embeddings": LINE}, "index_labels"),
        ({"index_embeddings": LINE, "index_labels": LINE_LABELS[:2]}, "index_labels"),
        ({"k": 5}, "k"),  # leave-one-out: only 4 other items
        ({"k": 0}, "k"),
        ({"metrics": ["recall@2"]}, "metrics"),
        ({"query_labels": np.arange(5)}, "query_labels"),  # every label unique: nothing to retrieve
    ],
)
def test_bad_evaluate_inputs(kwargs, field):
    arguments = {"query_embeddings": LINE, "query_labels": LINE_LABELS, "k": 2, "distance": "euclidean", **kwargs}
    with pytest.raises(InputError, match=f"^{field}:"):
        evaluate_embeddings(**arguments)
