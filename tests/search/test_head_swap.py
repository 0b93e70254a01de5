"""Head-only swaps (executors.search.head_swap): a version that changes only a head over the frozen base
of stored base embeddings is re-embedded by the head alone (same vectors as a full re-embedding, the
base never runs); a version with another base goes through the whole model; corrupt or missing
stored base embeddings are detected and those docs re-embedded in full, never served wrong."""
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from executors.data.document_store import StoredDoc
from executors.errors import InputError
from executors.models import ModelStore, build_model
from executors.models.heads import with_head
from executors.models.inference import embed
from executors.search.head_swap import fill_from_base, head_over_base
from executors.search.lifecycle import ModelFollower
from executors.search.vector_index import SearchIndex

NAME = 'text-like'
BASE = {'builder': 'mlp', 'kwargs': {'layer_sizes': [4, 16, 8]}}


def _head(seed, out_dim=5):
    return build_model({'builder': 'head', 'kwargs': {'kind': 'feedforward', 'in_dim': 8, 'out_dim': out_dim}},
                       seed=seed).eval()


class BaseCalls:
    """Counts forward calls of the MLP base (an ``nn.Sequential``; the heads are not)."""

    def __init__(self, monkeypatch):
        self.count, forward = 0, nn.Sequential.forward

        def counting(module, x):
            self.count += 1
            return forward(module, x)

        monkeypatch.setattr(nn.Sequential, 'forward', counting)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A store with version 1 = the base alone, an index serving it with 40 docs, a follower whose
    swaps the tests run themselves (its store-polling thread is off)."""
    monkeypatch.setattr(ModelFollower, '_loop', lambda self: None)
    store = ModelStore(tmp_path / 'models')
    store.publish(NAME, build_model(BASE, seed=0))
    points = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    index = SearchIndex(tmp_path / 'index', snapshot_interval=3600)
    index.add([StoredDoc(id=f'd{i}', tensor=p) for i, p in enumerate(points)],
              {1: embed(list(points), store.load(NAME, 1)[0])})
    follower = ModelFollower(index, store, NAME, poll_interval=3600, batch_size=16)
    yield store, index, follower, points
    follower.close()
    index.close()


def publish_head(store, seed, base_version=1):
    base, _ = store.load(NAME, base_version)
    return store.publish(NAME, with_head(base, _head(seed)), make_current=False).version


def generation(index, version, ids):
    """The vectors the index holds for ``version``, in the order of ``ids``."""
    rows, vectors, _ = index.store.embeddings_after(version, 0)
    by_row = dict(zip(rows.tolist(), vectors))
    row_of = index.store.rows_for_ids(ids)
    return np.stack([by_row[row_of[i]] for i in ids])


def full_reembedding(store, version, points):
    return embed(list(points), store.load(NAME, version)[0])


def test_head_only_swaps_give_the_full_vectors_without_running_the_base(setup, monkeypatch):
    store, index, follower, points = setup
    ids = [f'd{i}' for i in range(len(points))]
    v2, v3 = publish_head(store, 1), publish_head(store, 2)
    assert store.config(NAME, v2)['base_fingerprint'] == store.config(NAME, 1)['fingerprint']
    calls = BaseCalls(monkeypatch)
    follower.swap(v2)  # served version 1 is the base itself: its vectors become the base embeddings
    assert follower.progress['head_swap'] == {'route': 'head', 'head_only': 40, 'base_embedded': 0, 'seeded': 40,
                                              'rejected': 0}
    follower.swap(v3)
    assert follower.progress['head_swap'] == {'route': 'head', 'head_only': 40, 'base_embedded': 0, 'seeded': 0,
                                              'rejected': 0}
    assert calls.count == 0 and index.active_version == v3
    np.testing.assert_allclose(generation(index, v3, ids), full_reembedding(store, v3, points), atol=1e-6)

    # docs indexed while a head version is served have no base embedding: the base runs for those only
    new = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    index.add([StoredDoc(id=f'n{i}', tensor=p) for i, p in enumerate(new)], {v3: full_reembedding(store, v3, new)})
    v4 = publish_head(store, 3)
    calls.count = 0
    follower.swap(v4)
    assert follower.progress['head_swap'] == {'route': 'head', 'head_only': 40, 'base_embedded': 5, 'seeded': 0,
                                              'rejected': 0}
    assert 0 < calls.count <= 2  # one base batch for the 5 new docs (plus none for the 40 others)
    all_ids, all_points = ids + [f'n{i}' for i in range(5)], np.concatenate([points, new])
    np.testing.assert_allclose(generation(index, v4, all_ids), full_reembedding(store, v4, all_points), atol=1e-6)


def test_a_version_that_changes_the_base_is_reembedded_in_full(setup, monkeypatch):
    store, index, follower, points = setup
    ids = [f'd{i}' for i in range(len(points))]
    follower.swap(publish_head(store, 1))
    tuned = store.load(NAME, 1)[0]
    with torch.no_grad():
        tuned[0].weight.add_(0.01)  # a full fine-tune: the base's weights change
    v_full = store.publish(NAME, tuned, make_current=False).version
    calls = BaseCalls(monkeypatch)
    follower.swap(v_full)
    assert follower.progress['head_swap']['route'] == 'full' and calls.count >= 3  # 40 docs in batches of 16
    np.testing.assert_allclose(generation(index, v_full, ids), full_reembedding(store, v_full, points), atol=1e-6)
    assert head_over_base(store, NAME, v_full) is None


def test_a_head_over_another_base_does_not_use_the_stored_base_embeddings(setup, monkeypatch):
    store, index, follower, points = setup
    ids = [f'd{i}' for i in range(len(points))]
    follower.swap(publish_head(store, 1))
    other = store.publish(NAME, with_head(build_model(BASE, seed=7), _head(2)), make_current=False).version
    assert store.config(NAME, other)['base_fingerprint'] != store.config(NAME, 1)['fingerprint']
    calls = BaseCalls(monkeypatch)
    follower.swap(other)
    assert follower.progress['head_swap'] == {'route': 'head', 'head_only': 0, 'base_embedded': 40, 'seeded': 0,
                                              'rejected': 0}
    assert calls.count >= 3
    np.testing.assert_allclose(generation(index, other, ids), full_reembedding(store, other, points), atol=1e-6)


def test_corrupt_and_missing_base_embeddings_are_reembedded_not_served(setup, tmp_path):
    store, index, follower, points = setup
    ids = [f'd{i}' for i in range(len(points))]
    follower.swap(publish_head(store, 1))
    fingerprint = store.config(NAME, 1)['fingerprint']
    rows = index.store.rows_for_ids(ids[:4])
    good = np.ones(8, np.float32).tobytes()
    db = sqlite3.connect(str(tmp_path / 'index' / 'docs.sqlite'))
    with db:
        db.execute('UPDATE base_embeddings SET vector=? WHERE row=?', (good, rows['d0']))  # crc of another vector
        db.execute('UPDATE base_embeddings SET vector=substr(vector, 1, 16) WHERE row=?', (rows['d1'],))  # truncated
        nan = np.full(8, np.nan, np.float32).tobytes()
        db.execute('UPDATE base_embeddings SET vector=?, crc=? WHERE row=?',
                   (nan, __import__('zlib').crc32(nan), rows['d2']))  # consistent checksum, not finite
        db.execute('DELETE FROM base_embeddings WHERE row=?', (rows['d3'],))
    db.close()

    # manual path (/model/prepare without a base): the bad ones stay missing for the Encoder's re-embedding
    v3 = publish_head(store, 2)
    index.prepare(v3)
    routes = fill_from_base(index, store, NAME, v3)
    assert routes == {'route': 'head', 'head_only': 36, 'base_embedded': 0, 'seeded': 0, 'rejected': 3}
    assert sorted(d.id for d in index.docs_missing_from(v3, 100)) == ids[:4]
    assert sorted(index.store.base_rows(fingerprint)) == sorted(index.store.rows_for_ids(ids[4:]).values())

    # automatic path: the base embeds the 4 docs (and stores their base embeddings again)
    follower.swap(v3)
    assert follower.progress['head_swap']['base_embedded'] == 4
    np.testing.assert_allclose(generation(index, v3, ids), full_reembedding(store, v3, points), atol=1e-6)
    assert len(index.store.base_rows(fingerprint)) == 40


def test_base_embeddings_survive_a_restart_and_follow_doc_changes(setup, tmp_path):
    store, index, follower, points = setup
    follower.swap(publish_head(store, 1))
    fingerprint = store.config(NAME, 1)['fingerprint']
    index.add([StoredDoc(id='d0', tensor=points[0] + 1)], {index.active_version: np.ones((1, 5), np.float32)})
    index.delete(['d1'])
    follower.close()
    index.close()
    reopened = SearchIndex(tmp_path / 'index', snapshot_interval=3600)
    try:
        kept = reopened.store.base_rows(fingerprint)
        assert len(kept) == 38  # d0's content changed and d1 is gone: their base embeddings with them
        assert not set(reopened.store.rows_for_ids(['d0']).values()) & set(kept.tolist())
    finally:
        reopened.close()


def test_a_head_whose_weights_do_not_fit_its_spec_is_an_input_error(setup):
    store, index, follower, points = setup
    version = publish_head(store, 1)
    path = store.resolve(NAME, version).path
    config = (path / 'model.json').read_text().replace('"out_dim": 5', '"out_dim": 6')
    (path / 'model.json').write_text(config)
    with pytest.raises(InputError, match='head weights'):
        head_over_base(store, NAME, version)


@pytest.mark.parametrize('settings', [{'store_dir': 'models'}, {'model_name': NAME}])
def test_the_indexer_needs_both_store_settings_for_head_only_swaps(tmp_path, settings):
    from executors.indexer.executor import Indexer

    with pytest.raises(InputError, match='store_dir, model_name: give both'):
        Indexer(index_dir=str(tmp_path / 'index'), **settings)
