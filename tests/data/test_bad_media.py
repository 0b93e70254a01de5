"""Images and meshes as users send them: EXIF orientation, transparency, .glb, and bad files (each a clear
InputError naming the document)."""
import io
import struct
import zlib

import numpy as np
import pytest
import trimesh
from PIL import Image

from executors.data.image import ImageDecoder
from executors.data.mesh import MeshDecoder
from executors.errors import InputError


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds one empty data chunk (nothing is allocated)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    Image.new('RGB', (40, 20), (200, 30, 30)).save(root / 'good.jpg', quality=95)
    good = (root / 'good.jpg').read_bytes()
    (root / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    (root / 'garbage.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(range(256)) * 4)
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'bomb.png').write_bytes(png_header_only(30_000, 30_000))
    (tmp_path / 'outside.jpg').write_bytes(good)
    return root


@pytest.mark.parametrize('uri, message', [
    ('truncated.jpg', "uri: cannot decode 'truncated.jpg' as an image"),
    ('garbage.jpg', "uri: cannot decode 'garbage.jpg' as an image"),
    ('empty.jpg', "uri: 'empty.jpg' is empty (0 bytes)"),
    ('bomb.png', "uri: 'bomb.png' declares more pixels than Pillow allows (Image size (900000000 pixels)"),
    ('../outside.jpg', "uri: '../outside.jpg' points outside the root directory"),
])
def test_bad_image_files_are_errors_naming_the_document(image_root, uri, message):
    decoder = ImageDecoder(root=str(image_root))
    with pytest.raises(InputError) as error:
        decoder.decode_batch([{'id': 'ok', 'uri': 'good.jpg'}, {'id': 'bad-doc', 'uri': uri}])
    assert str(error.value).startswith("docs[1] (id 'bad-doc'): ")
    assert message in str(error.value)


def test_bomb_guard_reads_only_the_header(image_root):
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(InputError, match='decompression-bomb guard'):
        ImageDecoder(root=str(image_root)).decode({'uri': 'bomb.png'})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000  # 30,000 x 30,000 RGB would be 2.7 GB


def test_pixel_limit_is_a_setting(image_root):
    with pytest.raises(InputError, match='more than the limit of 799'):
        ImageDecoder(root=str(image_root), max_pixels=799).decode({'uri': 'good.jpg'})
    assert ImageDecoder(root=str(image_root), max_pixels=800).decode({'uri': 'good.jpg'}).shape == (20, 40, 3)
    with pytest.raises(InputError, match='max_pixels'):
        ImageDecoder(max_pixels=0)


def test_exif_orientation_is_applied():
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise) decodes upright."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue as stored
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', exif=exif, quality=95)
    upright = ImageDecoder().decode({'blob': buffer.getvalue()})
    assert upright.shape == (40, 20, 3)  # portrait now
    assert upright[5, 10, 0] > 200 and upright[5, 10, 2] < 60  # stored left (red) is now on top
    assert upright[35, 10, 2] > 200 and upright[35, 10, 0] < 60


def test_grey_and_transparent_images_become_rgb_over_white():
    buffer = io.BytesIO()
    Image.new('RGBA', (4, 4), (255, 0, 0, 0)).save(buffer, format='PNG')  # fully transparent red
    assert (ImageDecoder().decode({'blob': buffer.getvalue()}) == 255).all()  # white, not black or red
    buffer = io.BytesIO()
    Image.new('L', (4, 3), 77).save(buffer, format='PNG')
    grey = ImageDecoder().decode({'blob': buffer.getvalue()})
    assert grey.shape == (3, 4, 3) and (grey == 77).all()


@pytest.fixture
def mesh_root(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    trimesh.creation.box().export(root / 'box.off')
    (root / 'points_only.off').write_bytes(b'OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n')
    buffer = io.BytesIO()
    Image.new('RGB', (8, 8)).save(buffer, format='JPEG')
    (root / 'photo.off').write_bytes(buffer.getvalue())
    (root / 'empty.off').write_bytes(b'')
    (tmp_path / 'outside.off').write_bytes((root / 'box.off').read_bytes())
    return root


@pytest.mark.parametrize('uri, message', [
    ('points_only.off', "uri: 'points_only.off' holds no triangles"),
    ('photo.off', "'photo.off'"),
    ('empty.off', "'empty.off'"),
    ('../outside.off', "uri: '../outside.off' points outside the root directory"),
])
def test_bad_mesh_files_are_errors_naming_the_document(mesh_root, uri, message):
    decoder = MeshDecoder(root=str(mesh_root), num_points=64)
    with pytest.raises(InputError) as error:
        decoder.decode_batch([{'id': 'ok', 'uri': 'box.off'}, {'id': 'bad-mesh', 'uri': uri}])
    assert str(error.value).startswith("docs[1] (id 'bad-mesh'): uri: ")
    assert message in str(error.value)


def test_glb_meshes_decode(tmp_path):
    scene = trimesh.Scene([trimesh.creation.box(), trimesh.creation.icosphere().apply_translation((3, 0, 0))])
    (tmp_path / 'two_parts.glb').write_bytes(scene.export(file_type='glb'))
    points = MeshDecoder(root=str(tmp_path), num_points=200).decode({'uri': 'two_parts.glb'})
    assert points.shape == (200, 3)
    assert points[:, 0].min() < -0.4 and points[:, 0].max() > 3.5  # both parts sampled
    blob = MeshDecoder(file_type='glb', num_points=10).decode({'blob': (tmp_path / 'two_parts.glb').read_bytes()})
    assert blob.shape == (10, 3)
