"""Meshes: decoding (mesh file/bytes -> a point cloud float32 [N, 3] sampled on the surface) and the
model input transform (subsample to num_points, centre, scale to the unit sphere; train-time rotation
about the up (z) axis, scaling and jitter)."""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import trimesh

from executors.data.decoding import Decoder
from executors.data.paths import resolve_in_root
from executors.data.specs import boolean, checked_int, number, optional_root, ordered_pair
from executors.data.transforms import InputTransform
from executors.errors import InputError

MESH_FILE_TYPES = ('off', 'obj', 'stl', 'ply')
_MESH_FORMATS_TEXT = ', '.join(f'.{file_type}' for file_type in MESH_FILE_TYPES)


# ---------------------------------------------------------------- decoding

def load_mesh(source: str | os.PathLike | bytes, file_type: str | None = None) -> trimesh.Trimesh:
    """Triangle mesh from a local file path or bytes in one of MESH_FILE_TYPES (trimesh, force='mesh', so a
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


def check_point_cloud(points: Any) -> np.ndarray:
    """float64 [N, 3] of N >= 1 finite points; InputError naming ``tensor`` otherwise."""
    if isinstance(points, (str, os.PathLike, bytes)):
        raise InputError(f'tensor: expected a point cloud of shape (N, 3), got {type(points).__name__}; '
                         'decode meshes first (the Preprocessor, or MeshDecoder(root=...).decode)')
    try:
        cloud = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f'tensor: expected a point cloud of numbers, got {type(points).__name__} ({error})') from error
    if cloud.ndim != 2 or cloud.shape[1] != 3 or cloud.shape[0] == 0:
        raise InputError(f'tensor: expected a point cloud of shape (N, 3), got shape {cloud.shape}')
    if not np.isfinite(cloud).all():
        raise InputError('tensor: the point cloud holds NaN or infinite coordinates')
    return cloud


@dataclass
class MeshDecoder(Decoder):
    """blob | uri (mesh file inside ``root``) -> float32 [num_points, 3] surface points, sampled with
    ``seed`` (the same file gives the same points); a tensor (a point cloud [N, 3]) is checked and kept.
    ``file_type`` names the format of blobs; uris use their extension. Coordinates are not normalised:
    centring and scaling belong to the model's input transform."""

    modality: ClassVar[str] = 'mesh'
    root: str | None = None
    num_points: int = 2048
    seed: int = 0
    file_type: str | None = None

    def __post_init__(self):
        self.root = optional_root(self.root)
        self.num_points = checked_int('num_points', self.num_points)
        self.seed = checked_int('seed', self.seed, minimum=0)
        if self.file_type is not None and self.file_type not in MESH_FILE_TYPES:
            raise InputError(f"file_type: expected one of {', '.join(MESH_FILE_TYPES)} or None, got {self.file_type!r}")

    def decode(self, fields):
        if fields.get('tensor') is not None:
            return check_point_cloud(fields['tensor']).astype(np.float32)
        if fields.get('blob') is not None:
            if self.file_type is None:
                raise InputError("blob: mesh bytes need a format; set 'file_type' in the decoding spec "
                                 f"(one of {', '.join(MESH_FILE_TYPES)})")
            mesh = load_mesh(fields['blob'], self.file_type)
        elif fields.get('uri') is not None:
            uri = fields['uri']
            path = resolve_in_root(uri, self.root)
            mesh = _parse_mesh(path.read_bytes(), path.suffix, 'uri', repr(uri))
        else:
            raise InputError('tensor/blob/uri: the document has no mesh; give a point cloud as tensor, '
                             'mesh bytes as blob or a mesh file path inside root as uri')
        return sample_point_cloud(mesh, self.num_points, seed=self.seed)


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


# ---------------------------------------------------------------- model input

def normalize_point_cloud(points: np.ndarray) -> np.ndarray:
    """(p - c) / max_i ||p_i - c|| with c the centroid (mean point): [N,3] -> float32 [N,3], centred, max norm 1."""
    cloud = check_point_cloud(points)
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
    cloud = check_point_cloud(points)
    if rotate_z:
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        cloud = cloud @ np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])  # rows p -> (R_z p)^T
    cloud = cloud * rng.uniform(*scale_range)
    if jitter_sigma > 0:
        cloud = cloud + np.clip(rng.normal(0, jitter_sigma, size=cloud.shape), -jitter_clip, jitter_clip)
    return cloud.astype(np.float32)


@dataclass
class MeshTransform(InputTransform):
    """Point cloud [M, 3] (as decoded, M >= num_points) -> float32 [num_points, 3]: a subset of
    num_points points (drawn with ``seed`` at inference, so the same cloud gives the same input, and
    from the training rng when augmenting), ``normalize_point_cloud``, then with augment
    ``augment_point_cloud`` (rotate_z, scale_range, jitter_sigma, jitter_clip)."""

    modality: ClassVar[str] = 'mesh'
    num_points: int = 1024
    seed: int = 0
    rotate_z: bool = True
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    scale_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self):
        self.num_points = checked_int('num_points', self.num_points)
        self.seed = checked_int('seed', self.seed, minimum=0)
        self.rotate_z = boolean('rotate_z', self.rotate_z)
        self.jitter_sigma = number('jitter_sigma', self.jitter_sigma, low=0)
        self.jitter_clip = number('jitter_clip', self.jitter_clip, low=0)
        self.scale_range = ordered_pair('scale_range', self.scale_range, low=0)

    def apply(self, value, augment=False, rng=None):
        cloud = check_point_cloud(value)
        if cloud.shape[0] < self.num_points:
            raise InputError(f'tensor: the point cloud has {cloud.shape[0]} points, fewer than the model\'s '
                             f'num_points={self.num_points}; decode meshes with at least {self.num_points} points')
        if augment and rng is None:
            rng = np.random.default_rng()
        if cloud.shape[0] > self.num_points:
            chooser = rng if augment else np.random.default_rng(self.seed)
            cloud = cloud[np.sort(chooser.choice(cloud.shape[0], self.num_points, replace=False))]
        points = normalize_point_cloud(cloud)
        if augment:
            points = augment_point_cloud(points, rng, self.rotate_z, self.jitter_sigma, self.jitter_clip, self.scale_range)
        return points
