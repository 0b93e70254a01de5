"""Head-only swaps in the running search flow (`jina flow --uses flows/search.yml`, free ports): a
promoted head over the served base is swapped in by the store-following Indexer from the served
vectors, a manually swapped second head (/model/prepare ... /model/activate) is filled by the Indexer
on /model/prepare so the Encoder re-embeds nothing, and the answers over gRPC and HTTP are those of a
brute-force search with the new version. A tiny MLP base stands in for MiniLM."""
import time

import numpy as np
import pytest

from executors.data.schema import Doc
from executors.models import ModelStore, build_model
from executors.models.heads import with_head
from executors.search.swap import hot_swap
from tests.integration.search_helpers import MODEL, SPEC, SearchFlow, assert_answers_match, brute_force

pytestmark = pytest.mark.timeout(600)


def _head(seed):
    return build_model({'builder': 'head', 'kwargs': {'kind': 'feedforward', 'in_dim': 6, 'out_dim': 4}}, seed=seed)


def test_head_only_swaps_through_the_search_flow(tmp_path):
    store = ModelStore(tmp_path / 'workspace' / 'models')
    store.publish(MODEL, build_model(SPEC, seed=0))  # version 1: the base alone
    rng = np.random.default_rng(0)
    points, queries = rng.normal(size=(120, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    ids = [f'p{i}' for i in range(len(points))]
    search = SearchFlow(tmp_path).start()
    try:
        search.index(ids, points)
        base, _ = store.load(MODEL, 1)
        store.publish(MODEL, with_head(base, _head(1)))  # version 2, promoted: the flow follows by itself
        deadline = time.monotonic() + 120
        while (lifecycle := search.status()['lifecycle'])['serving'] != 2 or lifecycle['building'] is not None:
            assert time.monotonic() < deadline, lifecycle
            time.sleep(0.3)
        assert lifecycle['progress']['head_swap'] == {'route': 'head', 'head_only': 120, 'base_embedded': 0,
                                                      'seeded': 120, 'rejected': 0}

        store.publish(MODEL, with_head(base, _head(2)), make_current=False)  # version 3, swapped by hand
        prepared = search.report('/model/prepare', version=3)
        assert prepared['head_swap'] == {'route': 'head', 'head_only': 120, 'base_embedded': 0, 'seeded': 0,
                                         'rejected': 0}
        assert prepared['indexer']['pending_missing'] == 0
        swapped = hot_swap(search.grpc, 3)
        assert swapped['reindexed'] == 0 and swapped['indexer']['active_version'] == 3

        _, _, sims = brute_force(store, 3, points, queries, 5)
        answers = search.search(queries, limit=5)
        assert {d.model_version for d in answers} == {3}
        assert_answers_match(answers, ids, sims, 5)
        response = search.post('/search', [{'tensor': q.tolist()} for q in queries], limit=5)
        assert response.status_code == 200
        assert_answers_match([Doc(**{k: d[k] for k in ('match_ids', 'match_scores')}) for d in response.json()['data']],
                             ids, sims, 5)
    finally:
        search.stop()
