"""Generated data sets: ModelNet-style meshes and look-alike pairs from real photos, read back by the loaders."""
import numpy as np
import pytest
from PIL import Image

from executors.data.labels import assign_labels, build_rule
from executors.data.layouts import PAIR_RULE, read_mesh_folders, read_pair_folders
from executors.data.mesh import MeshDecoder
from executors.demos.datasets import MESH_CLASSES, make_look_alike_pairs, make_mesh, make_mesh_dataset, source_photos
from executors.errors import InputError


def test_at_least_ten_mesh_classes_each_varies_in_shape():
    assert len(MESH_CLASSES) >= 10
    for class_name in MESH_CLASSES:
        rng = np.random.default_rng(0)
        first, second = make_mesh(class_name, rng), make_mesh(class_name, rng)
        assert len(first.faces) > 0 and first.area > 0
        # random proportions and pose: the two objects' normalised extents differ
        assert not np.allclose(sorted(first.extents / first.scale), sorted(second.extents / second.scale)), class_name


def test_mesh_tree_reads_back_through_the_loader_and_the_mesh_decoder(tmp_path):
    classes = ['chair', 'lamp', 'mug']
    make_mesh_dataset(tmp_path, classes=classes, num_train=3, num_test=2, seed=1)
    docs = read_mesh_folders(tmp_path)
    assert len(docs) == 15
    assert sorted({d.label for d in docs}) == classes
    assert sum(d.tags['split'] == 'test' for d in docs) == 6
    clouds = MeshDecoder(root=str(tmp_path), num_points=64).decode_batch([{'uri': d.uri} for d in docs])
    assert all(c.shape == (64, 3) and np.isfinite(c).all() for c in clouds)
    again = tmp_path / 'again'
    make_mesh_dataset(again, classes=classes, num_train=3, num_test=2, seed=1)
    assert (again / 'mug/test/mug_0004.off').read_bytes() == (tmp_path / 'mug/test/mug_0004.off').read_bytes()


def test_mesh_dataset_refuses_bad_settings(tmp_path):
    with pytest.raises(InputError, match='class_name'):
        make_mesh_dataset(tmp_path, classes=['spaceship'])
    with pytest.raises(InputError, match='num_test'):
        make_mesh_dataset(tmp_path, num_test=0)


def test_source_photos_are_real_colour_photographs():
    photos = source_photos()
    assert {'china', 'flower'} <= set(photos)  # scikit-learn's two photos
    assert len(photos) >= 6  # + scikit-image's
    for pixels in photos.values():
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.std() > 20  # not flat


def test_look_alike_pairs_are_two_different_views_of_one_region(tmp_path):
    make_look_alike_pairs(tmp_path, num_pairs=18, size=64, seed=3)
    docs = read_pair_folders(tmp_path)
    assert len(docs) == 36
    labels = assign_labels(build_rule(PAIR_RULE), [{'uri': d.uri} for d in docs])
    assert labels[:18] == labels[18:]
    left = np.stack([np.asarray(Image.open(tmp_path / d.uri), dtype=np.float32) for d in docs[:18]])
    right = np.stack([np.asarray(Image.open(tmp_path / d.uri), dtype=np.float32) for d in docs[18:]])
    assert left.shape == (18, 64, 64, 3)
    assert all(not np.array_equal(a, b) for a, b in zip(left, right))  # augmented, not copies
    # a view's mean colour is closer to its partner's than to most other pairs' (same region)
    colours_left, colours_right = left.mean(axis=(1, 2)), right.mean(axis=(1, 2))
    distances = np.linalg.norm(colours_left[:, None] - colours_right[None], axis=2)
    rank_of_partner = (distances < distances.diagonal()[:, None]).sum(axis=1)
    assert np.median(rank_of_partner) <= 2
