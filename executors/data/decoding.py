"""Decoding: a document's raw content -> its decoded value (model-independent; the Preprocessor's job).

A document is a dict of plain fields: ``tensor`` (array), ``blob`` (encoded bytes), ``uri`` (a file
path inside the decoder's ``root``; paths escaping it are refused) and ``text``. Each modality has one
:class:`Decoder`, in its own module ``executors/data/<modality>.py`` beside that modality's
:class:`executors.data.transforms.InputTransform`:

========  ============================================  ==================================
modality  decoded value (what documents store)           decoding settings
========  ============================================  ==================================
vector    float32 [D], finite                            dim
image     uint8 RGB pixels [H, W, 3]                     root, max_side
mesh      float32 [N, 3] points sampled on the surface   root, num_points, seed, file_type
text      str                                            (none)
========  ============================================  ==================================

A decoder is a dataclass whose init fields are its settings; ``build_decoder(spec)`` makes one from a
JSON-able spec such as ``{'modality': 'mesh', 'num_points': 2048, 'root': '/data'}`` and ``to_spec()``
writes it back. Errors are InputErrors naming the field.

A new modality is one new module ``executors/data/<name>.py`` defining a Decoder and an
InputTransform subclass (each with ``modality = '<name>'``, registered by subclassing), listed in
:data:`MODALITY_MODULES`.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from executors.data.labels import about_doc
from executors.data.specs import build_from_spec, spec_of
from executors.errors import InputError

MODALITY_MODULES = ('vector', 'image', 'mesh', 'text')
"""Modules of ``executors.data`` that define one modality each (imported on first use of a registry)."""

DECODERS: dict[str, type['Decoder']] = {}


def load_modalities(registry: dict[str, type] | None = None) -> dict[str, type]:
    """Import every modality module, so that its Decoder and InputTransform register; returns
    ``registry`` (if given) ordered as MODALITY_MODULES, other registered names after them."""
    for name in MODALITY_MODULES:
        importlib.import_module(f'executors.data.{name}')
    registry = registry or {}
    order = [name for name in MODALITY_MODULES if name in registry] + [name for name in registry if name not in MODALITY_MODULES]
    return {name: registry[name] for name in order}


@dataclass
class Decoder(ABC):
    """One modality's decoding: plain document fields -> decoded value. Subclass fields are its settings."""

    modality: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'modality' in cls.__dict__:
            DECODERS[cls.modality] = cls

    @abstractmethod
    def decode(self, fields: Mapping[str, Any]) -> Any:
        """The decoded value of one document (an ndarray, or a str for text)."""

    def decode_batch(self, docs_fields: Sequence[Mapping[str, Any]]) -> list:
        """``decode`` of each document; errors name the document (``docs[i] (id ...)``)."""
        if not docs_fields:
            raise InputError('docs: expected at least one document')
        values = []
        for index, doc_fields in enumerate(docs_fields):
            with about_doc(index, doc_fields):
                values.append(self.decode(doc_fields))
        return values

    def to_spec(self) -> dict:
        """JSON-able spec that :func:`build_decoder` turns back into an equal decoder."""
        return spec_of(self, 'modality', self.modality)


def build_decoder(spec: Mapping[str, Any], root: str | None = None) -> Decoder:
    """A decoder from its spec ``{'modality': <one of DECODERS>, **settings}``. ``root`` is the
    default data root of decoders that read files (a ``root`` in the spec wins)."""
    decoders = load_modalities(DECODERS)
    if isinstance(spec, Mapping) and root is not None and spec.get('modality') in decoders \
            and 'root' in {f.name for f in fields(decoders[spec['modality']])}:
        spec = {'root': str(root), **spec}
    return build_from_spec(spec, 'modality', decoders, 'decoding', 'modality', "{'modality': 'image', 'max_side': 512}")
