"""ShardMerger: the ``uses_after`` of a sharded Indexer; merges the shards' answers.

Jina's own reduction (docarray v2 ``reduce_all``) merges docs by id field by field: it would
concatenate ``match_ids`` and keep one shard's ``match_scores``, so it cannot merge a top-k.
This executor receives every shard's answer (``docs_matrix``) and merges them with
:func:`executors.search.shards.merge_top_k`.
"""
from typing import Dict, List, Optional

from jina import Executor, requests

from executors.data.schema import Batch, Doc, DocList, Report, report
from executors.search.shards import merge_top_k

SUMMED = ('num_docs', 'reindexed', 'missing')


def _merge_reports(matrix: List[DocList[Report]]) -> DocList[Report]:
    """One report: the first shard's data, with counts (``num_docs``, ``reindexed``, ``missing``)
    summed over the shards, also inside the ``indexer`` entry."""
    datas = [dict(m[0].data) for m in matrix if len(m)]
    if not datas:
        return DocList[Report]()
    merged = dict(datas[0])
    for key in SUMMED:
        if key in merged:
            merged[key] = sum(d.get(key, 0) for d in datas)
    if isinstance(merged.get('indexer'), dict):
        merged['indexer'] = dict(merged['indexer'])
        merged['indexer']['num_docs'] = sum(d['indexer'].get('num_docs', 0) for d in datas)
        merged['indexer']['shards'] = len(datas)
    return report(merged)


class ShardMerger(Executor):
    """Merges the answers of ``N`` Indexer shards into the answer of one Indexer."""

    @requests(on='/search')
    def search(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], parameters: Dict, **kwargs) -> DocList[Doc]:
        matrix = [m for m in (docs_matrix or []) if m is not None]
        if not matrix:
            return DocList[Doc]()
        limit = int(parameters.get('limit', 10))
        merged = matrix[0]
        for position, doc in enumerate(merged):
            answers = [(m[position].match_ids, m[position].match_scores if m[position].match_scores is not None
                        else [], m[position].match_fields) for m in matrix]
            doc.match_ids, doc.match_scores, doc.match_fields = merge_top_k(answers, limit)
        return merged

    @requests(on='/index')
    def index(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], **kwargs) -> DocList[Doc]:
        return (docs_matrix or [DocList[Doc]()])[0]

    @requests(on='/index/bulk')
    def index_bulk(self, docs: DocList[Batch], docs_matrix: Optional[List[DocList[Batch]]], **kwargs) -> DocList[Batch]:
        matrix = docs_matrix or [DocList[Batch]()]
        merged = matrix[0]
        for position, batch in enumerate(merged):
            batch.num_indexed = sum(m[position].num_indexed or 0 for m in matrix)
        return merged

    @requests(on='/model/missing')
    def missing(self, docs: DocList[Doc], docs_matrix: Optional[List[DocList[Doc]]], parameters: Dict, **kwargs) -> DocList[Doc]:
        limit = int(parameters.get('limit', 256))
        return DocList[Doc]([d for m in (docs_matrix or []) for d in m][:limit])

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(docs_matrix or [])

    @requests(on='/model/prepare')
    def prepare(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(docs_matrix or [])

    @requests(on='/model/activate')
    def activate(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(docs_matrix or [])

    @requests(on='/model/status')
    def model_status(self, docs: DocList[Report], docs_matrix: Optional[List[DocList[Report]]], **kwargs) -> DocList[Report]:
        return _merge_reports(docs_matrix or [])
