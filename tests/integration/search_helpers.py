"""Shared helpers for the search-flow integration tests: a model store with known versions, a
search flow started with ``jina flow --uses`` on free ports, brute-force answers per version."""
import os
import signal
from pathlib import Path

import httpx
import numpy as np
from jina import Client

from executors.data.schema import Doc, DocList, Report  # noqa: F401 - Report for the tests
from executors.models import ModelStore, build_model
from executors.models.inference import embed
from executors.service.flow_process import FlowProcess

REPO = Path(__file__).resolve().parents[2]
MODEL = 'swiss-roll-mlp'
SPEC = {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 6, 6, 6], 'activation': 'relu'}}


def publish_versions(cwd, seeds=(0, 1), current=1) -> ModelStore:
    """Versions 1.. of the search flow's model (random MLPs, one per seed) in ``cwd``'s store."""
    store = ModelStore(Path(cwd) / 'workspace' / 'models')
    for seed in seeds:
        store.publish(MODEL, build_model(SPEC, seed=seed),
                      {'stage': 'initial', 'parent': None})
    store.set_current(MODEL, current)
    return store


class SearchFlow:
    """``flows/search.yml`` in ``cwd`` on free ports, with a gRPC client and an HTTP URL."""

    def __init__(self, cwd):
        self.cwd = Path(cwd)
        self.process = FlowProcess(REPO / 'flows/search.yml', self.cwd, free_ports=True)
        self.grpc = Client(port=self.process.ports['grpc'])
        self.http = f"http://localhost:{self.process.ports['http']}"

    def start(self) -> 'SearchFlow':
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill9(self) -> None:
        """SIGKILL the flow's whole process group (no shutdown hooks run)."""
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait(10)
        self.process.stop()

    def post(self, endpoint, data=(), **parameters) -> httpx.Response:
        return httpx.post(f'{self.http}{endpoint}', json={'data': list(data), 'parameters': parameters}, timeout=120)

    def report(self, endpoint, **parameters) -> dict:
        response = self.post(endpoint, **parameters)
        assert response.status_code == 200, response.text
        return response.json()['data'][0]['data']

    def count(self, **parameters) -> int:
        return self.report('/count', **parameters)['count']

    def status(self) -> dict:
        return self.report('/model/status')

    def index(self, ids, points, **fields):
        docs = DocList[Doc]([Doc(id=i, tensor=p, **{k: v[n] for k, v in fields.items()})
                             for n, (i, p) in enumerate(zip(ids, points))])
        return self.grpc.post('/index', docs, request_size=len(docs), return_type=DocList[Doc])

    def search(self, points, **parameters) -> DocList[Doc]:
        return self.grpc.post('/search', DocList[Doc]([Doc(tensor=p) for p in points]), parameters=parameters,
                              request_size=len(points), return_type=DocList[Doc])

    def get(self, ids) -> DocList[Doc]:
        return self.grpc.post('/get', parameters={'ids': list(ids)}, return_type=DocList[Doc])

    def snapshot(self) -> dict:
        """What a bad request must not change: stored docs and the serving versions."""
        status = self.status()
        indexer = {k: v for k, v in status['indexer'].items() if k != 'peak_rss_mb'}  # memory use varies
        return {'count': self.count(), 'indexer': indexer,
                'lifecycle': {k: status.get('lifecycle', {}).get(k) for k in ('serving', 'building', 'promoted')},
                'encoder': {k: v for k, v in status['encoder'].items() if k != 'store_current_version'}}


def grpc_error_message(error: BaseException) -> str:
    """The executor's error message inside a jina ``BadServer`` (its status's exception args)."""
    header = error.args[0]
    return list(header.status.exception.args)[0]


def brute_force(store, version, index_points, queries, limit):
    """``(ids as positions [Q, limit], cosine similarities [Q, limit])`` under ``version``."""
    model, _ = store.load(MODEL, version)
    q, x = embed(list(queries), model), embed(list(index_points), model)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind='stable')[:, :limit]
    return order, np.take_along_axis(sims, order, axis=1), sims


def assert_answers_match(answers, ids, sims, limit):
    """Each answer holds ``limit`` matches whose scores are the true similarities of their ids
    and are the ``limit`` best (ties may order ids differently)."""
    position = {doc_id: n for n, doc_id in enumerate(ids)}
    for i, answer in enumerate(answers):
        got = [position[m] for m in answer.match_ids]
        assert len(got) == min(limit, len(ids))
        assert np.allclose(sims[i, got], answer.match_scores, atol=1e-4)
        assert np.allclose(answer.match_scores, np.sort(sims[i])[::-1][:limit], atol=1e-4)


__all__ = ['MODEL', 'REPO', 'Report', 'SearchFlow', 'assert_answers_match', 'brute_force', 'grpc_error_message', 'publish_versions']
