import numpy as np
import pytest
import torch
from PIL import Image

from executors.data.decoding import build_decoder
from executors.data.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecoder,
    ImageTransform,
    augment_image,
    load_image,
    preprocess_image,
    resize_and_crop,
)
from executors.data.transforms import build_transform
from executors.errors import InputError


@pytest.fixture
def image_root(tmp_path):
    Image.new('RGB', (40, 30), (255, 128, 0)).save(tmp_path / 'orange.png')
    gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (48, 1, 3))
    Image.fromarray(gradient).save(tmp_path / 'gradient.png')
    return tmp_path


# ---------------------------------------------------------------- decoding

def test_decoder_from_uri_blob_and_tensor_gives_pixels(image_root):
    decoder = build_decoder({'modality': 'image', 'root': str(image_root)})
    from_uri = decoder.decode({'uri': 'orange.png'})
    assert from_uri.dtype == np.uint8 and from_uri.shape == (30, 40, 3)
    assert (from_uri == np.array([255, 128, 0], np.uint8)).all()
    np.testing.assert_array_equal(decoder.decode({'blob': (image_root / 'orange.png').read_bytes()}), from_uri)
    np.testing.assert_array_equal(decoder.decode({'tensor': from_uri.astype(np.int64)}), from_uri)  # JSON ints
    np.testing.assert_array_equal(decoder.decode({'tensor': from_uri / 255.0}), from_uri)
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'd2'\): tensor/blob/uri: the document has no image"):
        decoder.decode_batch([{'uri': 'orange.png'}, {'id': 'd2', 'text': 'hi'}])


def test_decoder_bounds_the_stored_size(image_root):
    pixels = ImageDecoder(root=str(image_root), max_side=20).decode({'uri': 'gradient.png'})
    assert pixels.shape == (15, 20, 3)  # 48 x 64 shrunk, aspect kept
    assert ImageDecoder(root=str(image_root), max_side=100).decode({'uri': 'gradient.png'}).shape == (48, 64, 3)


@pytest.mark.parametrize('source, message', [
    (b'not an image', 'blob: cannot decode 12 bytes as an image'),
    (np.zeros((3, 8, 8), dtype=np.float32) + 2, 'tensor: expected image pixels of shape (H, W), (H, W, 3) or (H, W, 4)'),
    (np.full((4, 4, 3), 300), 'tensor: expected image pixels'),
    ('missing.png', "uri: file 'missing.png' not found"),
])
def test_bad_images(source, message):
    with pytest.raises(InputError) as error:
        load_image(source)
    assert message in str(error.value)


def test_decoder_refuses_files_outside_its_root(image_root):
    (image_root.parent / 'outside.png').write_bytes((image_root / 'orange.png').read_bytes())
    with pytest.raises(InputError, match='points outside the root directory'):
        ImageDecoder(root=str(image_root)).decode({'uri': '../outside.png'})
    with pytest.raises(InputError, match="set 'root' in the decoding spec"):
        ImageDecoder().decode({'uri': 'orange.png'})
    (image_root / 'bad.png').write_bytes(b'\x89PNG broken')
    with pytest.raises(InputError, match="uri: cannot decode 'bad.png' as an image"):
        ImageDecoder(root=str(image_root)).decode({'uri': 'bad.png'})


# ---------------------------------------------------------------- model input

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


def test_resize_then_centre_crop():
    columns = np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (40, 1, 3))  # 40 x 80, pixel value = column
    cropped = np.asarray(resize_and_crop(Image.fromarray(columns), (20, 20), shorter_side=20))
    assert cropped.shape == (20, 20, 3)
    # resized to 20 x 40 (column c holds about 2c), the centred 20 columns start at 10: values about 20..58
    assert abs(int(cropped[10, 0, 0]) - 21) <= 2 and abs(int(cropped[10, -1, 0]) - 59) <= 2
    straight = np.asarray(resize_and_crop(Image.fromarray(columns), (20, 20)))
    assert straight[10, 0, 0] < 5 and straight[10, -1, 0] > 74  # the whole width squeezed in


def test_transform_batches_decoded_pixels(image_root):
    decoder = ImageDecoder(root=str(image_root))
    transform = build_transform({'modality': 'image', 'size': [16, 16]})
    pixels = decoder.decode_batch([{'uri': 'orange.png'}, {'uri': 'gradient.png'}])
    batch = transform.batch(pixels)
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[1].numpy(), preprocess_image(image_root / 'gradient.png', size=(16, 16)), atol=1e-6)
    augmented = transform.batch(pixels, augment=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(augmented.numpy(), transform.batch(pixels, augment=True, rng=np.random.default_rng(0)).numpy())
    assert not torch.equal(augmented, batch)
    assert ImageTransform(size=(8, 8), channel_axis=-1).apply(pixels[0]).shape == (8, 8, 3)
    with pytest.raises(InputError, match=r"inputs\[0\]: tensor: got the file path 'orange.png', but the input transform takes decoded pixels"):
        transform.batch(['orange.png'])
    with pytest.raises(InputError, match=r'inputs\[1\]: tensor: expected image pixels'):
        transform.batch([pixels[0], np.zeros((2, 2, 5))])


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


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'image', 'size': [224]}, 'size: expected a list of 2 numbers'),
    ({'modality': 'image', 'std': [1, 0, 1]}, 'std: expected a number in (0, inf)'),
    ({'modality': 'image', 'channel_axis': 1}, 'channel_axis: expected 0 (channels first) or -1'),
    ({'modality': 'image', 'crop_scale': [0.9, 0.5]}, 'crop_scale: expected [min, max] with min <= max'),
    ({'modality': 'image', 'color_jitter': 1}, 'color_jitter: expected a number in [0, 1)'),
    ({'modality': 'image', 'size': [224, 224], 'shorter_side': 200}, 'shorter_side: 200 is smaller than the crop size'),
    ({'modality': 'image', 'flip': 'yes'}, "flip: expected true or false, got 'yes'"),
])
def test_bad_transform_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_transform(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'image', 'max_side': 0}, 'max_side: expected an integer >= 1, got 0'),
    ({'modality': 'image', 'root': 3}, 'root: expected a directory path or None, got 3'),
])
def test_bad_decoding_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_decoder(spec)
    assert message in str(error.value)
