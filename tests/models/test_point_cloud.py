"""PointNet and DGCNN: shapes, permutation invariance, kNN vs brute force, JSON specs, bad input."""
import numpy as np
import pytest
import torch

from executors.errors import InputError
from executors.models import build_model, load, save
from executors.models.point_cloud import edge_features, knn_indices

SPECS = [
    {'builder': 'pointnet', 'kwargs': {'embedding_dim': 16, 'point_widths': [8, 16, 32], 'head_widths': [24]}},
    {'builder': 'dgcnn', 'kwargs': {'embedding_dim': 16, 'k': 5, 'edge_widths': [8, 8, 16], 'global_dim': 32,
                                    'head_widths': [24]}},
]


@pytest.fixture
def clouds() -> torch.Tensor:
    return torch.randn(4, 40, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: s['builder'])
def test_encoder_maps_clouds_to_embeddings_invariant_to_point_order(spec, clouds):
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():
        embeddings = model(clouds)
        shuffled = model(clouds[:, torch.randperm(40, generator=torch.Generator().manual_seed(1))])
        other_count = model(clouds[:, :25])
    assert embeddings.shape == (4, 16) and other_count.shape == (4, 16)
    torch.testing.assert_close(shuffled, embeddings, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: s['builder'])
def test_encoder_round_trips_through_json_spec_and_safetensors(spec, clouds, tmp_path):
    model = build_model(spec, seed=0).eval()
    save(model, tmp_path / 'model')
    rebuilt, config = load(tmp_path / 'model')
    assert config['model'] == spec
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clouds), model(clouds))


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: s['builder'])
def test_encoder_learns_to_separate_two_shapes(spec):
    """A few Adam steps with a contrastive objective pull same-shape clouds together."""
    rng = np.random.default_rng(0)

    def sphere(n):
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def flat_square(n):
        return np.c_[rng.uniform(-1, 1, size=(n, 2)), np.zeros(n)]

    clouds = torch.tensor(np.stack([sphere(32) for _ in range(6)] + [flat_square(32) for _ in range(6)]),
                          dtype=torch.float32)
    labels = torch.tensor([0] * 6 + [1] * 6)
    model = build_model(spec, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    same = labels[:, None] == labels[None]
    for _ in range(30):
        embeddings = torch.nn.functional.normalize(model(clouds), dim=1)
        similarity = embeddings @ embeddings.T
        loss = (1 - similarity[same]).mean() + similarity[~same].clamp(min=0).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        embeddings = torch.nn.functional.normalize(model(clouds), dim=1)
    similarity = embeddings @ embeddings.T
    assert similarity[same].mean() > similarity[~same].mean() + 0.5


def test_knn_matches_brute_force():
    features = torch.randn(2, 4, 15, generator=torch.Generator().manual_seed(2))
    indices = knn_indices(features, 3)
    for b in range(2):
        points = features[b].T
        distances = ((points[:, None] - points[None]) ** 2).sum(-1)
        expected = distances.argsort(dim=1)[:, :3]
        assert torch.equal(indices[b].sort(dim=1).values, expected.sort(dim=1).values)


def test_edge_features_are_neighbour_minus_centre_and_centre():
    features = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(3))
    edges = edge_features(features, 2)
    neighbours = knn_indices(features, 2)
    i, slot = 4, 1
    j = neighbours[0, i, slot]
    torch.testing.assert_close(edges[0, :2, i, slot], features[0, :, j] - features[0, :, i])
    torch.testing.assert_close(edges[0, 2:, i, slot], features[0, :, i])


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: s['builder'])
def test_wrong_input_shape_is_an_input_error(spec):
    model = build_model(spec)
    with pytest.raises(InputError, match=r'\[B, N, 3\]'):
        model(torch.zeros(2, 10, 2))


@pytest.mark.parametrize('kwargs, field', [({'embedding_dim': 0}, 'embedding_dim'),
                                           ({'point_widths': []}, 'point_widths'),
                                           ({'dropout': 1.5}, 'dropout')])
def test_bad_pointnet_settings_are_input_errors(kwargs, field):
    with pytest.raises(InputError, match=field):
        build_model({'builder': 'pointnet', 'kwargs': kwargs})


def test_bad_dgcnn_k_is_an_input_error():
    with pytest.raises(InputError, match='k:'):
        build_model({'builder': 'dgcnn', 'kwargs': {'k': 0}})


def test_weights_path_loads_pretrained_weights_and_refuses_mismatched_ones(tmp_path, clouds):
    from safetensors.torch import save_file

    model = build_model(SPECS[0], seed=3).eval()
    path = tmp_path / 'pretrained.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = build_model({'builder': 'pointnet', 'kwargs': {**SPECS[0]['kwargs'], 'weights_path': str(path)}}).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(clouds), model(clouds))
    with pytest.raises(InputError, match='does not fit'):
        build_model({'builder': 'pointnet', 'kwargs': {'embedding_dim': 8, 'weights_path': str(path)}})
