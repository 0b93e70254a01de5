"""Encoder: embeds decoded docs with the active model version, through that version's own input
transform (loaded from its ``model.json``), and stamps ``doc.model_version``."""
from typing import Dict

from jina import Executor, requests

from executors.models.inference import doc_content
from executors.models import ModelStore
from executors.models.serving import VersionedEncoder
from executors.service.parameters import require_docs, required_parameter, validate_parameters
from executors.data.schema import Doc, DocList, Report, report


class Encoder(Executor):
    """Embeds on ``/index`` and ``/search``; swaps models with ``/model/prepare``,
    ``/model/reindex`` (embed stored docs with the prepared version) and ``/model/activate``.

    While a swap is prepared, ``/index`` docs are embedded by both versions (the candidate's
    in ``candidate_embedding``) so the Indexer's next generation stays complete.
    """

    def __init__(self, store_dir: str = 'models', model_name: str = 'model', batch_size: int = 256,
                 device: str = 'cpu', **kwargs):
        super().__init__(**kwargs)
        self.encoder = VersionedEncoder(ModelStore(store_dir), model_name, batch_size=batch_size, device=device)

    def _embed(self, endpoint: str, docs: DocList[Doc], parameters: Dict, both: bool = False) -> DocList[Doc]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        contents = [doc_content(d) for d in docs]
        if both:
            vectors, version, candidate_vectors, candidate = self.encoder.embed_both(contents)
        else:
            (vectors, version), candidate_vectors, candidate = self.encoder.embed(contents), None, None
        mark_truncated(docs, contents, self.encoder.input_transform(version))
        for i, doc in enumerate(docs):
            doc.embedding, doc.model_version = vectors[i], version
            if candidate is not None:
                doc.candidate_embedding, doc.candidate_version = candidate_vectors[i], candidate
        return docs

    @requests(on='/index')
    def index(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._embed('/index', docs, parameters, both=True)

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._embed('/search', docs, parameters)

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        version = required_parameter('/model/reindex', validate_parameters('/model/reindex', parameters), 'version')
        if len(docs):
            vectors, version = self.encoder.embed([doc_content(d) for d in docs], version)
            for doc, vector in zip(docs, vectors):
                doc.embedding, doc.model_version = vector, version
        return docs

    @requests(on='/model/prepare')
    def prepare(self, parameters: Dict, **kwargs) -> DocList[Report]:
        version = validate_parameters('/model/prepare', parameters).get('version')
        prepared = self.encoder.prepare(version)
        return report({'version': prepared, 'encoder': self.encoder.status()})

    @requests(on='/model/activate')
    def activate(self, parameters: Dict, **kwargs) -> DocList[Report]:
        version = required_parameter('/model/activate', validate_parameters('/model/activate', parameters), 'version')
        self.encoder.activate(version)
        return report({'version': version, 'encoder': self.encoder.status()})

    @requests(on='/model/status')
    def model_status(self, parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/status', parameters)
        self.encoder.ensure_active()
        return report({'encoder': self.encoder.status()})


TRUNCATED_TAG = 'truncated_to_tokens'


def mark_truncated(docs, contents, transform) -> None:
    """Tag each text the version's text transform cuts: ``doc.tags['truncated_to_tokens'] = max_length``."""
    if transform is None or getattr(transform, 'modality', None) != 'text' or not transform.truncation:
        return
    texts = [(i, c) for i, c in enumerate(contents) if isinstance(c, str)]
    for position in transform.truncated([c for _, c in texts]):
        docs[texts[position][0]].tags[TRUNCATED_TAG] = transform.max_length
