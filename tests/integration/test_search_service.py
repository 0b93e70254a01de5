"""The search flow as a service (``jina flow --uses flows/search.yml``, gRPC and HTTP): poisoning,
size limits, bounded counts, 4xx errors with full messages, no silently dropped documents, CRUD
and filters. One flow for the module; each test indexes its own docs (own ids, tagged with the
test's name) and searches them through a filter on that tag."""
import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from executors.data.schema import Doc, DocList, Report
from tests.integration.search_helpers import (
    SearchFlow,
    assert_answers_match,
    brute_force,
    grpc_error_message,
    publish_versions,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope='module')
def svc(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('search-service')
    store = publish_versions(cwd)
    flow = SearchFlow(cwd).start()
    flow.store = store
    try:
        yield flow
    finally:
        flow.stop()


def _points(n, seed):
    x, _ = make_swiss_roll(n, noise=0.05, random_state=seed)
    return x.astype(np.float32)


def _own(svc, name, n, seed, **fields):
    """Index ``n`` points tagged ``suite=name`` with ids ``name-i``; returns (ids, points)."""
    ids, points = [f'{name}-{i}' for i in range(n)], _points(n, seed)
    extra = fields.pop('tags', {})
    tags = [{'suite': name, **{k: v[i] for k, v in extra.items()}} for i in range(n)]
    svc.index(ids, points, tags=tags, **fields)
    return ids, points


def test_client_embeddings_and_version_stamps_are_never_used(svc):
    ids, points = _own(svc, 'poison', 40, 1)
    forged = DocList[Doc]([Doc(id='poison-forged', tensor=points[0], tags={'suite': 'poison'},
                               embedding=-np.ones(6, np.float32), model_version=7,
                               candidate_embedding=-np.ones(6, np.float32), candidate_version=2)])
    svc.grpc.post('/index', forged)
    before = svc.snapshot()
    assert before['indexer']['generations'] == [1] and before['indexer']['pending_version'] is None
    # the forged doc has the same tensor as poison-0: both rank first with similarity 1
    answer = svc.search(points[:1], limit=2, filter={'tags.suite': 'poison'})[0]
    assert sorted(answer.match_ids) == ['poison-0', 'poison-forged'] and np.allclose(answer.match_scores, 1, atol=1e-5)
    # /model/reindex cannot plant a vector for a stored doc either
    response = svc.post('/model/reindex', [{'id': 'poison-1', 'tensor': points[5].tolist()}], version=1)
    assert response.status_code == 400
    assert response.json()['detail'] == ("docs[0] (id 'poison-1'): content differs from the stored doc; /model/reindex "
                                         're-embeds stored docs as /model/missing returns them (send changes to /index)')
    assert svc.snapshot() == before
    answer = svc.search(points[1:2], limit=1, filter={'tags.suite': 'poison'})[0]
    assert answer.match_ids == ['poison-1'] and np.allclose(answer.match_scores, 1, atol=1e-5)


BAD_REQUESTS = [  # endpoint, docs, parameters, HTTP status, the full message
    ('/index', [{'id': 'deep', 'tensor': [1.0, 2.0, 3.0], 'tags': {'a': {'b': {'c': {'d': {'e': 1}}}}}}], {}, 413,
     'docs[0].tags: nested 5 levels deep; at most 4 (limits.max_tags_depth)'),
    ('/index', [{'id': 'long', 'tensor': [1.0, 2.0, 3.0], 'text': 'x' * 100_001}], {}, 413,
     'docs[0].text: 100001 characters; at most 100000 (limits.max_text_chars)'),
    ('/index', [{'id': f'many-{i}', 'tensor': [1.0, 2.0, 3.0]} for i in range(1001)], {}, 413,
     'docs: 1001 documents in one request to /index; at most 1000 (limits.max_docs) are accepted: '
     'send them in several requests'),
    ('/index', [{'id': 'twice', 'tensor': [1.0, 2.0, 3.0]}, {'id': 'twice', 'tensor': [1.0, 2.0, 4.0]}], {}, 400,
     "docs.id: 'twice' occurs more than once in the request; send each id once"),
    ('/index', [{'id': 'novec', 'text': 'no vector'}], {}, 400,
     "docs[0] (id 'novec'): tensor: missing; give each document a 1-D vector"),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'limit': 10 ** 12}, 413,
     "parameters.limit: must be an integer from 1 to 1000, got 1000000000000; the maximum is set in the "
     "executor's config.yml / uses_with"),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'limit': 0}, 400,
     'parameters.limit: must be an integer from 1 to 1000, got 0'),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'top_k': 3}, 400,
     'parameters.top_k: unknown parameter for /search; known: efSearch, fields, filter, limit, nprobe'),
    ('/search', [{'id': 'q', 'tensor': [1.0, 2.0, 3.0, 4.0]}], {}, 400,
     "docs[0] (id 'q'): tensor: expected a 1-D vector of length 3, got shape (4,)"),
    ('/search', [], {}, 400, 'docs: the request to /search holds no documents; send at least one'),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'filter': {'price': 3}}, 400,
     "parameters.filter: unknown field 'price'; filter on \"label\" or \"tags.<name>\" (names of letters, digits, "
     '"_" and "-", nested names joined by ".")'),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'filter': {'tags.price': {'$lt': 'x'}}}, 400,
     "parameters.filter.tags.price.$lt: expected a number, got 'x'"),
    ('/model/missing', [], {'version': 1, 'limit': -1}, 400,
     'parameters.limit: must be an integer from 1 to 10000, got -1'),
    ('/model/missing', [], {'version': 1, 'limit': 10 ** 9}, 413,
     "parameters.limit: must be an integer from 1 to 10000, got 1000000000; the maximum is set in the executor's "
     'config.yml / uses_with'),
    ('/model/missing', [], {}, 400, 'parameters.version: required for /model/missing'),
    ('/model/reindex', [], {}, 400, 'parameters.version: required for /model/reindex'),
    ('/model/activate', [], {'version': 9}, 400,
     'version: 9 is not the prepared candidate (None); call /model/prepare first'),
    ('/model/prepare', [], {'version': 99}, 400,
     "version: 'swiss-roll-mlp' has no version 99; published versions: [1, 2]"),
    ('/get', [], {'ids': ['nobody']}, 404, "parameters.ids: 1 id(s) not indexed: ['nobody']"),
    ('/get', [], {}, 400, 'parameters.ids: /get needs doc ids: pass parameters.ids=[...] or docs with ids'),
    ('/update', [{'id': 'nobody', 'label': 'x'}], {}, 404,
     "docs.id: 1 id(s) not indexed: ['nobody']; index them with /index"),
    ('/update', [{'id': 'x', 'tensor': [1.0, 2.0, 3.0]}], {}, 400,
     'docs[0].tensor: /update changes label and tags only; send new content to /index (it re-embeds the doc)'),
]


@pytest.mark.parametrize('endpoint, data, parameters, status, message', BAD_REQUESTS,
                         ids=[f'{b[0]}-{b[4][:40]}' for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_with_the_full_message_and_change_nothing(svc, endpoint, data, parameters, status,
                                                                        message):
    _own(svc, 'bad', 5, 2)
    before = svc.snapshot()
    response = svc.post(endpoint, data, **parameters)
    assert (response.status_code, response.json()) == (status, {'detail': message})
    assert svc.snapshot() == before
    with pytest.raises(Exception) as error:
        svc.grpc.post(endpoint, DocList[Doc]([Doc(**d) for d in data]), parameters=parameters,
                      request_size=max(len(data), 1))
    assert grpc_error_message(error.value) == message
    assert svc.snapshot() == before


def test_http_answers_every_query_and_indexes_every_doc_of_a_big_request(svc):
    ids, points = [f'big-{i}' for i in range(250)], _points(250, 3)
    response = svc.post('/index', [{'id': i, 'tensor': p.tolist(), 'tags': {'suite': 'big'}}
                                   for i, p in zip(ids, points)])
    assert response.status_code == 200 and [d['id'] for d in response.json()['data']] == ids
    assert svc.count(filter={'tags.suite': 'big'}) == 250
    queries = _points(250, 4)
    response = svc.post('/search', [{'tensor': q.tolist()} for q in queries], limit=5, filter={'tags.suite': 'big'})
    assert response.status_code == 200
    answers = [Doc(**{k: d[k] for k in ('match_ids', 'match_scores')}) for d in response.json()['data']]
    assert len(answers) == 250
    _, _, sims = brute_force(svc.store, 1, points, queries, 5)
    assert_answers_match(answers, ids, sims, 5)


def test_crud_upsert_update_delete_get_count(svc):
    ids, points = _own(svc, 'crud', 30, 5, label=[f'c{i % 3}' for i in range(30)])
    total = svc.count()
    got = svc.get(['crud-3', 'crud-1'])
    assert [d.id for d in got] == ['crud-3', 'crud-1'] and got[0].label == 'c0'
    assert np.allclose(got[0].tensor, points[3])
    # update label and tags: no re-embedding, scores unchanged, filters see the new values
    before = svc.search(points[:3], limit=5, filter={'tags.suite': 'crud'})
    result = svc.grpc.post('/update', DocList[Doc]([Doc(id='crud-1', label='new', tags={'suite': 'crud', 'x': 1})]),
                           return_type=DocList[Report])
    assert result[0].data == {'updated': 1}
    assert svc.get(['crud-1'])[0].label == 'new' and svc.get(['crud-1'])[0].tags == {'suite': 'crud', 'x': 1}
    after = svc.search(points[:3], limit=5, filter={'tags.suite': 'crud'})
    assert [a.match_ids for a in after] == [b.match_ids for b in before]
    assert np.allclose([a.match_scores for a in after], [b.match_scores for b in before])
    assert svc.search(points[1:2], limit=5, filter={'label': 'new'})[0].match_ids == ['crud-1']
    # upsert: new content under an old id replaces the old vector
    svc.index(['crud-2'], [points[20] + 5])
    assert svc.count() == total
    answer = svc.search([points[20] + 5], limit=1, filter={'tags.suite': 'crud'})  # tags were replaced: no suite
    assert answer[0].match_ids != ['crud-2']
    answer = svc.search([points[20] + 5], limit=1)
    assert answer[0].match_ids == ['crud-2'] and np.allclose(answer[0].match_scores, 1, atol=1e-5)
    # delete: gone from search at once, /get says 404, deleting again reports it
    deleted = svc.grpc.post('/delete', parameters={'ids': ['crud-0', 'crud-4', 'nobody']}, return_type=DocList[Report])
    assert deleted[0].data == {'deleted': 2, 'not_found': ['nobody'], 'num_docs': total - 2}
    answers = svc.search(points[[0, 4]], limit=30, filter={'tags.suite': 'crud'})
    assert all({'crud-0', 'crud-4'}.isdisjoint(a.match_ids) for a in answers)
    assert len(answers[0].match_ids) == 27  # 30 - 2 deleted - crud-2 that lost its tag
    assert svc.post('/get', ids=['crud-0']).status_code == 404
    again = svc.grpc.post('/delete', parameters={'ids': ['crud-0']}, return_type=DocList[Report])
    assert again[0].data == {'deleted': 0, 'not_found': ['crud-0'], 'num_docs': total - 2}


def test_filters_on_label_and_tags_apply_inside_the_search(svc):
    n = 60
    ids, points = _own(svc, 'filt', n, 6, label=[f'l{i % 4}' for i in range(n)],
                       tags={'price': [float(i) for i in range(n)], 'color': ['red' if i % 6 == 0 else 'blue'
                                                                               for i in range(n)]})
    queries = _points(8, 7)
    _, _, sims = brute_force(svc.store, 1, points, queries, n)
    cases = [
        ({'tags.suite': 'filt', 'tags.color': 'red'}, [i % 6 == 0 for i in range(n)]),
        ({'tags.suite': 'filt', 'label': {'$in': ['l1', 'l3']}}, [i % 4 in (1, 3) for i in range(n)]),
        ({'tags.suite': 'filt', 'tags.price': {'$gte': 10, '$lt': 25}}, [10 <= i < 25 for i in range(n)]),
        ({'tags.suite': 'filt', 'tags.color': {'$ne': 'red'}, 'label': 'l0'},
         [i % 6 != 0 and i % 4 == 0 for i in range(n)]),
    ]
    for spec, keep in cases:
        keep = np.asarray(keep)
        allowed = [ids[i] for i in np.flatnonzero(keep)]
        answers = svc.search(queries, limit=10, filter=spec)
        assert svc.count(filter=spec) == len(allowed)
        # limit results come back when that many match (the red docs are 1 in 6: post-filtering a top-10 would not)
        assert_answers_match(answers, allowed, sims[:, keep], 10)
    assert [len(a.match_ids) for a in svc.search(queries, limit=10, filter={'tags.suite': 'nobody'})] == [0] * 8
