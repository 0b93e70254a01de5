import numpy as np
import pytest

from executors.data.document_store import DocumentStore, StoredDoc
from executors.errors import InputError
from executors.evaluation.metrics import nearest_neighbours
from executors.search.vector_index import SearchIndex


def _docs(n, offset=0):
    rng = np.random.default_rng(offset)
    return [StoredDoc(id=f'd{offset + i}', label=str(i % 3), tags={'i': i}, tensor=rng.normal(size=3).astype(np.float32))
            for i in range(n)]


def _vectors(n, seed, dim=4):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_document_store_upsert_keeps_rows_and_round_trips_tensors(tmp_path):
    store = DocumentStore(tmp_path / 'd.sqlite')
    docs = _docs(3)
    rows = store.upsert(docs)
    again = store.upsert([StoredDoc(id='d1', label='new', tensor=np.arange(4, dtype=np.int64))])
    assert again[0] == rows[1] and store.count() == 3
    got = store.get_rows(rows)
    assert got[rows[1]].label == 'new' and got[rows[1]].tensor.dtype == np.int64
    assert np.array_equal(got[rows[0]].tensor, docs[0].tensor) and got[rows[0]].tags == {'i': 0}
    assert store.label_counts() == {'0': 1, 'new': 1, '2': 1}
    assert [r for r, _ in store.page(0, 2)] == list(rows[:2])


def test_search_matches_brute_force_cosine(tmp_path):
    index = SearchIndex(tmp_path)
    docs, vectors = _docs(50), _vectors(50, 0)
    index.add(docs, {1: vectors})
    queries = _vectors(5, 1)
    hits = index.search(queries, version=1, limit=7, fields=['label', 'tags'])
    expected, distances = nearest_neighbours(queries, vectors, 7, distance='cosine')
    for ids, scores, labels, tags, exp, dist in zip(hits.ids, hits.scores, hits.fields['label'], hits.fields['tags'],
                                                    expected, distances):
        assert ids == [docs[i].id for i in exp]
        assert np.allclose(scores, 1 - dist, atol=1e-5)
        assert labels == [docs[i].label for i in exp] and tags == [docs[i].tags for i in exp]


def test_query_from_another_model_version_is_refused(tmp_path):
    index = SearchIndex(tmp_path)
    index.add(_docs(5), {1: _vectors(5, 0)})
    with pytest.raises(InputError, match='no index generation for model version 2'):
        index.search(_vectors(1, 1), version=2, limit=3)
    with pytest.raises(InputError, match='model_version'):
        index.add(_docs(2, 10), {2: _vectors(2, 3)})
    with pytest.raises(InputError, match='dimension'):
        index.add(_docs(2, 10), {1: _vectors(2, 3, dim=5)})
    assert index.count() == 5  # nothing stored by the refused adds


def test_swap_builds_a_complete_generation_while_serving(tmp_path):
    index = SearchIndex(tmp_path)
    docs = _docs(20)
    index.add(docs, {1: _vectors(20, 0)})
    index.prepare(2)
    with pytest.raises(InputError, match='still being built'):
        index.search(_vectors(1, 5, dim=6), version=2, limit=3)
    missing = index.docs_missing_from(2, limit=8)
    assert len(missing) == 8
    new = {d.id: v for d, v in zip(docs, _vectors(20, 9, dim=6))}
    index.reindex([d.id for d in missing], np.stack([new[d.id] for d in missing]), 2)
    with pytest.raises(InputError, match='lacks 12'):
        index.activate(2)
    # docs indexed during the swap come with both versions' embeddings
    late = _docs(2, 100)
    index.add(late, {1: _vectors(2, 7), 2: _vectors(2, 8, dim=6)})
    rest = index.docs_missing_from(2, limit=100)
    assert {d.id for d in rest} == {d.id for d in docs} - {d.id for d in missing}
    index.reindex([d.id for d in rest], np.stack([new[d.id] for d in rest]), 2)
    assert len(index.search(_vectors(1, 5), version=1, limit=3).ids[0]) == 3  # the old generation keeps serving
    index.activate(2)
    assert index.active_version == 2 and sorted(index.generations) == [2]
    assert len(index.search(_vectors(1, 5, dim=6), version=2, limit=30).ids[0]) == 22
    index.close()
    reopened = SearchIndex(tmp_path)  # persisted
    assert reopened.active_version == 2 and reopened.count() == 22
    assert reopened.generations[2].size == 22


def test_reindex_and_activate_need_a_prepared_version(tmp_path):
    index = SearchIndex(tmp_path)
    index.add(_docs(2), {1: _vectors(2, 0)})
    with pytest.raises(InputError, match='prepare'):
        index.reindex(['d0'], _vectors(1, 0), 2)
    with pytest.raises(InputError, match='prepare'):
        index.activate(2)
    with pytest.raises(InputError, match='already the active'):
        index.prepare(1)


def test_empty_index_answers_with_no_matches(tmp_path):
    index = SearchIndex(tmp_path)
    index.prepare(1)
    index.activate(1)
    assert index.search(_vectors(2, 0), version=1, limit=3).ids == [[], []]


def _ids(hits):
    return [list(ids) for ids in hits.ids]


@pytest.mark.parametrize('factory', ['Flat', 'HNSW16', 'IVF4,Flat'])
def test_restart_equals_snapshot_plus_later_writes_without_a_snapshot_per_request(tmp_path, factory):
    index = SearchIndex(tmp_path, index_factory=factory, train_threshold=200, snapshot_interval=3600)
    docs, vectors = _docs(300), _vectors(300, 0, dim=8)
    index.add(docs[:150], {1: vectors[:150]})
    assert not list((tmp_path / 'generations').glob('*.npz'))  # no index file written by a request
    assert index.snapshot() == [1]
    index.add(docs[150:], {1: vectors[150:]})  # after the snapshot (and past the training threshold)
    index.add([StoredDoc(id='d3', label='moved')], {1: -vectors[7:8]})  # a replacement
    assert index.delete(['d5', 'd6', 'nope']) == 2
    params = {'nprobe': 4} if 'IVF' in factory else {'efSearch': 300} if 'HNSW' in factory else {}
    queries = np.concatenate([vectors[:5], -vectors[7:8]])
    before = index.search(queries, version=1, limit=10, search_params=params)
    assert 'd5' not in sum(before.ids, []) and before.ids[-1][0] == 'd3'
    # no close(): like a SIGKILL, the last snapshot misses everything after it
    reopened = SearchIndex(tmp_path, index_factory=factory, train_threshold=200, snapshot_interval=3600)
    assert reopened.count() == 298 and reopened.generations[1].size == 298
    after = reopened.search(queries, version=1, limit=10, search_params=params)
    assert _ids(after) == _ids(before)
    assert np.allclose(np.stack(after.scores), np.stack(before.scores), atol=1e-5)


def test_a_changed_index_type_rebuilds_from_the_store(tmp_path):
    index = SearchIndex(tmp_path)
    index.add(_docs(50), {1: _vectors(50, 0)})
    index.close()
    reopened = SearchIndex(tmp_path, index_factory='HNSW8', metric='l2')
    assert reopened.generations[1].factory == 'HNSW8' and reopened.generations[1].size == 50
    hits = reopened.search(_vectors(50, 0)[:3], version=1, limit=1)
    assert [ids[0] for ids in hits.ids] == ['d0', 'd1', 'd2'] and np.allclose(np.stack(hits.scores), 0, atol=1e-5)


def test_delete_removes_from_every_generation_at_once_and_filters_restrict_search(tmp_path):
    index = SearchIndex(tmp_path)
    docs = _docs(40)
    index.add(docs, {1: _vectors(40, 0)})
    index.prepare(2)
    index.reindex([d.id for d in docs], _vectors(40, 1, dim=6), 2)
    assert index.delete([d.id for d in docs[:10]]) == 10
    assert index.count() == 30 and index.generations[1].size == 30 and index.generations[2].size == 30
    assert index.missing_count(2) == 0
    for version, dim in ((1, 4), (2, 6)):
        hits = index.search(_vectors(3, 5, dim=dim), version=version, limit=40)
        assert all(len(ids) == 30 and not {d.id for d in docs[:10]} & set(ids) for ids in hits.ids)
    rows = index.store.rows_for_ids([d.id for d in docs[20:25]])
    hits = index.search(_vectors(3, 5), version=1, limit=10, allowed_rows=np.asarray(list(rows.values())))
    assert all(sorted(ids) == sorted(rows) for ids in hits.ids)
    index.activate(2)
    assert index.store.embedding_versions() == [2]


def test_tombstones_past_the_threshold_are_compacted_in_the_background(tmp_path):
    import time
    index = SearchIndex(tmp_path, index_factory='HNSW8', compact_fraction=0.2)
    docs, vectors = _docs(3000), _vectors(3000, 0)
    index.add(docs, {1: vectors})
    index.delete([d.id for d in docs[:1200]])
    deadline = time.time() + 60
    while index.generations[1].tombstones and time.time() < deadline:
        time.sleep(0.1)
    generation = index.generations[1]
    assert generation.tombstones == 0 and generation.size == 1800
    hits = index.search(vectors[1200:1203], version=1, limit=1, search_params={'efSearch': 64})
    assert [ids[0] for ids in hits.ids] == ['d1200', 'd1201', 'd1202']


@pytest.mark.parametrize('kwargs, message', [
    ({'index_factory': 'IVF-nope'}, "index_factory: FAISS cannot build 'IVF-nope'"),
    ({'metric': 'dot'}, 'metric: expected one of'),
    ({'train_threshold': 0}, 'train_threshold: expected an integer >= 1, got 0'),
    ({'compact_fraction': 2}, r'compact_fraction: expected a number in \(0, 1\], got 2'),
])
def test_bad_index_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        SearchIndex(tmp_path, **kwargs)
