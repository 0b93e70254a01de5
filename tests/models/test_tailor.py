"""Tailor: layer listing, display and cutting models into EmbeddingModels."""

import io
import json
import sys

import pytest
import torch
import torchvision
from torch import nn

from executors.errors import InputError
from executors.models.tailor import EmbeddingModel, LayerInfo, describe_layers, display, to_embedding_model

IMAGE_SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def resnet_pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Manual ResNet forward up to avgpool, flattened to (B, 512)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def params_with_grad(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.grad is not None}


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("layer after the cut was executed")


class TwoBranchNet(nn.Module):
    """Non-Sequential forward: shared relu called twice, a tuple-returning layer, an unused layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.relu = nn.ReLU()
        self.branch = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        self.split = SplitHalves()
        self.out = nn.Linear(8, 4)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        h = self.relu(self.stem(x))
        h = self.relu(h + self.branch(h))
        left, right = self.split(h)
        return self.out(left * right)


class SplitHalves(nn.Module):
    def forward(self, x):
        return x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]


class MeanPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class TinyTextEncoder(nn.Module):
    """Token ids (B, T) int64 -> embed (B, T, 16) -> transformer layer -> mean over T (B, 16) -> out (B, 8)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.encoder = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
        self.pool = MeanPool()
        self.out = nn.Linear(16, 8)

    def forward(self, token_ids):
        return self.out(self.pool(self.encoder(self.embed(token_ids))))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_resnet_cut_at_avgpool_equals_manual_pooled_features(resnet, images):
    embedding_model = to_embedding_model(resnet, "avgpool").eval()
    assert isinstance(embedding_model, EmbeddingModel)
    assert embedding_model.base is not resnet
    assert embedding_model.layer_name == "avgpool"
    with torch.no_grad():
        embeddings = embedding_model(images)
        expected = resnet_pooled_features(resnet, images)
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings, expected)


def test_resnet_cut_measures_dims_with_input_size(resnet):
    embedding_model = to_embedding_model(resnet, "avgpool", input_size=IMAGE_SIZE)
    assert (embedding_model.feature_dim, embedding_model.embedding_dim) == (512, 512)
    assert embedding_model.training  # the dummy forward restores training flags


def test_freeze_true_leaves_no_parameter_with_gradient(resnet, images):
    embedding_model = to_embedding_model(resnet, "avgpool", freeze=True)
    images.requires_grad_(True)
    embedding_model(images).sum().backward()
    assert images.grad is not None
    assert params_with_grad(embedding_model) == set()
    assert all(p.requires_grad for p in resnet.parameters())  # the user's model is not mutated


def test_freeze_list_freezes_only_named_layers(resnet, images):
    embedding_model = to_embedding_model(resnet, "avgpool", freeze=["layer1", "conv1"])
    frozen = {name for name, p in embedding_model.base.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in resnet.named_parameters() if name.startswith(("layer1.", "conv1."))}
    embedding_model(images).sum().backward()
    with_grad = params_with_grad(embedding_model.base)
    assert not with_grad & frozen
    assert {"bn1.weight", "layer2.0.conv1.weight", "layer4.1.bn2.bias"} <= with_grad
    assert not {"fc.weight", "fc.bias"} & with_grad  # fc runs after the cut


def test_projection_head_of_128_trains_only_head_when_frozen(resnet, images):
    embedding_model = to_embedding_model(resnet, "avgpool", freeze=True, projection_head=128, input_size=IMAGE_SIZE)
    assert embedding_model.settings() == {
        "layer_name": "avgpool",
        "feature_dim": 512,
        "embedding_dim": 128,
        "projection_dim": 128,
    }
    embeddings = embedding_model(images)
    assert embeddings.shape == (2, 128)
    embeddings.sum().backward()
    assert params_with_grad(embedding_model) == {"head.weight", "head.bias"}


def test_projection_head_with_unfrozen_base_trains_layers_up_to_cut(resnet, images):
    embedding_model = to_embedding_model(resnet, "avgpool", projection_head=128, input_size=IMAGE_SIZE)
    embedding_model(images).sum().backward()
    with_grad = params_with_grad(embedding_model)
    assert {"head.weight", "base.conv1.weight", "base.layer4.1.conv2.weight"} <= with_grad
    assert not {"base.fc.weight", "base.fc.bias"} & with_grad


def test_module_projection_head_and_settings_round_trip(resnet, images):
    head = nn.Linear(512 * 2 * 2, 16)
    embedding_model = to_embedding_model(resnet, "layer4", projection_head=head, input_size=IMAGE_SIZE)
    assert embedding_model.head is head
    assert (embedding_model.feature_dim, embedding_model.embedding_dim) == (2048, 16)
    assert embedding_model(images).shape == (2, 16)

    mlp_head = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 32))
    saved = to_embedding_model(resnet, "avgpool", projection_head=mlp_head, input_size=IMAGE_SIZE).eval()
    settings = json.loads(json.dumps(saved.settings()))
    assert settings == {"layer_name": "avgpool", "feature_dim": 512, "embedding_dim": 32, "projection_dim": None}
    fresh_head = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 32))
    loaded = EmbeddingModel.from_settings(torchvision.models.resnet18(weights=None), settings, head=fresh_head)
    loaded.load_state_dict(saved.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), saved(images))


def test_int_projection_head_settings_round_trip():
    saved = to_embedding_model(mlp(), "3", projection_head=5, input_size=(20,))
    loaded = EmbeddingModel.from_settings(mlp(), json.loads(json.dumps(saved.settings())))
    loaded.load_state_dict(saved.state_dict())
    x = torch.rand(4, 20)
    torch.testing.assert_close(loaded(x), saved(x))


def test_display_resnet_lists_avgpool_and_fc(resnet):
    out = io.StringIO()
    layers = display(resnet, IMAGE_SIZE, file=out)
    by_name = {layer.name: layer for layer in layers}
    assert by_name["avgpool"] == LayerInfo("avgpool", "AdaptiveAvgPool2d", (512, 1, 1), 0, None)
    assert by_name["fc"] == LayerInfo("fc", "Linear", (1000,), 512 * 1000 + 1000, True)
    assert by_name["layer4.1.conv2"].output_shape == (512, 2, 2)
    names = [layer.name for layer in layers]
    assert names[-2:] == ["avgpool", "fc"]
    assert names.index("layer1.0.conv1") < names.index("layer1.0") < names.index("layer1")  # children first
    text = out.getvalue()
    assert "layer4.1.conv2" in text and "(512, 1, 1)" in text and "(1000,)" in text
    assert "total params: 11,689,512" in text


def test_display_plain_text_without_rich(monkeypatch):
    for module_name in ("rich", "rich.console", "rich.table", "rich.text"):
        monkeypatch.setitem(sys.modules, module_name, None)
    out = io.StringIO()
    layers = display(mlp(), (20,), file=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["name", "type", "output", "shape", "params", "trainable"]
    assert lines[3].split() == ["0", "Linear", "(64,)", "1,344", "yes"]
    assert len(lines) == 3 + len(layers) + 1


def test_mlp_layers_and_cuts():
    model = mlp()
    layers = describe_layers(model, (20,))
    assert [(layer.name, layer.output_shape) for layer in layers] == [
        ("0", (64,)), ("1", (64,)), ("2", (32,)), ("3", (32,)), ("4", (10,)),
    ]
    x = torch.rand(3, 20)
    cut = to_embedding_model(model, "3", input_size=(20,))
    assert cut.embedding_dim == 32
    torch.testing.assert_close(cut(x), torch.relu(model[2](torch.relu(model[0](x)))))
    torch.testing.assert_close(to_embedding_model(model)(x), model(x))


def test_layers_after_the_cut_are_not_executed():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Boom())
    assert to_embedding_model(model, "1", input_size=(4,)).embedding_dim == 6
    with pytest.raises(InputError, match="input_size.*Boom.*layer after the cut was executed"):
        to_embedding_model(model, input_size=(4,))


def test_custom_forward_layers_and_cut():
    model = TwoBranchNet()
    layers = describe_layers(model, (8,))
    names = [layer.name for layer in layers]
    # the shared relu is listed once (first call), the unused layer not at all
    assert names == ["stem", "relu", "branch.0", "branch.1", "branch", "split", "out"]
    assert {layer.name: layer.output_shape for layer in layers}["split"] is None
    x = torch.rand(5, 8)
    cut = to_embedding_model(model, "branch")
    torch.testing.assert_close(cut(x), model.branch(model.relu(model.stem(x))))
    with pytest.raises(InputError, match="layer_name.*'split'.*tuple"):
        to_embedding_model(model, "split")(x)
    with pytest.raises(InputError, match="layer_name.*'unused'.*not called"):
        to_embedding_model(model, "unused")(x)


def test_token_id_model_with_int64_input():
    torch.manual_seed(0)
    model = TinyTextEncoder().eval()
    layers = describe_layers(model, (12,), input_dtype="int64")
    shapes = {layer.name: layer.output_shape for layer in layers}
    assert (shapes["embed"], shapes["encoder"], shapes["pool"], shapes["out"]) == ((12, 16), (12, 16), (16,), (8,))
    cut = to_embedding_model(model, "pool", input_size=(12,), input_dtype="int64").eval()
    assert cut.embedding_dim == 16
    token_ids = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(cut(token_ids), model.pool(model.encoder(model.embed(token_ids))))
    with pytest.raises(InputError, match="input_size/input_dtype.*'embed'"):
        describe_layers(model, (12,))  # float ids


def test_nested_embedding_models_cut_independently():
    inner = to_embedding_model(mlp(), "3")
    outer = to_embedding_model(inner, "base.1")
    x = torch.rand(2, 20)
    torch.testing.assert_close(outer(x), torch.relu(inner.base[0](x)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_name": "avgpol"}, "layer_name: .*'avgpol'.*'avgpool'"),
        ({"layer_name": ""}, "layer_name: "),
        ({"freeze": ["layer1", "layer9"]}, "freeze: .*'layer9'.*'layer1'"),
        ({"freeze": "layer1"}, "freeze: "),
        ({"projection_head": 128}, "input_size: .*projection_head"),
        ({"projection_head": 0, "input_size": IMAGE_SIZE}, "projection_head: "),
        ({"projection_head": "linear"}, "projection_head: "),
        ({"projection_head": nn.Linear(100, 8), "input_size": IMAGE_SIZE}, r"projection_head: .*\(B, 512\)"),
        ({"input_size": (3, -1, 64)}, "input_size: "),
        ({"input_size": 64}, "input_size: "),
        ({"input_size": (5, 64, 64)}, "input_size/input_dtype: .*'base.conv1'.*3 channels"),
        ({"input_size": IMAGE_SIZE, "input_dtype": "float33"}, "input_dtype: "),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_field(resnet, kwargs, message):
    with pytest.raises(InputError, match=message):
        to_embedding_model(resnet, **{"layer_name": "avgpool", **kwargs})


def test_describe_layers_bad_input_size_names_field(resnet):
    with pytest.raises(InputError, match="input_size/input_dtype: .*'conv1'"):
        describe_layers(resnet, (64, 64))
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in resnet.modules())


def test_tailored_models_save_and_load_without_pickle(tmp_path):
    """A model cut from a registered builder carries a spec, so save/load rebuilds it exactly."""
    from executors.models import build_model, load, save

    base = build_model({'builder': 'torchvision', 'kwargs': {'arch': 'resnet18'}}, seed=0)
    tailored = to_embedding_model(base, layer_name='avgpool', freeze=['conv1', 'layer1'], projection_head=32,
                                  input_size=(3, 64, 64))
    save(tailored, tmp_path / 'm')
    loaded, config = load(tmp_path / 'm')
    assert config['model']['builder'] == 'embedding_model'
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(tailored.eval()(x), loaded(x), atol=1e-6)
    assert not loaded.base.conv1.weight.requires_grad and loaded.base.layer4[0].conv1.weight.requires_grad


def test_torchvision_builder_reads_local_weights_only(tmp_path):
    from safetensors.torch import save_file

    from executors.errors import InputError
    from executors.models import build_model

    source = build_model({'builder': 'torchvision', 'kwargs': {'arch': 'resnet18'}}, seed=1)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / 'w.safetensors'))
    torch.save(source.state_dict(), tmp_path / 'w.pth')
    for name in ('w.safetensors', 'w.pth'):
        model = build_model({'builder': 'torchvision', 'kwargs': {'arch': 'resnet18', 'weights_path': str(tmp_path / name)}})
        assert torch.equal(model.conv1.weight, source.conv1.weight)
    with pytest.raises(InputError, match='weights_path'):
        build_model({'builder': 'torchvision', 'kwargs': {'arch': 'resnet18', 'weights_path': str(tmp_path / 'no')}})
    with pytest.raises(InputError, match='arch'):
        build_model({'builder': 'torchvision', 'kwargs': {'arch': 'not_a_net'}})
