"""Indexer: stores docs and their embeddings (SQLite + FAISS, one generation per model version)."""
import resource
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from jina import Executor, requests

from executors.data.document_store import StoredDoc
from executors.data.schema import Batch, Doc, DocList, Report, report
from executors.errors import InputError
from executors.search.shards import shard_of
from executors.search.vector_index import SearchIndex
from executors.service.parameters import require_docs, required_parameter, validate_parameters

DEFAULT_LIMIT = 10
DEFAULT_FIELDS = ['label']
STORED_FIELDS = ('id', 'label', 'text', 'uri', 'tags')


def _version_from(docs: DocList[Report], parameters: Dict, endpoint: str) -> int:
    options = dict(parameters)
    if options.get('version') is None and len(docs):  # the Encoder ahead of us resolved it
        options['version'] = docs[0].data.get('version')
    return int(required_parameter(endpoint, options, 'version'))


def _one_version(versions: set, field: str) -> Optional[int]:
    if versions == {None}:
        return None
    if len(versions) > 1 or None in versions:
        raise InputError(f'docs.{field}: docs in one request must come from one model version, '
                         f'got {sorted(map(str, versions))}')
    return versions.pop()


class Indexer(Executor):
    """``/index`` stores docs (one per item) and ``/index/bulk`` stores :class:`Batch` columns;
    ``/search`` answers each query with ``match_ids``, ``match_scores`` and ``match_fields``
    (parameters ``limit`` default 10, ``fields`` default ``['label']``, ``nprobe``/``efSearch``).
    Model swaps: ``/model/prepare``, ``/model/missing`` (stored docs the new generation lacks, to
    re-embed), ``/model/reindex``, ``/model/activate``, ``/model/status``.

    ``index_factory`` (FAISS ``index_factory`` string: ``Flat``, ``HNSW32``, ``IVF1024,Flat``,
    ``IVF1024,PQ32``, ...), ``metric`` (``cosine``, ``inner_product``, ``l2``), ``train_threshold``
    (vectors before IVF/PQ are trained; exact search until then), ``snapshot_interval`` (seconds
    between background FAISS snapshots). With ``shards: N`` in the Flow (``polling: ALL``), each
    shard keeps the docs whose ``shard_of(id, N)`` is its shard id.
    """

    def __init__(self, index_factory: str = 'Flat', metric: str = 'cosine', train_threshold: Optional[int] = None,
                 snapshot_interval: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.index = SearchIndex(Path(self.workspace or 'workspace') / 'index', index_factory=index_factory,
                                 metric=metric, train_threshold=train_threshold, snapshot_interval=snapshot_interval)
        runtime = getattr(self, 'runtime_args', None)
        self.shards = int(getattr(runtime, 'shards', 1) or 1)
        self.shard_id = int(getattr(runtime, 'shard_id', 0) or 0)

    def close(self) -> None:
        self.index.close()
        super().close()

    def _mine(self, ids: List[str]) -> np.ndarray:
        """Positions of the ids this shard owns (all of them when unsharded)."""
        if self.shards == 1:
            return np.arange(len(ids))
        return np.asarray([i for i, doc_id in enumerate(ids) if shard_of(doc_id, self.shards) == self.shard_id],
                          dtype=np.int64)

    @requests(on='/index')
    def add(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        validate_parameters('/index', parameters)
        require_docs('/index', docs)
        mine = self._mine([d.id for d in docs])
        embeddings = {}
        for field, version_field in (('embedding', 'model_version'), ('candidate_embedding', 'candidate_version')):
            version = _one_version({getattr(d, version_field) for d in docs}, version_field)
            if version is not None:
                embeddings[version] = np.stack([np.asarray(getattr(docs[int(i)], field), dtype=np.float32)
                                                for i in mine]) if len(mine) else None
        if not embeddings:
            raise InputError('docs.embedding: missing; run the docs through the Encoder before the Indexer')
        if len(mine):
            chosen = [docs[int(i)] for i in mine]
            self.index.add([StoredDoc(id=d.id, label=d.label, text=d.text, uri=d.uri, tags=dict(d.tags),
                                      tensor=None if d.tensor is None else np.asarray(d.tensor)) for d in chosen],
                           embeddings)
        for doc in docs:
            doc.tensor = doc.embedding = doc.candidate_embedding = None
        return docs

    @requests(on='/index/bulk')
    def add_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        validate_parameters('/index/bulk', parameters)
        require_docs('/index/bulk', docs)
        for batch in docs:
            if batch.embedding is None or batch.model_version is None:
                raise InputError('docs.embedding: missing; run the batch through the Encoder before the Indexer')
            mine = self._mine(batch.ids)
            embeddings = {batch.model_version: np.asarray(batch.embedding, dtype=np.float32)[mine]}
            if batch.candidate_version is not None:
                embeddings[batch.candidate_version] = np.asarray(batch.candidate_embedding, dtype=np.float32)[mine]
            tensor = None if batch.tensor is None else np.asarray(batch.tensor)
            self.index.add([StoredDoc(id=batch.ids[i], label=None if batch.labels is None else batch.labels[i],
                                      tags={} if batch.tags is None else dict(batch.tags[i]),
                                      tensor=None if tensor is None else tensor[i]) for i in mine], embeddings)
            batch.num_indexed = len(mine)
            batch.tensor = batch.embedding = batch.candidate_embedding = None
        return docs

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        options = validate_parameters('/search', parameters)
        require_docs('/search', docs)
        limit = options.get('limit', DEFAULT_LIMIT)
        if limit < 1:
            raise InputError(f'parameters.limit: must be at least 1, got {limit}')
        fields = options.get('fields', DEFAULT_FIELDS)
        if not all(isinstance(f, str) for f in fields) or set(fields) - set(STORED_FIELDS):
            raise InputError(f'parameters.fields: expected a list of {", ".join(STORED_FIELDS)}, got {fields!r}')
        versions = {d.model_version for d in docs}
        if None in versions or len(versions) > 1:
            raise InputError('docs.model_version: every query must be embedded by one model version; '
                             'run queries through the Encoder')
        queries = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
        search_params = {k: options[k] for k in ('nprobe', 'efSearch') if k in options}
        hits = self.index.search(queries, versions.pop(), limit, search_params=search_params, fields=fields)
        for i, doc in enumerate(docs):
            doc.match_ids, doc.match_scores = hits.ids[i], hits.scores[i]
            doc.match_fields = {name: hits.fields[name][i] for name in fields}
            doc.tensor = doc.embedding = None
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
                           'generations': sorted(self.index.generations),
                           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        return report(data)
