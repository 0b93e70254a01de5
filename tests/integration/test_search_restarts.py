"""The search flow keeps serving across restarts and SIGKILL: it serves the version its index
served (not the model store's pointer), acknowledged writes are there, acknowledged deletes are
gone, and a swap killed half-way leaves the old version serving and can be run again. Each test
has its own flow and workspace."""
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from executors.data.schema import Doc, DocList, Report
from executors.search.swap import hot_swap
from tests.integration.search_helpers import MODEL, SearchFlow, assert_answers_match, brute_force, publish_versions

pytestmark = pytest.mark.timeout(900)


def _points(n, seed):
    x, _ = make_swiss_roll(n, noise=0.05, random_state=seed)
    return x.astype(np.float32)


def _serving(flow):
    status = flow.status()
    return status['encoder']['active_version'], status['indexer']['active_version']


def test_restart_serves_the_indexed_version_not_the_store_pointer(tmp_path):
    store = publish_versions(tmp_path, current=1)  # version 2 is published but not promoted
    flow = SearchFlow(tmp_path).start()
    ids, points, queries = [f'r{i}' for i in range(80)], _points(80, 0), _points(10, 1)
    try:
        empty = flow.search(queries, limit=5)  # nothing indexed yet: empty answers, not an error
        assert [a.match_ids for a in empty] == [[]] * 10
        flow.index(ids, points)
        flow.kill9()
        flow.start()
        assert _serving(flow) == (1, 1)
        answers = flow.search(queries, limit=5)
        assert {a.model_version for a in answers} == {1}
        assert_answers_match(answers, ids, brute_force(store, 1, points, queries, 5)[2], 5)
        flow.index(['r80'], _points(1, 2))  # indexing works too
        assert flow.count() == 81

        assert hot_swap(flow.grpc, version=2)['version'] == 2  # an operator's swap; the store still says 1
        flow.stop()
        flow.start()
        assert _serving(flow) == (2, 2) and store.current_version(MODEL) == 1
        answers = flow.search(queries, limit=5)
        assert {a.model_version for a in answers} == {2}
        all_points = np.vstack([points, _points(1, 2)])
        assert_answers_match(answers, ids + ['r80'], brute_force(store, 2, all_points, queries, 5)[2], 5)
    finally:
        flow.stop()


def test_sigkill_during_indexing_deleting_and_swapping_loses_nothing_acknowledged(tmp_path):
    publish_versions(tmp_path, current=1)
    flow = SearchFlow(tmp_path).start()
    acked, deleted, in_flight, errors = [], set(), set(), []
    stop = threading.Event()

    def index_loop():
        batch = 0
        while not stop.is_set():
            ids = [f'k{batch}-{i}' for i in range(20)]
            try:
                flow.index(ids, _points(20, 100 + batch))
            except Exception as e:  # noqa: BLE001 - the flow is being killed
                errors.append(e)
                return
            acked.extend(ids)
            batch += 1

    def delete_loop():
        while not stop.is_set():
            victims = [i for i in acked[::7] if i not in deleted][:5]
            if not victims:
                time.sleep(0.05)
                continue
            in_flight.update(victims)
            try:
                flow.grpc.post('/delete', parameters={'ids': victims}, return_type=DocList[Report])
            except Exception as e:  # noqa: BLE001 - the flow is being killed
                errors.append(e)
                return
            deleted.update(victims)
            in_flight.difference_update(victims)

    try:
        threads = [threading.Thread(target=index_loop), threading.Thread(target=delete_loop)]
        for t in threads:
            t.start()
        while len(acked) < 400 or len(deleted) < 20:
            time.sleep(0.1)
        flow.kill9()
        stop.set()
        for t in threads:
            t.join(60)
        flow.start()
        assert _serving(flow) == (1, 1)
        alive = [i for i in acked if i not in deleted and i not in in_flight]
        for start in range(0, len(alive), 500):
            assert len(flow.get(alive[start:start + 500])) == len(alive[start:start + 500])
        for doc_id in deleted:
            assert flow.post('/get', ids=[doc_id]).status_code == 404
        stored = flow.count()
        assert len(alive) <= stored <= len(alive) + len(in_flight) + 20  # + the one unacknowledged batch

        # kill during a swap: the old version keeps serving after the restart, and the swap can be rerun
        swap_errors = []
        swapper = threading.Thread(target=lambda: _swallow(swap_errors, hot_swap, flow.grpc, version=2, batch_size=16))
        swapper.start()
        deadline = time.monotonic() + 60
        while flow.status()['indexer']['pending_version'] != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # some re-embedded batches in
        flow.kill9()
        swapper.join(60)
        flow.start()
        assert _serving(flow) == (1, 1)
        queries = _points(5, 9)
        missing = flow.grpc.post('/model/missing', parameters={'version': 1, 'limit': 1}, return_type=DocList[Doc])
        assert len(missing) == 0  # the serving generation holds every stored doc
        answers = flow.search(queries, limit=5)
        assert {a.model_version for a in answers} == {1}
        assert hot_swap(flow.grpc, version=2)['version'] == 2
        assert _serving(flow) == (2, 2) and flow.count() == stored
        assert {a.model_version for a in flow.search(queries, limit=5)} == {2}
    finally:
        stop.set()
        flow.stop()


def _swallow(errors, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the flow is killed under it on purpose
        errors.append(e)
