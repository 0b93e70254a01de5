import numpy as np
import pytest
import torch
import trimesh

from executors.data.decoding import build_decoder
from executors.data.mesh import (
    MeshDecoder,
    MeshTransform,
    augment_point_cloud,
    load_mesh,
    normalize_point_cloud,
    sample_point_cloud,
)
from executors.data.transforms import build_transform
from executors.errors import InputError

MESHES = {
    'box': lambda: trimesh.creation.box(extents=(1.0, 2.0, 3.0)),
    'sphere': lambda: trimesh.creation.icosphere(subdivisions=2, radius=2.0),
    'cylinder': lambda: trimesh.creation.cylinder(radius=0.5, height=2.0),
    'torus': lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=0.3),
}


@pytest.fixture
def mesh_root(tmp_path):
    for name, make in MESHES.items():
        mesh = make()
        mesh.export(tmp_path / f'{name}.off')
        mesh.export(tmp_path / f'{name}.obj')
    return tmp_path


@pytest.mark.parametrize('name', MESHES)
@pytest.mark.parametrize('file_type', ['off', 'obj'])
def test_meshes_round_trip_and_sample(mesh_root, name, file_type):
    mesh = load_mesh(mesh_root / f'{name}.{file_type}')
    original = MESHES[name]()
    assert len(mesh.faces) == len(original.faces)
    np.testing.assert_allclose(mesh.area, original.area, rtol=1e-5)

    points = sample_point_cloud(mesh, num_points=500, seed=0)
    assert points.shape == (500, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points, sample_point_cloud(mesh, num_points=500, seed=0))
    normalised = normalize_point_cloud(points)
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1).max(), 1, rtol=1e-6)


def test_load_mesh_from_bytes_in_each_format():
    box = trimesh.creation.box()
    for file_type in ('off', 'obj', 'stl', 'ply'):
        exported = box.export(file_type=file_type)
        data = exported.encode() if isinstance(exported, str) else exported
        assert len(load_mesh(data, file_type=file_type).faces) == 12


@pytest.mark.parametrize('content, message', [
    (b'OFF\n3 1 0\n0 0 0\n1 0\n', "uri: cannot load 'broken.off' as a .off mesh"),
    (b'OFF\nnot numbers at all\n', "uri: cannot load 'broken.off' as a .off mesh"),
])
def test_corrupt_mesh_file(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'broken.off').write_bytes(content)
    with pytest.raises(InputError) as error:
        load_mesh('broken.off')
    assert message in str(error.value) and 'supported formats: .off, .obj, .stl, .ply' in str(error.value)


def test_decoder_samples_raw_surface_points(mesh_root):
    decoder = build_decoder({'modality': 'mesh', 'root': str(mesh_root), 'num_points': 300})
    points = decoder.decode({'uri': 'box.off'})
    assert points.shape == (300, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points, decoder.decode({'uri': 'box.off'}))  # seeded: same file, same points
    assert np.abs(points).max(axis=0) == pytest.approx([0.5, 1.0, 1.5], abs=1e-5)  # box coordinates, not normalised
    blob = MeshDecoder(num_points=300, file_type='off').decode({'blob': (mesh_root / 'box.off').read_bytes()})
    np.testing.assert_array_equal(blob, points)
    cloud = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(decoder.decode({'tensor': cloud}), cloud, rtol=1e-6)  # a given cloud is kept


def test_decoding_errors_name_the_field(tmp_path):
    (tmp_path / 'empty.obj').write_text('# nothing here\n')
    decoder = MeshDecoder(root=str(tmp_path))
    with pytest.raises(InputError, match="uri: 'empty.obj' holds no triangles"):
        decoder.decode({'uri': 'empty.obj'})
    (tmp_path / 'cloud.xyz').write_text('0 0 0\n')
    with pytest.raises(InputError, match="uri: mesh format 'xyz' of 'cloud.xyz' is not supported; supported formats: .off"):
        decoder.decode({'uri': 'cloud.xyz'})
    with pytest.raises(InputError, match="uri: file 'x.off' not found"):
        decoder.decode({'uri': 'x.off'})
    with pytest.raises(InputError, match="blob: mesh bytes need a format; set 'file_type'"):
        decoder.decode({'blob': b'OFF'})
    with pytest.raises(InputError, match=r'tensor: expected a point cloud of shape \(N, 3\), got shape \(10, 2\)'):
        decoder.decode({'tensor': np.zeros((10, 2))})
    with pytest.raises(InputError, match='tensor: the point cloud holds NaN'):
        decoder.decode({'tensor': np.full((10, 3), np.nan)})
    with pytest.raises(InputError, match='tensor/blob/uri: the document has no mesh'):
        decoder.decode({'text': 'a'})
    with pytest.raises(InputError, match='points outside the root directory'):
        decoder.decode({'uri': '/etc/passwd'})


def test_transform_subsamples_centres_and_scales(mesh_root):
    cloud = MeshDecoder(root=str(mesh_root), num_points=2048).decode({'uri': 'torus.off'}) * 5 + 3
    transform = build_transform({'modality': 'mesh', 'num_points': 256})
    points = transform.apply(cloud)
    assert points.shape == (256, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points, transform.apply(cloud))  # fixed subset at inference
    np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1).max(), 1, rtol=1e-6)
    subset = normalize_point_cloud(cloud[np.sort(np.random.default_rng(0).choice(2048, 256, replace=False))])
    np.testing.assert_allclose(points, subset, atol=1e-6)  # a subset of the decoded points, normalised
    exact = MeshTransform(num_points=2048).apply(cloud)
    np.testing.assert_allclose(exact, normalize_point_cloud(cloud), atol=1e-6)

    batch = transform.batch([cloud, cloud[::-1]], augment=True, rng=np.random.default_rng(0))
    again = transform.batch([cloud, cloud[::-1]], augment=True, rng=np.random.default_rng(0))
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 256, 3)
    np.testing.assert_array_equal(batch.numpy(), again.numpy())
    with pytest.raises(InputError, match=r'inputs\[0\]: tensor: the point cloud has 100 points, fewer than the model.s num_points=256'):
        transform.batch([cloud[:100]])
    with pytest.raises(InputError, match='tensor: expected a point cloud of shape'):
        transform.apply('torus.off')
    with pytest.raises(InputError, match='all points of the point cloud coincide'):
        MeshTransform(num_points=4).apply(np.ones((4, 3)))


def test_point_cloud_augmentation():
    points = normalize_point_cloud(np.random.default_rng(0).normal(size=(200, 3)))
    first = augment_point_cloud(points, np.random.default_rng(7))
    np.testing.assert_array_equal(first, augment_point_cloud(points, np.random.default_rng(7)))
    assert first.shape == (200, 3) and first.dtype == np.float32
    assert not np.array_equal(first, augment_point_cloud(points, np.random.default_rng(8)))

    rotated = augment_point_cloud(points, np.random.default_rng(1), jitter_sigma=0.0, scale_range=(1.0, 1.0))
    np.testing.assert_allclose(rotated[:, 2], points[:, 2], atol=1e-6)  # z kept, x-y radius kept
    np.testing.assert_allclose(np.hypot(rotated[:, 0], rotated[:, 1]), np.hypot(points[:, 0], points[:, 1]), atol=1e-6)
    jittered = augment_point_cloud(points, np.random.default_rng(1), rotate_z=False, scale_range=(1.0, 1.0),
                                   jitter_sigma=1.0, jitter_clip=0.05)
    assert np.abs(jittered - points).max() <= 0.05 + 1e-6
    scaled = augment_point_cloud(points, np.random.default_rng(1), rotate_z=False, jitter_sigma=0.0, scale_range=(2.0, 2.0))
    np.testing.assert_allclose(scaled, 2 * points, rtol=1e-6)


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'mesh', 'num_points': 0}, 'num_points: expected an integer >= 1, got 0'),
    ({'modality': 'mesh', 'rotate_z': 'yes'}, "rotate_z: expected true or false, got 'yes'"),
    ({'modality': 'mesh', 'scale_range': [2, 1]}, 'scale_range: expected [min, max] with min <= max'),
    ({'modality': 'mesh', 'jitter_sigma': -1}, 'jitter_sigma: expected a number in [0, inf)'),
])
def test_bad_transform_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_transform(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'mesh', 'num_points': 0}, 'num_points: expected an integer >= 1, got 0'),
    ({'modality': 'mesh', 'file_type': 'xyz'}, 'file_type: expected one of off, obj, stl, ply, glb or None'),
    ({'modality': 'mesh', 'seed': -1}, 'seed: expected an integer >= 0'),
])
def test_bad_decoding_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_decoder(spec)
    assert message in str(error.value)


def test_vectorised_batch_equals_item_by_item():
    """MeshTransform.batch's one-size fast path gives exactly the stacked per-item ``apply`` results; mixed
    sizes and bad clouds take the item path, whose error names the item."""
    rng = np.random.default_rng(5)
    transform = MeshTransform(num_points=16)
    clouds = [rng.normal(size=(40, 3)).astype(np.float32) * rng.uniform(0.5, 3) for _ in range(6)]
    expected = np.stack([transform.apply(cloud) for cloud in clouds])
    np.testing.assert_array_equal(transform.batch(clouds).numpy(), expected)
    mixed = clouds[:2] + [rng.normal(size=(30, 3)).astype(np.float32)]
    np.testing.assert_array_equal(transform.batch(mixed).numpy(), np.stack([transform.apply(c) for c in mixed]))
    collapsed = clouds[:2] + [np.ones((40, 3), np.float32)]
    with pytest.raises(InputError, match=r'inputs\[2\]: tensor: all points of the point cloud coincide'):
        transform.batch(collapsed)
    with_nan = clouds[:1] + [np.full((40, 3), np.nan, np.float32)]
    with pytest.raises(InputError, match=r'inputs\[1\]: tensor: the point cloud holds NaN'):
        transform.batch(with_nan)
