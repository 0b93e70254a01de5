"""Document content -> model input arrays (float32 unless stated).

Documents are plain dicts of fields: ``tensor`` (array), ``blob`` (encoded bytes), ``uri`` (a file path
resolved inside a ``root`` directory; paths escaping it are refused) and ``text``. One modality's
pipeline is a ``Preprocessing`` dataclass whose fields are its settings; ``build_preprocessing(spec)``
makes one from a JSON-able spec like ``{'modality': 'mesh', 'num_points': 1024, 'root': '/data'}`` and
``to_spec()`` writes it back for storage with a model. Errors are InputErrors naming the field.
"""

from __future__ import annotations

import io
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from executors.errors import InputError
from executors.data.labels import about_doc
from executors.data.specs import build_from_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MESH_FILE_TYPES = ('off', 'obj', 'stl', 'ply')
_MESH_FORMATS_TEXT = ', '.join(f'.{file_type}' for file_type in MESH_FILE_TYPES)


# ---------------------------------------------------------------- paths

def resolve_uri(uri: Any, root: str | os.PathLike) -> Path:
    """Absolute path of an existing file named by ``uri`` inside ``root``.

    Relative uris are taken from root; absolute paths and 'file://' uris must lie inside it. The
    check runs on the resolved path (symlinks followed), so '..' or links cannot escape root.
    """
    if not isinstance(uri, str) or not uri:
        raise InputError(f'uri: expected a non-empty file path, got {uri!r}')
    parts = urlsplit(uri)
    if parts.scheme == 'file':
        relative_or_absolute = unquote(parts.path)
    elif '://' in uri:
        raise InputError(f'uri: scheme {parts.scheme!r} of {uri!r} is not supported; give a file path inside the root directory')
    else:
        relative_or_absolute = uri
    root_path = Path(root).resolve()
    try:
        path = (root_path / relative_or_absolute).resolve()
        is_file = path.is_file()
    except (OSError, ValueError) as error:  # e.g. a NUL byte or a name too long
        raise InputError(f'uri: {uri!r} is not a usable file path ({error})') from error
    if not path.is_relative_to(root_path):
        raise InputError(f'uri: {uri!r} points outside the root directory; give a path inside it')
    if not is_file:
        raise InputError(f'uri: file {uri!r} not found in the root directory')
    return path


# ---------------------------------------------------------------- images

def load_image(source: str | os.PathLike | bytes | np.ndarray | Image.Image) -> Image.Image:
    """RGB PIL image from a file path, encoded bytes (any format Pillow reads), a PIL image, or
    pixels [H,W] / [H,W,1|3|4] as uint8 (or integers in 0..255, or floats in [0,1], scaled by 255)."""
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


def preprocess_image(image: Any, size: tuple[int, int] = (224, 224), mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, channel_axis: int = 0) -> np.ndarray:
    """Model input of an image: x = (pixel / 255 - mean) / std per RGB channel, after a bilinear resize
    to size = (H, W). Returns float32 [3,H,W] for channel_axis=0, [H,W,3] for channel_axis=-1.
    ``image`` is anything ``load_image`` takes."""
    rgb = load_image(image)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
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


# ---------------------------------------------------------------- meshes

def load_mesh(source: str | os.PathLike | bytes, file_type: str | None = None) -> trimesh.Trimesh:
    """Triangle mesh from a file path or bytes in one of MESH_FILE_TYPES (trimesh, force='mesh', so a
    multi-part file becomes one mesh). file_type defaults to the path's extension; bytes need it."""
    if isinstance(source, (bytes, bytearray)):
        return _parse_mesh(bytes(source), file_type, 'blob', f'{len(source)} bytes')
    path = Path(source)
    if not path.is_file():
        raise InputError(f'uri: file {str(source)!r} not found')
    return _parse_mesh(path.read_bytes(), file_type or path.suffix[1:], 'uri', repr(str(source)))


def sample_point_cloud(mesh: trimesh.Trimesh, num_points: int = 1024,
                       seed: int | np.random.Generator | None = None) -> np.ndarray:
    """float32 [num_points, 3] points drawn uniformly by area over the mesh surface
    (trimesh.sample.sample_surface); the same int seed gives the same points."""
    if not mesh.area > 0:
        raise InputError('mesh: the surface has zero area, so no points can be sampled; give a mesh with proper triangles')
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points, dtype=np.float32)


def normalize_point_cloud(points: np.ndarray) -> np.ndarray:
    """(p - c) / max_i ||p_i - c|| with c the centroid (mean point): [N,3] -> float32 [N,3], centred, max norm 1."""
    cloud = _point_cloud_array(points)
    centred = cloud - cloud.mean(axis=0)
    radius = np.linalg.norm(centred, axis=1).max()
    if radius == 0:
        raise InputError('tensor: all points of the point cloud coincide, so it cannot be scaled to unit size')
    return (centred / radius).astype(np.float32)


def augment_point_cloud(points: np.ndarray, rng: np.random.Generator, rotate_z: bool = True,
                        jitter_sigma: float = 0.01, jitter_clip: float = 0.05,
                        scale_range: tuple[float, float] = (0.8, 1.25)) -> np.ndarray:
    """p' = s·R_z(θ)·p + e for each point of [N,3]; float32 [N,3] out, deterministic for a given rng state.

    θ ~ U(0, 2π) (R_z turns x, y about the z axis; identity when not rotate_z), s ~ U(scale_range) shared
    by all points, e ~ N(0, jitter_sigma²) per coordinate clipped to ±jitter_clip.
    """
    cloud = _point_cloud_array(points)
    if rotate_z:
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        cloud = cloud @ np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])  # rows p -> (R_z p)^T
    cloud = cloud * rng.uniform(*scale_range)
    if jitter_sigma > 0:
        cloud = cloud + np.clip(rng.normal(0, jitter_sigma, size=cloud.shape), -jitter_clip, jitter_clip)
    return cloud.astype(np.float32)


def _parse_mesh(data: bytes, file_type: str | None, field: str, what: str) -> trimesh.Trimesh:
    # Parsed from bytes, never from a path: an .obj's material references could otherwise read files outside root.
    file_type = (file_type or '').lower().lstrip('.')
    if file_type not in MESH_FILE_TYPES:
        raise InputError(f'{field}: mesh format {file_type or "(none)"!r} of {what} is not supported; '
                         f'supported formats: {_MESH_FORMATS_TEXT}')
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, force='mesh')
    except Exception as error:  # trimesh's parsers raise many types (ValueError, IndexError, KeyError, ...) on bad files
        raise InputError(f'{field}: cannot load {what} as a .{file_type} mesh ({type(error).__name__}: {error}); '
                         f'supported formats: {_MESH_FORMATS_TEXT}') from error
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(f'{field}: {what} holds no triangles as a .{file_type} mesh; '
                         f'give a valid mesh file (supported formats: {_MESH_FORMATS_TEXT})')
    return mesh


def _point_cloud_array(points: Any) -> np.ndarray:
    cloud = np.asarray(points, dtype=np.float64)
    if cloud.ndim != 2 or cloud.shape[1] != 3 or cloud.shape[0] == 0:
        raise InputError(f'tensor: expected a point cloud of shape (N, 3), got shape {cloud.shape}')
    if not np.isfinite(cloud).all():
        raise InputError('tensor: the point cloud holds NaN or infinite coordinates')
    return cloud


# ---------------------------------------------------------------- text

class Tokenizer:
    """A transformers tokenizer loaded from a local directory (``AutoTokenizer``; never downloads)."""

    def __init__(self, path: str | os.PathLike):
        from transformers import AutoTokenizer  # imported here: slow, and only text pipelines need it

        if not Path(path).is_dir():
            raise InputError(f'tokenizer_path: directory {str(path)!r} not found; give a local directory with tokenizer files')
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise InputError(f'tokenizer_path: cannot load a tokenizer from {str(path)!r} ({error}); '
                             'give a directory with tokenizer files such as tokenizer.json or vocab.txt') from error
        self.path = str(path)

    def tokenize(self, texts: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
        """{'input_ids', 'attention_mask'}: int64 [B, L], L = the longest text's token count (special
        tokens included) capped at max_length; longer texts are truncated, shorter ones padded with mask 0."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f'text: expected a list of strings, got {type(texts).__name__}')
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f'text: expected a string, got {type(text).__name__} at position {position}')
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors='np')
        return {key: np.asarray(encoded[key], dtype=np.int64) for key in ('input_ids', 'attention_mask')}


# ---------------------------------------------------------------- vectors

def preprocess_vector(tensor: Any, dim: int | None = None) -> np.ndarray:
    """float32 [D] of a 1-D numeric vector (list, ndarray or CPU torch tensor); checks D == dim when given, and finiteness."""
    if tensor is None:
        raise InputError('tensor: missing; give each document a 1-D vector')
    try:
        vector = np.asarray(tensor, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f'tensor: expected a vector of numbers, got {type(tensor).__name__} ({error})') from error
    if vector.ndim != 1 or vector.size == 0 or (dim is not None and vector.shape[0] != dim):
        expected = 'a non-empty 1-D vector' if dim is None else f'a 1-D vector of length {dim}'
        raise InputError(f'tensor: expected {expected}, got shape {vector.shape}')
    if not np.isfinite(vector).all():
        bad_positions = np.flatnonzero(~np.isfinite(vector))[:5].tolist()
        raise InputError(f'tensor: NaN or infinite values at positions {bad_positions}; give finite numbers')
    return vector


# ---------------------------------------------------------------- pipelines

@dataclass
class Preprocessing(ABC):
    """One modality's pipeline: plain document fields -> model input. Subclass fields are the spec settings."""

    modality: ClassVar[str]

    @abstractmethod
    def apply(self, fields: Mapping[str, Any], augment: bool = False,
              rng: np.random.Generator | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """Model input of one document; ``augment`` adds random training augmentation drawn from ``rng``
        (a fresh unseeded generator when None)."""

    def apply_batch(self, docs_fields: Sequence[Mapping[str, Any]], augment: bool = False,
                    rng: np.random.Generator | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """``apply`` on each document, stacked to [B, ...]; errors name the document (docs[i], id)."""
        if not docs_fields:
            raise InputError('docs: expected at least one document')
        if augment and rng is None:
            rng = np.random.default_rng()  # one generator for the whole batch
        inputs = []
        for index, doc_fields in enumerate(docs_fields):
            with about_doc(index, doc_fields):
                inputs.append(self.apply(doc_fields, augment, rng))
                if inputs[-1].shape != inputs[0].shape:
                    raise InputError(f'tensor: input shape {inputs[-1].shape} differs from the first document\'s '
                                     f'{inputs[0].shape}; give documents of one shape (for vectors set \'dim\')')
        return np.stack(inputs)

    def to_spec(self) -> dict:
        """JSON-able spec that ``build_preprocessing`` turns back into an equal pipeline."""
        return {'modality': self.modality,
                **{f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}}


@dataclass
class VectorPreprocessing(Preprocessing):
    """tensor -> float32 [dim] (``preprocess_vector``); no augmentation."""

    modality: ClassVar[str] = 'vector'
    dim: int | None = None

    def __post_init__(self):
        self.dim = _optional_int('dim', self.dim)

    def apply(self, fields, augment=False, rng=None):
        return preprocess_vector(fields.get('tensor'), self.dim)


@dataclass
class ImagePreprocessing(Preprocessing):
    """tensor (pixels) | blob | uri -> ``preprocess_image`` float32 [3,H,W] (or [H,W,3]), then with
    augment ``augment_image``. The first present of tensor, blob, uri is used."""

    modality: ClassVar[str] = 'image'
    root: str | None = None
    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_axis: int = 0
    flip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    color_jitter: float = 0.1

    def __post_init__(self):
        self.root = _optional_root(self.root)
        self.size = tuple(_checked_int('size', side) for side in _sequence('size', self.size, 2))
        self.mean = tuple(_number('mean', value) for value in _sequence('mean', self.mean, 3))
        self.std = tuple(_number('std', value, low=0, low_inclusive=False) for value in _sequence('std', self.std, 3))
        if self.channel_axis not in (0, -1) or isinstance(self.channel_axis, bool):
            raise InputError(f'channel_axis: expected 0 (channels first) or -1 (channels last), got {self.channel_axis!r}')
        self.flip = _bool('flip', self.flip)
        self.crop_scale = _ordered_pair('crop_scale', self.crop_scale, low=0, high=1)
        self.color_jitter = _number('color_jitter', self.color_jitter, low=0, high=1, high_inclusive=False)

    def apply(self, fields, augment=False, rng=None):
        if fields.get('tensor') is not None:
            source = fields['tensor']
        elif fields.get('blob') is not None:
            source = fields['blob']
        elif fields.get('uri') is not None:
            source = _decode_image(_resolve_in_root(fields['uri'], self.root).read_bytes(), 'uri', repr(fields['uri']))
        else:
            raise InputError('tensor/blob/uri: the document has no image; give pixels as tensor, '
                             'encoded bytes as blob or a file path inside root as uri')
        image = preprocess_image(source, self.size, self.mean, self.std, channel_axis=0)
        if augment:
            if rng is None:
                rng = np.random.default_rng()
            image = augment_image(image, rng, self.flip, self.crop_scale, self.color_jitter)
        return np.ascontiguousarray(np.moveaxis(image, 0, self.channel_axis))


@dataclass
class MeshPreprocessing(Preprocessing):
    """tensor (points [num_points, 3]) | blob | uri (mesh file) -> float32 [num_points, 3] point cloud,
    normalised (``normalize_point_cloud``), then with augment ``augment_point_cloud``.

    Meshes are sampled with ``seed`` when not augmenting (same doc -> same points at inference) and
    with ``rng`` when augmenting. ``file_type`` names the format of blobs; uris use their extension.
    """

    modality: ClassVar[str] = 'mesh'
    root: str | None = None
    num_points: int = 1024
    seed: int = 0
    file_type: str | None = None
    rotate_z: bool = True
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    scale_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self):
        self.root = _optional_root(self.root)
        self.num_points = _checked_int('num_points', self.num_points)
        self.seed = _checked_int('seed', self.seed, minimum=0)
        if self.file_type is not None and self.file_type not in MESH_FILE_TYPES:
            raise InputError(f"file_type: expected one of {', '.join(MESH_FILE_TYPES)} or None, got {self.file_type!r}")
        self.rotate_z = _bool('rotate_z', self.rotate_z)
        self.jitter_sigma = _number('jitter_sigma', self.jitter_sigma, low=0)
        self.jitter_clip = _number('jitter_clip', self.jitter_clip, low=0)
        self.scale_range = _ordered_pair('scale_range', self.scale_range, low=0)

    def apply(self, fields, augment=False, rng=None):
        if augment and rng is None:
            rng = np.random.default_rng()
        if fields.get('tensor') is not None:
            points = _point_cloud_array(fields['tensor'])
            if points.shape[0] != self.num_points:
                raise InputError(f'tensor: expected a point cloud of shape ({self.num_points}, 3), got shape {points.shape}')
        else:
            if fields.get('blob') is not None:
                if self.file_type is None:
                    raise InputError("blob: mesh bytes need a format; set 'file_type' in the preprocessing spec "
                                     f"(one of {', '.join(MESH_FILE_TYPES)})")
                mesh = load_mesh(fields['blob'], self.file_type)
            elif fields.get('uri') is not None:
                uri = fields['uri']
                path = _resolve_in_root(uri, self.root)
                mesh = _parse_mesh(path.read_bytes(), path.suffix, 'uri', repr(uri))
            else:
                raise InputError('tensor/blob/uri: the document has no mesh; give a point cloud as tensor, '
                                 'mesh bytes as blob or a mesh file path inside root as uri')
            points = sample_point_cloud(mesh, self.num_points, seed=rng if augment else self.seed)
        points = normalize_point_cloud(points)
        if augment:
            points = augment_point_cloud(points, rng, self.rotate_z, self.jitter_sigma, self.jitter_clip, self.scale_range)
        return points


@dataclass
class TextPreprocessing(Preprocessing):
    """text -> {'input_ids', 'attention_mask'} int64 [L] (``apply``) or [B, L] padded to the batch's
    longest (``apply_batch``), L <= max_length; no augmentation. The tokenizer loads on first use."""

    modality: ClassVar[str] = 'text'
    tokenizer_path: str
    max_length: int = 128

    def __post_init__(self):
        if not isinstance(self.tokenizer_path, (str, os.PathLike)) or not str(self.tokenizer_path):
            raise InputError(f'tokenizer_path: expected a local directory path, got {self.tokenizer_path!r}')
        self.tokenizer_path = str(self.tokenizer_path)
        self.max_length = _checked_int('max_length', self.max_length, minimum=2)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.tokenizer_path)

    def apply(self, fields, augment=False, rng=None):
        tokens = self.tokenizer.tokenize([_text_of(fields)], self.max_length)
        return {key: ids[0] for key, ids in tokens.items()}

    def apply_batch(self, docs_fields, augment=False, rng=None):
        if not docs_fields:
            raise InputError('docs: expected at least one document')
        texts = []
        for index, doc_fields in enumerate(docs_fields):
            with about_doc(index, doc_fields):
                texts.append(_text_of(doc_fields))
        return self.tokenizer.tokenize(texts, self.max_length)


MODALITIES: dict[str, type[Preprocessing]] = {
    pipeline.modality: pipeline
    for pipeline in (VectorPreprocessing, ImagePreprocessing, MeshPreprocessing, TextPreprocessing)}


def build_preprocessing(spec: Mapping[str, Any]) -> Preprocessing:
    """A pipeline from its spec: {'modality': <one of MODALITIES>, **settings}; settings are the class's fields."""
    return build_from_spec(spec, 'modality', MODALITIES, 'preprocessing', 'modality',
                           "{'modality': 'image', 'size': [224, 224]}")


def _resolve_in_root(uri: Any, root: str | None) -> Path:
    if root is None:
        raise InputError("uri: file paths are refused because no root directory is configured; "
                         "set 'root' in the preprocessing spec to the directory holding the files")
    return resolve_uri(uri, root)


def _text_of(fields: Mapping[str, Any]) -> str:
    text = fields.get('text')
    if not isinstance(text, str):
        raise InputError(f'text: expected a string, got {type(text).__name__}; give each document a text')
    return text


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _optional_root(root: Any) -> str | None:
    if root is not None and (not isinstance(root, (str, os.PathLike)) or not str(root)):
        raise InputError(f'root: expected a directory path or None, got {root!r}')
    return None if root is None else str(root)


def _sequence(setting: str, value: Any, length: int) -> Sequence:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != length:
        raise InputError(f'{setting}: expected a list of {length} numbers, got {value!r}')
    return value


def _bool(setting: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f'{setting}: expected true or false, got {value!r}')
    return bool(value)


def _checked_int(setting: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f'{setting}: expected an integer >= {minimum}, got {value!r}')
    return int(value)


def _optional_int(setting: str, value: Any) -> int | None:
    return None if value is None else _checked_int(setting, value)


def _number(setting: str, value: Any, low: float | None = None, high: float | None = None,
            low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    is_number = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    above_low = low is None or (is_number and (value >= low if low_inclusive else value > low))
    below_high = high is None or (is_number and (value <= high if high_inclusive else value < high))
    if not (is_number and above_low and below_high):
        interval = ('(-inf' if low is None else ('[' if low_inclusive else '(') + f'{low:g}') + ', ' + \
                   ('inf)' if high is None else f'{high:g}' + (']' if high_inclusive else ')'))
        raise InputError(f'{setting}: expected a number in {interval}, got {value!r}')
    return float(value)


def _ordered_pair(setting: str, value: Any, low: float, high: float | None = None) -> tuple[float, float]:
    first, second = (_number(setting, item, low, high, low_inclusive=False) for item in _sequence(setting, value, 2))
    if first > second:
        raise InputError(f'{setting}: expected [min, max] with min <= max, got {value!r}')
    return first, second
