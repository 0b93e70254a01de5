"""A stored version is self-contained: the transformer config and the tokenizer files travel with it
(executors.models.serialization), so it loads, and embeds the same, with the original model
directory / package gone; fingerprints identify a frozen base across versions."""
import json
import shutil

import numpy as np
import pytest
import torch

import executors.models.transformer as transformer_module
from executors.data.transforms import attach_transform, transform_of
from executors.errors import InputError
from executors.models import ModelStore, build_model
from executors.models.heads import with_head
from executors.models.inference import embed

TEXTS = ['book a flight to paris', 'what is my balance', 'hello']
VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'book', 'a', 'flight', 'to', 'paris', 'what', 'is', 'my',
         'balance', 'hello']


@pytest.fixture
def user_model_dirs(tmp_path):
    """A tiny BERT and its word-piece tokenizer in two directories of the user's (later deleted)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    model_dir, tokenizer_dir = tmp_path / 'user-model', tmp_path / 'user-tokenizer'
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(model_dir)
    tokenizer_dir.mkdir()
    (tokenizer_dir / 'vocab.txt').write_text('\n'.join(VOCAB) + '\n')
    BertTokenizer(vocab_file=str(tokenizer_dir / 'vocab.txt')).save_pretrained(tokenizer_dir)
    return model_dir, tokenizer_dir


def test_a_version_loads_with_the_user_directories_deleted(user_model_dirs, tmp_path):
    model_dir, tokenizer_dir = user_model_dirs
    model = attach_transform(build_model({'builder': 'transformer', 'kwargs': {'path': str(model_dir)}}),
                             {'modality': 'text', 'tokenizer_path': str(tokenizer_dir), 'max_length': 8})
    before = embed(TEXTS, model)
    version = ModelStore(tmp_path / 'store').publish('tiny', model)
    shutil.rmtree(model_dir)
    shutil.rmtree(tokenizer_dir)

    loaded, config = ModelStore(tmp_path / 'store').load('tiny')
    np.testing.assert_allclose(embed(TEXTS, loaded), before, atol=1e-6)
    stored = json.loads((version.path / 'model.json').read_text())
    assert stored['bundled'] == {'transformer': 'transformer', 'tokenizer': 'tokenizer'}
    assert stored['model']['kwargs']['path'] == 'transformer' and stored['input_transform']['tokenizer_path'] == 'tokenizer'
    assert str(tmp_path) not in json.dumps(stored)  # no absolute path in the version
    assert (version.path / 'transformer' / 'config.json').is_file()
    assert {'tokenizer_config.json'} <= {p.name for p in (version.path / 'tokenizer').iterdir()}
    assert transform_of(loaded).tokenizer_path == str(version.path / 'tokenizer')
    assert config['input_transform']['tokenizer_path'] == str(version.path / 'tokenizer')


def test_minilm_version_loads_without_the_model_package(tmp_path, monkeypatch):
    model = attach_transform(build_model({'builder': 'transformer', 'kwargs': {}}),
                             {'modality': 'text', 'max_length': 64})
    before = embed(TEXTS, model)
    store = ModelStore(tmp_path)
    store.publish('minilm', model)
    base, config = store.load('minilm')
    head = build_model({'builder': 'head', 'kwargs': {'kind': 'feedforward', 'in_dim': 384, 'out_dim': 8}}, seed=0)
    store.publish('minilm', attach_transform(with_head(base, head), config['input_transform']))

    missing = str(tmp_path / 'not-installed')
    monkeypatch.setattr(transformer_module, 'default_model_path', lambda: missing)
    with pytest.raises(InputError, match='not-installed'):  # the package really is out of reach now
        build_model({'builder': 'transformer', 'kwargs': {}})
    loaded, _ = store.load('minilm', 1)
    np.testing.assert_allclose(embed(TEXTS, loaded), before, atol=1e-5)
    with_head_loaded, _ = store.load('minilm', 2)
    with torch.no_grad():
        expected = head(torch.from_numpy(before)).numpy()
    np.testing.assert_allclose(embed(TEXTS, with_head_loaded), expected, atol=1e-5)
    # the head version's base is version 1's model: same fingerprint (what head-only swaps rely on)
    assert store.config('minilm', 2)['base_fingerprint'] == store.config('minilm', 1)['fingerprint']


def test_fingerprints_change_with_weights_and_input_transform(tmp_path):
    spec = {'builder': 'mlp', 'kwargs': {'layer_sizes': [4, 8]}}
    store = ModelStore(tmp_path)
    first = store.publish('m', build_model(spec, seed=0))
    again = store.publish('m', build_model(spec, seed=0))
    other = store.publish('m', build_model(spec, seed=1))
    scaled = store.publish('m', attach_transform(build_model(spec, seed=0), {'modality': 'vector', 'dim': 4}))
    fingerprints = [store.config('m', v.version)['fingerprint'] for v in (first, again, other, scaled)]
    assert fingerprints[0] == fingerprints[1]
    assert len(set(fingerprints[1:])) == 3
    assert 'base_fingerprint' not in store.config('m', 1)


@pytest.mark.parametrize('bundled, message', [({'tokenizer': '../../elsewhere'}, 'unknown bundled'),
                                              ({'weights': 'weights'}, 'unknown bundled'),
                                              ({'tokenizer': 'tokenizer'}, "lacks its bundled directory 'tokenizer'")])
def test_a_model_json_cannot_point_outside_its_directory(tmp_path, bundled, message):
    store = ModelStore(tmp_path)
    version = store.publish('m', build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [4, 8]}}, seed=0))
    config = json.loads((version.path / 'model.json').read_text())
    (version.path / 'model.json').write_text(json.dumps({**config, 'bundled': bundled}))
    with pytest.raises(InputError, match=message):
        store.load('m')
