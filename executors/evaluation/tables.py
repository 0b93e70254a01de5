"""Evaluation helpers shared by the Evaluator, the trainer and the demos.

* :func:`match_relevance`: search results (labels of matches) -> relevance matrix for
  :func:`executors.evaluation.metrics.retrieval_metrics`;
* :func:`comparison_table`: a markdown table with one column per model/space.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from executors.errors import InputError


def match_relevance(query_labels: Sequence[Optional[str]], match_labels: Sequence[Sequence[Optional[str]]],
                    k: int) -> np.ndarray:
    """``relevance [Q, k]``: 1 where match ``j`` of query ``i`` has the query's label; short result
    lists are padded with 0."""
    relevance = np.zeros((len(query_labels), k), dtype=np.float64)
    for i, (label, labels) in enumerate(zip(query_labels, match_labels)):
        if label is None:
            raise InputError(f'docs[{i}].label: missing; evaluation needs labelled queries')
        hits = [1.0 if m == label else 0.0 for m in list(labels)[:k]]
        relevance[i, :len(hits)] = hits
    return relevance


def comparison_table(columns: Dict[str, Dict[str, float]], metric_names: Optional[List[str]] = None) -> str:
    """Markdown table: one row per metric, one column per entry of ``columns`` (e.g. before/after)."""
    names = metric_names or sorted({m for metrics in columns.values() for m in metrics})
    header = '| metric | ' + ' | '.join(columns) + ' |'
    rule = '|---|' + '---|' * len(columns)
    rows = []
    for name in names:
        cells = []
        for metrics in columns.values():
            value = metrics.get(name)
            cells.append('' if value is None else f'{value:.3f}')
        rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join([header, rule, *rows])

