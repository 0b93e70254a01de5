"""The document types every executor reads and writes (docarray v2).

One schema for the whole pipeline, so each Flow's executors agree on it and it round-trips
through Jina's HTTP JSON and gRPC protobuf:

* ``Doc``: one item (a vector, a text, an image or a mesh by ``uri``) with its label,
  its decoded value (``tensor``), its embedding and the model version that made it, and
  its search results in ``matches``.
* ``Match``: one search result: the stored document's id, label, text/uri, tags and score.
* ``Report``: a key/value answer (status, metrics, model versions).

Labels live in the typed ``label`` field; the old Finetuner's ``tags['finetuner_label']``
is accepted on input (see :func:`doc_label`).
"""
from typing import Any, Dict, List, Optional

from docarray import BaseDoc, DocList
from docarray.typing import NdArray

LEGACY_LABEL_TAG = 'finetuner_label'


class Match(BaseDoc):
    """A search result (``score``: similarity, higher is closer), or, in session training
    data, a labelled (``+1``/``-1``) match of a query with its content."""

    score: Optional[float] = None
    label: Optional[str] = None
    text: Optional[str] = None
    uri: Optional[str] = None
    tensor: Optional[NdArray] = None
    tags: Dict[str, Any] = {}


class Doc(BaseDoc):
    """One item: raw content (``text``/``uri``/``tensor``), ``label``, decoded value, embedding.

    ``tensor`` holds the raw vector or pixels on input and the model-independent decoded value
    after the Preprocessor (vectors ``[D]``, image pixels uint8 ``[H, W, 3]``, point clouds
    ``[N, 3]``; see :mod:`executors.data.decoding`), never a model-specific input: each model
    version's input transform runs in the Encoder and the trainer. ``embedding`` is ``[D]``
    and ``model_version`` names the model version that computed it. While a model swap is
    being prepared the Encoder also fills ``candidate_embedding``/``candidate_version`` with
    the next version's embedding, so the Indexer's next generation stays complete.
    """

    text: Optional[str] = None
    uri: Optional[str] = None
    tensor: Optional[NdArray] = None
    label: Optional[str] = None
    tags: Dict[str, Any] = {}
    embedding: Optional[NdArray] = None
    model_version: Optional[int] = None
    candidate_embedding: Optional[NdArray] = None
    candidate_version: Optional[int] = None
    matches: List[Match] = []


class Report(BaseDoc):
    """A structured answer of a control endpoint (``/status``, ``/evaluate``, ...)."""

    data: Dict[str, Any] = {}


def doc_label(doc: Doc) -> Optional[str]:
    """The doc's label: ``doc.label``, else the legacy ``tags['finetuner_label']`` as a string."""
    label = getattr(doc, 'label', None)  # docarray v1-style objects have tags but no label field
    if label is not None:
        return label
    legacy = (getattr(doc, 'tags', None) or {}).get(LEGACY_LABEL_TAG)
    return None if legacy is None else tag_text(legacy)


def tag_text(value: Any) -> str:
    """``str(value)``, except integral floats lose their '.0' (1.0 -> '1'): gRPC's Struct and JSON
    turn int tags into floats, and labels must read the same either way."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def report(data: Dict[str, Any]) -> DocList[Report]:
    """A one-document answer holding ``data``."""
    return DocList[Report]([Report(data=data)])


__all__ = ['Doc', 'DocList', 'LEGACY_LABEL_TAG', 'Match', 'Report', 'doc_label', 'report', 'tag_text']
