"""With two Encoder replicas, a model-store promotion reaches both: once the flow serves the new
version, every /search (each a separate request, spread over the replicas) is embedded with it and
equals a brute-force cosine search under it. Queries sent without pause by 4 clients during the
switch all succeed, each equal to brute force under the version stamped on it, and the old
generation is dropped by the rule (every replica switched, every old-stamped query finished), not
by the safety timeout. Flow: a ``replicas: 2`` variant of flows/search.yml started with
``jina flow --uses`` on free ports."""
import json
import threading
import time

import numpy as np
import pytest
import yaml
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.data.schema import Doc, DocList
from executors.models import build_model
from executors.search.flow_config import search_flow_config
from executors.service.flow_process import FlowProcess
from tests.integration.search_helpers import MODEL, SPEC, SearchFlow, brute_force, publish_versions

pytestmark = pytest.mark.timeout(600)


class ReplicaSearchFlow(SearchFlow):
    """The search flow from ``flow_yaml`` in ``cwd`` on free ports."""

    def __init__(self, cwd, flow_yaml):
        self.cwd = cwd
        self.process = FlowProcess(flow_yaml, cwd, free_ports=True)
        self.grpc = Client(port=self.process.ports['grpc'])
        self.http = f"http://localhost:{self.process.ports['http']}"


def _points(n, seed):
    x, _ = make_swiss_roll(n, noise=0.05, random_state=seed)
    return x.astype(np.float32)


def test_both_encoder_replicas_follow_a_promotion(tmp_path):
    config = search_flow_config()
    encoder = next(e for e in config['executors'] if e['name'] == 'encoder')
    encoder['replicas'] = 2
    indexer = next(e for e in config['executors'] if e['name'] == 'indexer')
    indexer['uses_with']['drop_timeout'] = 600  # a drop by the timeout would fail the test
    flow_yaml = tmp_path / 'search-replicas.yml'
    flow_yaml.write_text(yaml.safe_dump(config, sort_keys=False))

    store = publish_versions(tmp_path, seeds=(0,), current=1)
    flow = ReplicaSearchFlow(tmp_path, flow_yaml).start()
    ids, points = [f'd{i}' for i in range(100)], _points(100, 0)
    try:
        log = flow.process.log_path.read_text(errors='replace')
        assert 'encoder/rep-0' in log and 'encoder/rep-1' in log  # two Encoder replicas run
        flow.index(ids, points)
        before = flow.search(_points(4, 1), limit=5)
        assert {a.model_version for a in before} == {1}

        answered, failures, stop = [], [], threading.Event()

        def query_loop(seed):
            client, n = Client(port=flow.process.ports['grpc']), 0
            while not stop.is_set():
                queries = _points(2, 1000 * seed + n)
                n += 1
                try:
                    answers = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]),
                                          parameters={'limit': 5}, return_type=DocList[Doc])
                    answered.append((queries, answers))
                except Exception as e:  # noqa: BLE001 - any failure fails the test below
                    failures.append(repr(e))

        threads = [threading.Thread(target=query_loop, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        store.publish(MODEL, build_model(SPEC, seed=1), {'stage': 'initial', 'parent': None})  # moves CURRENT
        assert store.current_version(MODEL) == 2
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            status = flow.status()
            if status['lifecycle']['serving'] == 2 and status['lifecycle']['building'] is None:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f'not serving version 2 after 180 s: {status}')
        while time.monotonic() < deadline and not flow.status()['retirement']['last_drop']:
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(60)
        drop = flow.status()['retirement']['last_drop']
        assert failures == [] and drop['version'] == 1 and drop['reason'] == 'drained', (failures[:3], drop)
        assert drop['seconds_after_switch'] is None or drop['seconds_after_switch'] < 30
        records = [json.loads(p.read_text()) for p in (tmp_path / 'workspace/search/index/encoders').glob('*.json')]
        assert len(records) == 2 and {r['active'] for r in records} == {2}  # both replicas acknowledged
        assert sum(r['stamped'].get('1', 0) for r in records) == flow.status()['retirement']['finished_queries']['1']
        versions = [answers[0].model_version for _, answers in answered]
        assert set(versions) == {1, 2} and versions.index(2) > 0, versions  # queries ran through the switch
        brute = {v: brute_force(store, v, points, np.concatenate([q for q, _ in answered]), 5) for v in (1, 2)}
        row = 0
        for queries, answers in answered:
            for answer in answers:
                order, scores, _ = brute[answer.model_version]
                assert answer.match_ids == [ids[j] for j in order[row]], row
                np.testing.assert_allclose(answer.match_scores, scores[row], atol=1e-5)
                row += 1

        for n in range(24):  # separate requests: the gateway spreads them over both replicas
            queries = _points(3, 100 + n)
            answers = flow.search(queries, limit=5)
            order, scores, _ = brute_force(store, 2, points, queries, 5)
            assert [a.model_version for a in answers] == [2, 2, 2], n
            for i, answer in enumerate(answers):
                assert answer.match_ids == [ids[j] for j in order[i]], (n, i)
                np.testing.assert_allclose(answer.match_scores, scores[i], atol=1e-5)
    finally:
        flow.stop()
