"""With two Encoder replicas, a model-store promotion reaches both: once the flow serves the new
version, every /search (each a separate request, spread over the replicas) is embedded with it and
equals a brute-force cosine search under it. Flow: a ``replicas: 2`` variant of flows/search.yml
started with ``jina flow --uses`` on free ports."""
import time

import numpy as np
import pytest
import yaml
from jina import Client
from sklearn.datasets import make_swiss_roll

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
