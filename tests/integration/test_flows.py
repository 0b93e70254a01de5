"""Start flows/train.yml and flows/search.yml as `jina flow --uses` processes (free ports) and talk
to them with jina's Client over gRPC and with httpx over HTTP. Each test sets up its own data."""
import math
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.data.schema import Doc, DocList, Report
from executors.search.results import matches
from executors.service.flow_process import FlowProcess
from tests.integration.search_helpers import (
    MODEL,
    SearchFlow,
    assert_answers_match,
    brute_force,
    grpc_error_message,
    publish_versions,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope='module')
def train(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('train')
    flow = FlowProcess(REPO / 'flows/train.yml', cwd, free_ports=True).start()
    try:
        yield {'cwd': cwd, 'grpc': Client(port=flow.ports['grpc']), 'http': f"http://localhost:{flow.ports['http']}"}
    finally:
        flow.stop()


@pytest.fixture(scope='module')
def points():
    x, _ = make_swiss_roll(600, noise=0.05, random_state=0)
    return x.astype(np.float32)


def _post(url, endpoint, data=(), **parameters):
    return httpx.post(f'{url}{endpoint}', json={'data': list(data), 'parameters': parameters}, timeout=300)


def _status(train):
    response = _post(train['http'], '/status')
    assert response.status_code == 200, response.text
    return response.json()['data'][0]['data']


def _fresh_training_data(train, points):
    train['grpc'].post('/train/clear')
    docs = DocList[Doc]([Doc(id=f'p{i}', tensor=p) for i, p in enumerate(points)])
    return train['grpc'].post('/train', docs, request_size=len(docs), return_type=DocList[Report])


def test_train_flow_streams_data_fits_and_reports(train, points):
    reports = _fresh_training_data(train, points[:400])
    assert reports[0].data['num_docs'] == 400
    before = _status(train)['versions']
    response = _post(train['http'], '/fit', seed=0, wait=True)
    assert response.status_code == 200, response.text
    job = response.json()['data'][0]['data']['job']
    assert job['state'] == 'done' and job['version'] == before[-1] + 1 and job['parent'] == before[-1]
    assert job['metrics_after']['mAP@10'] > job['metrics_before']['mAP@10']
    status = _status(train)
    assert status['versions'] == before + [job['version']] and status['table'].startswith('| metric | before | after |')
    evaluation = train['grpc'].post('/evaluate', DocList[Doc]([Doc(tensor=p) for p in points[400:500]]),
                                    parameters={'k': 5, 'version': job['version']}, request_size=100,
                                    return_type=DocList[Report])
    assert evaluation[0].data['model_version'] == job['version'] and 0 < evaluation[0].data['metrics']['precision@5'] <= 1


TRAIN_BAD_REQUESTS = [  # endpoint, docs, parameters, HTTP status, full message
    ('/train', [{'id': 't', 'tensor': [1.0]}], {}, 400,
     "docs[0] (id 't'): tensor: expected a 1-D vector with a column 1, got shape (1,)"),
    ('/train', [{'id': 't', 'tensor': [1.0, 2.0]}], {}, 400,
     "docs[0] (id 't'): tensor: expected a 1-D vector of length 3, got shape (2,)"),
    ('/train', [], {}, 400, 'docs: the request to /train holds no documents; send at least one'),
    ('/fit', [], {'epoch': 3}, 400,
     'parameters.epoch: unknown parameter for /fit; known: batch_size, epochs, eval_fraction, eval_k, from_scratch, '
     'learning_rate, loss, loss_kwargs, lr_scheduler, miner, num_items_per_class, optimizer, scheduler, seed, wait, '
     'warmup_ratio, weight_decay'),
    ('/fit', [], {'eval_fraction': 2.0}, 400, 'parameters.eval_fraction: must be in [0, 1), got 2.0'),
    ('/fit', [], {'learning_rate': -1.0}, 400, 'parameters.learning_rate: must be a finite number > 0, got -1.0'),
    ('/fit', [], {'epochs': 0}, 400, 'parameters.epochs: must be a positive integer, got 0'),
    ('/fit/cancel', [], {}, 409, '/fit/cancel: no fit is running; start one with /fit'),
    ('/evaluate', [{'id': 'e', 'tensor': [1.0, 2.0, 3.0]}], {}, 400,
     'docs: /evaluate needs at least 2 labelled docs (each is a query against the others), got 1'),
    ('/evaluate', [{'tensor': [1.0, 2.0, 3.0]}, {'tensor': [2.0, 1.0, 3.0]}], {'k': 0}, 400,
     'parameters.k: must be a positive integer, got 0'),
    ('/evaluate', [{'tensor': [1.0, 2.0, 3.0]}, {'tensor': [2.0, 1.0, 3.0]}], {'version': 99}, 400,
     "version: 'swiss-roll-mlp' has no version 99; published versions: {versions}"),
    ('/status', [], {'verbose': True}, 400, 'parameters.verbose: unknown parameter for /status; known: none'),
]


@pytest.mark.parametrize('endpoint, data, parameters, status, message', TRAIN_BAD_REQUESTS,
                         ids=[f'{b[0]}-{b[4][:30]}' for b in TRAIN_BAD_REQUESTS])
def test_train_flow_bad_input_gets_4xx_with_the_full_message(train, points, endpoint, data, parameters, status,
                                                             message):
    _fresh_training_data(train, points[:50])
    before = _status(train)
    message = message.replace('{versions}', str(before['versions']))
    response = _post(train['http'], endpoint, data, **parameters)
    assert (response.status_code, response.json()) == (status, {'detail': message})
    with pytest.raises(Exception) as error:
        train['grpc'].post(endpoint, DocList[Doc]([Doc(**d) for d in data]), parameters=parameters)
    assert grpc_error_message(error.value) == message
    after = _status(train)
    assert (after['num_docs'], after['versions'], after['job']) == (before['num_docs'], before['versions'], before['job'])


def test_http_docs_without_id_get_one_as_over_grpc(train, points):
    """A JSON doc without ``id`` used to reach the store as id None (HTTP 500, NOT NULL constraint): the
    gateway's schema-built model has no id factory. Each now gets a fresh id, as docarray gives one."""
    _fresh_training_data(train, points[:50])
    before = _status(train)['num_docs']
    data = [{'tensor': [0.1 * i, 1.0, 2.0], 'label': 'a' if i % 2 else 'b'} for i in range(4)]
    response = _post(train['http'], '/train', data)
    assert response.status_code == 200, response.text
    assert response.json()['data'][0]['data']['num_docs'] == before + 4
    assert _post(train['http'], '/train', data).json()['data'][0]['data']['num_docs'] == before + 8


def test_nan_learning_rate_is_a_clear_input_error(train, points):
    _fresh_training_data(train, points[:50])  # gRPC's Struct cannot carry NaN: JSON (as Python writes it) can
    response = httpx.post(f"{train['http']}/fit", content='{"data": [], "parameters": {"learning_rate": NaN}}',
                          headers={'content-type': 'application/json'}, timeout=60)
    assert (response.status_code, response.json()) == (
        400, {'detail': 'parameters.learning_rate: must be a finite number, got nan'})
    with pytest.raises(Exception) as error:  # the client cannot even encode it
        train['grpc'].post('/fit', parameters={'learning_rate': math.nan})
    assert 'Fail to serialize NaN' in str(error.value)
    assert _status(train)['job']['state'] != 'running'


def test_a_long_fit_blocks_nothing_and_can_be_cancelled(train, points):
    _fresh_training_data(train, points[:100])
    versions = _status(train)['versions']
    started = _post(train['http'], '/fit', epochs=10 ** 9)
    assert started.status_code == 200 and started.json()['data'][0]['data']['job']['state'] == 'running'
    second = _post(train['http'], '/fit', epochs=1)
    assert (second.status_code, second.json()['detail']) == (
        409, '/fit: a fit is already running; poll /status and retry when it has finished, or stop it with /fit/cancel')
    clear = _post(train['http'], '/train/clear')
    assert (clear.status_code, clear.json()['detail']) == (
        409, '/train/clear: a fit is running on the collected docs; wait for it to finish or stop it with /fit/cancel')
    cancelled = _post(train['http'], '/fit/cancel')
    assert cancelled.status_code == 200 and cancelled.json()['data'][0]['data']['job']['state'] == 'cancelled'
    status = _status(train)
    assert status['versions'] == versions and status['num_docs'] == 100  # nothing published, nothing lost
    assert _post(train['http'], '/train/clear').status_code == 200
    _fresh_training_data(train, points[:100])
    done = _post(train['http'], '/fit', epochs=1, wait=True)
    assert done.status_code == 200 and done.json()['data'][0]['data']['job']['state'] == 'done'


def test_training_with_one_class_is_refused(train):
    client = train['grpc']
    client.post('/train/clear')
    client.post('/train', DocList[Doc]([Doc(tensor=np.full(3, i, np.float32), label='same') for i in range(5)]))
    with pytest.raises(Exception, match='1 class'):
        client.post('/fit', parameters={'wait': True})
    assert _status(train)['num_docs'] == 5


def test_hot_swap_answers_every_query_from_one_version_and_keeps_mid_swap_docs(tmp_path):
    store = publish_versions(tmp_path, current=1)
    flow = SearchFlow(tmp_path).start()
    x, _ = make_swiss_roll(560, noise=0.05, random_state=3)
    x = x.astype(np.float32)
    ids, points, late_ids, late, queries = ([f'p{i}' for i in range(500)], x[:500], [f'late{i}' for i in range(20)],
                                            x[500:520], x[520:540])
    answers, failures, stop = [], [], threading.Event()

    def query_during_swap():
        while not stop.is_set():
            try:
                got = flow.search(queries, limit=5)
                answers.append((time.monotonic(), got[0].model_version, got))
            except Exception as e:  # noqa: BLE001 - recorded: any error fails the test
                failures.append(e)

    try:
        flow.index(ids, points)
        response = flow.post('/search', [{'tensor': q.tolist()} for q in queries], limit=5)
        assert response.status_code == 200, response.text
        first = response.json()['data']
        assert [m['label'] for m in matches(first[0])] == first[0]['match_fields']['label']
        assert all(a.get('tensor') is None and a.get('embedding') is None for a in first)  # lean answers
        thread = threading.Thread(target=query_during_swap)
        thread.start()
        client = flow.grpc
        prepared = client.post('/model/prepare', parameters={'version': 2}, return_type=DocList[Report])
        t_prepared = time.monotonic()
        assert prepared[0].data['indexer']['pending_version'] == 2
        flow.index(late_ids, late)  # indexed mid-swap: embedded by both versions
        while True:
            missing = client.post('/model/missing', parameters={'version': 2, 'limit': 64}, return_type=DocList[Doc])
            if not len(missing):
                break
            client.post('/model/reindex', missing, parameters={'version': 2}, request_size=len(missing))
        time.sleep(1.0)  # queries keep being answered by version 1 while version 2 is complete
        during = flow.search(late, limit=1)
        t_activate = time.monotonic()
        activated = client.post('/model/activate', parameters={'version': 2}, return_type=DocList[Report])
        time.sleep(1.0)
        stop.set()
        thread.join()
        assert failures == []
        assert activated[0].data['indexer']['generations'] == [2] and activated[0].data['encoder']['active_version'] == 2
        assert any(t_prepared < t < t_activate for t, _, _ in answers)
        all_ids, all_points = ids + late_ids, np.vstack([points, late])
        sims = {v: brute_force(store, v, all_points, queries, 5)[2] for v in (1, 2)}
        for _, version, got in answers:
            assert {d.model_version for d in got} == {version}
            assert_answers_match(got, all_ids, sims[version], 5)
        assert {v for _, v, _ in answers} == {1, 2}
        after = flow.search(late, limit=1)
        assert {d.model_version for d in during} == {1} and {d.model_version for d in after} == {2}
        assert [d.match_ids for d in during] == [[i] for i in late_ids]  # found under version 1 ...
        assert [d.match_ids for d in after] == [[i] for i in late_ids]  # ... and under version 2
        assert store.current_version(MODEL) == 1  # the swap moved the flow, not the store's pointer
    finally:
        stop.set()
        flow.stop()
