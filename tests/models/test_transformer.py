"""The transformer model family: pooling formulas, store round trip, the installed MiniLM, bad input."""
import numpy as np
import pytest
import torch

from executors.errors import InputError
from executors.models import ModelStore, build_model
from executors.models.transformer import TransformerEncoder, default_model_path, pool


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
    """A 1-layer random BERT saved like a pretrained model directory."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp('tiny-bert')
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(path)
    return str(path)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(1, 50, (3, 7)))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    return {'input_ids': ids * mask, 'attention_mask': mask}


def test_pooling_matches_loops():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    for b in range(3):
        kept = hidden[b, mask[b].bool()]
        torch.testing.assert_close(pool(hidden, mask, 'mean')[b], kept.mean(0))
        torch.testing.assert_close(pool(hidden, mask, 'max')[b], kept.max(0).values)
        torch.testing.assert_close(pool(hidden, mask, 'cls')[b], hidden[b, 0])


@pytest.mark.parametrize('pooling', ['mean', 'cls', 'max'])
def test_forward_pools_the_backbone_states(tiny_bert, pooling):
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pooling': pooling,
                                                             'normalize': False}}).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        hidden = model.backbone(**batch).last_hidden_state
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, pool(hidden, batch['attention_mask'], pooling))
    normalized = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pooling': pooling}}).eval()
    with torch.no_grad():
        torch.testing.assert_close(normalized(batch), torch.nn.functional.normalize(out, dim=1))


def test_padding_does_not_change_a_sentence_embedding(tiny_bert):
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert}}).eval()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        alone = model({'input_ids': ids, 'attention_mask': torch.ones_like(ids)})
        padded = model({'input_ids': torch.tensor([[5, 6, 7, 0, 0]]), 'attention_mask': torch.tensor([[1, 1, 1, 0, 0]])})
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def _varied_batch(rows, seed=0, left=False):
    """``rows`` sentences of 1..12 tokens, padded to 12 on the right (or the left)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, rows)
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    mask = mask.flip(1) if left else mask
    return {'input_ids': torch.from_numpy(rng.integers(1, 50, (rows, 12))) * mask, 'attention_mask': mask,
            'token_type_ids': torch.zeros_like(mask)}


@pytest.mark.parametrize('pooling', ['mean', 'cls', 'max'])
def test_length_buckets_give_each_row_what_one_pass_gives(tiny_bert, pooling, monkeypatch):
    """Rows of 1..12 tokens, more than ``bucket_rows``: sorted into buckets, cut, and put back in order."""
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pooling': pooling}}).eval()
    monkeypatch.setattr(TransformerEncoder, 'bucket_rows', 4)
    batch = _varied_batch(11)
    calls = []
    model.backbone.register_forward_pre_hook(lambda module, args, kwargs: calls.append(
        tuple(kwargs['input_ids'].shape)), with_kwargs=True)
    with torch.no_grad():
        bucketed = model(batch)
        assert [rows for rows, _ in calls] == [4, 4, 3]
        assert max(length for _, length in calls[:2]) < 12  # short rows ran without the longest's padding
        monkeypatch.setattr(TransformerEncoder, 'bucket_rows', 0)
        whole = model(batch)
        assert calls[3] == (11, 12)  # bucket_rows = 0: one pass
        alone = torch.cat([model({k: v[i:i + 1, :int(batch['attention_mask'][i].sum())] for k, v in batch.items()})
                           for i in range(11)])
    torch.testing.assert_close(bucketed, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bucketed, alone, atol=1e-5, rtol=1e-5)


def test_length_buckets_give_one_pass_gradients_and_skip_left_padding(tiny_bert, monkeypatch):
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert}}).eval()  # no dropout
    batch = _varied_batch(9, seed=1)
    grads = []
    for rows in (4, 0):
        monkeypatch.setattr(TransformerEncoder, 'bucket_rows', rows)
        model.zero_grad()
        (model(batch) * torch.arange(1.0, 10.0)[:, None]).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(TransformerEncoder, 'bucket_rows', 4)
    calls = []
    model.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    with torch.no_grad():
        model(_varied_batch(9, seed=1, left=True))
    assert len(calls) == 1  # not right-padded: one pass, as given


def test_store_round_trip_keeps_tuned_weights(tiny_bert, tmp_path):
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pooling': 'max'}})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # "tuned": differs from the files in path
    model.eval()
    store = ModelStore(tmp_path)
    version = store.publish('text', model)
    loaded, config = store.load('text')  # the architecture from the version's own copy of config.json
    assert config['model'] == {'builder': 'transformer', 'kwargs': {'path': str(version.path / 'transformer'),
                                                                    'pooling': 'max', 'pretrained': False}}
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch(1)), model(_batch(1)))
    pretrained = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pooling': 'max'}}).eval()
    with torch.no_grad():
        assert not torch.allclose(pretrained(_batch(1)), model(_batch(1)))


def test_random_init_architecture_loads_a_state_dict(tiny_bert):
    source = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert}}).eval()
    skeleton = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, 'pretrained': False}}).eval()
    skeleton.load_state_dict(source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(skeleton(_batch()), source(_batch()))


def test_installed_minilm_matches_sentence_transformers():
    """Masked mean + L2 normalisation over all-MiniLM-L6-v2 is what sentence-transformers computes."""
    st = pytest.importorskip('sentence_transformers')
    from transformers import AutoTokenizer

    texts = ['how do i reset my pin', 'what is the weather like tomorrow in paris', 'book a table']
    model = build_model({'builder': 'transformer', 'kwargs': {}}).eval()
    assert model.embedding_dim == 384
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    with torch.no_grad():
        ours = model(dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors='pt')))
    reference = st.SentenceTransformer(default_model_path(), device='cpu').encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('kwargs, message', [
    ({'pooling': 'median'}, '^pooling: unknown'),
    ({'normalize': 'yes'}, '^normalize: expected true or false'),
    ({'path': '/nonexistent/model'}, '^path: .* is not a transformers model directory'),
])
def test_bad_settings(tiny_bert, kwargs, message):
    with pytest.raises(InputError, match=message):
        build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert, **kwargs}})


def test_untokenized_input_says_to_tokenize(tiny_bert):
    model = build_model({'builder': 'transformer', 'kwargs': {'path': tiny_bert}})
    with pytest.raises(InputError, match="^inputs: a transformer encoder takes a tokenized batch.*got list"):
        model(['a text'])
    with pytest.raises(InputError, match=r"got \['input_ids'\]"):
        model({'input_ids': torch.ones(1, 3, dtype=torch.long)})
    assert isinstance(model, TransformerEncoder)
