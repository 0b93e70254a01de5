"""A model version owns its input transform: version 2 normalises vectors differently from
version 1; hot-swapped into a running search flow (started with `jina flow --uses`), it answers
exactly as embedding the raw documents in-process with version 2 (gRPC and HTTP)."""
from pathlib import Path

import httpx
import numpy as np
import pytest
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.data.document_store import DocumentStore
from executors.data.schema import Doc, DocList
from executors.data.transforms import attach_transform
from executors.models import ModelStore, build_model
from executors.models.inference import embed
from executors.search.swap import hot_swap
from executors.service.flow_process import FlowProcess

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = 'swiss-roll-mlp'  # the model flows/search.yml serves
LIMIT = 7
pytestmark = pytest.mark.timeout(600)


def _brute_force(model, index_points, queries):
    """Cosine similarities [Q, N] of the queries to the indexed points, both embedded in-process."""
    q, x = embed(list(queries), model), embed(list(index_points), model)
    q, x = q / np.linalg.norm(q, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
    return q @ x.T


def _assert_answers(sims, ids_per_query, scores_per_query):
    """Ids are the LIMIT most similar indexed points (in order) and scores their cosine similarities."""
    for i, (ids, scores) in enumerate(zip(ids_per_query, scores_per_query)):
        expected = np.argsort(-sims[i], kind='stable')[:LIMIT]
        assert [int(doc_id[1:]) for doc_id in ids] == expected.tolist()
        np.testing.assert_allclose(scores, sims[i, expected], atol=1e-5)


def test_swapped_version_answers_with_its_own_input_transform(tmp_path):
    x, _ = make_swiss_roll(330, noise=0.05, random_state=1)
    x = x.astype(np.float32)
    index_points, queries = x[:300], x[300:]
    # same weights, different transforms: only the transform tells the versions apart
    mlp = {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 16, 8], 'activation': 'relu'}}
    v1 = attach_transform(build_model(mlp, seed=3), {'modality': 'vector', 'dim': 3, 'std': 10.0})
    v2 = attach_transform(build_model(mlp, seed=3), {'modality': 'vector', 'dim': 3,
                                                     'mean': index_points.mean(axis=0).tolist(),
                                                     'std': index_points.std(axis=0).tolist()})
    store = ModelStore(tmp_path / 'workspace' / 'models')
    store.publish(MODEL_NAME, v1)
    store.publish(MODEL_NAME, v2, make_current=False)
    sims_v1, sims_v2 = _brute_force(v1, index_points, queries), _brute_force(v2, index_points, queries)
    top = lambda sims: np.argsort(-sims, axis=1)[:, :LIMIT].tolist()
    assert top(sims_v1) != top(sims_v2)  # the transforms change the answers, so the test can tell them apart

    flow = FlowProcess(REPO / 'flows/search.yml', tmp_path, free_ports=True).launch()
    try:
        flow.wait_ready()
        client, http = Client(port=flow.ports['grpc']), f"http://localhost:{flow.ports['http']}"
        client.post('/index', DocList[Doc]([Doc(id=f'p{i}', tensor=p) for i, p in enumerate(index_points)]),
                    request_size=100)
        before = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]), parameters={'limit': LIMIT},
                             return_type=DocList[Doc])
        assert {d.model_version for d in before} == {1}
        _assert_answers(sims_v1, [[m.id for m in d.matches] for d in before], [[m.score for m in d.matches] for d in before])

        # the Indexer keeps the decoded documents, not version 1's model inputs
        [database] = (tmp_path / 'workspace' / 'search').rglob('docs.sqlite')  # <workspace>/Indexer/0/index/
        stored = DocumentStore(database)
        by_id = {doc.id: doc.tensor for _, doc in stored.page(0, 1000)}
        stored.close()
        assert len(by_id) == 300
        np.testing.assert_array_equal(np.stack([by_id[f'p{i}'] for i in range(300)]), index_points)

        result = hot_swap(client, version=2, batch_size=128)
        assert result['reindexed'] == 300 and result['encoder']['active_version'] == 2
        assert result['indexer']['generations'] == [2]

        after = client.post('/search', DocList[Doc]([Doc(tensor=q) for q in queries]), parameters={'limit': LIMIT},
                            return_type=DocList[Doc])
        assert {d.model_version for d in after} == {2}
        _assert_answers(sims_v2, [[m.id for m in d.matches] for d in after], [[m.score for m in d.matches] for d in after])
        response = httpx.post(f'{http}/search', json={'data': [{'tensor': q.tolist()} for q in queries],
                                                       'parameters': {'limit': LIMIT}}, timeout=120)
        assert response.status_code == 200, response.text
        answers = response.json()['data']
        assert {a['model_version'] for a in answers} == {2}
        _assert_answers(sims_v2, [[m['id'] for m in a['matches']] for a in answers],
                        [[m['score'] for m in a['matches']] for a in answers])
    finally:
        flow.stop()
