"""Preprocessor: raw content (vector, image, mesh, text) -> model input in ``doc.tensor``."""
from typing import Dict, List, Optional

import numpy as np
from jina import Executor, requests

from executors.errors import InputError
from executors.service.parameters import require_docs, validate_parameters
from executors.data.preprocessing import build_preprocessing
from executors.data.schema import Batch, Doc, DocList

PREPROCESSED_ENDPOINTS = ['/train', '/index', '/index/bulk', '/search', '/search/evaluate', '/evaluate']


class Preprocessor(Executor):
    """Applies a preprocessing spec (see :mod:`executors.data.preprocessing`) to every doc.

    ``preprocessing``: e.g. ``{'modality': 'vector', 'dim': 3}`` or ``{'modality': 'mesh',
    'num_points': 1024}``; ``data_root``: directory that ``uri``s are resolved in (a uri
    escaping it is rejected), default the executor's workspace; ``endpoints``: serve only these
    of ``/train``, ``/index``, ``/search``, ``/evaluate`` (Jina requires every endpoint an
    executor serves to be served by the next executor in the Flow too).
    """

    def __init__(self, preprocessing: Optional[Dict] = None, data_root: Optional[str] = None,
                 endpoints: Optional[List[str]] = None, **kwargs):
        super().__init__(**kwargs)
        if endpoints is not None:
            unknown = set(endpoints) - set(PREPROCESSED_ENDPOINTS)
            if unknown:
                raise InputError(f'endpoints: {sorted(unknown)} not served; choose from {PREPROCESSED_ENDPOINTS}')
            for endpoint in set(PREPROCESSED_ENDPOINTS) - set(endpoints):
                del self.requests[endpoint]
        spec = dict(preprocessing or {'modality': 'vector'})
        root = data_root or self.workspace
        if root and spec.get('modality') in ('image', 'mesh'):
            spec.setdefault('root', root)
        self.pipeline = build_preprocessing(spec)

    def _apply(self, endpoint: str, docs: DocList[Doc], parameters: Dict) -> DocList[Doc]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        for i, doc in enumerate(docs):
            fields = {'tensor': doc.tensor, 'uri': doc.uri, 'text': doc.text, 'blob': None}
            try:
                result = self.pipeline.apply(fields)
            except ValueError as e:
                raise type(e)(f'docs[{i}] (id {doc.id!r}): {e}') from e
            if not isinstance(result, dict):  # text stays text: the text model tokenizes it
                doc.tensor = result
        return docs

    @requests(on='/train')
    def train(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._apply('/train', docs, parameters)

    @requests(on='/index')
    def index(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._apply('/index', docs, parameters)

    @requests(on='/index/bulk')
    def index_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        """Columns of :class:`Batch` docs: ``tensor [N, ...]`` row by row through the same pipeline."""
        validate_parameters('/index/bulk', parameters)
        require_docs('/index/bulk', docs)
        for b, batch in enumerate(docs):
            n = len(batch.ids)
            if batch.tensor is None or len(batch.tensor) != n or n == 0:
                raise InputError(f'docs[{b}].tensor: expected [N, ...] with one row per id (N = {n} ids), got '
                                 f'{None if batch.tensor is None else tuple(batch.tensor.shape)}')
            if len(set(batch.ids)) != n:
                raise InputError(f'docs[{b}].ids: ids in a batch must be unique')
            for name in ('labels', 'tags'):
                column = getattr(batch, name)
                if column is not None and len(column) != n:
                    raise InputError(f'docs[{b}].{name}: expected {n} values (one per id), got {len(column)}')
            rows = []
            for i, row in enumerate(np.asarray(batch.tensor)):
                try:
                    rows.append(self.pipeline.apply({'tensor': row, 'uri': None, 'text': None, 'blob': None}))
                except ValueError as e:
                    raise type(e)(f'docs[{b}] row {i} (id {batch.ids[i]!r}): {e}') from e
            batch.tensor = np.stack(rows)
        return docs

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._apply('/search', docs, parameters)

    @requests(on='/search/evaluate')
    def search_evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._apply('/search/evaluate', docs, parameters)

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._apply('/evaluate', docs, parameters)
