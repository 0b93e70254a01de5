"""FeedForwardTuner and ContrastiveTuner: scikit-learn conformance, partial_fit continues, heads publish."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import check_estimator

from executors.errors import InputError
from executors.evaluation.metrics import evaluate_embeddings
from executors.models import ModelStore, build_model
from executors.models.heads import with_head
from executors.tuner.head_tuners import ContrastiveTuner, FeedForwardTuner

TUNERS = [lambda **kw: FeedForwardTuner(hidden_dim=16, n_epochs=30, learning_rate=0.01, batch_size=32, **kw),
          lambda **kw: ContrastiveTuner(hidden_dim=16, n_neg=3, epochs=30, learning_rate=0.01, **kw)]
IDS = ['feedforward', 'contrastive']


def _data(n_per_class=40, classes=4, dim=12, seed=0, noise=2.0):
    """Classes that differ in a few coordinates, under noise in all: a head can separate them better."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((classes, dim))
    centres[:, :3] = rng.normal(0, 2, (classes, 3))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, noise, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_check_estimator(make):
    # every check runs; only check_array_api_input skips itself (it needs SCIPY_ARRAY_API=1 and an
    # array-API namespace; the tuners take numpy input)
    check_estimator(make(random_state=0).set_params(**{'n_epochs' if 'n_epochs' in make().get_params()
                                                       else 'epochs': 2}))


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_tuned_embeddings_retrieve_better_than_the_input(make):
    x_all, y_all = _data(n_per_class=80, noise=1.0)
    x, y, x_test, y_test = x_all[0::2], y_all[0::2], x_all[1::2], y_all[1::2]
    tuner = make(random_state=0).fit(x, y)
    before = evaluate_embeddings(x_test, y_test, x, y, k=10)['mAP@10']
    after = evaluate_embeddings(tuner.transform(x_test), y_test, tuner.transform(x), y, k=10)['mAP@10']
    assert after > before + 0.02, (before, after)


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_in_a_pipeline_with_an_encoder_and_pca(make):
    x, y = _data()
    encoder = FunctionTransformer(lambda a: np.asarray(a, dtype=np.float32) * 2.0)
    pipeline = make_pipeline(encoder, make(random_state=0), PCA(2))
    out = pipeline.fit_transform(x, y)
    assert out.shape == (len(x), 2)
    np.testing.assert_allclose(pipeline.transform(x), out, atol=1e-4)


def _similarities(tuner, x):
    """Cosine similarities ``[N, N]`` of the tuned embeddings: independent of rotations of the output."""
    z = tuner.transform(x)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_partial_fit_continues_training(make):
    """partial_fit on two halves ends closer to fit on the whole than a fresh partial_fit on the second half."""
    x, y = _data(n_per_class=60)
    order = np.random.default_rng(0).permutation(len(x))
    first, second = order[: len(x) // 2], order[len(x) // 2:]
    epochs = 'n_epochs' if 'n_epochs' in make().get_params() else 'epochs'
    short = lambda: make(random_state=0).set_params(learning_rate=0.003, batch_size=32, **{epochs: 3})  # noqa: E731
    whole = short().fit(x, y)
    continued = short().partial_fit(x[first], y[first]).partial_fit(x[second], y[second])
    fresh = short().partial_fit(x[second], y[second])
    distance = lambda a, b: float(np.abs(_similarities(a, x) - _similarities(b, x)).mean())  # noqa: E731
    assert distance(continued, whole) < distance(fresh, whole)
    # the second call went on from the first: one loss curve, one optimiser whose step count adds up
    steps = lambda t: int(next(iter(t.optimizer_.state.values()))['step'])  # noqa: E731
    first_only = short().partial_fit(x[first], y[first])
    assert continued.n_calls_ == 2 and continued.loss_curve_[:3] == first_only.loss_curve_
    assert len(continued.loss_curve_) == 6 and steps(continued) > steps(first_only) > 0


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_fit_restarts(make):
    x, y = _data()
    tuner = make(random_state=0).fit(x, y)
    again = tuner.fit(x, y)
    np.testing.assert_allclose(again.transform(x), make(random_state=0).fit(x, y).transform(x), atol=1e-6)


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_partial_fit_with_classes_accepts_later_labels(make):
    x, y = _data()
    tuner = make(random_state=0).partial_fit(x[y < 2], y[y < 2], classes=np.arange(4))
    tuner.partial_fit(x[y >= 2], y[y >= 2])
    with pytest.raises(InputError, match=r'^y: labels \[2, 3\] were not in the classes'):
        make(random_state=0).partial_fit(x[y < 2], y[y < 2]).partial_fit(x[y >= 2], y[y >= 2])


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
@pytest.mark.parametrize('settings, field', [({'learning_rate': 0}, 'learning_rate'),
                                             ({'hidden_dim': 2.5}, 'hidden_dim')])
def test_bad_settings(make, settings, field):
    x, y = _data()
    with pytest.raises(InputError, match=f'^{field}:'):
        make().set_params(**settings).fit(x, y)


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_bad_data(make):
    x, y = _data()
    with pytest.raises(InputError, match='^y: .* needs at least two labels'):
        make().fit(x, np.zeros(len(x)))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        make().fit(bad, y)
    with pytest.raises(ValueError, match='features'):
        make().fit(x, y).transform(x[:, :5])


@pytest.mark.parametrize('make', TUNERS, ids=IDS)
def test_frozen_base_plus_head_is_one_stored_version(make, tmp_path):
    x, y = _data()
    base = build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [12, 12]}}, seed=0).eval()
    with torch.no_grad():
        base_out = base(torch.from_numpy(x)).numpy()
    tuner = make(random_state=0).fit(base_out, y)
    model = with_head(base, tuner.head_module())
    assert not any(p.requires_grad for p in model.base.parameters())
    store = ModelStore(tmp_path)
    store.publish('tuned-head', model)
    loaded, config = store.load('tuned-head')
    assert config['model']['builder'] == 'with_head'
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(x)).numpy(), tuner.transform(base_out), atol=1e-5)
