"""Folder layouts of public data sets -> documents that point at the files (``uri``, relative to ``root``).

* ModelNet: ``<root>/<class>/train|test/<name>.<ext>`` (ext one of the mesh formats) ->
  :func:`read_mesh_folders`: one Doc per file, ``label`` = class, ``tags['split']`` = train|test.
* Totally-Looks-Like: ``<root>/left/<name>.jpg`` and ``<root>/right/<name>.jpg``, a pair sharing a file
  name -> :func:`read_pair_folders`: one Doc per file, ``tags['side']`` = left|right, no label: the
  LabelAssigner labels them with ``PAIR_RULE`` (the pair rule keyed on the file name), so
  'left/00017.jpg' and 'right/00017.jpg' both get label '00017'.

The uris are relative, so the Preprocessor resolves them inside its data root (give it ``root``).
Files are listed in sorted order; a layout that does not hold what it should is an InputError that
names the folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from executors.data.schema import Doc, DocList
from executors.errors import InputError

MESH_SUFFIXES = ('.off', '.obj', '.stl', '.ply', '.glb')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
SPLITS = ('train', 'test')
PAIR_RULE = {'rule': 'pair_by_file_name', 'pattern': r'^(?P<pair>.+)\.(?:jpe?g|png)$'}
"""LabelAssigner rule spec for the TLL layout: the label is the file name without its extension."""


def _root(root) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise InputError(f'root: {str(root)!r} is not a directory; give the folder that holds the data set')
    return path


def _files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    suffixes = tuple(suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def read_mesh_folders(root, splits: Sequence[str] = SPLITS, classes: Sequence[str] | None = None) -> DocList[Doc]:
    """Docs of ``<root>/<class>/<split>/<file>`` for each class folder (or the given ``classes``) and each
    of ``splits``: ``uri`` = '<class>/<split>/<file>', ``label`` = class, ``tags`` = {'split': split}."""
    root = _root(root)
    unknown = set(splits) - set(SPLITS)
    if unknown or not splits:
        raise InputError(f'splits: expected some of {list(SPLITS)}, got {list(splits)!r}')
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir()) if classes is None else list(classes)
    if not class_names:
        raise InputError(f'root: {str(root)!r} holds no class folders; expected <class>/train|test/<name>.off')
    docs = DocList[Doc]()
    for class_name in class_names:
        if not (root / class_name).is_dir():
            raise InputError(f'classes: {str(root / class_name)!r} is not a folder; existing classes: '
                             f'{sorted(p.name for p in root.iterdir() if p.is_dir())}')
        for split in splits:
            folder = root / class_name / split
            files = _files(folder, MESH_SUFFIXES) if folder.is_dir() else []
            if not files:
                raise InputError(f'root: {str(folder)!r} holds no mesh files ({", ".join(MESH_SUFFIXES)}); '
                                 'expected the layout <class>/train|test/<name>.off')
            docs.extend(Doc(id=f'{class_name}/{split}/{p.stem}', uri=p.relative_to(root).as_posix(), label=class_name,
                            tags={'split': split}) for p in files)
    return docs


def read_pair_folders(root, names: Sequence[str] | None = None) -> DocList[Doc]:
    """Docs of ``<root>/left/*`` then ``<root>/right/*`` (images), for the file stems in ``names``
    (default: all): ``uri`` = 'left/<file>', ``tags`` = {'side': 'left'}; label them with ``PAIR_RULE``.
    Every left file needs a right file of the same name and the other way round."""
    root = _root(root)
    sides = {}
    for side in ('left', 'right'):
        folder = root / side
        files = _files(folder, IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise InputError(f'root: {str(folder)!r} holds no images ({", ".join(IMAGE_SUFFIXES)}); '
                             'expected the layout left/<name>.jpg, right/<name>.jpg')
        sides[side] = {p.stem: p for p in files}
    lonely = sorted(set(sides['left']) ^ set(sides['right']))
    if lonely:
        raise InputError(f'root: {len(lonely)} image(s) have no partner of the same name on the other side '
                         f'(e.g. {lonely[:3]}); every left/<name> needs right/<name>')
    stems = sorted(sides['left']) if names is None else list(names)
    missing = [name for name in stems if name not in sides['left']]
    if missing:
        raise InputError(f'names: no pair named {missing[:3]} in {str(root)!r}')
    return DocList[Doc]([Doc(id=f'{side}/{name}', uri=sides[side][name].relative_to(root).as_posix(),
                             tags={'side': side}) for side in ('left', 'right') for name in stems])
