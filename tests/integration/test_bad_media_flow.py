"""Bad image and mesh files sent to running search flows (gRPC and HTTP): each request is refused as a
whole with an error naming the bad document, the flow keeps serving, and the stored documents are
unchanged (the good document sent beside the bad one is not stored either)."""
import io
from pathlib import Path

import httpx
import pytest
import trimesh
import yaml
from jina import Client
from PIL import Image

from executors.data.schema import Doc, DocList
from executors.data.transforms import attach_transform
from executors.models import ModelStore, build_model
from executors.service.flow_process import FlowProcess
from tests.data.test_bad_media import png_header_only

pytestmark = pytest.mark.timeout(600)

MODELS = {
    'image': ({'builder': 'torchvision', 'kwargs': {'arch': 'resnet18', 'num_classes': 8}},
              {'modality': 'image', 'size': [32, 32]}),
    'mesh': ({'builder': 'pointnet', 'kwargs': {'embedding_dim': 8, 'point_widths': [8, 16], 'head_widths': []}},
             {'modality': 'mesh', 'num_points': 32}),
}
DECODING = {'image': {'modality': 'image'}, 'mesh': {'modality': 'mesh', 'num_points': 64}}


def _write_data(root: Path) -> None:
    root.mkdir(parents=True)
    for index, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]):
        Image.new('RGB', (48, 40), colour).save(root / f'good{index}.jpg')
    good = (root / 'good0.jpg').read_bytes()
    (root / 'corrupt.jpg').write_bytes(good[:len(good) // 2])
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'bomb.png').write_bytes(png_header_only(30_000, 30_000))
    (root.parent / 'outside.jpg').write_bytes(good)
    for index, mesh in enumerate([trimesh.creation.box(), trimesh.creation.icosphere(), trimesh.creation.cone(1, 2),
                                  trimesh.creation.cylinder(1, 2)]):
        mesh.export(root / f'good{index}.off')
    (root / 'no_faces.off').write_bytes(b'OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n')
    buffer = io.BytesIO()
    Image.new('RGB', (8, 8)).save(buffer, format='JPEG')
    (root / 'photo.off').write_bytes(buffer.getvalue())


def _flow_yaml(cwd: Path, modality: str) -> Path:
    config = {'jtype': 'Flow', 'with': {'protocol': ['grpc', 'http'], 'port': [0, 0]},
              'gateway': {'uses': 'ServiceGateway', 'py_modules': ['executors.service.gateway']}, 'executors': [
        {'name': 'preprocessor', 'uses': 'Preprocessor', 'py_modules': ['executors.preprocessor'],
         'uses_with': {'endpoints': ['/index', '/search'], 'decoding': DECODING[modality], 'data_root': 'data'}},
        {'name': 'encoder', 'uses': 'Encoder', 'py_modules': ['executors.encoder'],
         'uses_with': {'store_dir': 'workspace/models', 'model_name': modality}},
        {'name': 'indexer', 'uses': 'Indexer', 'py_modules': ['executors.indexer'], 'workspace': 'workspace/search'}]}
    path = cwd / f'{modality}-search.yml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope='module', params=['image', 'mesh'])
def flow(request, tmp_path_factory):
    modality = request.param
    cwd = tmp_path_factory.mktemp(f'bad-{modality}')
    _write_data(cwd / 'data')
    spec, transform = MODELS[modality]
    ModelStore(cwd / 'workspace' / 'models').publish(modality, attach_transform(build_model(spec, seed=0), transform))
    with FlowProcess(_flow_yaml(cwd, modality), cwd, free_ports=True) as process:
        client = Client(port=process.ports['grpc'])
        suffix = 'jpg' if modality == 'image' else 'off'
        client.post('/index', DocList[Doc]([Doc(id=f'good{i}', uri=f'good{i}.{suffix}') for i in range(3)]))
        yield {'modality': modality, 'suffix': suffix, 'grpc': client, 'http': f"http://localhost:{process.ports['http']}"}


def _stored_ids(flow) -> set:
    answers = flow['grpc'].post('/search', DocList[Doc]([Doc(id='q', uri=f"good3.{flow['suffix']}")]),
                                parameters={'limit': 10}, return_type=DocList[Doc])
    return set(answers[0].match_ids)


BAD = {
    'image': [('corrupt.jpg', "uri: cannot decode 'corrupt.jpg' as an image"),
              ('empty.jpg', "uri: 'empty.jpg' is empty (0 bytes)"),
              ('bomb.png', 'decompression-bomb guard'),
              ('../outside.jpg', "uri: '../outside.jpg' points outside the root directory")],
    'mesh': [('no_faces.off', "uri: 'no_faces.off' holds no triangles"),
             ('photo.off', "uri: cannot load 'photo.off' as a .off mesh"),
             ('../outside.off', "points outside the root directory")],
}


def _unquoted(text: str) -> str:
    """The text without quotes and backslashes (the gRPC error text escapes them)."""
    return text.replace('\\', '').replace("'", '').replace('"', '')


def test_bad_files_are_refused_naming_the_document_and_nothing_changes(flow):
    assert _stored_ids(flow) == {'good0', 'good1', 'good2'}
    for uri, message in BAD[flow['modality']]:
        docs = [{'id': 'new-good', 'uri': f"good3.{flow['suffix']}"}, {'id': 'bad-doc', 'uri': uri}]
        for endpoint in ('/index', '/search'):
            response = httpx.post(f"{flow['http']}{endpoint}", json={'data': docs, 'parameters': {}}, timeout=120)
            detail = response.json().get('detail', '')
            assert response.status_code == 400 and "docs[1] (id 'bad-doc'): " in detail and message in detail, \
                response.text
            with pytest.raises(Exception) as error:
                flow['grpc'].post(endpoint, DocList[Doc]([Doc(**d) for d in docs]))
            text = _unquoted(str(error.value))
            assert 'docs[1] (id bad-doc): uri: ' in text and _unquoted(message) in text, text[:500]
        assert _stored_ids(flow) == {'good0', 'good1', 'good2'}  # still serving; the good doc was not stored
