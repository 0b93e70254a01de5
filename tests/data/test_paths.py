import os

import pytest

from executors.data.paths import resolve_in_root, resolve_uri
from executors.errors import InputError


@pytest.fixture
def root(tmp_path):
    (tmp_path / 'root').mkdir()
    (tmp_path / 'root' / 'a.png').write_bytes(b'x')
    return tmp_path / 'root'


@pytest.mark.parametrize('uri', ['../outside.png', 'sub/../../outside.png', '/etc/passwd', 'file:///etc/hosts'])
def test_uri_escaping_root_is_rejected(root, uri):
    (root.parent / 'outside.png').write_bytes(b'x')
    with pytest.raises(InputError, match='points outside the root directory'):
        resolve_uri(uri, root)


def test_symlink_out_of_root_is_rejected(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp('outside') / 'secret.png'
    outside.write_bytes(b'x')
    os.symlink(outside, root / 'link.png')
    with pytest.raises(InputError, match='points outside the root directory'):
        resolve_uri('link.png', root)


def test_uris_inside_root(root):
    assert resolve_uri(str(root / 'a.png'), root) == (root / 'a.png').resolve()
    assert resolve_uri('sub/../a.png', root) == (root / 'a.png').resolve()
    assert resolve_uri(f'file://{root}/a.png', root) == (root / 'a.png').resolve()
    with pytest.raises(InputError, match="uri: file 'x.png' not found"):
        resolve_uri('x.png', root)
    with pytest.raises(InputError, match=r"uri: 'a\\x00b\.png' is not a usable file path"):
        resolve_uri('a\x00b.png', root)
    with pytest.raises(InputError, match="uri: scheme 'http'"):
        resolve_uri('http://example.com/a.png', root)
    with pytest.raises(InputError, match='uri: expected a non-empty file path'):
        resolve_uri('', root)
    with pytest.raises(InputError, match="set 'root' in the decoding spec"):
        resolve_in_root('a.png', None)
