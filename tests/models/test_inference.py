import numpy as np
import torch

from executors.data.schema import Doc
from executors.data.transforms import attach_transform
from executors.models import build_model
from executors.models.inference import embed

MLP = {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 5]}}


def test_embed_runs_the_models_input_transform():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    model = build_model(MLP, seed=0)
    plain = embed(list(x), model)
    with torch.no_grad():
        expected = model(torch.from_numpy((x - 1.0) / 4.0)).numpy()
    attach_transform(model, {'modality': 'vector', 'mean': 1.0, 'std': 4.0})
    docs = [Doc(tensor=row) for row in x]
    np.testing.assert_allclose(embed(docs, model, batch_size=4), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(docs[5].embedding, expected[5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed(list(x), model), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, plain)
    # an explicit preprocess_fn or collate_fn replaces the model's transform
    np.testing.assert_allclose(embed(list(x), model, preprocess_fn=lambda v: v), plain, rtol=1e-6)
    np.testing.assert_allclose(embed(list(x), model, collate_fn=lambda v: torch.from_numpy(np.stack(v))), plain, rtol=1e-6)


def test_embed_with_a_transform_refuses_bad_items_naming_them():
    model = attach_transform(build_model(MLP), {'modality': 'vector', 'dim': 3})
    try:
        embed([np.zeros(3, np.float32), np.zeros(4, np.float32)], model)
    except ValueError as error:
        assert 'inputs[1]: tensor: expected a 1-D vector of length 3' in str(error)
    else:
        raise AssertionError('a vector of the wrong length was embedded')


def test_embed_batches_texts_longest_first_and_answers_in_input_order():
    texts = ['a', 'abcd', 'ab', 'abcdef', 'abc', 'abcde', '']
    batches = []

    def collate(chunk):  # [B, 2]: (length, 1.0)
        batches.append(list(chunk))
        return torch.tensor([[float(len(t)), 1.0] for t in chunk])

    out = embed(texts, torch.nn.Identity(), batch_size=3, collate_fn=collate)
    np.testing.assert_array_equal(out[:, 0], [len(t) for t in texts])  # each row is its own text's
    assert batches == [['abcdef', 'abcde', 'abcd'], ['abc', 'ab', 'a'], ['']]
    batches.clear()
    embed(texts[:3], torch.nn.Identity(), batch_size=3, collate_fn=collate)  # one batch: order kept
    assert batches == [texts[:3]]
