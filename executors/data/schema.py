"""The document types every executor reads and writes (docarray v2).

One schema for the whole pipeline, so each Flow's executors agree on it and it round-trips
through Jina's HTTP JSON and gRPC protobuf:

* ``Doc``: one item (a vector, a text, an image or a mesh by ``uri``) with its label,
  its decoded value (``tensor``), its embedding and the model version that made it, and
  its search results in ``matches``.
  A search answer is compact, on the query doc itself: ``match_ids`` (best first),
  ``match_scores`` ``[k]`` and ``match_fields`` (``{field: [value per match]}``, the stored
  fields the query asked for, ``label`` by default); :func:`executors.search.results.matches`
  turns it into a list of dicts.
* ``Batch``: many items as columns (``ids`` ``[N]``, ``tensor`` ``[N, ...]``, optional
  ``labels``/``tags``): the bulk ingest path ``/index/bulk``, one protobuf message per batch
  instead of one document per item.
* ``Match``: a labelled match of a query in session training data.
* ``Report``: a key/value answer (status, metrics, model versions).

Labels live in the typed ``label`` field; the old Finetuner's ``tags['finetuner_label']``
is accepted on input (see :func:`doc_label`).
"""
from typing import Any, Dict, List, Optional

import numpy as np
from docarray import BaseDoc, DocList
from docarray.typing import ID, NdArray

LEGACY_LABEL_TAG = 'finetuner_label'


def _id_from_protobuf(cls, pb_msg: str) -> ID:
    """``ID.from_protobuf`` without a pydantic ``TypeAdapter`` per call: docarray 0.41 calls
    ``parse_obj_as(ID, text)``, which builds a new TypeAdapter for every document it reads (about
    half of ``DocList.from_protobuf``'s time in benchmarks/profile_search.py); ``ID`` validation
    is ``str(value)``, done here directly. Every process that imports this schema reads ids this way."""
    return cls(str(pb_msg))


ID.from_protobuf = classmethod(_id_from_protobuf)


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
    match_ids: List[str] = []
    match_scores: Optional[NdArray] = None
    match_fields: Dict[str, Any] = {}


class Batch(BaseDoc):
    """``N`` items in columns for ``/index/bulk`` and ``/search/bulk``: ``ids`` ``[N]`` (optional
    for queries), ``tensor`` ``[N, ...]`` (one raw value per row), optional ``labels`` ``[N]`` and
    ``tags`` ``[N]``. The Encoder fills ``embedding`` ``[N, D]`` and ``model_version`` (and the
    candidate pair during a swap). A ``/search/bulk`` answer holds ``match_ids`` ``[N * k]`` (row
    by row, ``''`` pads a row with fewer matches), ``match_scores`` ``[N, k]`` (0 pads),
    ``match_counts`` ``[N]`` and ``match_fields`` (``{field: [N * k values]}``)."""

    ids: List[str] = []
    tensor: Optional[NdArray] = None
    labels: Optional[List[Optional[str]]] = None
    tags: Optional[List[Dict[str, Any]]] = None
    embedding: Optional[NdArray] = None
    model_version: Optional[int] = None
    candidate_embedding: Optional[NdArray] = None
    candidate_version: Optional[int] = None
    num_indexed: Optional[int] = None
    match_ids: List[str] = []
    match_scores: Optional[NdArray] = None
    match_counts: Optional[NdArray] = None
    match_fields: Dict[str, Any] = {}


class Report(BaseDoc):
    """A structured answer of a control endpoint (``/status``, ``/evaluate``, ...)."""

    data: Dict[str, Any] = {}


def assign(doc: BaseDoc, **values: Any) -> None:
    """Set fields of ``doc`` to values that already have the field's type (``None``, ints, strings,
    lists of strings, dicts, arrays), without pydantic's validation on every assignment (9 validated
    assignments per document were 40% of the executors' per-document time). Arrays become
    ``NdArray`` views, as validation would make them."""
    fields = type(doc).model_fields
    for name, value in values.items():
        if name not in fields:
            raise AttributeError(f'{type(doc).__name__} has no field {name!r}')
        if isinstance(value, np.ndarray) and not isinstance(value, NdArray):
            value = NdArray._docarray_from_native(value)
        doc.__dict__[name] = value


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


__all__ = ['Batch', 'Doc', 'DocList', 'assign', 'LEGACY_LABEL_TAG', 'Match', 'Report', 'doc_label', 'report', 'tag_text']
