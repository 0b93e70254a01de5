import numpy as np
import pytest

from executors.errors import InputError
from executors.data.document_store import DocumentStore, StoredDoc
from executors.search.vector_index import SearchIndex
from executors.evaluation.metrics import nearest_neighbours


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
    results = index.search(queries, version=1, limit=7)
    expected, distances = nearest_neighbours(queries, vectors, 7, distance='cosine')
    for hits, exp, dist in zip(results, expected, distances):
        assert [d.id for d, _ in hits] == [docs[i].id for i in exp]
        assert np.allclose([s for _, s in hits], 1 - dist, atol=1e-5)


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
    assert index.search(_vectors(1, 5), version=1, limit=3)  # the old generation keeps serving
    index.activate(2)
    assert index.active_version == 2 and sorted(index.generations) == [2]
    assert len(index.search(_vectors(1, 5, dim=6), version=2, limit=30)[0]) == 22
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
    assert index.search(_vectors(2, 0), version=1, limit=3) == [[], []]
