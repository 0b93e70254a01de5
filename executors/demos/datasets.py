"""Data sets for the image and mesh scenarios, generated from what installs offline.

* :func:`make_mesh_dataset`: a ModelNet-style tree ``<root>/<class>/train|test/<class>_<nnnn>.off`` of
  objects assembled from trimesh primitives (a chair is a seat, 3-5 legs and a back of 1-4 slats; a
  lamp a base, a pole and a shade; ...), with random proportions, part counts and pose (a turn about
  the up axis z, a small tilt, a random size). ``MESH_CLASSES`` lists the 14 classes.
* :func:`make_look_alike_pairs`: a Totally-Looks-Like-style tree ``<root>/left/<nnnnn>.jpg`` and
  ``<root>/right/<nnnnn>.jpg`` built from real photographs (the two photos scikit-learn ships and
  the colour photos of scikit-image): each pair shows one region of a photo, cut twice with a
  different window (shifted and rescaled), flip, rotation, hue, colour and blur, so the two sides look
  alike without being copies.

Both are read back with the loaders in :mod:`executors.data.layouts`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import trimesh

from executors.errors import InputError

# ---------------------------------------------------------------- meshes


def _box(rng, size, centre) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=size)
    mesh.apply_translation(centre)
    return mesh


def _cylinder(radius, height, centre, sections=16) -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    mesh.apply_translation(centre)
    return mesh


def _legs(rng, count, half_x, half_y, height, radius, z_bottom=0.0) -> List[trimesh.Trimesh]:
    """``count`` legs under a rectangle (4: corners; 3 or 5+: evenly on an ellipse)."""
    if count == 4:
        spots = [(sx * half_x, sy * half_y) for sx in (-1, 1) for sy in (-1, 1)]
    else:
        start = rng.uniform(0, 2 * math.pi)
        spots = [(half_x * math.cos(start + 2 * math.pi * i / count), half_y * math.sin(start + 2 * math.pi * i / count))
                 for i in range(count)]
    return [_cylinder(radius, height, (x, y, z_bottom + height / 2), sections=8) for x, y in spots]


def _chair(rng):
    width, depth = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    leg_height, seat = rng.uniform(0.4, 0.5), rng.uniform(0.04, 0.08)
    parts = _legs(rng, int(rng.choice([3, 4, 4, 5])), width / 2 - 0.03, depth / 2 - 0.03, leg_height, 0.02)
    parts.append(_box(rng, (width, depth, seat), (0, 0, leg_height + seat / 2)))
    back_height = rng.uniform(0.35, 0.6)
    slats = int(rng.integers(1, 5))
    if slats == 1:
        parts.append(_box(rng, (width, 0.04, back_height), (0, depth / 2 - 0.02, leg_height + seat + back_height / 2)))
    else:
        for x in np.linspace(-width / 2 + 0.03, width / 2 - 0.03, slats):
            parts.append(_box(rng, (0.04, 0.04, back_height), (x, depth / 2 - 0.02, leg_height + seat + back_height / 2)))
        parts.append(_box(rng, (width, 0.04, 0.06), (0, depth / 2 - 0.02, leg_height + seat + back_height)))
    return parts


def _table(rng):
    width, depth = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0)
    height, top = rng.uniform(0.65, 0.8), rng.uniform(0.03, 0.06)
    if rng.random() < 0.3:  # round pedestal table
        radius = rng.uniform(0.4, 0.6)
        return [_cylinder(radius, top, (0, 0, height - top / 2), sections=32),
                _cylinder(0.05, height - top, (0, 0, (height - top) / 2)),
                _cylinder(rng.uniform(0.2, 0.3), 0.04, (0, 0, 0.02))]
    parts = _legs(rng, 4, width / 2 - 0.05, depth / 2 - 0.05, height - top, rng.uniform(0.02, 0.04))
    parts.append(_box(rng, (width, depth, top), (0, 0, height - top / 2)))
    return parts


def _lamp(rng):
    pole = rng.uniform(0.5, 1.5)
    base = rng.uniform(0.12, 0.25)
    shade_height, shade_radius = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.3)
    shade = trimesh.creation.cone(radius=shade_radius, height=shade_height, sections=24)
    if rng.random() < 0.5:  # shade opening downwards
        shade.apply_transform(trimesh.transformations.rotation_matrix(math.pi, (1, 0, 0)))
        shade.apply_translation((0, 0, pole + shade_height * 0.7))
    else:
        shade.apply_translation((0, 0, pole - shade_height * 0.2))
    return [_cylinder(base, 0.04, (0, 0, 0.02), sections=24), _cylinder(0.015, pole, (0, 0, pole / 2), sections=8), shade]


def _mug(rng):
    radius, height = rng.uniform(0.04, 0.06), rng.uniform(0.08, 0.13)
    wall = rng.uniform(0.004, 0.01)
    body = trimesh.creation.annulus(r_min=radius - wall, r_max=radius, height=height, sections=32)
    body.apply_translation((0, 0, height / 2))
    bottom = _cylinder(radius, wall, (0, 0, wall / 2), sections=32)
    handle = trimesh.creation.torus(major_radius=height * rng.uniform(0.25, 0.35), minor_radius=0.008,
                                    major_sections=24, minor_sections=8)
    handle.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    handle.apply_translation((radius, 0, height / 2))
    return [body, bottom, handle]


def _bottle(rng):
    radius, body = rng.uniform(0.03, 0.05), rng.uniform(0.15, 0.25)
    shoulder, neck_radius, neck = rng.uniform(0.03, 0.07), rng.uniform(0.01, 0.018), rng.uniform(0.04, 0.08)
    cone = trimesh.creation.cone(radius=radius, height=shoulder / 0.6, sections=24)
    cone.apply_translation((0, 0, body))
    parts = [_cylinder(radius, body, (0, 0, body / 2), sections=24), cone,
             _cylinder(neck_radius, neck, (0, 0, body + shoulder + neck / 2 - 0.01), sections=16)]
    if rng.random() < 0.7:  # cap
        parts.append(_cylinder(neck_radius * 1.25, 0.02, (0, 0, body + shoulder + neck), sections=16))
    return parts


def _bed(rng):
    length, width = rng.uniform(1.8, 2.2), rng.uniform(0.9, 1.8)
    frame = rng.uniform(0.25, 0.4)
    parts = _legs(rng, 4, width / 2 - 0.05, length / 2 - 0.05, frame, 0.03)
    parts.append(_box(rng, (width, length, 0.2), (0, 0, frame + 0.1)))
    parts.append(_box(rng, (width, 0.06, rng.uniform(0.5, 0.9)), (0, length / 2, frame + 0.25)))
    if rng.random() < 0.6:
        parts.append(_box(rng, (width, 0.06, rng.uniform(0.3, 0.5)), (0, -length / 2, frame + 0.15)))
    for x in np.linspace(-width / 4, width / 4, int(rng.integers(1, 3))) if width > 1.2 else [0.0]:
        parts.append(_box(rng, (min(0.5, width / 2.2), 0.3, 0.1), (x, length / 2 - 0.25, frame + 0.25)))
    return parts


def _sofa(rng):
    width, depth = rng.uniform(1.4, 2.4), rng.uniform(0.7, 1.0)
    seat = rng.uniform(0.35, 0.45)
    parts = [_box(rng, (width, depth, seat), (0, 0, seat / 2)),
             _box(rng, (width, 0.2, rng.uniform(0.35, 0.5)), (0, depth / 2 - 0.1, seat + 0.2))]
    arm = rng.uniform(0.12, 0.25)
    for side in (-1, 1):
        parts.append(_box(rng, (arm, depth, rng.uniform(0.15, 0.3)), (side * (width / 2 - arm / 2), 0, seat + 0.1)))
    for x in np.linspace(-width / 3, width / 3, int(rng.integers(2, 4))):  # cushions
        parts.append(_box(rng, (width / 3.5, depth * 0.6, 0.08), (x, -0.05, seat + 0.04)))
    return parts


def _bookshelf(rng):
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.0, 2.0)
    board = 0.03
    parts = [_box(rng, (board, depth, height), (side * (width / 2 - board / 2), 0, height / 2)) for side in (-1, 1)]
    parts.append(_box(rng, (width, board, height), (0, depth / 2 - board / 2, height / 2)))
    for z in np.linspace(board / 2, height - board / 2, int(rng.integers(3, 7))):
        parts.append(_box(rng, (width, depth, board), (0, 0, z)))
    return parts


def _airplane(rng):
    length, radius = rng.uniform(2.0, 3.0), rng.uniform(0.12, 0.2)
    fuselage = trimesh.creation.capsule(height=length, radius=radius, count=[16, 16])
    fuselage.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    span, chord = rng.uniform(1.8, 3.0), rng.uniform(0.3, 0.5)
    wing_y = rng.uniform(-0.2, 0.2)
    parts = [fuselage, _box(rng, (span, chord, 0.04), (0, wing_y, 0)),
             _box(rng, (span * 0.35, chord * 0.6, 0.03), (0, -length / 2, 0.05)),
             _box(rng, (0.03, chord * 0.6, rng.uniform(0.3, 0.5)), (0, -length / 2, 0.25))]
    for i in range(int(rng.choice([0, 2, 4]))):  # engines under the wings
        x = (-1) ** i * span * (0.2 + 0.12 * (i // 2))
        engine = trimesh.creation.cylinder(radius=0.07, height=0.35, sections=12)
        engine.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
        engine.apply_translation((x, wing_y + 0.1, -0.1))
        parts.append(engine)
    return parts


def _car(rng):
    length, width, body = rng.uniform(3.5, 4.8), rng.uniform(1.6, 1.9), rng.uniform(0.45, 0.65)
    wheel = rng.uniform(0.3, 0.38)
    parts = [_box(rng, (width, length, body), (0, 0, wheel + body / 2 - 0.1)),
             _box(rng, (width * 0.85, length * rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.55)),
                  (0, rng.uniform(-0.4, 0.2), wheel + body + 0.1))]
    for x in (-1, 1):
        for y in (-1, 1):
            tyre = trimesh.creation.cylinder(radius=wheel, height=0.2, sections=16)
            tyre.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (0, 1, 0)))
            tyre.apply_translation((x * width / 2, y * length * 0.32, wheel))
            parts.append(tyre)
    return parts


def _guitar(rng):
    lower, upper = rng.uniform(0.17, 0.22), rng.uniform(0.12, 0.16)
    thickness = rng.uniform(0.08, 0.11)
    parts = [_cylinder(lower, thickness, (0, 0, 0), sections=24),
             _cylinder(upper, thickness, (0, lower + upper * 0.7, 0), sections=24)]
    neck = rng.uniform(0.45, 0.6)
    neck_start = lower + upper * 1.5
    parts.append(_box(rng, (0.05, neck, 0.03), (0, neck_start + neck / 2, 0.02)))
    parts.append(_box(rng, (0.08, 0.18, 0.03), (0, neck_start + neck + 0.09, 0.02)))
    for i in range(int(rng.choice([4, 6]))):  # tuning pegs
        side = 1 if i % 2 else -1
        parts.append(_cylinder(0.008, 0.05, (side * 0.06, neck_start + neck + 0.03 + 0.05 * (i // 2), 0.02), sections=6))
    return parts


def _stool(rng):
    radius, height = rng.uniform(0.15, 0.22), rng.uniform(0.45, 0.75)
    parts = _legs(rng, int(rng.choice([3, 4])), radius * 0.8, radius * 0.8, height, 0.015)
    parts.append(_cylinder(radius, 0.04, (0, 0, height + 0.02), sections=24))
    if rng.random() < 0.6:  # foot ring
        ring = trimesh.creation.torus(major_radius=radius * 0.8, minor_radius=0.01, major_sections=24, minor_sections=6)
        ring.apply_translation((0, 0, height * rng.uniform(0.25, 0.4)))
        parts.append(ring)
    return parts


def _monitor(rng):
    width, height = rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.5)
    stand = rng.uniform(0.1, 0.25)
    return [_box(rng, (width, rng.uniform(0.02, 0.06), height), (0, 0, stand + height / 2)),
            _box(rng, (0.05, 0.03, stand + 0.05), (0, 0.03, stand / 2 + 0.025)),
            _box(rng, (rng.uniform(0.2, 0.3), rng.uniform(0.15, 0.22), 0.02), (0, 0.03, 0.01))]


def _vase(rng):
    height = rng.uniform(0.25, 0.5)
    heights = np.linspace(0, height, 9)
    bulge = rng.uniform(0.3, 0.7)
    radii = 0.06 + rng.uniform(0.03, 0.08) * np.sin(np.pi * (heights / height) ** bulge) + rng.uniform(0, 0.03)
    radii[-1] = radii[-2] * rng.uniform(1.0, 1.4)  # lip
    profile = np.c_[np.r_[0.0, radii, 0.0], np.r_[0.0, heights, height * 0.98]]
    return [trimesh.creation.revolve(profile, sections=32)]


def _cup(rng):
    radius_bottom, radius_top = rng.uniform(0.025, 0.035), rng.uniform(0.04, 0.055)
    height = rng.uniform(0.08, 0.12)
    profile = np.array([[0, 0], [radius_bottom, 0], [radius_top, height], [radius_top - 0.004, height],
                        [radius_bottom - 0.004, 0.006], [0, 0.006]])
    parts = [trimesh.creation.revolve(profile, sections=32)]
    if rng.random() < 0.5:  # saucer
        parts.append(_cylinder(radius_top * 1.8, 0.008, (0, 0, -0.004), sections=32))
    return parts


MESH_CLASSES: Dict[str, Callable[[np.random.Generator], List[trimesh.Trimesh]]] = {
    'airplane': _airplane, 'bed': _bed, 'bookshelf': _bookshelf, 'bottle': _bottle, 'car': _car, 'chair': _chair,
    'cup': _cup, 'guitar': _guitar, 'lamp': _lamp, 'monitor': _monitor, 'mug': _mug, 'sofa': _sofa,
    'stool': _stool, 'table': _table, 'vase': _vase,
}
"""Class name -> part builder ``f(rng) -> [trimesh.Trimesh, ...]`` (z is up, the object stands on z = 0)."""


def make_mesh(class_name: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """One random object of ``class_name``: its parts (one of them left out with probability 1/4, as if
    broken off or hidden) joined into one mesh, centred, stretched by an independent factor in [0.6, 1.6]
    along each axis (so proportions overlap between classes), then posed by a random turn about z, a
    tilt of up to 10 degrees about x and a size factor in [0.5, 2]."""
    if class_name not in MESH_CLASSES:
        raise InputError(f'class_name: unknown class {class_name!r}; use one of {sorted(MESH_CLASSES)}')
    parts = MESH_CLASSES[class_name](rng)
    if len(parts) > 2 and rng.random() < 0.25:
        parts.pop(int(rng.integers(len(parts))))
    mesh = trimesh.util.concatenate(parts)
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.vertices = mesh.vertices * rng.uniform(0.6, 1.6, size=3)
    pose = trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * math.pi), (0, 0, 1)) @ \
        trimesh.transformations.rotation_matrix(math.radians(rng.uniform(-10, 10)), (1, 0, 0))
    mesh.apply_transform(pose)
    mesh.apply_scale(rng.uniform(0.5, 2.0))
    return mesh


def make_mesh_dataset(root: str | Path, classes: Sequence[str] | None = None, num_train: int = 40,
                      num_test: int = 10, seed: int = 0) -> Path:
    """Write ``<root>/<class>/train|test/<class>_<nnnn>.off`` (``num_train`` + ``num_test`` objects per
    class, default all of ``MESH_CLASSES``); same seed, same files. Returns ``root``."""
    classes = sorted(MESH_CLASSES) if classes is None else list(classes)
    for name, value in (('num_train', num_train), ('num_test', num_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f'{name}: expected a positive integer, got {value!r}')
    root = Path(root)
    for class_index, class_name in enumerate(classes):
        rng = np.random.default_rng([seed, class_index])
        for number in range(num_train + num_test):
            split = 'train' if number < num_train else 'test'
            folder = root / class_name / split
            folder.mkdir(parents=True, exist_ok=True)
            make_mesh(class_name, rng).export(folder / f'{class_name}_{number:04d}.off')
    return root


# ---------------------------------------------------------------- look-alike image pairs

SKIMAGE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina')
"""The colour photographs inside the scikit-image wheel (no download): synthetic images (colorwheel, logo), grey
ones and 'cat' (a copy of 'chelsea') are left out."""


def source_photos() -> Dict[str, np.ndarray]:
    """Real colour photographs that install with scikit-learn and scikit-image: name -> uint8 [H, W, 3]."""
    from sklearn.datasets import load_sample_images

    photos = {}
    sample = load_sample_images()
    for file_name, pixels in zip(sample.filenames, sample.images):
        photos[Path(file_name).stem] = np.asarray(pixels)
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype != np.uint8:
            if not np.issubdtype(pixels.dtype, np.floating):
                continue
            pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[:, :, :3]
        if pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 256:
            photos[name] = pixels
    return photos


def _view(photo: np.ndarray, box, rng: np.random.Generator, size: int):
    """One look at ``box = (top, left, side)`` of ``photo``, changed the way look-alike pictures differ:
    the window shifted by up to 30 % and rescaled by 0.7-1.4, flipped with probability 1/2, rotated by up
    to 25 degrees; then its colours: hue turned by up to 1/10 of the colour circle, brightness, contrast
    and saturation x 0.6-1.4, grey with probability 1/5, blurred with probability 1/3. A PIL image of
    size x size pixels."""
    from PIL import Image, ImageEnhance, ImageFilter

    height, width, _ = photo.shape
    top, left, side = box
    scaled = int(np.clip(side * rng.uniform(0.7, 1.4), 16, min(height, width)))
    centre_y = top + side / 2 + rng.uniform(-0.3, 0.3) * side
    centre_x = left + side / 2 + rng.uniform(-0.3, 0.3) * side
    y0 = int(np.clip(centre_y - scaled / 2, 0, height - scaled))
    x0 = int(np.clip(centre_x - scaled / 2, 0, width - scaled))
    image = Image.fromarray(photo[y0:y0 + scaled, x0:x0 + scaled])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR)
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    hsv = np.asarray(image.convert('HSV')).copy()
    hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + int(rng.uniform(-0.1, 0.1) * 256)) % 256
    image = Image.fromarray(hsv, mode='HSV').convert('RGB')
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.2:
        image = image.convert('L').convert('RGB')
    if rng.random() < 1 / 3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return image


def make_look_alike_pairs(root: str | Path, num_pairs: int = 600, size: int = 160, seed: int = 0,
                          photos: Dict[str, np.ndarray] | None = None) -> Path:
    """Write ``<root>/left/<nnnnn>.jpg`` and ``<root>/right/<nnnnn>.jpg``: ``num_pairs`` pairs, each two
    different views (:func:`_view`) of one square region of a real photo (side 12-35 % of the photo's
    shorter side, position uniform), JPEG quality 90, ``size`` x ``size`` pixels. Regions are drawn from
    the photos in turn, so every photo gives about num_pairs / len(photos) pairs. Returns ``root``."""
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
        raise InputError(f'num_pairs: expected a positive integer, got {num_pairs!r}')
    photos = source_photos() if photos is None else photos
    if not photos:
        raise InputError('photos: no source photographs found; install scikit-learn (and scikit-image)')
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / 'left').mkdir(parents=True, exist_ok=True)
    (root / 'right').mkdir(parents=True, exist_ok=True)
    for number in range(num_pairs):
        photo = photos[names[number % len(names)]]
        height, width, _ = photo.shape
        side = int(min(height, width) * rng.uniform(0.12, 0.35))
        box = (int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side)
        for folder in ('left', 'right'):
            _view(photo, box, rng, size).save(root / folder / f'{number:05d}.jpg', quality=90)
    return root
