"""Images: decoding (file/bytes/pixels -> RGB uint8 pixels [H, W, 3]) and the model input transform
(resize, centre crop, normalise, HWC -> CHW; train-time flip, random resized crop, colour jitter).

Decoded documents store the pixels themselves (``doc.tensor``, uint8 [H, W, 3]; ``uri`` is kept as a
reference), so the Indexer can re-embed them after a swap without reading the data root again and
without depending on the files staying in place; ``max_side`` bounds what is stored.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from executors.data.decoding import Decoder
from executors.data.paths import resolve_in_root
from executors.data.specs import boolean, checked_int, number, number_list, optional_int, optional_root, ordered_pair
from executors.data.transforms import InputTransform
from executors.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- decoding

def load_image(source: str | os.PathLike | bytes | np.ndarray | Image.Image) -> Image.Image:
    """RGB PIL image from a local file path, encoded bytes (any format Pillow reads), a PIL image, or
    pixels [H,W] / [H,W,1|3|4] as uint8 (or integers in 0..255, or floats in [0,1], scaled by 255).
    For in-process use: paths are not confined to a root (documents go through :class:`ImageDecoder`)."""
    if isinstance(source, Image.Image):
        return source.convert('RGB')
    if isinstance(source, (bytes, bytearray)):
        return _decode_image(bytes(source), 'blob', f'{len(source)} bytes')
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f'uri: file {str(source)!r} not found')
        return _decode_image(path.read_bytes(), 'uri', repr(str(source)))
    return _image_from_pixels(np.asarray(source))


@dataclass
class ImageDecoder(Decoder):
    """tensor (pixels) | blob (encoded bytes) | uri (file inside ``root``) -> RGB uint8 [H, W, 3]; the
    first present of tensor, blob, uri is used. ``max_side``: images whose longer side exceeds it are
    shrunk (aspect kept, Lanczos) to bound what documents store; None keeps every pixel."""

    modality: ClassVar[str] = 'image'
    root: str | None = None
    max_side: int | None = None

    def __post_init__(self):
        self.root = optional_root(self.root)
        self.max_side = optional_int('max_side', self.max_side)

    def decode(self, fields):
        if fields.get('tensor') is not None:
            image = load_image(fields['tensor'])
        elif fields.get('blob') is not None:
            image = load_image(fields['blob'])
        elif fields.get('uri') is not None:
            image = _decode_image(resolve_in_root(fields['uri'], self.root).read_bytes(), 'uri', repr(fields['uri']))
        else:
            raise InputError('tensor/blob/uri: the document has no image; give pixels as tensor, '
                             'encoded bytes as blob or a file path inside root as uri')
        if self.max_side is not None and max(image.size) > self.max_side:
            scale = self.max_side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


def _decode_image(data: bytes, field: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f'{field}: cannot decode {what} as an image ({error}); give a PNG, JPEG or another '
                         'format Pillow reads') from error


def _image_from_pixels(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    well_shaped = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))
    if well_shaped and pixels.size and pixels.dtype != np.uint8:
        if np.issubdtype(pixels.dtype, np.integer) and pixels.min() >= 0 and pixels.max() <= 255:
            pixels = pixels.astype(np.uint8)
        elif np.issubdtype(pixels.dtype, np.floating) and np.isfinite(pixels).all() and 0 <= pixels.min() <= pixels.max() <= 1:
            pixels = np.round(pixels * 255).astype(np.uint8)
    if not well_shaped or pixels.dtype != np.uint8 or not pixels.size:
        raise InputError(f'tensor: expected image pixels of shape (H, W), (H, W, 3) or (H, W, 4) as uint8 '
                         f'or floats in [0, 1], got shape {pixels.shape} of {pixels.dtype}')
    return Image.fromarray(pixels).convert('RGB')


# ---------------------------------------------------------------- model input

def resize_and_crop(image: Image.Image, size: tuple[int, int], shorter_side: int | None = None) -> Image.Image:
    """Bilinear resize to size = (H, W); with ``shorter_side``, first resize so the shorter side is
    ``shorter_side`` (aspect kept), then cut the centred H×W window."""
    height, width = size
    if shorter_side is None:
        return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)
    scale = shorter_side / min(image.size)
    resized_width, resized_height = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (resized_width, resized_height) != image.size:
        image = image.resize((resized_width, resized_height), Image.Resampling.BILINEAR)
    left, top = (resized_width - width) // 2, (resized_height - height) // 2
    return image.crop((left, top, left + width, top + height))


def preprocess_image(image: Any, size: tuple[int, int] = (224, 224), mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, channel_axis: int = 0,
                     shorter_side: int | None = None) -> np.ndarray:
    """Model input of an image: x = (pixel / 255 - mean) / std per RGB channel, after
    ``resize_and_crop(size, shorter_side)``. Returns float32 [3,H,W] for channel_axis=0, [H,W,3] for
    channel_axis=-1. ``image`` is anything ``load_image`` takes."""
    rgb = resize_and_crop(load_image(image), size, shorter_side)
    scaled = np.asarray(rgb, dtype=np.float32) / 255.0
    normalised = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(normalised, -1, channel_axis))


def augment_image(tensor: np.ndarray, rng: np.random.Generator, flip: bool = True,
                  crop_scale: tuple[float, float] = (0.8, 1.0), color_jitter: float = 0.1) -> np.ndarray:
    """Random flip, resized crop and colour jitter of a channel-first image [C,H,W]; float32, same shape.

    - flip: x[:, :, ::-1] with probability 1/2.
    - crop: a window of area fraction a ~ U(crop_scale) with the input's aspect ratio (sides sqrt(a)·H,
      sqrt(a)·W) at a uniform position, resized back to H×W (bilinear); crop_scale=(1, 1) disables it.
    - colour jitter j: per channel x_c <- m_c + g_c·(x_c - m_c) + o_c·s_c, with m_c, s_c the channel's
      mean and std, g_c ~ U(1-j, 1+j), o_c ~ U(-j, j). This commutes with per-channel normalisation,
      so it acts alike on pixels and on ``preprocess_image`` output; j=0 disables it.

    Deterministic for a given rng state.
    """
    image = np.asarray(tensor, dtype=np.float32)
    if image.ndim != 3:
        raise InputError(f'tensor: expected a channel-first image [C, H, W], got shape {image.shape}')
    channels, height, width = image.shape
    if flip and rng.random() < 0.5:
        image = image[:, :, ::-1]
    side_fraction = math.sqrt(rng.uniform(*crop_scale))
    crop_height = max(1, round(side_fraction * height))
    crop_width = max(1, round(side_fraction * width))
    if (crop_height, crop_width) != (height, width):
        top = rng.integers(0, height - crop_height + 1)
        left = rng.integers(0, width - crop_width + 1)
        window = np.ascontiguousarray(image[:, top:top + crop_height, left:left + crop_width])
        image = F.interpolate(torch.from_numpy(window)[None], size=(height, width), mode='bilinear',
                              align_corners=False)[0].numpy()
    if color_jitter > 0:
        channel_mean = image.mean(axis=(1, 2), keepdims=True)
        channel_std = image.std(axis=(1, 2), keepdims=True)
        gain = rng.uniform(1 - color_jitter, 1 + color_jitter, size=(channels, 1, 1))
        offset = rng.uniform(-color_jitter, color_jitter, size=(channels, 1, 1))
        image = channel_mean + gain * (image - channel_mean) + offset * channel_std
    return np.ascontiguousarray(image, dtype=np.float32)


@dataclass
class ImageTransform(InputTransform):
    """Pixels (uint8 [H, W, 3], as decoded; also [H, W], floats in [0, 1], a PIL image or encoded bytes)
    -> ``preprocess_image`` float32 [3, H, W] (or [H, W, 3] with channel_axis=-1), then with augment
    ``augment_image`` (flip, crop_scale, color_jitter). ``size`` = (H, W); ``shorter_side``: resize the
    shorter side to it and centre-crop ``size`` (None: resize straight to ``size``)."""

    modality: ClassVar[str] = 'image'
    size: tuple[int, int] = (224, 224)
    shorter_side: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_axis: int = 0
    flip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    color_jitter: float = 0.1

    def __post_init__(self):
        self.size = tuple(checked_int('size', side) for side in number_list('size', self.size, 2))
        self.shorter_side = optional_int('shorter_side', self.shorter_side)
        if self.shorter_side is not None and max(self.size) > self.shorter_side:
            raise InputError(f'shorter_side: {self.shorter_side} is smaller than the crop size {list(self.size)}; '
                             'set shorter_side >= both sides of size, or None')
        self.mean = tuple(number('mean', value) for value in number_list('mean', self.mean, 3))
        self.std = tuple(number('std', value, low=0, low_inclusive=False) for value in number_list('std', self.std, 3))
        if self.channel_axis not in (0, -1) or isinstance(self.channel_axis, bool):
            raise InputError(f'channel_axis: expected 0 (channels first) or -1 (channels last), got {self.channel_axis!r}')
        self.flip = boolean('flip', self.flip)
        self.crop_scale = ordered_pair('crop_scale', self.crop_scale, low=0, high=1)
        self.color_jitter = number('color_jitter', self.color_jitter, low=0, high=1, high_inclusive=False)

    def apply(self, value, augment=False, rng=None):
        if isinstance(value, (str, os.PathLike)):
            raise InputError(f'tensor: got the file path {str(value)!r}, but the input transform takes decoded '
                             'pixels; decode images first (the Preprocessor, or ImageDecoder(root=...).decode)')
        image = preprocess_image(value, self.size, self.mean, self.std, channel_axis=0, shorter_side=self.shorter_side)
        if augment:
            image = augment_image(image, rng if rng is not None else np.random.default_rng(),
                                  self.flip, self.crop_scale, self.color_jitter)
        return np.ascontiguousarray(np.moveaxis(image, 0, self.channel_axis))
