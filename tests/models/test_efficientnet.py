"""EfficientNet-Lite0: offline ImageNet weights, a sensible label on a real photo, tailoring at pooling."""
import numpy as np
import pytest
import torch
from PIL import Image

from executors.errors import InputError
from executors.models import build_model, load, save
from executors.models.efficientnet import (
    EMBEDDING_DIM,
    INPUT_NORMALISATION,
    frozen_layers,
    pretrained_weights_path,
    tailored_efficientnet_lite0,
)


def _photo_batch(size: int) -> torch.Tensor:
    """The two photos scikit-learn ships (a Chinese temple, a flower), centre-cropped, resized, normalised."""
    from sklearn.datasets import load_sample_images

    batch = []
    for pixels in load_sample_images().images:
        height, width, _ = pixels.shape
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = Image.fromarray(pixels[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        scaled = np.asarray(square, dtype=np.float32) / 255
        normalised = (scaled - INPUT_NORMALISATION['mean']) / INPUT_NORMALISATION['std']
        batch.append(torch.from_numpy(normalised.transpose(2, 0, 1).astype(np.float32)))
    return torch.stack(batch)


@pytest.fixture(scope='module')
def classifier():
    return build_model({'builder': 'efficientnet_lite0', 'kwargs': {}}).eval()


def test_pretrained_weights_name_the_temple_photo_as_a_building(classifier):
    import torchvision

    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta['categories']  # class names ship offline
    with torch.no_grad():
        probabilities = classifier(_photo_batch(224)).softmax(dim=1)
    temple_top5 = {categories[i] for i in probabilities[0].topk(5).indices}
    assert temple_top5 & {'bell cote', 'stupa', 'palace', 'monastery', 'dome', 'church', 'mosque'}, temple_top5
    assert probabilities[0].max() > 0.2  # confident, unlike random weights (~0.001-0.01)
    flower_top5 = {categories[i] for i in probabilities[1].topk(5).indices}
    assert 'bell cote' not in flower_top5 and 'stupa' not in flower_top5


def test_random_weights_differ_from_pretrained(classifier):
    random_model = build_model({'builder': 'efficientnet_lite0', 'kwargs': {'pretrained': False}}, seed=0)
    assert not torch.equal(random_model._conv_stem.weight, classifier._conv_stem.weight)


def test_local_safetensors_weights_path_loads(tmp_path, classifier):
    from safetensors.torch import save_file

    path = tmp_path / 'lite0.safetensors'
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    model = build_model({'builder': 'efficientnet_lite0', 'kwargs': {'weights_path': str(path)}})
    for name, value in classifier.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_bad_weights_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match='weights_path'):
        build_model({'builder': 'efficientnet_lite0', 'kwargs': {'weights_path': str(tmp_path / 'missing.pth')}})
    wrong = tmp_path / 'wrong.pth'
    torch.save({'conv.weight': torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match='does not fit'):
        build_model({'builder': 'efficientnet_lite0', 'kwargs': {'weights_path': str(wrong)}})
    with pytest.raises(InputError, match='num_classes'):
        build_model({'builder': 'efficientnet_lite0', 'kwargs': {'num_classes': 0}})


def test_pretrained_file_is_read_without_unpickling():
    state = torch.load(pretrained_weights_path(), map_location='cpu', weights_only=True)
    assert state['_fc.weight'].shape == (1000, EMBEDDING_DIM)


def test_tailored_model_cuts_at_pooling_freezes_early_blocks_and_round_trips(tmp_path, classifier):
    model = tailored_efficientnet_lite0(num_frozen_blocks=8, input_size=(3, 128, 128))
    assert model.embedding_dim == EMBEDDING_DIM
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(name.startswith('base._blocks.7.') for name in frozen)
    assert not any(name.startswith(('base._blocks.8.', 'base._conv_head')) for name in frozen)
    assert any(name.startswith('base._conv_stem') for name in frozen)
    photos = _photo_batch(128)
    model.eval()
    with torch.no_grad():
        embeddings = model(photos)
        x = classifier.extract_features(photos)
        expected = classifier._avg_pooling(x).flatten(1)
    assert embeddings.shape == (2, EMBEDDING_DIM)
    torch.testing.assert_close(embeddings, expected)
    save(model, tmp_path / 'v1')
    rebuilt, _ = load(tmp_path / 'v1')
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(photos), embeddings)


def test_frozen_layers_checks_its_count():
    assert frozen_layers(2) == ['_conv_stem', '_bn0', '_blocks.0', '_blocks.1']
    with pytest.raises(InputError, match='num_frozen_blocks'):
        frozen_layers(17)
