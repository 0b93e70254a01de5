"""Indexer: stores docs and their embeddings (SQLite + FAISS, one generation per model version)."""
from pathlib import Path
from typing import Dict

import numpy as np
from jina import Executor, requests

from executors.errors import InputError
from executors.data.document_store import StoredDoc
from executors.search.vector_index import SearchIndex
from executors.service.parameters import require_docs, required_parameter, validate_parameters
from executors.data.schema import Doc, DocList, Match, Report, report

DEFAULT_LIMIT = 10


def _version_from(docs: DocList[Report], parameters: Dict, endpoint: str) -> int:
    options = dict(parameters)
    if options.get('version') is None and len(docs):  # the Encoder ahead of us resolved it
        options['version'] = docs[0].data.get('version')
    return int(required_parameter(endpoint, options, 'version'))


class Indexer(Executor):
    """``/index`` stores docs (with their decoded values, so any version can re-embed them); ``/search`` answers with ``matches`` (``limit``,
    default 10; score = cosine similarity). Model swaps: ``/model/prepare``, ``/model/missing``
    (stored docs the new generation lacks, to re-embed), ``/model/reindex``, ``/model/activate``,
    ``/model/status``. Everything lives in the executor's workspace.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.index = SearchIndex(Path(self.workspace or 'workspace') / 'index')

    @requests(on='/index')
    def add(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        validate_parameters('/index', parameters)
        require_docs('/index', docs)
        embeddings = {}
        for field, version_field in (('embedding', 'model_version'), ('candidate_embedding', 'candidate_version')):
            versions = {getattr(d, version_field) for d in docs}
            if versions == {None}:
                continue
            if len(versions) > 1 or None in versions:
                raise InputError(f'docs.{version_field}: docs in one request must come from one model version, '
                                 f'got {sorted(map(str, versions))}')
            embeddings[versions.pop()] = np.stack([np.asarray(getattr(d, field), dtype=np.float32) for d in docs])
        if not embeddings:
            raise InputError('docs.embedding: missing; run the docs through the Encoder before the Indexer')
        self.index.add([StoredDoc(id=d.id, label=d.label, text=d.text, uri=d.uri, tags=dict(d.tags),
                                  tensor=None if d.tensor is None else np.asarray(d.tensor)) for d in docs],
                       embeddings)
        for doc in docs:
            doc.tensor = doc.embedding = doc.candidate_embedding = None
        return docs

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        options = validate_parameters('/search', parameters)
        require_docs('/search', docs)
        limit = options.get('limit', DEFAULT_LIMIT)
        if limit < 1:
            raise InputError(f'parameters.limit: must be at least 1, got {limit}')
        versions = {d.model_version for d in docs}
        if None in versions or len(versions) > 1:
            raise InputError('docs.model_version: every query must be embedded by one model version; '
                             'run queries through the Encoder')
        queries = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
        results = self.index.search(queries, versions.pop(), limit)
        for doc, hits in zip(docs, results):
            doc.matches = [Match(id=hit.id, score=score, label=hit.label, text=hit.text, uri=hit.uri,
                                 tags=hit.tags) for hit, score in hits]
            doc.tensor = None
        return docs

    @requests(on='/model/prepare')
    def prepare(self, docs: DocList[Report], parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/prepare', parameters)
        version = _version_from(docs, parameters, '/model/prepare')
        self.index.prepare(version)
        return self._status(docs, version=version)

    @requests(on='/model/missing')
    def missing(self, parameters: Dict, **kwargs) -> DocList[Doc]:
        options = validate_parameters('/model/missing', parameters)
        version = required_parameter('/model/missing', options, 'version')
        docs = self.index.docs_missing_from(version, options.get('limit', 256))
        return DocList[Doc]([Doc(id=d.id, label=d.label, text=d.text, uri=d.uri, tags=d.tags, tensor=d.tensor)
                             for d in docs])

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        version = required_parameter('/model/reindex', validate_parameters('/model/reindex', parameters), 'version')
        if any(d.model_version != version for d in docs):
            raise InputError(f'docs.model_version: reindexed docs must be embedded by version {version}')
        stored = 0
        if len(docs):
            embeddings = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
            stored = self.index.reindex([d.id for d in docs], embeddings, version)
        return report({'reindexed': stored, 'missing': self.index.missing_count(version)})

    @requests(on='/model/activate')
    def activate(self, docs: DocList[Report], parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/activate', parameters)
        version = _version_from(docs, parameters, '/model/activate')
        self.index.activate(version)
        return self._status(docs, version=version)

    @requests(on='/model/status')
    def model_status(self, docs: DocList[Report], parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/status', parameters)
        return self._status(docs)

    def _status(self, docs: DocList[Report], **extra) -> DocList[Report]:
        data = dict(docs[0].data) if len(docs) else {}
        data.update(extra)
        data['indexer'] = {'num_docs': self.index.count(), 'active_version': self.index.active_version,
                           'pending_version': self.index.pending_version,
                           'generations': sorted(self.index.generations)}
        return report(data)
