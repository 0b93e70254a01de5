"""``fit`` runs the model's input transform: augmented on training batches, plain on validation."""
import numpy as np
import pytest
import torch
from torch import nn

from executors.data.transforms import attach_transform, build_transform
from executors.errors import InputError
from executors.models import build_model
from executors.models.inference import embed
from executors.tuner.trainer import fit


class Recording(nn.Module):
    """Mean over points then a linear map; records every input batch with the mode it came in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.linear(x.abs().mean(dim=1))


def _clouds(n=12, points=40):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(points, 3)) * (1 + i % 3) for i in range(n)], [str(i % 3) for i in range(n)]


def test_fit_augments_training_batches_and_not_validation_batches():
    clouds, labels = _clouds()
    transform = build_transform({'modality': 'mesh', 'num_points': 16})
    model = attach_transform(Recording(), transform)
    fit(model, (clouds, labels), (clouds, labels), epochs=2, batch_size=12, seed=0, progress_bar=False)
    plain = transform.batch(clouds)
    train_batches = [x for training, x in model.seen if training]
    eval_batches = [x for training, x in model.seen if not training]
    assert len(train_batches) == 2 and len(eval_batches) == 2
    assert all(x.shape == (12, 16, 3) for x in train_batches)
    order = [i for label in ('0', '1', '2') for i, item_label in enumerate(labels) if item_label == label]
    for x in eval_batches:  # validation: the transform without augmentation, classes kept together
        torch.testing.assert_close(x, plain[order])
    for x in train_batches:  # training: augmented (random subset, rotation, scaling, jitter)
        assert not any(torch.allclose(row, plain_row) for row in x for plain_row in plain)


def test_fit_standardises_vectors_with_the_models_transform():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=50, scale=10, size=(40, 3)).astype(np.float32)
    labels = (x[:, 0] > 50).astype(int)
    spec = {'modality': 'vector', 'dim': 3, 'mean': 50.0, 'std': 10.0}
    model = attach_transform(build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 8]}}, seed=0), spec)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    fit(model, (x, labels), epochs=1, batch_size=40, seed=0, progress_bar=False)
    expected = torch.from_numpy((x - 50) / 10)
    rows = torch.cat(seen)  # fit's default class-balanced batches: every row is a standardised item
    assert len(rows) >= 20
    assert all(torch.isclose(row, expected, atol=1e-6).all(dim=1).any() for row in rows)
    with pytest.raises(InputError, match='tensor: expected a 1-D vector of length 3'):
        fit(model, (np.zeros((4, 2), np.float32), [0, 0, 1, 1]), epochs=1, progress_bar=False)


def test_explicit_collate_fn_replaces_the_transform():
    x = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    model = attach_transform(build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 4]}}, seed=0),
                             {'modality': 'vector', 'mean': 1000.0})
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    fit(model, (x, [0, 1] * 4), epochs=1, batch_size=8, seed=0, progress_bar=False,
        collate_fn=lambda items: torch.from_numpy(np.stack(items)))
    assert float(seen[0].abs().max()) < 100  # raw inputs, not x - 1000
    assert embed(list(x), model).shape == (8, 4)
