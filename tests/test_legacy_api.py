"""The old Finetuner 0.4.x calls (``import executors as finetuner``): they work, or fail saying what to write."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import executors as finetuner
from executors.data.schema import Doc, DocList
from executors.errors import InputError
from executors.models.tailor import EmbeddingModel
from executors.tuner.callbacks import Callback
from tests.tuner.helpers import blobs, mlp


class Net(nn.Module):
    """A user's own module (imported by path in the ``import`` builder test)."""

    def __init__(self, dim: int = 4, out: int = 3):
        super().__init__()
        self.linear = nn.Linear(dim, out)

    def forward(self, x):
        return self.linear(x)


class CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_begin(self, tuner):
        self.batches += 1


def test_losses_miners_callbacks_import_from_the_top_level_and_the_old_module_paths_without_jina():
    code = (
        'import sys\n'
        'import executors as finetuner\n'
        'from executors import TripletLoss, SiameseLoss, TripletEasyHardMiner, EarlyStopping, BestModelCheckpoint\n'
        'from executors.tuner.pytorch.losses import TripletLoss as OldTriplet\n'
        'from executors.tuner.pytorch.miner import TripletEasyHardMiner as OldMiner\n'
        'from executors.tuner.callback import EarlyStopping as OldEarlyStopping\n'
        'import executors.tuner.losses as losses\n'
        'assert OldTriplet is TripletLoss is losses.TripletLoss is finetuner.tuner.pytorch.losses.TripletLoss\n'
        'assert OldMiner is TripletEasyHardMiner and OldEarlyStopping is EarlyStopping\n'
        'assert finetuner.tailor.display is finetuner.display\n'
        'assert finetuner.tailor.to_embedding_model is finetuner.to_embedding_model\n'
        'assert sum(name.endswith(".losses") for name in sys.modules if "executors" in name) == 2\n'
        'assert "jina" not in sys.modules, "the core must not import Jina"\n'
        'print("ok")\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'
    with pytest.raises(AttributeError, match='no attribute'):
        finetuner.no_such_name  # noqa: B018


@pytest.mark.parametrize('name, value, fix', [
    ('tag_key', 'label', "tags\\['finetuner_label'\\]"), ('output_dim', 8, 'projection_head=<int>'),
    ('bottleneck_net', nn.Identity(), 'projection_head=<nn.Module>'), ('freeze_layers', ['0'], 'freeze='),
    ('head_layer', 'CosineLayer', 'loss='), ('query_data', [], 'EvaluationCallback'),
    ('limit', 20, 'k=<limit>'), ('interactive', True, 'no labeling UI'),
])
def test_old_arguments_spelled_differently_are_refused_with_the_new_spelling(name, value, fix):
    model = mlp(4, 8)
    with pytest.raises(InputError, match=f'^{name}: an old Finetuner argument .*write .*{fix}'):
        finetuner.fit(model, blobs(), epochs=1, progress_bar=False, **{name: value})


def test_embed_model_keyword_and_positional_and_typo_errors():
    tuned = finetuner.fit(embed_model=mlp(4, 8), train_data=blobs(), epochs=1, progress_bar=False)
    assert isinstance(tuned, nn.Module)
    with pytest.raises(TypeError, match='by keyword'):
        finetuner.fit(mlp(4, 8), blobs(), None, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'.*'epochs'"):
        finetuner.fit(mlp(4, 8), blobs(), epoch=3)
    with pytest.raises(InputError, match='^layer_name: a Tailor argument'):
        finetuner.fit(mlp(4, 8), blobs(), layer_name='0', epochs=1, progress_bar=False)
    with pytest.raises(InputError, match="^margin: got 'euclidean', a distance.*TripletLoss\\(distance='euclidean', "
                                         "margin=0.5\\)"):
        finetuner.TripletLoss('euclidean', 0.5)


def test_fit_with_tailor_arguments_cuts_first_and_returns_the_tuned_cut_model():
    general = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in general.parameters()]
    tuned = finetuner.fit(general, blobs(), epochs=2, batch_size=10, to_embedding_model=True, input_size=(4,),
                          layer_name='3', freeze=['0'], projection_head=6, progress_bar=False)
    assert isinstance(tuned, EmbeddingModel) and tuned.embedding_dim == 6
    assert all(torch.equal(a, b) for a, b in zip(before, general.parameters()))  # the user's model is untouched
    assert torch.equal(tuned.base[0].weight, general[0].weight)  # frozen layer kept its weights
    assert not torch.equal(tuned.base[2].weight, general[2].weight)  # the rest was tuned
    assert finetuner.embed(blobs()[0], tuned).shape == (30, 6)


def test_a_model_cut_in_fit_keeps_its_input_transform(tmp_path):
    from executors.data.transforms import attach_transform, transform_of

    general = attach_transform(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
                               {'modality': 'vector', 'mean': 1.0, 'std': 4.0})
    tuned = finetuner.fit(general, blobs(), epochs=1, to_embedding_model=True, layer_name='1', progress_bar=False)
    assert transform_of(tuned).to_spec() == transform_of(general).to_spec()
    finetuner.save(tuned, tmp_path / 'cut')
    skeleton = finetuner.tailor.to_embedding_model(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
                                                   layer_name='1')
    loaded, config = finetuner.load(tmp_path / 'cut', model=skeleton)
    assert transform_of(loaded).to_spec() == config['input_transform']
    X, _ = blobs()
    np.testing.assert_allclose(finetuner.embed(X, loaded), finetuner.embed(X, tuned), rtol=1e-6)


def test_docarray_v1_style_docs_with_tensor_and_finetuner_label_tags_train():
    X, y = blobs()
    docs = DocList[Doc]([Doc(tensor=x, tags={'finetuner_label': int(label)}) for x, label in zip(X, y)])
    tuned = finetuner.fit(mlp(4, 8), train_data=docs, eval_data=docs, epochs=2, progress_bar=False)
    finetuner.embed(docs, tuned)
    assert all(doc.embedding.shape == (8,) for doc in docs)


def test_plain_objects_with_tensor_and_tags_train_like_v1_documents():
    from types import SimpleNamespace

    X, y = blobs()
    docs = [SimpleNamespace(id=str(i), tensor=x, tags={'finetuner_label': int(label)}, embedding=None)
            for i, (x, label) in enumerate(zip(X, y))]
    tuned = finetuner.fit(mlp(4, 8), docs, epochs=1, progress_bar=False)
    finetuner.embed(docs, tuned)
    assert docs[0].embedding.shape == (8,)


def test_a_miner_without_distance_mines_with_its_loss_distance():
    """Anchor 0: with euclidean distance the hardest (closest) negative is item 2, with cosine item 3."""
    embeddings = torch.tensor([[1.0, 0.0], [1.1, 0.1], [0.0, 0.2], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    miner = finetuner.TripletEasyHardMiner(pos_strategy='hard', neg_strategy='hard')
    assert miner.distance is None
    euclidean = finetuner.TripletLoss(distance='euclidean', margin=5.0, miner=miner)
    explicit = finetuner.TripletLoss(distance='euclidean', margin=5.0,
                                     miner=finetuner.TripletEasyHardMiner('hard', 'hard', distance='euclidean'))
    cosine_mined = finetuner.TripletLoss(distance='euclidean', margin=5.0,
                                         miner=finetuner.TripletEasyHardMiner('hard', 'hard', distance='cosine'))
    assert float(euclidean(embeddings, labels)) == pytest.approx(float(explicit(embeddings, labels)))
    assert float(euclidean(embeddings, labels)) != pytest.approx(float(cosine_mined(embeddings, labels)))
    assert miner(embeddings, labels)[2][0] == 3  # on its own it mines with cosine
    assert miner(embeddings, labels, distance='euclidean')[2][0] == 2


@pytest.mark.parametrize('callback, eval_data, message', [
    (lambda: finetuner.EarlyStopping(monitor='precision_at_k'), True,
     "never produces.*'precision@10'.*the old Finetuner's 'precision_at_k' is 'precision@10'"),
    (lambda: finetuner.BestModelCheckpoint('unused', monitor='val_loss'), False,
     r"never produces; its metrics are \['train_loss'\].*pass eval_data"),
    (lambda: finetuner.EarlyStopping(monitor='val_los'), True, "'val_los'.*'val_loss'"),
])
def test_a_monitor_the_run_never_produces_fails_before_the_first_batch(callback, eval_data, message):
    counter = CountBatches()
    X, y = blobs(per_class=10, classes=4)
    with pytest.raises(InputError, match=message):
        finetuner.fit(mlp(4, 8), (X, y), (X, y) if eval_data else None, epochs=2,
                      callbacks=[counter, callback()], progress_bar=False)
    assert counter.batches == 0


def test_a_monitor_of_a_later_evaluation_callback_says_to_reorder():
    X, y = blobs(per_class=10, classes=4)
    evaluation = finetuner.EvaluationCallback((X, y), k=5)
    stopper = finetuner.EarlyStopping(monitor='eval/hit@5')
    with pytest.raises(InputError, match='list EarlyStopping after it'):
        finetuner.fit(mlp(4, 8), (X, y), epochs=1, callbacks=[stopper, evaluation], progress_bar=False)
    finetuner.fit(mlp(4, 8), (X, y), epochs=1, callbacks=[evaluation, stopper], progress_bar=False)
    assert stopper.best is not None


def test_default_batches_are_class_balanced_so_every_batch_holds_positives():
    """20 classes of 3 items, batch_size 8: shuffled batches would often hold no pair of one class."""
    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = finetuner.SiameseLoss()

        def forward(self, embeddings, labels):
            seen.append(labels.tolist())
            return self.inner(embeddings, labels)

    X, y = blobs(per_class=3, classes=20)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no empty-batch warning
        finetuner.fit(mlp(4, 8), (X, y), loss=Recording(), epochs=3, batch_size=8, seed=0, progress_bar=False)
    assert seen and all(len(batch) == 8 and all(batch.count(c) == 2 for c in set(batch)) for batch in seen)


def test_batches_without_a_triplet_are_counted_and_warned_about():
    recorder = type('R', (Callback,), {'on_fit_end': lambda self, tuner: setattr(self, 'state', tuner.state)})()
    with pytest.warns(RuntimeWarning, match='batches of epoch 1 gave TripletLoss no pair or triplet'):
        finetuner.fit(mlp(4, 8), blobs(per_class=8, classes=3), loss='TripletLoss', num_items_per_class=4,
                      batch_size=4, epochs=1, callbacks=[recorder], progress_bar=False)  # one class per batch
    assert recorder.state.empty_batches == recorder.state.num_batches == 6


def test_save_any_module_and_load_it_into_a_module_you_build(tmp_path):
    model = Net()
    finetuner.save(model, tmp_path / 'net')
    assert sorted(p.name for p in (tmp_path / 'net').iterdir()) == ['model.json', 'weights.safetensors']
    with pytest.raises(InputError, match=r"builder spec.*load\(path, model=MyModule"):
        finetuner.load(tmp_path / 'net')
    filled, config = finetuner.load(tmp_path / 'net', model=Net())
    assert config['model']['class'] == 'tests.test_legacy_api:Net'
    assert torch.equal(filled.linear.weight, model.linear.weight)
    with pytest.raises(InputError, match='do not fit this module'):
        finetuner.load(tmp_path / 'net', model=Net(dim=5))


def test_tied_weights_save_once_and_load(tmp_path):
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    finetuner.save(model, tmp_path / 'tied')
    fresh = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    loaded, _ = finetuner.load(tmp_path / 'tied', model=fresh)
    assert torch.equal(loaded[0].weight, model[0].weight) and loaded[1].weight is loaded[0].weight


def test_a_user_module_by_import_path_is_rebuildable_only_when_asked(tmp_path):
    spec = {'builder': 'import', 'kwargs': {'path': 'tests.test_legacy_api:Net', 'kwargs': {'dim': 4, 'out': 2}}}
    with pytest.raises(InputError, match='allow_import=True'):
        finetuner.build_model(spec)
    model = finetuner.build_model(spec, allow_import=True)
    finetuner.save(model, tmp_path / 'net')
    with pytest.raises(InputError, match='allow_import=True'):
        finetuner.load(tmp_path / 'net')
    loaded, _ = finetuner.load(tmp_path / 'net', allow_import=True)
    assert isinstance(loaded, Net) and torch.equal(loaded.linear.weight, model.linear.weight)
    bad = {'builder': 'import', 'kwargs': {'path': 'tests.test_legacy_api:Missing'}}
    with pytest.raises(InputError, match='^model.kwargs.path: cannot import'):
        finetuner.build_model(bad, allow_import=True)


def test_a_failed_save_leaves_no_half_written_folder_and_keeps_the_previous_save(tmp_path, monkeypatch):
    from executors.models import serialization

    first = Net()
    finetuner.save(first, tmp_path / 'net')

    def fail_midway(model, filename, **kwargs):
        with open(filename, 'wb') as handle:
            handle.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(serialization, 'save_model', fail_midway)
    with pytest.raises(OSError, match='disk full'):
        finetuner.save(Net(), tmp_path / 'net')
    with pytest.raises(OSError, match='disk full'):
        finetuner.save(Net(), tmp_path / 'fresh')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net']  # no temp dirs, no 'fresh'
    monkeypatch.undo()
    loaded, _ = finetuner.load(tmp_path / 'net', model=Net())
    assert torch.equal(loaded.linear.weight, first.linear.weight)
    with pytest.raises(InputError, match='^metadata: must be JSON'):
        finetuner.save(Net(), tmp_path / 'other', metadata={'x': object()})
    assert not (tmp_path / 'other').exists()


def test_embed_and_tailor_with_the_old_positional_order_say_what_to_write():
    X, _ = blobs()
    out = finetuner.embed(X, mlp(4, 8), device='cpu', batch_size=7)
    assert out.shape == (30, 8) and np.isfinite(out).all()
    with pytest.raises(InputError, match=r"^batch_size: got 'cpu'.*embed\(docs, model, device='cpu'\)"):
        finetuner.embed(X, mlp(4, 8), 'cpu')
    general = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(InputError, match='^freeze:'):  # old order: (model, layer_name, input_size, ...)
        finetuner.tailor.to_embedding_model(general, '1', (4,))
    cut = finetuner.tailor.to_embedding_model(general, layer_name='1', input_size=(4,))
    assert cut.embedding_dim == 16
