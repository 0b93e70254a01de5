"""Steps the image and mesh scenarios share: talk to the running train and search flows, score rankings.

* :func:`tune_through_flows`: index, search, train, fit, hot-swap the fit's version in, search again;
* :func:`wait_for_fit`: poll the training flow's ``/status`` until the fit ends, printing progress;
* :func:`search_grpc` / :func:`search_http`: ranked match ids of query docs (by ``uri``) from the search flow;
* :func:`ranking_metrics`: metric@k (1, 5, 10) of ranked ids given each query's relevant ids.
"""
from __future__ import annotations

import time
from typing import Dict, List, Sequence

import numpy as np

HTTP_MAX_DOCS = 100  # Jina's HTTP gateway answers with the first 100 docs of a request only


def tune_through_flows(train_yaml, search_yaml, workdir, index_docs, train_docs, query_docs,
                       fit_parameters: dict, limit: int = 10):
    """``(before, after, swap, job)``: start both flows (free ports), index ``index_docs`` in the search flow,
    rank ``query_docs`` over gRPC (before), send ``train_docs`` to the training flow, ``/fit`` with
    ``fit_parameters``, hot-swap the version the fit published (promoted or not) into the search flow and
    rank again over HTTP (after); ``swap`` is the swap's final status report, ``job`` the finished fit."""
    from jina import Client

    from executors.search.swap import hot_swap
    from executors.service.flow_process import FlowProcess

    with FlowProcess(train_yaml, workdir, free_ports=True) as train_flow, \
            FlowProcess(search_yaml, workdir, free_ports=True) as search_flow:
        train_client = Client(port=train_flow.ports['grpc'])
        search_client = Client(port=search_flow.ports['grpc'])
        search_client.post('/index', index_docs, request_size=50)
        before = search_grpc(search_client, query_docs, limit=limit)
        train_client.post('/train', train_docs, request_size=50)
        train_client.post('/fit', parameters=fit_parameters)
        job = wait_for_fit(train_client)
        swap = hot_swap(search_client, version=job['version'])
        print(f"hot-swapped the search flow to version {swap['version']} ({swap['reindexed']} docs re-embedded)")
        after = search_http(search_flow.ports['http'], query_docs, limit=limit)
    return before, after, swap, job


def wait_for_fit(client, poll_seconds: float = 2.0) -> dict:
    """Poll ``/status`` until the fit is no longer running; returns the finished job (raises if it failed)."""
    from executors.data.schema import DocList, Report

    while True:
        status = client.post('/status', return_type=DocList[Report])[0].data
        job = status['job']
        if job['state'] != 'running':
            break
        loss = f"{job['loss']:.4f}" if isinstance(job.get('loss'), (int, float)) else '-'  # none before batch 1
        print(f"\r  fit: epoch {job.get('epoch', 0)}/{job.get('epochs', '?')} batch {job.get('batch', 0)}/"
              f"{job.get('batches', '?')} loss {loss}", end='', flush=True)
        time.sleep(poll_seconds)
    print()
    if job['state'] != 'done':
        raise RuntimeError(f"fit failed: {job.get('error')}")
    return job


def search_grpc(client, query_docs, limit: int, request_size: int = 50) -> List[List[str]]:
    """Match ids (best first) of each query doc, searched over gRPC."""
    from executors.data.schema import Doc, DocList

    docs = DocList[Doc]([Doc(id=d.id, uri=d.uri, tensor=d.tensor) for d in query_docs])
    answers = client.post('/search', docs, parameters={'limit': limit}, request_size=request_size,
                          return_type=DocList[Doc])
    by_id = {answer.id: list(answer.match_ids or []) for answer in answers}
    return [by_id[d.id] for d in query_docs]


def search_http(port: int, query_docs, limit: int) -> List[List[str]]:
    """Match ids (best first) of each query doc (sent by ``uri``), searched over HTTP (``POST /search``)."""
    import httpx

    ranked = []
    for start in range(0, len(query_docs), HTTP_MAX_DOCS):
        chunk = query_docs[start:start + HTTP_MAX_DOCS]
        payload = {'data': [{'id': d.id, 'uri': d.uri} for d in chunk], 'parameters': {'limit': limit}}
        response = httpx.post(f'http://localhost:{port}/search', json=payload, timeout=600)
        response.raise_for_status()
        by_id = {answer['id']: list(answer.get('match_ids') or []) for answer in response.json()['data']}
        ranked.extend(by_id[d.id] for d in chunk)
    return ranked


def ranking_metrics(ranked_ids: Sequence[Sequence[str]], relevant_ids: Sequence[set],
                    names: Sequence[str], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """``{'<name>@<k>': value}`` for each metric name (hit, mAP, NDCG, ... as in
    :func:`executors.evaluation.metrics.retrieval_metrics`) and k, over queries with relevant ids
    ``relevant_ids[q]``; a short ranking counts as misses."""
    from executors.evaluation.metrics import retrieval_metrics

    depth = max(ks)
    relevance = np.zeros((len(ranked_ids), depth))
    for row, (ids, relevant) in enumerate(zip(ranked_ids, relevant_ids)):
        hits = [1.0 if match in relevant else 0.0 for match in list(ids)[:depth]]
        relevance[row, :len(hits)] = hits
    num_relevant = np.array([len(relevant) for relevant in relevant_ids])
    result = {}
    for k in ks:
        result.update(retrieval_metrics(relevance[:, :k], num_relevant, k, metrics=names))
    return {f'{name}@{k}': result[f'{name}@{k}'] for name in names for k in ks}


def markdown_table(columns: Dict[str, Dict[str, float]]) -> str:
    """One row per column name (before/after), one column per metric, 3 decimals."""
    metrics = list(next(iter(columns.values())))
    lines = ['| model | ' + ' | '.join(metrics) + ' |', '|---|' + '---|' * len(metrics)]
    for name, values in columns.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{values[m]:.3f}' for m in metrics) + ' |')
    return '\n'.join(lines)
