"""Folder layouts (ModelNet, Totally-Looks-Like) -> docs, and their bad layouts."""
import pytest
import trimesh

from executors.data.labels import assign_labels, build_rule
from executors.data.layouts import PAIR_RULE, read_mesh_folders, read_pair_folders
from executors.errors import InputError


def _write_mesh(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box().export(path)


def test_mesh_folders_give_one_labelled_doc_per_file(tmp_path):
    for name in ('chair/train/a.off', 'chair/train/b.obj', 'chair/test/c.off', 'lamp/train/d.stl', 'lamp/test/e.ply'):
        _write_mesh(tmp_path / name)
    (tmp_path / 'chair/train/notes.txt').write_text('not a mesh')
    docs = read_mesh_folders(tmp_path)
    assert [(d.uri, d.label, d.tags['split']) for d in docs] == [
        ('chair/train/a.off', 'chair', 'train'), ('chair/train/b.obj', 'chair', 'train'),
        ('chair/test/c.off', 'chair', 'test'), ('lamp/train/d.stl', 'lamp', 'train'), ('lamp/test/e.ply', 'lamp', 'test')]
    assert [d.uri for d in read_mesh_folders(tmp_path, splits=['test'], classes=['lamp'])] == ['lamp/test/e.ply']


def test_bad_mesh_layouts_name_the_folder(tmp_path):
    with pytest.raises(InputError, match='not a directory'):
        read_mesh_folders(tmp_path / 'missing')
    with pytest.raises(InputError, match='no class folders'):
        read_mesh_folders(tmp_path)
    _write_mesh(tmp_path / 'chair/train/a.off')
    with pytest.raises(InputError, match=r"chair/test.*no mesh files"):
        read_mesh_folders(tmp_path)
    with pytest.raises(InputError, match='splits'):
        read_mesh_folders(tmp_path, splits=['val'])
    with pytest.raises(InputError, match="classes: .*sofa"):
        read_mesh_folders(tmp_path, splits=['train'], classes=['sofa'])


def _write_image(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (8, 8), (200, 10, 10)).save(path)


def test_pair_folders_are_labelled_by_the_label_assigners_pair_rule(tmp_path):
    for side in ('left', 'right'):
        for name in ('00001', '00002'):
            _write_image(tmp_path / side / f'{name}.jpg')
    docs = read_pair_folders(tmp_path)
    assert [(d.uri, d.tags['side']) for d in docs] == [
        ('left/00001.jpg', 'left'), ('left/00002.jpg', 'left'), ('right/00001.jpg', 'right'), ('right/00002.jpg', 'right')]
    labels = assign_labels(build_rule(PAIR_RULE), [{'uri': d.uri} for d in docs])
    assert labels == ['00001', '00002', '00001', '00002']
    assert [d.uri for d in read_pair_folders(tmp_path, names=['00002'])] == ['left/00002.jpg', 'right/00002.jpg']


def test_bad_pair_layouts_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"left.*holds no images"):
        read_pair_folders(tmp_path)
    _write_image(tmp_path / 'left/00001.jpg')
    _write_image(tmp_path / 'right/00001.jpg')
    _write_image(tmp_path / 'left/00002.jpg')
    with pytest.raises(InputError, match=r"no partner.*00002"):
        read_pair_folders(tmp_path)
    _write_image(tmp_path / 'right/00002.jpg')
    with pytest.raises(InputError, match='no pair named'):
        read_pair_folders(tmp_path, names=['00009'])
