"""Indexer: stores docs and their embeddings (SQLite + FAISS, one generation per model version)."""
import resource
import threading
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from jina import Executor, requests

from executors.data.document_store import StoredDoc, ids_stored_at
from executors.data.schema import Batch, Doc, DocList, Report, assign, doc_label, report
from executors.errors import InputError
from executors.models import ModelStore
from executors.search.filters import compile_filter
from executors.search.head_swap import fill_from_base
from executors.search.lifecycle import ModelFollower
from executors.search.retirement import DEFAULT_TIMEOUT, QueryLedger, remove_dead_replicas
from executors.search.shards import evaluation_part, evaluation_report, not_indexed, shard_of
from executors.search.vector_index import SearchIndex
from executors.service.limits import RequestLimits
from executors.service.parameters import require_docs, required_parameter, validate_parameters

DEFAULT_LIMIT = 10
DEFAULT_PAGE = 256
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


def _to_doc(doc: StoredDoc) -> Doc:
    return Doc(id=doc.id, label=doc.label, text=doc.text, uri=doc.uri, tags=doc.tags, tensor=doc.tensor)


def _same_content(doc: Doc, stored: StoredDoc) -> bool:
    if doc.text != stored.text or doc.uri != stored.uri or (doc.tensor is None) != (stored.tensor is None):
        return False
    return doc.tensor is None or np.array_equal(np.asarray(doc.tensor), stored.tensor)


class Indexer(Executor):
    """``/index`` stores docs (one per item, upsert by id, with their decoded values, so any version can
    re-embed them) and ``/index/bulk`` stores :class:`Batch`
    columns; ``/search`` answers each query with ``match_ids``, ``match_scores`` and ``match_fields``
    (parameters ``limit`` default 10, ``fields`` default ``['label']``, ``nprobe``/``efSearch``, and
    ``filter`` on label and tags, applied inside the search: see :mod:`executors.search.filters`).
    Documents: ``/update`` (label/tags of stored docs, no re-embedding), ``/delete`` and ``/get``
    (``parameters.ids``), ``/count`` (optional ``filter``). Model swaps: ``/model/prepare``, ``/model/missing`` (stored docs the new generation lacks, to
    re-embed), ``/model/reindex``, ``/model/activate``, ``/model/status``.

    ``index_factory`` (FAISS ``index_factory`` string: ``Flat``, ``HNSW32``, ``IVF1024,Flat``,
    ``IVF1024,PQ32``, ...), ``metric`` (``cosine``, ``inner_product``, ``l2``), ``train_threshold``
    (vectors before IVF/PQ are trained; exact search until then), ``snapshot_interval`` (seconds
    between background FAISS snapshots). With ``shards: N`` in the Flow (``polling`` ALL for every endpoint), each
    shard keeps the docs whose ``shard_of(id, N)`` is its shard id (in ``<index_dir>/shard-<i>``)
    and answers so that the :class:`~executors.shard_merger.ShardMerger` can merge the shards'
    answers into the unsharded one (:mod:`executors.search.shards`). ``index_dir``: where the index
    lives (default ``<workspace>/index``; the Encoder follows the serving version recorded there);
    ``limits``: see :class:`executors.service.limits.RequestLimits`. ``drop_timeout``: the longest an
    old generation is kept after every Encoder replica switched away from it, for queries lost on
    the way (:mod:`executors.search.retirement`: it is dropped as soon as no query can need it).

    Head-only swaps (:mod:`executors.search.head_swap`): with ``store_dir`` and ``model_name`` (the
    Encoder's) or ``follow_store``, ``/model/prepare`` of a version that only changes a head over a
    frozen base whose embeddings are stored fills the new generation itself by applying the head to
    them (its report says ``head_swap``: how many); ``/model/missing`` then lists only the rest.
    """

    def __init__(self, index_factory: str = 'Flat', metric: str = 'cosine', train_threshold: Optional[int] = None,
                 snapshot_interval: float = 60.0, index_dir: Optional[str] = None, limits: Optional[Dict] = None,
                 follow_store: Optional[Dict] = None, drop_timeout: float = DEFAULT_TIMEOUT,
                 store_dir: Optional[str] = None, model_name: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.limits = RequestLimits.from_config(limits)
        if (store_dir is None) != (model_name is None):
            raise InputError('store_dir, model_name: give both (the Encoder\'s model store and model name) for '
                             'head-only swaps, or neither')
        runtime = getattr(self, 'runtime_args', None)
        self.shards = int(getattr(runtime, 'shards', 1) or 1)
        self.shard_id = int(getattr(runtime, 'shard_id', 0) or 0)
        self.root_dir = Path(index_dir) if index_dir else None  # shared with the Encoder (and the other shards)
        if index_dir and self.shards > 1:
            index_dir = str(Path(index_dir) / f'shard-{self.shard_id}')
        self.index = SearchIndex(Path(index_dir) if index_dir else Path(self.workspace or 'workspace') / 'index',
                                 index_factory=index_factory,
                                 metric=metric, train_threshold=train_threshold, snapshot_interval=snapshot_interval)
        self.ledger = QueryLedger(self.root_dir, timeout=drop_timeout)
        if self.root_dir is not None:
            remove_dead_replicas(self.root_dir)  # records left by an earlier run's Encoders
        self.follower = None
        if follow_store:
            options = dict(follow_store)
            self.follower = ModelFollower(self.index, ModelStore(options.pop('store_dir', 'models')),
                                          options.pop('model_name', 'model'), ledger=self.ledger, **options)
        self.model_store = ((self.follower.store, self.follower.model_name) if self.follower is not None else
                            None if store_dir is None else (ModelStore(store_dir), model_name))
        self._stop = threading.Event()
        self._retirer = threading.Thread(target=self._retire_loop, name='generation-retirer', daemon=True)
        self._retirer.start()

    def close(self) -> None:
        self._stop.set()
        self._retirer.join(5)
        if self.follower is not None:
            self.follower.close()
        self.index.close()
        super().close()

    def _retire_loop(self, interval: float = 0.05) -> None:
        """Drop each retiring generation once no query can need it (see executors.search.retirement)."""
        while not self._stop.wait(interval):
            try:
                for version, reason in self.ledger.due(list(self.index.retiring)).items():
                    if self.index.drop(version):
                        self.ledger.dropped(version, reason)
                        self.logger.info(f'dropped index generation {version} ({reason})')
            except Exception:  # noqa: BLE001 - e.g. a replica record being rewritten; retried next time
                self.logger.warning('checking retiring generations failed; retrying')

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
        self.limits.check_docs('/index', docs)
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f'docs.id: {duplicate!r} occurs more than once in the request; send each id once')
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
            assign(doc, tensor=None, embedding=None, candidate_embedding=None, candidate_version=None)
        return docs

    @requests(on='/index/bulk')
    def add_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        validate_parameters('/index/bulk', parameters)
        require_docs('/index/bulk', docs)
        for batch in docs:
            self.limits.check_count('/index/bulk', len(batch.ids))
            if len(set(batch.ids)) != len(batch.ids):
                raise InputError('docs.ids: a /index/bulk batch holds an id more than once; send each id once')
            for i, tags in enumerate(batch.tags or []):
                self.limits.check_doc(f'docs.tags[{i}]', Doc(tags=tags))
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

    def _search_options(self, endpoint: str, parameters: Dict):
        options = validate_parameters(endpoint, parameters)
        limit = self.limits.check_limit('parameters.limit', options.get('limit', DEFAULT_LIMIT))
        fields = options.get('fields', DEFAULT_FIELDS)
        if not all(isinstance(f, str) for f in fields) or set(fields) - set(STORED_FIELDS):
            raise InputError(f'parameters.fields: expected a list of {", ".join(STORED_FIELDS)}, got {fields!r}')
        search_params = {k: options[k] for k in ('nprobe', 'efSearch') if k in options}
        return options, limit, fields, search_params

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        try:
            return self._search(docs, parameters)
        finally:  # answered or failed, it no longer needs its generation
            self.ledger.finish({d.model_version for d in docs})

    def _search(self, docs: DocList[Doc], parameters: Dict) -> DocList[Doc]:
        options, limit, fields, search_params = self._search_options('/search', parameters)
        require_docs('/search', docs)
        self.limits.check_count('/search', len(docs))
        versions = {d.model_version for d in docs}
        if None in versions or len(versions) > 1:
            raise InputError('docs.model_version: every query must be embedded by one model version; '
                             'run queries through the Encoder')
        queries = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
        hits = self.index.search(queries, versions.pop(), limit, allowed_rows=self._allowed_rows(options),
                                 search_params=search_params, fields=fields)
        for i, doc in enumerate(docs):
            assign(doc, match_ids=hits.ids[i], match_scores=hits.scores[i],
                   match_fields={name: hits.fields[name][i] for name in fields},
                   tensor=None, embedding=None, candidate_embedding=None, candidate_version=None)
        return docs

    @requests(on='/search/bulk')
    def search_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        """Query columns in, matches as columns out (see :class:`Batch`): no document per query."""
        try:
            return self._search_bulk(docs, parameters)
        finally:
            self.ledger.finish([b.model_version for b in docs])

    def _search_bulk(self, docs: DocList[Batch], parameters: Dict) -> DocList[Batch]:
        options, limit, fields, search_params = self._search_options('/search/bulk', parameters)
        require_docs('/search/bulk', docs)
        allowed = self._allowed_rows(options)
        for batch in docs:
            if batch.embedding is None or batch.model_version is None:
                raise InputError('docs.embedding: missing; run the batch through the Encoder before the Indexer')
            hits = self.index.search(np.asarray(batch.embedding, dtype=np.float32), batch.model_version, limit,
                                     allowed_rows=allowed, search_params=search_params, fields=fields)
            counts = np.asarray([len(ids) for ids in hits.ids], dtype=np.int64)
            scores = np.zeros((len(counts), limit), dtype=np.float32)
            flat_ids, flat_fields = [], {name: [] for name in fields}
            for i, ids in enumerate(hits.ids):
                pad = limit - len(ids)
                scores[i, :len(ids)] = hits.scores[i]
                flat_ids += ids + [''] * pad
                for name in fields:
                    flat_fields[name] += hits.fields[name][i] + [None] * pad
            assign(batch, match_ids=flat_ids, match_scores=scores, match_counts=counts, match_fields=flat_fields,
                   tensor=None, embedding=None, candidate_embedding=None, candidate_version=None)
        return docs

    def _allowed_rows(self, options: Dict) -> Optional[np.ndarray]:
        if 'filter' not in options:
            return None
        condition, args = compile_filter(options['filter'])
        return self.index.store.rows_matching(condition, args)

    def _ids(self, endpoint: str, docs: DocList[Doc], options: Dict) -> List[str]:
        """Doc ids from ``parameters.ids`` or, if absent, from the request's docs (each once, in order)."""
        ids = options.get('ids')
        if ids is None:
            ids = [d.id for d in docs]
        if not ids:
            raise InputError(f'parameters.ids: {endpoint} needs doc ids: pass parameters.ids=[...] or docs with ids')
        if not all(isinstance(i, str) and i for i in ids):
            raise InputError(f'parameters.ids: expected a list of non-empty strings, got {ids[:5]!r}')
        self.limits.check_page('parameters.ids (count)', len(ids))
        return list(dict.fromkeys(ids))

    def _stored_anywhere(self, ids: List[str]) -> set:
        """The ids among ``ids`` stored in this index or, sharded, in the shard that owns them
        (read from its store, read-only), so that every shard decides alike."""
        found = set(self.index.store.rows_for_ids(ids))
        if self.shards > 1 and self.root_dir is not None:
            for shard in range(self.shards):
                if shard != self.shard_id:
                    owned = [i for i in ids if shard_of(i, self.shards) == shard]
                    found |= ids_stored_at(self.root_dir / f'shard-{shard}' / 'docs.sqlite', owned)
        return found

    @requests(on='/update')
    def update(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        """Set label and/or tags of stored docs (a doc's ``label`` when given, its ``tags`` when
        non-empty), keeping content and embeddings; every id must be stored (else nothing changes:
        with shards every shard checks all ids, so all refuse alike)."""
        validate_parameters('/update', parameters)
        require_docs('/update', docs)
        self.limits.check_docs('/update', docs)
        updates = []
        for i, doc in enumerate(docs):
            for content in ('text', 'uri', 'tensor', 'embedding'):
                if getattr(doc, content) is not None:
                    raise InputError(f'docs[{i}].{content}: /update changes label and tags only; send new content '
                                     'to /index (it re-embeds the doc)')
            fields = {}
            if doc.label is not None:
                fields['label'] = doc.label
            if doc.tags:
                fields['tags'] = dict(doc.tags)
            if not fields:
                raise InputError(f'docs[{i}] (id {doc.id!r}): nothing to update; set label and/or tags')
            updates.append((doc.id, fields))
        stored = self._stored_anywhere([doc_id for doc_id, _ in updates])
        unknown = [doc_id for doc_id, _ in updates if doc_id not in stored]
        if unknown:
            raise not_indexed('docs.id', unknown, '; index them with /index')
        updates = [updates[int(i)] for i in self._mine([doc_id for doc_id, _ in updates])]
        return report({'updated': self.index.store.update_fields(updates)})

    @requests(on='/delete')
    def delete(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        """Delete docs by id from the store and every index generation at once; unknown ids are
        reported, not an error (deleting twice is harmless)."""
        ids = self._ids('/delete', docs, validate_parameters('/delete', parameters))
        stored = self.index.store.rows_for_ids(ids)
        deleted = self.index.delete(ids)
        return report({'deleted': deleted, 'not_found': [i for i in ids if i not in stored],
                       'num_docs': self.index.count()})

    @requests(on='/get')
    def get(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        """The stored docs (id, label, text, uri, tags, tensor) in the order asked; every id must be
        stored. Sharded: every asked id, a bare ``Doc(id)`` for the ones this shard does not hold
        (the ShardMerger answers 404 for an id no shard holds)."""
        ids = self._ids('/get', docs, validate_parameters('/get', parameters))
        found = self.index.store.get_ids(ids)
        if self.shards > 1:
            return DocList[Doc]([_to_doc(found[i][1]) if i in found else Doc(id=i) for i in ids])
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise not_indexed('parameters.ids', unknown)
        return DocList[Doc]([_to_doc(found[i][1]) for i in ids])

    @requests(on='/count')
    def count(self, parameters: Dict, **kwargs) -> DocList[Report]:
        options = validate_parameters('/count', parameters)
        allowed = self._allowed_rows(options)
        return report({'count': self.index.count() if allowed is None else len(allowed)})

    @requests(on='/model/prepare')
    def prepare(self, docs: DocList[Report], parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/prepare', parameters)
        version = _version_from(docs, parameters, '/model/prepare')
        self.index.prepare(version)
        if self.model_store is None:
            return self._status(docs, version=version)
        store, model_name = self.model_store
        return self._status(docs, version=version, head_swap=fill_from_base(self.index, store, model_name, version))

    @requests(on='/model/missing')
    def missing(self, parameters: Dict, **kwargs) -> DocList[Doc]:
        options = validate_parameters('/model/missing', parameters)
        version = required_parameter('/model/missing', options, 'version')
        limit = self.limits.check_page('parameters.limit', options.get('limit', DEFAULT_PAGE))
        return DocList[Doc]([_to_doc(d) for d in self.index.docs_missing_from(version, limit)])

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        """Add docs re-embedded by the Encoder to a generation; each must carry exactly the content
        stored under its id (so no client can plant a vector for a stored doc)."""
        version = required_parameter('/model/reindex', validate_parameters('/model/reindex', parameters), 'version')
        self.limits.check_count('/model/reindex', len(docs))
        if any(d.model_version != version for d in docs):
            raise InputError(f'docs.model_version: reindexed docs must be embedded by version {version}')
        stored_docs = self.index.store.get_ids([d.id for d in docs])
        for i, doc in enumerate(docs):
            if doc.id in stored_docs and not _same_content(doc, stored_docs[doc.id][1]):
                raise InputError(f'docs[{i}] (id {doc.id!r}): content differs from the stored doc; /model/reindex '
                                 're-embeds stored docs as /model/missing returns them (send changes to /index)')
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

    @requests(on='/model/rollback')
    def rollback(self, parameters: Dict, **kwargs) -> DocList[Report]:
        """Serve an earlier version (``version``, default the one served before the current one):
        moves the model store's pointer back; the flow swaps to it in the background."""
        options = validate_parameters('/model/rollback', parameters)
        if self.follower is None:
            raise InputError('/model/rollback: this Indexer does not follow the model store; set follow_store in '
                             'its uses_with, or swap with `python -m executors.search.swap --version N`')
        version = self.follower.rollback(options.get('version'))
        return self._status(DocList[Report](), rollback_to=version)

    @requests(on='/search/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        """Retrieval metrics of the serving version on labelled queries against the stored docs:
        relevant = stored docs with the query's label; hit@k, precision@k, recall@k, mAP@k, NDCG@k
        (``k`` default 10, optional ``filter``; see :func:`executors.search.shards.evaluation_report`).
        Sharded: this shard's top-k and label counts, for the ShardMerger to merge."""
        try:
            return self._evaluate(docs, parameters)
        finally:
            self.ledger.finish({d.model_version for d in docs})

    def _evaluate(self, docs: DocList[Doc], parameters: Dict) -> DocList[Report]:
        options = validate_parameters('/search/evaluate', parameters)
        require_docs('/search/evaluate', docs)
        self.limits.check_count('/search/evaluate', len(docs))
        k = self.limits.check_limit('parameters.k', options.get('k', DEFAULT_LIMIT))
        query_labels = [doc_label(d) for d in docs]
        unlabelled = [i for i, label in enumerate(query_labels) if label is None]
        if unlabelled:
            raise InputError(f'docs[{unlabelled[0]}].label: missing; /search/evaluate needs labelled queries')
        versions = {d.model_version for d in docs}
        if None in versions or len(versions) > 1:
            raise InputError('docs.model_version: every query must be embedded by one model version; '
                             'run queries through the Encoder')
        version = versions.pop()
        queries = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
        allowed = self._allowed_rows(options)
        hits = self.index.search(queries, version, k, allowed_rows=allowed, fields=['label'])
        if allowed is None:
            counts = self.index.store.label_counts()
        else:
            condition, args = compile_filter(options['filter'])
            counts = self.index.store.label_counts_where(condition, args)
        if self.shards > 1:
            return report(evaluation_part(version, k, query_labels, hits.ids, hits.scores, hits.fields['label'],
                                          counts))
        return report(evaluation_report(version, k, query_labels, hits.fields['label'], counts))

    def _status(self, docs: DocList[Report], **extra) -> DocList[Report]:
        data = dict(docs[0].data) if len(docs) else {}
        data.update(extra)
        pending = self.index.pending_version
        data['indexer'] = {'num_docs': self.index.count(), 'active_version': self.index.active_version,
                           'pending_version': pending, 'generations': sorted(self.index.generations),
                           'pending_missing': None if pending is None else self.index.missing_count(pending),
                           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        data['retirement'] = self.ledger.status(sorted(self.index.retiring))
        if self.shards > 1:
            data['indexer']['shard_id'] = self.shard_id
        if self.follower is not None:
            data['lifecycle'] = self.follower.status()
        return report(data)
