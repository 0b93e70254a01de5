"""When an old index generation is dropped (executors.search.retirement): the retiring generation
answers its in-flight queries, the drop rule (every replica switched + finished >= stamped), the
safety timeout, dead replicas, the counts' atomicity in the Encoder, and the 503 for a query of a
dropped version."""
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from executors.data.schema import Doc, DocList
from executors.errors import InputError, RetryableError, http_status_of
from executors.models import ModelStore, build_model
from executors.models.serving import VersionedEncoder
from executors.search.retirement import (
    QueryLedger,
    ReplicaRecorder,
    candidate_loaded,
    read_replicas,
    remove_dead_replicas,
)
from executors.search.serving_state import read_serving_state
from executors.search.vector_index import SearchIndex
from tests.search.test_vector_index import _docs, _vectors


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _swapped_index(tmp_path, n=20):
    """An index that served version 1 and now serves 2 (1 retiring)."""
    index = SearchIndex(tmp_path / 'index')
    docs = _docs(n)
    index.add(docs, {1: _vectors(n, 0)})
    index.prepare(2)
    index.reindex([d.id for d in docs], _vectors(n, 1, dim=6), 2)
    return index, docs


def test_the_old_generation_answers_its_queries_until_dropped_then_a_retryable_error(tmp_path):
    index, docs = _swapped_index(tmp_path)
    query = _vectors(1, 5)
    before = index.search(query, version=1, limit=5)
    assert index.activate(2) == [1]
    assert index.active_version == 2 and sorted(index.generations) == [2] and sorted(index.retiring) == [1]
    after = index.search(query, version=1, limit=5)  # a query embedded by version 1 before the switch
    assert after.ids == before.ids and np.allclose(after.scores[0], before.scores[0])
    index.delete([before.ids[0][0]])  # deletes reach the retiring generation at once
    assert before.ids[0][0] not in index.search(query, version=1, limit=5).ids[0]
    replaced = before.ids[0][1]  # so do replacements (new content, embedded by version 2 only)
    index.add([_docs(1)[0].__class__(id=replaced, label='x', tensor=np.ones(3, np.float32))], {2: _vectors(1, 9, 6)})
    assert replaced not in index.search(query, version=1, limit=5).ids[0]
    # a doc embedded by the old version only (an Encoder that has not switched) is told to resend
    with pytest.raises(RetryableError, match=r'embedded by model version 1, which the index stopped serving '
                                             r'\(it serves version 2 since a swap\); resend the request'):
        index.add(_docs(1, 500), {1: _vectors(1, 3)})
    assert index.drop(1) and not index.drop(1)
    with pytest.raises(RetryableError) as error:
        index.search(query, version=1, limit=5)
    assert str(error.value) == ('model_version: the query was embedded by model version 1, whose index generation '
                                'was dropped after the swap to version 2; resend the query: it will be embedded '
                                'by the serving version')
    assert http_status_of('RetryableError') == 503
    with pytest.raises(InputError, match='no index generation for model version 7'):
        index.search(query, version=7, limit=5)  # never served: not retryable
    index.close()
    reopened = SearchIndex(tmp_path / 'index')  # a restart keeps serving 2 and does not bring 1 back
    assert reopened.active_version == 2 and reopened.retiring == {} and sorted(reopened.generations) == [2]
    assert reopened.store.embedding_versions() == [2]


def test_preparing_a_retiring_version_again_builds_it_afresh(tmp_path):
    index, _ = _swapped_index(tmp_path)
    index.activate(2)
    index.prepare(1)  # a quick rollback
    assert index.retiring == {} and index.pending_version == 1
    with pytest.raises(InputError, match='still being built'):
        index.search(_vectors(1, 5), version=1, limit=3)


def test_drop_rule_waits_for_every_replica_and_every_stamped_query(tmp_path):
    clock = Clock()
    ledger = QueryLedger(tmp_path, timeout=60, clock=clock)
    a, b = ReplicaRecorder(tmp_path), ReplicaRecorder(tmp_path)
    b.path = tmp_path / 'encoders' / 'other-replica.json'  # a second live replica (this process)
    a.write(1, None, {1: 4})
    b.write(1, 2, {1: 2})
    ledger.finish([1, 1, 1])
    assert ledger.due([1]) == {}  # both replicas still embed with 1
    clock.now = 1000
    assert ledger.due([1]) == {}  # ... however long: their queries are legitimate
    a.write(2, None, {1: 5, 2: 0})  # switched; its count for 1 is final
    assert ledger.due([1]) == {}
    assert ledger.waiting_for(1)['replicas'] == ['other-replica.json']
    b.write(2, None, {1: 2})
    assert ledger.waiting_for(1) == {'replicas': [], 'dead_unswitched': [], 'stamped': 7, 'finished': 3}
    ledger.finish([1, 1, 1])
    assert ledger.due([1]) == {}  # 6 of 7 stamped queries finished: one is still on its way
    ledger.finish([2, None, 1])
    assert ledger.due([1]) == {1: 'drained'}
    ledger.dropped(1, 'drained')
    assert ledger.last_drop['version'] == 1 and ledger.last_drop['reason'] == 'drained'
    assert ledger.status([])['finished_queries'] == {'1': 7, '2': 1}


def test_a_lost_query_holds_the_generation_until_the_timeout_after_the_switch(tmp_path):
    clock = Clock()
    ledger = QueryLedger(tmp_path, timeout=60, clock=clock)
    ReplicaRecorder(tmp_path).write(2, None, {1: 3})
    ledger.finish([1, 1])  # the third was lost (e.g. its client was killed)
    assert ledger.due([1]) == {}
    clock.now = 59.9
    assert ledger.due([1]) == {}
    clock.now = 60.0
    assert ledger.due([1]) == {1: 'timeout'}
    with pytest.raises(InputError, match='drop_timeout: expected seconds > 0'):
        QueryLedger(tmp_path, timeout=0)


def test_without_encoder_records_the_old_generation_goes_at_once(tmp_path):
    assert QueryLedger(None).due([1]) == {1: 'drained'}
    assert QueryLedger(tmp_path).due([1]) == {1: 'drained'}


def _dead_record(tmp_path, active):
    """The record of a replica process that has exited."""
    code = ('import sys; from executors.search.retirement import ReplicaRecorder; '
            f'ReplicaRecorder(sys.argv[1]).write({active}, None, {{1: 9}})')
    subprocess.run([sys.executable, '-c', code, str(tmp_path)], check=True)


def test_dead_replicas_are_not_waited_for_and_their_records_are_removed(tmp_path):
    clock = Clock()
    ledger = QueryLedger(tmp_path, timeout=60, clock=clock)
    _dead_record(tmp_path, active=1)  # died before switching: its count is unknown
    live = ReplicaRecorder(tmp_path)
    live.write(2, None, {1: 1})
    ledger.finish([1])
    records = read_replicas(tmp_path)
    assert len(records) == 2 and sorted(r.alive() for r in records) == [False, True]
    assert candidate_loaded(records, 2)  # the dead one is not waited for
    assert ledger.due([1]) == {}  # ... but its queries may be on their way: wait for the timeout
    clock.now = 61
    assert ledger.due([1]) == {1: 'timeout'}
    ledger.dropped(1, 'timeout')
    assert [r.path for r in read_replicas(tmp_path)] == [live.path]  # the dead record is gone
    _dead_record(tmp_path, active=2)  # left by an earlier run: removed when an Indexer starts
    assert len(remove_dead_replicas(tmp_path)) == 1 and [r.path for r in read_replicas(tmp_path)] == [live.path]


def test_stamp_counts_are_final_when_the_encoder_records_a_switch(tmp_path):
    """Concurrent stamped embeds while the replica switches: the record taken after the switch
    counts exactly the requests that were embedded by the old version."""
    store = ModelStore(tmp_path / 'models')
    for seed in (0, 1):
        store.publish('m', build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 4]}}, seed=seed), {})
    encoder = VersionedEncoder(store, 'm')
    encoder.follow(1, 2)
    seen, stop = [], threading.Event()

    def query():
        while not stop.is_set():
            seen.append(encoder.embed([np.ones(3, np.float32)], stamp=True)[1])

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    while seen.count(1) < 50:
        pass
    encoder.follow(2, None)
    active, candidate, stamped = encoder.record()
    while seen.count(2) < 50:
        pass
    stop.set()
    for t in threads:
        t.join()
    assert (active, candidate) == (2, None)
    assert stamped[1] == seen.count(1) and encoder.record()[2][2] == seen.count(2)
    encoder.unstamp([2])
    assert encoder.record()[2][2] == seen.count(2) - 1


def test_a_sharded_index_serves_the_old_version_until_every_shard_switched(tmp_path):
    for shard, state in ((0, {'active_version': 2, 'pending_version': None}),
                         (1, {'active_version': 1, 'pending_version': 2})):
        (tmp_path / f'shard-{shard}').mkdir()
        (tmp_path / f'shard-{shard}' / 'state.json').write_text(json.dumps(state))
    assert read_serving_state(tmp_path) == (1, 2)
    (tmp_path / 'shard-1' / 'state.json').write_text(json.dumps({'active_version': 2, 'pending_version': None}))
    assert read_serving_state(tmp_path) == (2, None)
    assert read_serving_state(tmp_path / 'nothing') == (None, None)


def test_the_indexer_answers_a_query_of_a_dropped_version_with_a_retryable_error(tmp_path):
    from executors.indexer.executor import Indexer

    indexer = Indexer(index_dir=str(tmp_path / 'index'), drop_timeout=60)
    try:
        docs = _docs(10)
        indexer.index.add(docs, {1: _vectors(10, 0)})
        indexer.index.prepare(2)
        indexer.index.reindex([d.id for d in docs], _vectors(10, 1, dim=6), 2)
        query = lambda: DocList[Doc]([Doc(embedding=_vectors(1, 4)[0], model_version=1)])  # noqa: E731
        indexer.index.activate(2)
        assert len(indexer.search(query(), {'limit': 3})[0].match_ids) == 3  # retiring: still answered
        # no Encoder records in this index_dir: nothing can still be stamped 1, so it goes at once
        for _ in range(100):
            if not indexer.index.retiring:
                break
            threading.Event().wait(0.05)
        assert indexer.index.retiring == {} and indexer.ledger.last_drop['reason'] == 'drained'
        with pytest.raises(RetryableError, match='resend the query'):
            indexer.search(query(), {'limit': 3})
        with pytest.raises(InputError, match='parameters.limit'):
            indexer.search(query(), {'limit': 10 ** 9})  # failed requests count as finished too
        assert indexer.ledger.finished == {1: 3}
    finally:
        indexer.close()
