"""Preprocessor: decodes raw content (vector, image, mesh, text) into the model-independent value
documents keep (``doc.tensor``, or ``doc.text`` for text); model input transforms run later, in the
Encoder and the trainer, from the model version they use."""
from typing import Dict, List, Optional

import numpy as np
from jina import Executor, requests

from executors.data.decoding import build_decoder
from executors.data.schema import Batch, Doc, DocList
from executors.errors import InputError
from executors.service.parameters import require_docs, validate_parameters

PREPROCESSED_ENDPOINTS = ['/train', '/index', '/index/bulk', '/search', '/search/bulk', '/search/evaluate',
                          '/evaluate']


class Preprocessor(Executor):
    """Applies a decoding spec (see :mod:`executors.data.decoding`) to every doc.

    ``decoding``: e.g. ``{'modality': 'vector', 'dim': 3}``, ``{'modality': 'image', 'max_side': 512}``
    or ``{'modality': 'mesh', 'num_points': 2048}`` (default vector); ``data_root``: directory that
    ``uri``s are resolved in (a uri escaping it is rejected), default the executor's workspace;
    ``endpoints``: serve only these of ``/train``, ``/index``, ``/index/bulk``, ``/search``, ``/search/bulk``, ``/evaluate`` (Jina
    requires every endpoint an executor serves to be served by the next executor in the Flow too).
    Decoded values: vectors float32 [D] and point clouds float32 [N, 3] and image pixels uint8
    [H, W, 3] in ``doc.tensor`` (``uri`` is kept), texts in ``doc.text``.
    """

    def __init__(self, decoding: Optional[Dict] = None, data_root: Optional[str] = None,
                 endpoints: Optional[List[str]] = None, **kwargs):
        super().__init__(**kwargs)
        if endpoints is not None:
            unknown = set(endpoints) - set(PREPROCESSED_ENDPOINTS)
            if unknown:
                raise InputError(f'endpoints: {sorted(unknown)} not served; choose from {PREPROCESSED_ENDPOINTS}')
            for endpoint in set(PREPROCESSED_ENDPOINTS) - set(endpoints):
                del self.requests[endpoint]
        self.decoder = build_decoder(decoding or {'modality': 'vector'}, root=data_root or self.workspace or None)

    def _decode(self, endpoint: str, docs: DocList[Doc], parameters: Dict) -> DocList[Doc]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        values = self.decoder.decode_batch([{'id': doc.id, 'tensor': doc.tensor, 'uri': doc.uri, 'text': doc.text,
                                             'blob': None} for doc in docs])
        for doc, value in zip(docs, values):
            if isinstance(value, str):
                doc.text = value
            else:
                doc.tensor = value
        return docs

    @requests(on='/train')
    def train(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/train', docs, parameters)

    @requests(on='/index')
    def index(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/index', docs, parameters)

    def _decode_batches(self, endpoint: str, docs: DocList[Batch], parameters: Dict) -> DocList[Batch]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        for b, batch in enumerate(docs):
            n = len(batch.ids) if batch.ids or endpoint == '/index/bulk' else \
                (0 if batch.tensor is None else len(batch.tensor))
            if batch.tensor is None or len(batch.tensor) != n or n == 0:
                raise InputError(f'docs[{b}].tensor: expected [N, ...] with one row per id (N = {n} ids), got '
                                 f'{None if batch.tensor is None else tuple(batch.tensor.shape)}')
            if len(set(batch.ids)) != len(batch.ids):
                raise InputError(f'docs[{b}].ids: ids in a batch must be unique')
            for name in ('labels', 'tags'):
                column = getattr(batch, name)
                if column is not None and len(column) != n:
                    raise InputError(f'docs[{b}].{name}: expected {n} values (one per id), got {len(column)}')
            ids = batch.ids or [f'row {i}' for i in range(n)]
            try:
                values = self.decoder.decode_batch([{'id': doc_id, 'tensor': row, 'uri': None, 'text': None,
                                                     'blob': None} for doc_id, row in zip(ids, batch.tensor)])
            except InputError as e:
                raise InputError(f'docs[{b}] (a {endpoint} batch), {e}') from e
            batch.tensor = np.stack(values)
        return docs

    @requests(on='/index/bulk')
    def index_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        """Columns of :class:`Batch` docs: ``tensor [N, ...]`` decoded row by row like ``/index`` docs."""
        return self._decode_batches('/index/bulk', docs, parameters)

    @requests(on='/search/bulk')
    def search_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        """Query columns: ``tensor [N, ...]`` decoded row by row like ``/search`` docs."""
        return self._decode_batches('/search/bulk', docs, parameters)

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/search', docs, parameters)

    @requests(on='/search/evaluate')
    def search_evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/search/evaluate', docs, parameters)

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/evaluate', docs, parameters)
