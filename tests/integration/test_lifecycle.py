"""The model lifecycle run by the service: a fit publishes a version, the promotion gate promotes
it, the running search flow swaps to it by itself (no user command, no restart) while 8 clients
query, a rollback returns to the earlier version the same way, a worse fit is published but not
promoted, and /search/evaluate scores the serving version. Flows: `jina flow --uses`, free ports."""
import threading
import time

import numpy as np
import pytest
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.data.schema import Doc, DocList, Report
from executors.evaluation.metrics import retrieval_metrics
from executors.service.flow_process import FlowProcess
from tests.integration.search_helpers import MODEL, REPO, SearchFlow, assert_answers_match, brute_force

pytestmark = pytest.mark.timeout(900)


def _wait_serving(flow, version, seen, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lifecycle = flow.status()['lifecycle']
        seen.append(lifecycle)
        if lifecycle['serving'] == version and lifecycle['building'] is None:
            return lifecycle
        time.sleep(0.2)
    raise AssertionError(f'not serving version {version} after {timeout} s: {seen[-1]}')


def test_fit_promotion_swap_rollback_under_load_and_a_worse_fit_is_not_promoted(tmp_path):
    train = FlowProcess(REPO / 'flows/train.yml', tmp_path, free_ports=True).start()  # publishes version 1
    search = SearchFlow(tmp_path).start()
    trainer = Client(port=train.ports['grpc'])
    store = search.store = __import__('executors.models', fromlist=['ModelStore']).ModelStore(
        tmp_path / 'workspace' / 'models')
    x, _ = make_swiss_roll(1000, noise=0.05, random_state=0)
    x = x.astype(np.float32)
    labels = [str(min(int((v - x[:, 1].min()) / (np.ptp(x[:, 1]) / 5)), 4)) for v in x[:, 1]]
    ids, points, queries = [f'p{i}' for i in range(400)], x[:400], x[900:910]
    answers, failures, stop = [], [], threading.Event()

    def client_loop(n):
        client = Client(port=search.process.ports['grpc'])
        while not stop.is_set():
            try:
                got = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]), parameters={'limit': 5},
                                  request_size=len(queries), return_type=DocList[Doc])
                answers.append(got)
            except Exception as e:  # noqa: BLE001 - recorded: any failed request fails the test
                failures.append(f'client {n}: {e}')

    clients = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    try:
        search.index(ids, points, label=labels[:400])
        for c in clients:
            c.start()
        trainer.post('/train', DocList[Doc]([Doc(id=f't{i}', tensor=p) for i, p in enumerate(x[400:900])]),
                     request_size=500)
        fit = trainer.post('/fit', parameters={'epochs': 30, 'wait': True, 'seed': 0},
                           return_type=DocList[Report])[0].data['job']
        assert fit['state'] == 'done' and fit['promotion']['promoted'], fit
        assert store.current_version(MODEL) == fit['version'] == 2
        seen = []
        lifecycle = _wait_serving(search, 2, seen)  # no user command between the fit and serving version 2
        assert lifecycle['served'] == [1, 2] and lifecycle['progress']['done'] == 400
        assert any(s['building'] == 2 for s in seen) or lifecycle['progress']['stage'] == 'done'

        worse = trainer.post('/fit', parameters={'epochs': 1, 'learning_rate': 1e-9, 'from_scratch': True,
                                                 'wait': True, 'seed': 0},  # an untrained model
                             return_type=DocList[Report])[0].data['job']
        assert worse['state'] == 'done' and not worse['promotion']['promoted'], worse
        assert worse['promotion']['reason'].endswith('on the held-out set; the version is kept in the store but '
                                                     'not promoted')
        assert store.versions(MODEL) == [1, 2, 3] and store.current_version(MODEL) == 2
        time.sleep(3)  # the flow does not follow a refused version
        assert search.status()['lifecycle']['serving'] == 2
        rolled = search.report('/model/rollback')
        assert rolled['rollback_to'] == 1
        _wait_serving(search, 1, seen)

    finally:
        stop.set()
        for c in clients:
            if c.is_alive():
                c.join()
        train.stop()
    try:
        assert failures == []
        versions = [a[0].model_version for a in answers]
        assert {1, 2} <= set(versions) and len(answers) > 50
        sims = {v: brute_force(store, v, points, queries, 5)[2] for v in (1, 2)}
        for got in answers:
            assert len({d.model_version for d in got}) == 1
            assert_answers_match(got, ids, sims[got[0].model_version], 5)

        # /search/evaluate: the serving version's metrics on labelled queries, equal to a brute-force ranking
        evaluation = search.grpc.post('/search/evaluate',
                                      DocList[Doc]([Doc(tensor=q, label=labels[900 + i]) for i, q in enumerate(queries)]),
                                      parameters={'k': 5}, return_type=DocList[Report])[0].data
        order, _, _ = brute_force(store, 1, points, queries, 5)
        relevance = (np.asarray(labels[:400])[order] == np.asarray(labels[900:910])[:, None]).astype(float)
        counts = np.asarray([labels[:400].count(lab) for lab in labels[900:910]])
        expected = retrieval_metrics(relevance, counts, 5, metrics=['hit', 'precision', 'recall', 'mAP', 'NDCG'])
        assert evaluation['model_version'] == 1 and evaluation['k'] == 5
        assert evaluation['metrics'] == pytest.approx(expected)
    finally:
        search.stop()
