"""A no-op executor for measuring Jina's own floor: each handler returns its docs unchanged.

A flow of as many of these as the search flow has executors, passing the same ``Doc`` schema,
costs what the framework costs per request and per hop (serialisation, gRPC, the gateway);
benchmarks/bench_search.py compares the search flow with it.
"""
from typing import Dict

from jina import Executor, requests

from executors.data.schema import Batch, Doc, DocList


class NoOp(Executor):
    @requests(on=['/index', '/search'])
    def docs(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return docs

    @requests(on='/index/bulk')
    def bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        return docs
