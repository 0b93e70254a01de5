"""Start flows/train.yml and flows/search.yml as `jina flow --uses` processes and talk to them
with jina's Client over gRPC and with httpx over HTTP."""
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.models.inference import embed
from executors.service.flow_process import FlowProcess
from executors.models import ModelStore
from executors.data.schema import Doc, DocList, Report
from executors.search.results import matches
from executors.search.swap import hot_swap

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope='module')
def flows(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('flows')
    train = FlowProcess(REPO / 'flows/train.yml', cwd, free_ports=True).launch()
    search = FlowProcess(REPO / 'flows/search.yml', cwd, free_ports=True).launch()
    try:
        train.wait_ready()
        search.wait_ready()
        yield {'cwd': cwd, 'train': train, 'search': search,
               'train_grpc': Client(port=train.ports['grpc']), 'search_grpc': Client(port=search.ports['grpc']),
               'train_http': f"http://localhost:{train.ports['http']}",
               'search_http': f"http://localhost:{search.ports['http']}"}
    finally:
        train.stop()
        search.stop()


@pytest.fixture(scope='module')
def points():
    x, _ = make_swiss_roll(600, noise=0.05, random_state=0)
    return x.astype(np.float32)


def _store(flows):
    return ModelStore(flows['cwd'] / 'workspace' / 'models')


def _post_http(url, endpoint, data=(), **parameters):
    return httpx.post(f'{url}{endpoint}', json={'data': list(data), 'parameters': parameters}, timeout=300)


class VersionOracle:
    """Brute-force cosine neighbours of the queries under each published model version."""

    def __init__(self, store, index_points, queries, limit):
        self.limit, self.by_version = limit, {}
        for version in store.versions('swiss-roll-mlp'):
            model, _ = store.load('swiss-roll-mlp', version)
            q, x = embed(list(queries), model), embed(list(index_points), model)
            q, x = q / np.linalg.norm(q, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
            self.by_version[version] = q @ x.T  # [Q, N] cosine similarities

    def check(self, version, ids_per_query, scores_per_query):
        """Each answer's scores are the true similarities of its ids under ``version``, and they
        are the ``limit`` best (ties may order ids differently)."""
        sims = self.by_version[version]
        for i, (ids, scores) in enumerate(zip(ids_per_query, scores_per_query)):
            rows = [int(doc_id[1:]) for doc_id in ids]
            assert np.allclose(sims[i, rows], scores, atol=1e-4)
            assert np.allclose(scores, np.sort(sims[i])[::-1][:self.limit], atol=1e-4)


def test_train_flow_streams_data_fits_and_reports(flows, points):
    client = flows['train_grpc']
    docs = DocList[Doc]([Doc(id=f'p{i}', tensor=p) for i, p in enumerate(points[:400])])
    reports = client.post('/train', docs, request_size=len(docs), return_type=DocList[Report])
    assert reports[0].data['num_docs'] == 400
    response = _post_http(flows['train_http'], '/fit', seed=0, wait=True)
    assert response.status_code == 200, response.text
    job = response.json()['data'][0]['data']['job']
    assert job['state'] == 'done' and job['version'] == 2 and job['parent'] == 1
    assert job['metrics_after']['mAP@10'] > job['metrics_before']['mAP@10']
    status = _post_http(flows['train_http'], '/status').json()['data'][0]['data']
    assert status['versions'] == [1, 2] and status['table'].startswith('| metric | before | after |')
    evaluation = client.post('/evaluate', DocList[Doc]([Doc(tensor=p) for p in points[400:500]]),
                             parameters={'k': 5, 'version': 2}, request_size=100, return_type=DocList[Report])
    assert evaluation[0].data['model_version'] == 2 and 0 < evaluation[0].data['metrics']['precision@5'] <= 1


def test_search_answers_and_hot_swap_never_mixes_versions(flows, points):
    store, client = _store(flows), flows['search_grpc']
    store.set_current('swiss-roll-mlp', 1)  # index with the untuned model first
    index_points, queries = points[:500], points[500:520]
    client.post('/index', DocList[Doc]([Doc(id=f'p{i}', tensor=p) for i, p in enumerate(index_points)]))
    response = _post_http(flows['search_http'], '/search', [{'tensor': q.tolist()} for q in queries], limit=5)
    assert response.status_code == 200, response.text
    answers = response.json()['data']
    assert {a['model_version'] for a in answers} == {1}
    oracle = VersionOracle(store, index_points, queries, 5)
    oracle.check(1, [a['match_ids'] for a in answers], [a['match_scores'] for a in answers])
    assert [m['label'] for m in matches(answers[0])] == answers[0]['match_fields']['label']
    assert all(a.get('tensor') is None and a.get('embedding') is None for a in answers)  # lean answers

    store.set_current('swiss-roll-mlp', 2)
    seen, failures, stop = [], [], threading.Event()

    def query_during_swap():
        while not stop.is_set():
            try:
                got = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]),
                                  parameters={'limit': 5}, return_type=DocList[Doc])
                seen.append((got[0].model_version, [d.match_ids for d in got], [d.match_scores for d in got]))
            except Exception as e:  # noqa: BLE001 - a refused query is allowed, a wrong one is not
                failures.append(str(e))

    thread = threading.Thread(target=query_during_swap)
    thread.start()
    result = hot_swap(client, batch_size=128)
    stop.set()
    thread.join()
    assert result['version'] == 2 and result['reindexed'] == 500
    assert result['indexer']['generations'] == [2] and result['encoder']['active_version'] == 2
    assert seen, failures
    for version, ids, scores in seen:
        oracle.check(version, ids, scores)  # every answer comes from one consistent model version
    after = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]), parameters={'limit': 5},
                        return_type=DocList[Doc])
    assert after[0].model_version == 2
    oracle.check(2, [d.match_ids for d in after], [d.match_scores for d in after])


@pytest.mark.parametrize('endpoint, data, parameters, message', [
    ('/train', [{'text': 'no vector'}], {}, 'no label from rule'),
    ('/train', [{'tensor': [1.0, 2.0]}], {}, 'tensor'),
    ('/train', [], {}, 'holds no documents'),
    ('/fit', [], {'epoch': 3}, 'parameters.epoch: unknown parameter'),
    ('/fit', [], {'eval_fraction': 2.0}, 'eval_fraction'),
    ('/fit', [], {'loss': 'Nope'}, 'loss'),
    ('/evaluate', [{'text': 'no vector'}], {}, 'no label from rule'),
    ('/evaluate', [{'tensor': [1.0, 2.0, 3.0]}, {'tensor': [2.0, 1.0, 3.0]}], {'version': 99}, 'has no version 99'),
    ('/status', [], {'verbose': True}, 'parameters.verbose: unknown parameter'),
])
def test_train_flow_bad_input_gets_clear_errors(flows, endpoint, data, parameters, message):
    response = _post_http(flows['train_http'], endpoint, data, **parameters)
    assert response.status_code == 500 and message in response.json()['detail'], response.text
    with pytest.raises(Exception, match=message):
        flows['train_grpc'].post(endpoint, DocList[Doc]([Doc(**d) for d in data]), parameters=parameters)
    assert _post_http(flows['train_http'], '/status').status_code == 200  # still serving


@pytest.mark.parametrize('endpoint, data, parameters, message', [
    ('/search', [{'tensor': [1.0, 2.0, 3.0, 4.0]}], {}, 'expected a 1-D vector of length 3'),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'limit': 0}, 'parameters.limit: must be at least 1'),
    ('/search', [{'tensor': [1.0, 2.0, 3.0]}], {'top_k': 3}, 'parameters.top_k: unknown parameter'),
    ('/search', [], {}, 'holds no documents'),
    ('/index', [{'text': 'no vector'}], {}, 'tensor'),
    ('/model/activate', [], {'version': 9}, 'version'),
    ('/model/reindex', [], {}, 'parameters.version: required'),
    ('/model/missing', [], {}, 'parameters.version: required'),
    ('/model/prepare', [], {'version': 99}, 'has no version 99'),
])
def test_search_flow_bad_input_gets_clear_errors(flows, endpoint, data, parameters, message):
    before = _post_http(flows['search_http'], '/model/status').json()['data'][0]['data']['indexer']['num_docs']
    response = _post_http(flows['search_http'], endpoint, data, **parameters)
    assert response.status_code == 500 and message in response.json()['detail'], response.text
    with pytest.raises(Exception, match=message):
        flows['search_grpc'].post(endpoint, DocList[Doc]([Doc(**d) for d in data]), parameters=parameters)
    status = _post_http(flows['search_http'], '/model/status')
    assert status.status_code == 200 and status.json()['data'][0]['data']['indexer']['num_docs'] == before


def test_training_with_one_class_is_refused(flows):
    client = flows['train_grpc']
    client.post('/train/clear')
    client.post('/train', DocList[Doc]([Doc(tensor=np.full(3, i, np.float32), label='same') for i in range(5)]))
    with pytest.raises(Exception, match='1 class'):
        client.post('/fit', parameters={'wait': True})
    assert _post_http(flows['train_http'], '/status').json()['data'][0]['data']['num_docs'] == 5
