"""Compact answers: protobuf/JSON round trips, the client helper, bulk batches; shard merging."""
import json

import numpy as np
import pytest

from executors.data.schema import Batch, Doc, DocList
from executors.search.results import bulk_batches, bulk_matches, matches
from executors.search.shards import merge_top_k, shard_of


def _answer():
    return Doc(id='q1', model_version=2, match_ids=['a', 'b', 'c'], match_scores=np.array([0.9, 0.5, -0.1]),
               match_fields={'label': ['x', None, 'y'], 'tags': [{'k': 1}, {}, {'n': {'d': [1, 2]}}]})


def test_compact_answer_round_trips_protobuf_and_json_and_reads_as_matches():
    docs = DocList[Doc]([_answer()])
    back = DocList[Doc].from_protobuf(docs.to_protobuf())[0]
    assert back.id == 'q1' and isinstance(back.id, str)
    assert back.match_ids == ['a', 'b', 'c'] and np.allclose(back.match_scores, [0.9, 0.5, -0.1])
    want = [{'id': 'a', 'score': 0.9, 'label': 'x', 'tags': {'k': 1}},
            {'id': 'b', 'score': 0.5, 'label': None, 'tags': {}},
            {'id': 'c', 'score': -0.1, 'label': 'y', 'tags': {'n': {'d': [1, 2]}}}]
    got = matches(back)
    assert [m['id'] for m in got] == ['a', 'b', 'c'] and [m['label'] for m in got] == ['x', None, 'y']
    assert np.allclose([m['score'] for m in got], [0.9, 0.5, -0.1])
    assert got[2]['tags']['n']['d'] == [1, 2]
    as_json = json.loads(_answer().model_dump_json())
    assert matches(as_json) == [{**w, 'score': pytest.approx(w['score'])} for w in want]
    assert matches(Doc()) == []


def test_bulk_batches_cut_columns_and_refuse_mismatched_lengths():
    vectors = np.arange(50, dtype=np.float32).reshape(25, 2)
    batches = list(bulk_batches([f'i{k}' for k in range(25)], vectors, labels=[str(k) for k in range(25)], batch_size=10))
    assert [len(b.ids) for b in batches] == [10, 10, 5] and np.array_equal(np.concatenate([b.tensor for b in batches]), vectors)
    assert batches[2].labels == ['20', '21', '22', '23', '24'] and batches[0].tags is None
    back = DocList[Batch].from_protobuf(DocList[Batch](batches).to_protobuf())
    assert back[1].ids == batches[1].ids and np.array_equal(back[1].tensor, batches[1].tensor)
    with pytest.raises(ValueError, match='ids: 3 ids for 25 rows of tensor'):
        list(bulk_batches(['a', 'b', 'c'], vectors))


def test_merge_top_k_equals_one_sorted_list():
    rng = np.random.default_rng(0)
    ids = [f'd{i}' for i in range(40)]
    scores = rng.normal(size=40).astype(np.float32)
    shards = [[i for i in range(40) if shard_of(ids[i], 3) == s] for s in range(3)]
    assert sorted(sum(shards, [])) == list(range(40)) and all(shards)
    answers = []
    for members in shards:
        top = sorted(members, key=lambda i: -scores[i])[:7]
        answers.append(([ids[i] for i in top], scores[top], {'label': [str(i) for i in top]}))
    merged_ids, merged_scores, fields = merge_top_k(answers, 7)
    best = np.argsort(-scores)[:7]
    assert merged_ids == [ids[i] for i in best] and np.allclose(merged_scores, scores[best])
    assert fields['label'] == [str(i) for i in best]
    assert merge_top_k([([], np.zeros(0), {'label': []})] * 2, 5) == ([], pytest.approx(np.zeros(0)), {'label': []})


def test_assign_sets_typed_fields_that_serialise_like_validated_ones():
    from executors.data.schema import assign
    doc = Doc(id='q', tensor=np.ones(3))
    assign(doc, embedding=np.arange(4, dtype=np.float32), model_version=3, tensor=None, match_ids=['a'],
           match_scores=np.array([0.5], dtype=np.float32), match_fields={'label': ['x']})
    validated = Doc(id='q', embedding=np.arange(4, dtype=np.float32), model_version=3, match_ids=['a'],
                    match_scores=np.array([0.5], dtype=np.float32), match_fields={'label': ['x']})
    assert DocList[Doc]([doc]).to_protobuf() == DocList[Doc]([validated]).to_protobuf()
    assert json.loads(doc.model_dump_json()) == json.loads(validated.model_dump_json())
    with pytest.raises(AttributeError, match="Doc has no field 'nope'"):
        assign(doc, nope=1)


def test_bulk_matches_reads_padded_columns():
    answer = Batch(match_ids=['a', 'b', 'c', ''], match_scores=np.array([[0.9, 0.1], [0.5, 0]], np.float32),
                   match_counts=np.array([2, 1]), match_fields={'label': ['x', 'y', 'z', None]})
    back = DocList[Batch].from_protobuf(DocList[Batch]([answer]).to_protobuf())[0]
    for got in (bulk_matches(back), bulk_matches(json.loads(answer.model_dump_json()))):
        assert [[m['id'] for m in row] for row in got] == [['a', 'b'], ['c']]
        assert [[m['label'] for m in row] for row in got] == [['x', 'y'], ['z']]
        assert np.isclose(got[0][1]['score'], 0.1) and np.isclose(got[1][0]['score'], 0.5)
    queries = list(bulk_batches(None, np.ones((5, 2)), batch_size=2))
    assert [len(b.tensor) for b in queries] == [2, 2, 1] and queries[0].ids == []


def test_sharded_evaluation_get_and_delete_merge_to_the_unsharded_answer():
    from executors.errors import NotFoundError
    from executors.search.shards import evaluation_part, evaluation_report, merge_delete, merge_evaluation, merge_get

    rng = np.random.default_rng(1)
    ids = [f'd{i}' for i in range(60)]
    labels = [str(i % 4) for i in range(60)]
    sims = rng.normal(size=(5, 60))  # 5 queries x 60 docs
    query_labels, k = ['0', '1', '2', '3', '9'], 6
    owner = [shard_of(i, 2) for i in ids]
    parts = []
    for shard in (0, 1):
        members = [i for i in range(60) if owner[i] == shard]
        tops = [sorted(members, key=lambda j: -sims[q, j])[:k] for q in range(5)]
        counts = {}
        for j in members:
            counts[labels[j]] = counts.get(labels[j], 0) + 1
        parts.append(json.loads(json.dumps(evaluation_part(  # through JSON, as through the flow
            1, k, query_labels, [[ids[j] for j in top] for top in tops],
            [sims[q, top].astype(np.float32) for q, top in enumerate(tops)],
            [[labels[j] for j in top] for top in tops], counts)))['shard_part'])
    whole = evaluation_report(1, k, query_labels, [[labels[j] for j in np.argsort(-sims[q])[:k]] for q in range(5)],
                              {label: 15 for label in '0123'})
    assert merge_evaluation(parts) == whole and whole['num_queries_with_relevant'] == 4
    # recall needs the relevant count of all shards (15 per label), not one shard's
    hits = [sum(labels[j] == query_labels[q] for j in np.argsort(-sims[q])[:k]) for q in range(4)]
    assert whole['metrics'][f'recall@{k}'] == pytest.approx(np.mean([h / 15 for h in hits]))

    stored = {0: {'a': Doc(id='a', label='x')}, 1: {'b': Doc(id='b', tensor=np.ones(2))}}
    answers = [[stored[s].get(i, Doc(id=i)) for i in ('b', 'a')] for s in (0, 1)]
    assert [(d.id, d.label) for d in merge_get(answers)] == [('b', None), ('a', 'x')]
    with pytest.raises(NotFoundError, match=r"parameters.ids: 1 id\(s\) not indexed: \['zz'\]"):
        merge_get([[stored[s].get(i, Doc(id=i)) for i in ('a', 'zz')] for s in (0, 1)])
    assert merge_delete([{'deleted': 1, 'not_found': ['b', 'x', 'y'], 'num_docs': 3},
                         {'deleted': 1, 'not_found': ['a', 'y', 'x'], 'num_docs': 4}]) == \
        {'deleted': 2, 'not_found': ['x', 'y'], 'num_docs': 7}


def test_shard_merger_refuses_an_answer_missing_a_shard():
    from executors.data.schema import Report, report
    from executors.errors import RetryableError
    from executors.shard_merger.executor import ShardMerger

    merger = ShardMerger(shards=2)
    one, two = report({'count': 3}), report({'count': 4})
    assert merger.count(DocList[Report](), docs_matrix=[one, two])[0].data == {'count': 7}
    with pytest.raises(RetryableError, match=r'only 1 of 2 index shards answered .*; resend the request'):
        merger.count(DocList[Report](), docs_matrix=[one])
    with pytest.raises(RetryableError):
        merger.index(DocList[Doc](), docs_matrix=[DocList[Doc]([Doc(id='a')])])
