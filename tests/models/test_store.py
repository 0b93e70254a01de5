import json

import pytest
import torch

from executors.data.transforms import attach_transform, build_transform, transform_of
from executors.errors import InputError
from executors.models import ModelStore, build_model, load, save
from executors.models.store import POINTER_FILE

MLP = {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 6, 6, 6]}}


def test_save_load_round_trip_without_pickle(tmp_path):
    model = build_model(MLP, seed=1)
    save(model, tmp_path / 'm', {'note': 'x'})
    assert sorted(p.name for p in (tmp_path / 'm').iterdir()) == ['model.json', 'weights.safetensors']
    loaded, config = load(tmp_path / 'm')
    assert config['model'] == MLP and config['note'] == 'x'
    x = torch.randn(4, 3)
    assert torch.equal(model(x), loaded(x))


def test_build_model_seed_is_deterministic_and_bad_specs_name_the_field():
    a, b = build_model(MLP, seed=3), build_model(MLP, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(InputError, match='model.builder'):
        build_model({'builder': 'nope'})
    with pytest.raises(InputError, match='model.kwargs'):
        build_model({'builder': 'mlp', 'kwargs': {'sizes': [1, 2]}})
    with pytest.raises(InputError, match='layer_sizes'):
        build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [3]}})


def test_a_module_without_spec_saves_and_loads_into_a_module_you_build(tmp_path):
    linear = torch.nn.Linear(2, 2)
    save(linear, tmp_path / 'linear')
    with pytest.raises(InputError, match=r'builder spec.*model=MyModule'):
        load(tmp_path / 'linear')
    filled, config = load(tmp_path / 'linear', model=torch.nn.Linear(2, 2))
    assert config['model'] == {'builder': None, 'class': 'torch.nn.modules.linear:Linear'}
    assert torch.equal(filled.weight, linear.weight) and torch.equal(filled.bias, linear.bias)


def test_publish_versions_pointer_and_rollback(tmp_path):
    store = ModelStore(tmp_path)
    assert store.current_version('m') is None
    with pytest.raises(InputError, match='no version'):
        store.resolve('m')
    v1 = store.publish('m', build_model(MLP, seed=1), {'stage': 'initial'})
    v2 = store.publish('m', build_model(MLP, seed=2), {'stage': 'tuned', 'parent': 1})
    assert (v1.version, v2.version) == (1, 2)
    assert store.versions('m') == [1, 2] and store.current_version('m') == 2
    assert store.config('m')['parent'] == 1 and store.config('m', 1)['stage'] == 'initial'
    store.set_current('m', 1)
    assert (tmp_path / 'm' / POINTER_FILE).read_text().strip() == '1'
    model, config = store.load('m')
    assert config['version'] == 1
    with pytest.raises(InputError, match='has no version 7'):
        store.set_current('m', 7)
    assert not [p for p in (tmp_path / 'm').iterdir() if p.name.startswith('.')]  # no staging left


def test_publish_without_moving_the_pointer(tmp_path):
    store = ModelStore(tmp_path)
    store.publish('m', build_model(MLP))
    store.publish('m', build_model(MLP), make_current=False)
    assert store.current_version('m') == 1 and store.versions('m') == [1, 2]


@pytest.mark.parametrize('name', ['../escape', '/abs', 'a/b', '', '..'])
def test_model_names_cannot_escape_the_store(tmp_path, name):
    with pytest.raises(InputError, match='model_name'):
        ModelStore(tmp_path).publish(name, build_model(MLP))


def test_corrupt_version_directory_is_reported(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match='model.json'):
        load(tmp_path / 'empty')
    (tmp_path / 'empty' / 'model.json').write_text(json.dumps({'model': MLP}))
    with pytest.raises(InputError, match='weights.safetensors'):
        load(tmp_path / 'empty')


def test_input_transform_round_trips_through_model_json(tmp_path):
    spec = {'modality': 'vector', 'dim': 3, 'mean': [1.0, 0.0, -1.0], 'std': 2.0}
    model = attach_transform(build_model(MLP, seed=1), spec)
    save(model, tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'model.json').read_text())
    assert config['input_transform'] == spec
    loaded, _ = load(tmp_path / 'm')
    assert transform_of(loaded) == build_transform(spec)

    store = ModelStore(tmp_path / 'store')
    store.publish('m', model)
    store.publish('m', build_model(MLP, seed=2))  # a version without a transform
    assert transform_of(store.load('m', 1)[0]) == build_transform(spec) and store.config('m', 1)['input_transform'] == spec
    assert transform_of(store.load('m', 2)[0]) is None and 'input_transform' not in store.config('m', 2)


def test_bad_stored_input_transform_is_reported(tmp_path):
    save(build_model(MLP), tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'model.json').read_text())
    (tmp_path / 'm' / 'model.json').write_text(json.dumps({**config, 'input_transform': {'modality': 'vector', 'std': -1}}))
    with pytest.raises(InputError, match=r'std: expected a number in \(0, inf\)'):
        load(tmp_path / 'm')
