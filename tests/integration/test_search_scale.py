"""The search flow at scale: shards merge to the unsharded answer, bulk ingest, index types and
settings through the flow, and acknowledged writes surviving a SIGKILL without per-request
index rewrites."""
import os
import signal

import httpx
import numpy as np
import pytest
from jina import Client

from executors.data.schema import Batch, Doc, DocList
from executors.models import ModelStore, build_model
from executors.search.flow_config import search_flow_yaml
from executors.search.results import bulk_batches, bulk_matches, matches
from executors.search.shards import shard_of
from executors.service.flow_process import FlowProcess
from tests.integration.search_helpers import grpc_error_message

pytestmark = pytest.mark.timeout(900)
DIM = 8


def _publish(cwd):
    store = ModelStore(cwd / 'workspace' / 'models')
    store.publish('m', build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [DIM, 16, DIM]}}, seed=0),
                  {})


def _points(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(20, DIM))[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))).astype(np.float32)


def _search(client, queries, **parameters):
    return client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]), parameters=parameters,
                       return_type=DocList[Doc])


@pytest.fixture(scope='module')
def flows(tmp_path_factory):
    """One unsharded (HNSW) and one 2-shard flow over the same model store."""
    cwd = tmp_path_factory.mktemp('scale')
    _publish(cwd)
    one = FlowProcess(search_flow_yaml(cwd, 'one', dim=DIM, model_name='m',
                                       indexer={'index_factory': 'Flat', 'snapshot_interval': 3600}),
                      cwd / 'one', free_ports=True)
    two = FlowProcess(search_flow_yaml(cwd, 'two', dim=DIM, model_name='m', shards=2,
                                       indexer={'index_factory': 'Flat', 'snapshot_interval': 3600}),
                      cwd / 'two', free_ports=True)
    for flow in (one, two):
        (flow.cwd / 'workspace').mkdir(parents=True, exist_ok=True)
        os.symlink(cwd / 'workspace' / 'models', flow.cwd / 'workspace' / 'models')
        flow.launch()
    try:
        one.wait_ready()
        two.wait_ready()
        yield {'cwd': cwd, 'one': one, 'two': two, 'one_grpc': Client(port=one.ports['grpc']),
               'two_grpc': Client(port=two.ports['grpc'])}
    finally:
        one.stop()
        two.stop()


def test_two_shards_answer_with_the_same_ids_as_one(flows):
    points = _points(600, 0)
    ids = [f'p{i}' for i in range(len(points))]
    labels = [str(i % 7) for i in range(len(points))]
    for name in ('one', 'two'):
        reports = flows[f'{name}_grpc'].post('/index/bulk', list(bulk_batches(ids, points, labels, batch_size=200)),
                                             request_size=1, return_type=DocList[Batch])
        assert sum(b.num_indexed for b in reports) == 600
    status = flows['two_grpc'].post('/model/status')[0].data['indexer']
    assert status['num_docs'] == 600 and status['shards'] == 2
    queries = _points(30, 1)
    one = _search(flows['one_grpc'], queries, limit=10, fields=['label'])
    two = _search(flows['two_grpc'], queries, limit=10, fields=['label'])
    assert [d.match_ids for d in one] == [d.match_ids for d in two]
    assert np.allclose(np.stack([d.match_scores for d in one]), np.stack([d.match_scores for d in two]), atol=1e-6)
    assert [m['label'] for m in matches(two[0])] == [labels[int(i[1:])] for i in one[0].match_ids]
    # the columnar query path answers the same, sharded or not
    for name in ('one', 'two'):
        answers = flows[f'{name}_grpc'].post('/search/bulk', list(bulk_batches(None, queries, batch_size=16)),
                                             parameters={'limit': 10, 'fields': ['label']}, request_size=1, results_in_order=True,
                                             return_type=DocList[Batch])
        rows = [row for answer in answers for row in bulk_matches(answer)]
        assert [[m['id'] for m in row] for row in rows] == [d.match_ids for d in one]
        assert np.allclose([[m['score'] for m in row] for row in rows], np.stack([d.match_scores for d in one]),
                           atol=1e-6)
        assert [m['label'] for m in rows[0]] == one[0].match_fields['label']


def test_bulk_and_per_document_ingest_store_the_same_and_bad_batches_are_refused(flows):
    client = flows['one_grpc']
    points = _points(50, 2)
    client.post('/index', DocList[Doc]([Doc(id=f'doc{i}', tensor=p, label='x') for i, p in enumerate(points)]))
    client.post('/index/bulk', list(bulk_batches([f'bulk{i}' for i in range(50)], points, ['x'] * 50)))
    for answer in _search(client, points[:5], limit=2, fields=['id', 'label']):
        assert {i.rstrip('0123456789') for i in answer.match_ids} == {'doc', 'bulk'}
        assert np.isclose(answer.match_scores[0], answer.match_scores[1], atol=1e-5)
        assert answer.match_fields['label'] == ['x', 'x'] and answer.match_fields['id'] == answer.match_ids
    url = f"http://localhost:{flows['one'].ports['http']}"
    before = client.post('/model/status')[0].data['indexer']['num_docs']
    for batch, message in [
        ({'ids': ['a', 'b'], 'tensor': np.ones((3, DIM)).tolist()}, 'docs[0].tensor: expected [N, ...] with one row per id'),
        ({'ids': ['a', 'a'], 'tensor': np.ones((2, DIM)).tolist()}, 'docs[0].ids: ids in a batch must be unique'),
        ({'ids': ['a'], 'tensor': np.ones((1, DIM)).tolist(), 'labels': ['x', 'y']},
         'docs[0].labels: expected 1 values (one per id), got 2'),
        ({'ids': ['a'], 'tensor': np.ones((1, DIM + 1)).tolist()}, "(a /index/bulk batch), docs[0] (id 'a')"),
    ]:
        response = httpx.post(f'{url}/index/bulk', json={'data': [batch]}, timeout=60)
        assert response.status_code >= 400 and message in response.text, response.text
    assert client.post('/model/status')[0].data['indexer']['num_docs'] == before
    for parameters, message in [({'nprobe': 4}, 'parameters.nprobe: applies to IVF indexes; this index is'),
                                ({'fields': ['tensor']}, 'parameters.fields: expected a list of id, label, text'),
                                ({'efSearch': 0}, 'parameters.efSearch')]:
        with pytest.raises(Exception, match=message.replace('(', r'\(').replace('[', r'\[')):
            _search(client, points[:1], **parameters)


def test_acknowledged_writes_survive_sigkill_and_restart_from_snapshot_plus_log(tmp_path):
    _publish(tmp_path)
    yml = search_flow_yaml(tmp_path, 'hnsw', dim=DIM, model_name='m',
                           indexer={'index_factory': 'HNSW16', 'snapshot_interval': 3600})
    points = _points(400, 3)
    with FlowProcess(yml, tmp_path, free_ports=True) as flow:
        client = Client(port=flow.ports['grpc'])
        client.post('/index/bulk', list(bulk_batches([f'p{i}' for i in range(300)], points[:300])), request_size=1)
        client.post('/index', DocList[Doc]([Doc(id=f'p{i}', tensor=points[i]) for i in range(300, 400)]),
                    request_size=50)
        before = _search(client, points[:20], limit=5, efSearch=200)
        snapshots = list((tmp_path / 'workspace').rglob('generations/*.npz'))
        assert snapshots == []  # no request wrote an index file
        os.killpg(flow.process.pid, signal.SIGKILL)
        flow.process.wait()
    with FlowProcess(yml, tmp_path, free_ports=True) as flow:
        client = Client(port=flow.ports['grpc'])
        assert client.post('/model/status')[0].data['indexer']['num_docs'] == 400
        after = _search(client, points[:20], limit=5, efSearch=200)
        assert [d.match_ids for d in after] == [d.match_ids for d in before]
        assert [d.match_ids[0] for d in after] == [f'p{i}' for i in range(20)]


def _answer(flow, endpoint, data=(), **parameters):
    """``(HTTP status, JSON body)`` of one HTTP request to ``flow``."""
    response = httpx.post(f"http://localhost:{flow.ports['http']}{endpoint}",
                          json={'data': list(data), 'parameters': parameters}, timeout=120)
    return response.status_code, response.json()


def _report(flow, endpoint, **parameters):
    status, body = _answer(flow, endpoint, **parameters)
    assert status == 200, body
    return body['data'][0]['data']


def test_every_document_endpoint_answers_sharded_as_unsharded(flows):
    """Same docs in a 2-shard and an unsharded flow: /count, /get, /update, /delete and
    /search/evaluate answer alike (errors included), and /model/status shows both shards."""
    rng = np.random.default_rng(5)
    points = _points(300, 5)
    ids = [f'crud{i}' for i in range(300)]
    mine = {'tags.set': 'crud'}
    totals = {name: _report(flows[name], '/count')['count'] for name in ('one', 'two')}
    labels, tags = [str(n % 6) for n in range(300)], [{'set': 'crud', 'n': n} for n in range(300)]
    for name in ('one', 'two'):  # 60 docs one by one (each /index request must reach every shard), 240 in bulk
        flows[f'{name}_grpc'].post('/index', DocList[Doc]([
            Doc(id=ids[n], tensor=points[n], label=labels[n], tags=tags[n]) for n in range(60)]), request_size=20)
        reports = flows[f'{name}_grpc'].post(
            '/index/bulk', list(bulk_batches(ids[60:], points[60:], labels[60:], tags[60:], batch_size=80)),
            request_size=1, return_type=DocList[Batch])
        assert sum(b.num_indexed for b in reports) == 240
    assert {name: _report(flows[name], '/count')['count'] - totals[name] for name in ('one', 'two')} == \
        {'one': 300, 'two': 300}
    shard_ids = [shard_of(i, 2) for i in ids]
    assert 100 < sum(shard_ids) < 200  # both shards hold a good part

    def both(endpoint, data=(), **parameters):
        one = _answer(flows['one'], endpoint, data, **parameters)
        two = _answer(flows['two'], endpoint, data, **parameters)
        for answer in (one, two):
            if answer[0] == 200:
                answer[1].pop('header', None)
                for doc in answer[1]['data']:
                    if endpoint != '/get':
                        doc.pop('id', None)  # a report's random id
                    if endpoint == '/delete':  # the flows' totals differ (other tests): compare what changed
                        name = 'one' if answer is one else 'two'
                        doc['data']['num_docs'] -= totals[name]
        assert one == two, (endpoint, parameters, one, two)
        return one

    assert both('/count', filter=mine)[1]['data'][0]['data'] == {'count': 300}
    assert both('/count', filter={'tags.set': 'crud', 'tags.n': {'$lt': 40}, 'label': {'$in': ['1', '2']}})[1][
        'data'][0]['data'] == {'count': 14}
    asked = [ids[i] for i in rng.permutation(300)[:25]] + [ids[3]]  # both shards' ids, mixed, one twice
    status, body = both('/get', ids=asked)
    assert status == 200 and [d['id'] for d in body['data']] == list(dict.fromkeys(asked))
    assert [d['label'] for d in body['data']] == [str(int(i[4:]) % 6) for i in dict.fromkeys(asked)]
    for bad in (['crud1', 'nope', 'crud2', 'nada'], []):
        assert both('/get', ids=bad)[0] in (400, 404)
    assert both('/get', ids=['crud1', 'nope', 'crud2', 'nada'])[1] == \
        {'detail': "parameters.ids: 2 id(s) not indexed: ['nope', 'nada']"}
    # /update: all or nothing, also when the unknown id and the known ones live on different shards
    for name in ('one', 'two'):
        with pytest.raises(Exception) as error:
            flows[f'{name}_grpc'].post('/update', DocList[Doc]([
                Doc(id='crud0', label='z'), Doc(id='crud1', label='z'), Doc(id='nope', label='z')]))
        assert grpc_error_message(error.value) == "docs.id: 1 id(s) not indexed: ['nope']; index them with /index"
    assert both('/get', ids=['crud0', 'crud1'])[1]['data'][0]['label'] == '0'  # nothing was updated
    updated = [flows[f'{name}_grpc'].post('/update', DocList[Doc]([
        Doc(id=f'crud{i}', label='z', tags={'set': 'crud'}) for i in range(10)]))[0].data for name in ('one', 'two')]
    assert updated[0] == updated[1] == {'updated': 10}
    assert both('/count', filter={'label': 'z', 'tags.set': 'crud'})[1]['data'][0]['data'] == {'count': 10}
    # /delete reports per id across the shards
    deleted = both('/delete', ids=['crud290', 'gone', 'crud291', 'crud5', 'gone2', 'crud290'])[1]['data'][0]['data']
    assert deleted['deleted'] == 3 and deleted['not_found'] == ['gone', 'gone2']
    assert both('/delete', ids=['crud290'])[1]['data'][0]['data']['not_found'] == ['crud290']
    # /search/evaluate: metrics of the merged top-k, relevant counts summed over the shards
    queries = _points(40, 6)
    labelled = [{'tensor': q.tolist(), 'label': str(n % 6)} for n, q in enumerate(queries)]
    for parameters, with_relevant in (({'k': 10, 'filter': mine}, 40),
                                      ({'k': 3, 'filter': {'tags.set': 'crud', 'label': {'$ne': '0'}}}, 33)):
        answer = both('/search/evaluate', labelled, **parameters)[1]['data'][0]['data']
        assert answer['num_queries'] == 40 and answer['num_queries_with_relevant'] == with_relevant, answer
    # the metrics equal a brute-force ranking of the stored docs (the merged top-k is the true one)
    store = ModelStore(flows['cwd'] / 'workspace' / 'models')
    from executors.models.inference import embed
    model, _ = store.load('m', 1)
    kept = [n for n in range(300) if ids[n] not in ('crud290', 'crud291', 'crud5')]
    labels = np.asarray(['z' if n < 10 else str(n % 6) for n in kept], dtype=object)
    x, q = embed(list(points[kept]), model), embed(list(queries), model)
    x, q = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    order = np.argsort(-(q @ x.T), axis=1, kind='stable')[:, :10]
    from executors.search.shards import evaluation_report
    query_labels = [str(n % 6) for n in range(40)]
    expected = evaluation_report(1, 10, query_labels, [list(labels[row]) for row in order],
                                 {label: int((labels == label).sum()) for label in set(labels)})
    got = both('/search/evaluate', labelled, k=10, filter=mine)[1]['data'][0]['data']['metrics']
    assert got == pytest.approx(expected['metrics'], abs=1e-9) and 0 < got['recall@10'] < 1
    for bad in ({'k': 0, 'filter': mine}, {'filter': {'tags.set': {'$regex': 'x'}}}):
        assert both('/search/evaluate', labelled, **bad)[0] == 400
    assert both('/search/evaluate', [{'tensor': queries[0].tolist()}])[0] == 400  # unlabelled
    # /model/status shows every shard
    status = _report(flows['two'], '/model/status')
    assert [s['indexer']['shard_id'] for s in status['shards']] == [0, 1]
    assert sum(s['indexer']['num_docs'] for s in status['shards']) == status['indexer']['num_docs']
    assert status['indexer']['active_version'] == 1 and status['indexer']['shards'] == 2

