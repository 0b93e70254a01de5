"""Every FAISS index type: search, replace, delete and filter against brute force; bad settings."""
import numpy as np
import pytest

from executors.errors import InputError
from executors.search.faiss_index import FaissIndex, check_index_settings

TYPES = ['Flat', 'HNSW16', 'IVF8,Flat', 'IVF8,PQ4']
DIM = 16


def _clustered(n, seed, dim=DIM, clusters=8):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(clusters, dim)) * 4
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _brute(queries, vectors, rows, k, metric):
    """Exact (rows, scores) with the index's score convention."""
    if metric == 'cosine':
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = q @ x.T
    elif metric == 'inner_product':
        scores = queries @ vectors.T
    else:
        scores = -((queries[:, None, :] - vectors[None]) ** 2).sum(-1)
    order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    return rows[order], np.take_along_axis(scores, order, 1)


def _index(factory, metric='cosine', n=600, threshold=400):
    index = FaissIndex(DIM, factory, metric, train_threshold=threshold)
    vectors = _clustered(n, 0)
    rows = np.arange(10, 10 + n, dtype=np.int64)
    index.upsert(rows, vectors)
    return index, rows, vectors


def _exactish(index, queries, **kw):
    """Search settings that make every type exhaustive, so results must equal brute force."""
    params = {'nprobe': 8} if index.kind == 'ivf' else {'efSearch': 512} if index.kind == 'hnsw' else {}
    return index.search(queries, kw.pop('k', 5), search_params=params, **kw)


@pytest.mark.parametrize('metric', ['cosine', 'inner_product', 'l2'])
@pytest.mark.parametrize('factory', ['Flat', 'HNSW16', 'IVF8,Flat'])
def test_search_equals_brute_force(factory, metric):
    index, rows, vectors = _index(factory, metric)
    assert index.trained
    queries = _clustered(6, 1)
    got_rows, got_scores = _exactish(index, queries)
    want_rows, want_scores = _brute(queries, vectors, rows, 5, metric)
    assert np.array_equal(got_rows, want_rows)
    assert np.allclose(got_scores, want_scores, rtol=1e-4, atol=1e-3)


def test_pq_recall_is_high_when_probing_every_list():
    index, rows, vectors = _index('IVF8,PQ4')
    queries = _clustered(20, 1)
    got, _ = _exactish(index, queries, k=10)
    want, _ = _brute(queries, vectors, rows, 10, 'cosine')
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall > 0.5  # 4-byte codes of 16-d vectors: lossy, but far better than chance (10/600)


def test_untrained_types_answer_exactly_until_the_threshold_then_train():
    index = FaissIndex(DIM, 'IVF8,Flat', 'cosine', train_threshold=300)
    vectors = _clustered(400, 0)
    index.upsert(np.arange(200), vectors[:200])
    assert not index.trained
    queries = _clustered(4, 1)
    got, _ = index.search(queries, 5, search_params={'nprobe': 1})  # exact before training, nprobe ignored
    assert np.array_equal(got, _brute(queries, vectors[:200], np.arange(200), 5, 'cosine')[0])
    index.upsert(np.arange(200, 400), vectors[200:])
    assert index.trained and index.size == 400
    got, _ = index.search(queries, 5, search_params={'nprobe': 8})
    assert np.array_equal(got, _brute(queries, vectors, np.arange(400), 5, 'cosine')[0])
    assert FaissIndex(DIM, 'IVF8,Flat').train_threshold == 39 * 8
    assert FaissIndex(DIM, 'IVF8,PQ4').train_threshold == 39 * 256


@pytest.mark.parametrize('factory', TYPES)
def test_replace_and_delete_match_brute_force(factory):
    index, rows, vectors = _index(factory)
    rng = np.random.default_rng(3)
    replaced = rng.choice(len(rows), 50, replace=False)
    vectors = vectors.copy()
    vectors[replaced] = _clustered(50, 4)
    index.upsert(rows[replaced], vectors[replaced])
    deleted = rng.choice(len(rows), 80, replace=False)
    assert index.remove(rows[deleted]) == 80
    assert index.remove(rows[deleted]) == 0  # already gone
    keep = np.setdiff1d(np.arange(len(rows)), deleted)
    assert index.size == len(keep) and index.tombstones == 130
    queries = np.concatenate([vectors[deleted[:5]], vectors[replaced[:5]]])
    got, _ = _exactish(index, queries, k=10)
    assert not np.isin(got, rows[deleted]).any()
    if factory != 'IVF8,PQ4':
        assert np.array_equal(got, _brute(queries, vectors[keep], rows[keep], 10, 'cosine')[0])
    else:  # a replaced vector finds itself near the top despite lossy codes
        assert all(rows[replaced[i]] in got[5 + i, :3] for i in range(5))


@pytest.mark.parametrize('factory', TYPES)
def test_filter_returns_limit_matches_inside_the_allowed_rows(factory):
    index, rows, vectors = _index(factory)
    allowed = rows[::37]  # 17 rows scattered over every cluster: a selective filter
    index.remove(allowed[:2])
    live_allowed = allowed[2:]
    queries = _clustered(5, 1)
    got, scores = index.search(queries, 10, allowed_rows=allowed,
                               search_params={'nprobe': 1} if index.kind == 'ivf' else None)
    assert (got >= 0).all() and np.isin(got, live_allowed).all()  # 10 of the 15 live allowed rows
    if factory != 'IVF8,PQ4':
        mask = np.isin(rows, live_allowed)
        assert np.array_equal(got, _brute(queries, vectors[mask], rows[mask], 10, 'cosine')[0])
    broad = rows[::2]  # half the rows: the bitmap selector
    got, _ = _exactish(index, queries, k=10, allowed_rows=broad)
    assert np.isin(got, broad).all() and not np.isin(got, allowed[:2]).any()
    if factory != 'IVF8,PQ4':
        mask = np.isin(rows, broad) & ~np.isin(rows, allowed[:2])
        assert np.array_equal(got, _brute(queries, vectors[mask], rows[mask], 10, 'cosine')[0])
    few, _ = index.search(queries, 10, allowed_rows=np.array([rows[5], 10 ** 9, -1]))
    assert np.array_equal(few[:, 0], np.full(5, rows[5])) and (few[:, 1:] == -1).all()
    none, none_scores = index.search(queries, 3, allowed_rows=np.zeros(0, np.int64))
    assert (none == -1).all() and np.isneginf(none_scores).all()


@pytest.mark.parametrize('factory', TYPES)
def test_compacted_and_serialised_indexes_answer_the_same(factory):
    index, rows, vectors = _index(factory)
    index.remove(rows[:100])
    queries = _clustered(5, 1)
    before = _exactish(index, queries)[0]
    fresh = index.compacted(rows[100:], vectors[100:])
    assert fresh.tombstones == 0 and fresh.size == index.size
    blob, arrays = index.serialized()
    loaded = FaissIndex.deserialized(blob, arrays, factory, 'cosine', 400)
    assert loaded.size == index.size and loaded.tombstones == index.tombstones
    assert np.array_equal(_exactish(loaded, queries)[0], before)
    if factory != 'IVF8,PQ4':
        assert np.array_equal(_exactish(fresh, queries)[0], before)


def test_needs_compaction_past_the_tombstone_fraction():
    index = FaissIndex(4, 'HNSW8', compact_fraction=0.2)
    index.upsert(np.arange(10000), np.random.default_rng(0).normal(size=(10000, 4)))
    index.remove(np.arange(1500))
    assert not index.needs_compaction()
    index.remove(np.arange(1500, 2100))
    assert index.needs_compaction()


def test_per_query_settings_change_hnsw_and_ivf_results():
    hnsw, rows, vectors = _index('HNSW16', n=2000, threshold=None)
    ivf, _, _ = _index('IVF8,Flat', n=2000)
    queries = _clustered(50, 1)
    want = _brute(queries, vectors, rows, 10, 'cosine')[0]

    def recall(got):
        return np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall(ivf.search(queries, 10, search_params={'nprobe': 1})[0]) < \
        recall(ivf.search(queries, 10, search_params={'nprobe': 8})[0]) == 1.0
    assert recall(hnsw.search(queries, 10, search_params={'efSearch': 1})[0]) <= \
        recall(hnsw.search(queries, 10, search_params={'efSearch': 400})[0])


@pytest.mark.parametrize('factory, metric, message', [
    ('Nonsense42', 'cosine', "index_factory: FAISS cannot build 'Nonsense42'"),
    ('', 'cosine', 'index_factory: expected a FAISS index_factory string'),
    ('IDMap,Flat', 'cosine', 'index_factory: leave out IDMap'),
    ('Flat', 'hamming', "metric: expected one of ['cosine', 'inner_product', 'l2'], got 'hamming'"),
])
def test_bad_index_settings_are_refused(factory, metric, message):
    with pytest.raises(InputError, match=message.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(')):
        check_index_settings(factory, metric)


@pytest.mark.parametrize('factory, params, message', [
    ('Flat', {'nprobe': 4}, "parameters.nprobe: applies to IVF indexes; this index is 'Flat'"),
    ('IVF8,Flat', {'efSearch': 4}, "parameters.efSearch: applies to HNSW indexes; this index is 'IVF8,Flat'"),
    ('HNSW16', {'efSearch': 0}, 'parameters.efSearch: expected an integer >= 1, got 0'),
    ('IVF8,Flat', {'nprobe': 2.5}, 'parameters.nprobe: expected an integer >= 1, got 2.5'),
    ('HNSW16', {'ef': 3}, 'parameters.ef: unknown search setting; known: nprobe, efSearch'),
])
def test_bad_search_settings_are_refused(factory, params, message):
    index, _, _ = _index(factory)
    with pytest.raises(InputError, match=message.replace('(', r'\(').replace(')', r'\)')):
        index.search(_clustered(1, 1), 3, search_params=params)


def test_bad_vectors_are_refused_and_leave_the_index_unchanged():
    index, rows, _ = _index('Flat')
    with pytest.raises(InputError, match=r'embedding: expected vectors of dimension 16, got shape \(2, 3\)'):
        index.upsert(np.arange(2), np.ones((2, 3)))
    with pytest.raises(InputError, match='embedding: vectors must be finite'):
        index.upsert(np.arange(2), np.full((2, DIM), np.nan))
    with pytest.raises(InputError, match='embedding: 1 embeddings for 2 docs'):
        index.upsert(np.arange(2), np.ones((1, DIM)))
    assert index.size == len(rows) and index.tombstones == 0
