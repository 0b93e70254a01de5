"""Preprocessor: decodes raw content (vector, image, mesh, text) into the model-independent value
documents keep (``doc.tensor``, or ``doc.text`` for text); model input transforms run later, in the
Encoder and the trainer, from the model version they use."""
from typing import Dict, List, Optional

from jina import Executor, requests

from executors.data.decoding import build_decoder
from executors.data.schema import Doc, DocList
from executors.errors import InputError
from executors.service.parameters import require_docs, validate_parameters

PREPROCESSED_ENDPOINTS = ['/train', '/index', '/search', '/evaluate']


class Preprocessor(Executor):
    """Applies a decoding spec (see :mod:`executors.data.decoding`) to every doc.

    ``decoding``: e.g. ``{'modality': 'vector', 'dim': 3}``, ``{'modality': 'image', 'max_side': 512}``
    or ``{'modality': 'mesh', 'num_points': 2048}`` (default vector); ``data_root``: directory that
    ``uri``s are resolved in (a uri escaping it is rejected), default the executor's workspace;
    ``endpoints``: serve only these of ``/train``, ``/index``, ``/search``, ``/evaluate`` (Jina
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

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/search', docs, parameters)

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._decode('/evaluate', docs, parameters)
