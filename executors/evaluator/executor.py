"""Evaluator: retrieval metrics of embedded labelled docs, and before/after tables of fits."""
from typing import Dict

import numpy as np
from jina import Executor, requests

from executors.data.schema import Doc, DocList, Report, report
from executors.errors import InputError, positive_int
from executors.evaluation.metrics import evaluate_embeddings
from executors.evaluation.tables import comparison_table
from executors.service.parameters import require_docs, validate_parameters


class Evaluator(Executor):
    """``/evaluate``: labelled docs with embeddings (from the trainer) -> leave-one-out hit@k,
    precision@k (label purity), recall@k, mAP@k, NDCG@k, MRR, R-precision at ``k``.
    ``/train``, ``/train/clear``, ``/fit``, ``/fit/cancel``, ``/status``: passes the trainer's report on, adding a
    markdown before/after ``table`` once a fit has finished.
    """

    def __init__(self, k: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        options = validate_parameters('/evaluate', parameters)
        require_docs('/evaluate', docs)
        missing = [d.id for d in docs if d.embedding is None or d.label is None]
        if missing:
            raise InputError(f'docs: {len(missing)} doc(s) lack an embedding or a label (e.g. {missing[0]!r}); '
                             'send labelled docs through the trainer')
        if len(docs) < 2:
            raise InputError(f'docs: /evaluate needs at least 2 labelled docs (each is a query against the '
                             f'others), got {len(docs)}')
        if 'k' in options:
            positive_int('parameters.k', options['k'])
        k = min(options.get('k', self.k), len(docs) - 1)
        embeddings = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs])
        metrics = evaluate_embeddings(embeddings, [d.label for d in docs], k=k)
        return report({'k': k, 'num_docs': len(docs), 'model_version': docs[0].model_version, 'metrics': metrics})

    @requests(on=['/train', '/train/clear', '/fit', '/fit/cancel', '/status'])
    def annotate(self, docs: DocList[Report], **kwargs) -> DocList[Report]:
        for doc in docs:
            job = doc.data.get('job', doc.data)
            if job.get('metrics_before') and job.get('metrics_after'):
                doc.data['table'] = comparison_table({'before': job['metrics_before'], 'after': job['metrics_after']})
        return docs
