"""The registries, spec building and the model <-> transform link shared by every modality."""
import json

import numpy as np
import pytest
import torch

from executors.data.decoding import DECODERS, MODALITY_MODULES, build_decoder
from executors.data.transforms import TRANSFORMS, TransformCollate, attach_transform, build_transform, transform_of
from executors.errors import InputError
from executors.models import build_model


def test_every_modality_has_a_decoder_and_a_transform():
    build_decoder({'modality': 'vector'})
    assert set(DECODERS) == set(TRANSFORMS) == set(MODALITY_MODULES) == {'vector', 'image', 'mesh', 'text'}


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'audio'}, "modality: unknown modality 'audio'; allowed: vector, image, mesh, text"),
    ({'modality': 'text', 'max_length': 1}, "max_length: expected an integer >= 2"),
    ({'modality': 'vector', 'dims': 3}, "dims: not a setting of modality 'vector'; allowed settings: dim, mean, std"),
    ('image', 'input_transform: expected a dict'),
])
def test_bad_transform_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_transform(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'audio'}, "modality: unknown modality 'audio'; allowed: vector, image, mesh, text"),
    ({'modality': 'vector', 'mean': 3}, "mean: not a setting of modality 'vector'; allowed settings: dim"),
    ({'modality': 'image', 'size': [3, 3]}, "size: not a setting of modality 'image'; allowed settings: root, max_side"),
    ('image', 'decoding: expected a dict'),
])
def test_bad_decoding_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_decoder(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('spec', [
    {'modality': 'vector', 'dim': 3, 'mean': [0.5, 1, 2], 'std': 3},
    {'modality': 'image', 'size': [64, 48], 'shorter_side': 80, 'channel_axis': -1, 'color_jitter': 0},
    {'modality': 'mesh', 'num_points': 512, 'seed': 3, 'scale_range': [1, 1]},
    {'modality': 'text', 'tokenizer_path': '/models/minilm', 'max_length': 64, 'padding': 'max_length'},
])
def test_transform_specs_round_trip_through_json(spec):
    transform = build_transform(spec)
    stored = json.loads(json.dumps(transform.to_spec()))
    assert build_transform(stored) == transform
    assert {key: stored[key] for key in spec} == spec  # ints and floats compare equal


@pytest.mark.parametrize('spec', [
    {'modality': 'vector', 'dim': 3},
    {'modality': 'image', 'root': '/data', 'max_side': 512},
    {'modality': 'mesh', 'root': '/data', 'num_points': 2048, 'file_type': 'off'},
    {'modality': 'text'},
])
def test_decoding_specs_round_trip_through_json(spec):
    decoder = build_decoder(spec)
    stored = json.loads(json.dumps(decoder.to_spec()))
    assert build_decoder(stored) == decoder and {key: stored[key] for key in spec} == spec


def test_data_root_fills_decoders_that_read_files():
    assert build_decoder({'modality': 'image'}, root='/data').root == '/data'
    assert build_decoder({'modality': 'mesh', 'root': '/mine'}, root='/data').root == '/mine'
    assert build_decoder({'modality': 'vector'}, root='/data') == build_decoder({'modality': 'vector'})


def test_attach_and_read_a_models_transform():
    model = build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 4]}})
    assert transform_of(model) is None
    assert attach_transform(model, {'modality': 'vector', 'std': 2}) is model
    assert transform_of(model) == build_transform({'modality': 'vector', 'std': 2})
    attach_transform(model, None)
    assert transform_of(model) is None
    with pytest.raises(InputError, match="modality: unknown modality 'nope'"):
        attach_transform(model, {'modality': 'nope'})

    class HasOne(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_transform = torch.nn.Identity()

    with pytest.raises(InputError, match="model: already has an attribute 'input_transform' of type Identity"):
        attach_transform(HasOne(), {'modality': 'vector'})


def test_transform_collate_augments_only_in_train_mode():
    model = torch.nn.Linear(3, 2)
    transform = build_transform({'modality': 'mesh', 'num_points': 8})
    collate = TransformCollate(transform, model, np.random.default_rng(0))
    clouds = [np.random.default_rng(i).normal(size=(20, 3)) for i in range(2)]
    model.eval()
    plain = collate(clouds)
    np.testing.assert_array_equal(plain.numpy(), transform.batch(clouds).numpy())
    model.train()
    augmented = collate(clouds)
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
