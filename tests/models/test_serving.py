import numpy as np
import pytest

from executors.errors import InputError
from executors.models import ModelStore, build_model
from executors.models.inference import embed
from executors.models.serving import VersionedEncoder

MLP = {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 5]}}


def test_prepare_embed_both_and_activate(tmp_path):
    store = ModelStore(tmp_path)
    m1, m2 = build_model(MLP, seed=1), build_model(MLP, seed=2)
    store.publish('m', m1)
    encoder = VersionedEncoder(store, 'm')
    x = list(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    vectors, version = encoder.embed(x)
    assert version == 1 and np.allclose(vectors, embed(x, m1))
    with pytest.raises(InputError, match='already the active'):
        encoder.prepare()
    store.publish('m', m2)
    assert encoder.prepare() == 2
    active, v, candidate, cv = encoder.embed_both(x)
    assert (v, cv) == (1, 2) and np.allclose(active, embed(x, m1)) and np.allclose(candidate, embed(x, m2))
    with pytest.raises(InputError, match='not the prepared'):
        encoder.activate(3)
    encoder.activate(2)
    vectors, version = encoder.embed(x)
    assert version == 2 and np.allclose(vectors, embed(x, m2))
    with pytest.raises(InputError, match='neither active'):
        encoder.embed(x, 1)
