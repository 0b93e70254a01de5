"""ShardMerger: the ``uses_after`` of a sharded Indexer; merges the shards' answers.

Jina's own reduction (docarray v2 ``reduce_all``) merges docs by id field by field: it would
concatenate ``match_ids`` and keep one shard's ``match_scores``, so it cannot merge a top-k.
This executor receives every shard's answer (``docs_matrix``) and merges them into the answer
one Indexer holding every document gives, for every Indexer endpoint (see
:mod:`executors.search.shards`): top-k (``/search``, ``/search/bulk``), metrics of the merged
top-k with relevant counts summed over shards (``/search/evaluate``), counts summed (``/count``,
``/update``, ``/index/bulk``, swap reports), ``/get`` and ``/delete`` per id across shards, and
``/model/status`` with every shard's state under ``shards``.

Jina's head merges whatever shards it sent a request to, without an error when that is fewer than
all (by default it sends ``/index`` to one shard, round robin, even with ``polling: ALL``; see
:mod:`executors.search.flow_config`): with ``shards: N`` set, an answer from fewer shards is refused
with a :class:`~executors.errors.RetryableError` (HTTP 503: resend; repeating a write is safe),
never passed on as the whole answer.
"""
from typing import Dict, List, Optional

import numpy as np
from jina import Executor, requests

from executors.data.schema import Batch, Doc, DocList, Report, assign, report
from executors.errors import RetryableError
from executors.search.shards import merge_delete, merge_evaluation, merge_get, merge_top_k

SUMMED = ('num_docs', 'reindexed', 'missing', 'count', 'updated')


def _datas(matrix) -> List[Dict]:
    return [dict(m[0].data) for m in (matrix or []) if m is not None and len(m)]


def _merge_reports(matrix: List[DocList[Report]]) -> DocList[Report]:
    """One report: the first shard's data, with counts (``num_docs``, ``reindexed``, ``missing``,
    ``count``, ``updated``) summed over the shards. A status (``indexer`` entry) sums ``num_docs``
    and ``pending_missing``; ``active_version`` is the shards' common one (None while they differ,
    mid-switch), ``pending_version`` any shard's; ``shards`` lists every shard's status, by shard id."""
    datas = _datas(matrix)
    if not datas:
        return DocList[Report]()
    if any(not d for d in datas):  # a shard failed (bad input): pass its answer on with its error
        return matrix[0]
    merged = dict(datas[0])
    for key in SUMMED:
        if key in merged:
            merged[key] = sum(d.get(key, 0) for d in datas)
    if all(isinstance(d.get('indexer'), dict) for d in datas):
        statuses = sorted(datas, key=lambda d: d['indexer'].get('shard_id', 0))
        indexers = [d['indexer'] for d in statuses]
        merged['indexer'] = dict(indexers[0])
        merged['indexer'].pop('shard_id', None)
        merged['indexer']['num_docs'] = sum(i.get('num_docs', 0) for i in indexers)
        actives = {i.get('active_version') for i in indexers}
        merged['indexer']['active_version'] = actives.pop() if len(actives) == 1 else None
        pendings = [i.get('pending_version') for i in indexers if i.get('pending_version') is not None]
        merged['indexer']['pending_version'] = pendings[0] if pendings else None
        missing = [i.get('pending_missing') for i in indexers if i.get('pending_missing') is not None]
        merged['indexer']['pending_missing'] = sum(missing) if missing else None
        merged['indexer']['shards'] = len(datas)
        merged['shards'] = [{key: d.get(key) for key in ('indexer', 'lifecycle', 'retirement') if key in d}
                            for d in statuses]
    return report(merged)


class ShardMerger(Executor):
    """Merges the answers of ``shards`` Indexer shards into the answer of one Indexer."""

    def __init__(self, shards: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.shards = shards

    def _complete(self, docs_matrix) -> List:
        """The shards' answers; RetryableError when fewer than ``shards`` answered."""
        matrix = [m for m in (docs_matrix or []) if m is not None]
        if docs_matrix is not None and self.shards and len(matrix) < self.shards:
            raise RetryableError(f'only {len(matrix)} of {self.shards} index shards answered (a shard was not '
                                 'reached); resend the request (repeating a write is safe)')
        return matrix

    @requests(on='/search')
    def search(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], parameters: Dict, **kwargs) -> DocList[Doc]:
        matrix = self._complete(docs_matrix)
        if not matrix:
            return DocList[Doc]()
        limit = int(parameters.get('limit', 10))
        merged = matrix[0]
        for position, doc in enumerate(merged):
            answers = [(m[position].match_ids, m[position].match_scores if m[position].match_scores is not None
                        else [], m[position].match_fields) for m in matrix]
            doc.match_ids, doc.match_scores, doc.match_fields = merge_top_k(answers, limit)
        return merged

    @requests(on='/search/bulk')
    def search_bulk(self, docs: DocList[Batch], docs_matrix: Optional[List[DocList[Batch]]], parameters: Dict,
                    **kwargs) -> DocList[Batch]:
        matrix = self._complete(docs_matrix)
        if not matrix:
            return DocList[Batch]()
        limit = int(parameters.get('limit', 10))
        merged = matrix[0]
        for position, batch in enumerate(merged):
            shards = [m[position] for m in matrix]
            flat_ids, flat_fields, counts = [], {name: [] for name in batch.match_fields}, []
            scores = np.zeros((len(batch.match_counts), limit), dtype=np.float32)
            for row in range(len(batch.match_counts)):
                answers = []
                for shard in shards:
                    n = int(shard.match_counts[row])
                    start = row * limit
                    answers.append((shard.match_ids[start:start + n], np.asarray(shard.match_scores)[row, :n],
                                    {k: v[start:start + n] for k, v in shard.match_fields.items()}))
                ids, row_scores, fields = merge_top_k(answers, limit)
                pad = limit - len(ids)
                counts.append(len(ids))
                scores[row, :len(ids)] = row_scores
                flat_ids += ids + [''] * pad
                for name in flat_fields:
                    flat_fields[name] += fields[name] + [None] * pad
            assign(batch, match_ids=flat_ids, match_scores=scores, match_counts=np.asarray(counts, dtype=np.int64),
                   match_fields=flat_fields)
        return merged

    @requests(on='/index')
    def index(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], **kwargs) -> DocList[Doc]:
        return (self._complete(docs_matrix) or [DocList[Doc]()])[0]

    @requests(on='/index/bulk')
    def index_bulk(self, docs: DocList[Batch], docs_matrix: Optional[List[DocList[Batch]]], **kwargs) -> DocList[Batch]:
        matrix = self._complete(docs_matrix) or [DocList[Batch]()]
        merged = matrix[0]
        for position, batch in enumerate(merged):
            batch.num_indexed = sum(m[position].num_indexed or 0 for m in matrix)
        return merged

    @requests(on='/model/missing')
    def missing(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], parameters: Dict, **kwargs) -> DocList[Doc]:
        limit = int(parameters.get('limit', 256))
        return DocList[Doc]([d for m in self._complete(docs_matrix) for d in m][:limit])

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/model/prepare')
    def prepare(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/model/activate')
    def activate(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/model/status')
    def model_status(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/model/rollback')
    def rollback(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/count')
    def count(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/update')
    def update(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(self._complete(docs_matrix))

    @requests(on='/delete')
    def delete(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        datas = _datas(self._complete(docs_matrix))
        if not datas or not all('not_found' in d for d in datas):
            return docs  # the shards failed (bad input): their error reaches the client
        return report(merge_delete(datas))

    @requests(on='/get')
    def get(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], **kwargs) -> DocList[Doc]:
        matrix = self._complete(docs_matrix)
        return DocList[Doc](merge_get(matrix)) if matrix else DocList[Doc]()

    @requests(on='/search/evaluate')
    def evaluate(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        datas = _datas(self._complete(docs_matrix))
        if not datas or not all('shard_part' in d for d in datas):
            return docs  # the shards failed (bad input): their error reaches the client
        return report(merge_evaluation([d['shard_part'] for d in datas]))
