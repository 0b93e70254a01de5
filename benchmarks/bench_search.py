"""Search flow vs the same model + FAISS in one process, and vs Jina's floor, in one run.

Parts (every ratio is measured within this run; results printed and written to
``results/bench_search.json``):

1. ``N x D`` (default 100,000 x 384) through ``flows/search.yml`` (flat index, a D->D MLP):
   indexing over gRPC in requests of 1,000 docs, per-document (``/index``, the first
   ``--per-doc`` docs) and bulk (``/index/bulk``, the rest), next to the floor of a flow of three
   no-op executors taking the same per-document requests; first vs last 10 bulk requests;
   the Indexer's peak RSS next to the raw vector size.
2. Search over that index: batch-64 throughput through the flow vs the model + ``IndexFlatIP``
   in-process (ratio, and whether the top-10 ids are identical); batch-1 p50 through the flow vs
   raw + the no-op floor (+3 ms budget).
3. ``--large-n x 128`` clustered points (1,000 clusters + unit noise) with HNSW32 and
   IVF1024,Flat, each through its own flow: recall@10 against exact search and q/s for a few
   ``efSearch`` / ``nprobe`` settings, raw (model + FAISS in-process) and through the flow's
   columnar ``/search/bulk``, both ``--bulk-batch`` (default 1,000) queries per call.

    PYTHONPATH=. python benchmarks/bench_search.py              # 100k x 384, 100k x 128
    PYTHONPATH=. python benchmarks/bench_search.py --large-n 1000000
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
os.environ.setdefault('JINA_LOG_LEVEL', 'WARNING')

from jina import Client  # noqa: E402

from executors.data.schema import Doc, DocList, Report  # noqa: E402
from executors.models import ModelStore, build_model  # noqa: E402
from executors.models.inference import embed  # noqa: E402
from executors.search.flow_config import search_flow_yaml  # noqa: E402
from executors.search.results import bulk_batches  # noqa: E402
from executors.service.flow_process import FlowProcess  # noqa: E402

LIMIT = 10


def clustered(n, dim, clusters, seed, spread=1.0):
    """``n`` points around ``clusters`` normal centres (scale ``spread``) with unit noise."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(clusters, dim)).astype(np.float32) * spread
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start:start + m] = centres[rng.integers(0, clusters, m)] + rng.normal(size=(m, dim)).astype(np.float32)
    return out


def publish(cwd, name, dim):
    store = ModelStore(Path(cwd) / 'workspace' / 'models')
    model = build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [dim, dim]}}, seed=0)
    store.publish(name, model)
    return model


def noop_flow_yaml(out_dir, executors=3):
    config = {'jtype': 'Flow', 'with': {'protocol': ['grpc'], 'port': [0]},
              'executors': [{'name': f'noop{i}', 'uses': 'NoOp', 'py_modules': [str(REPO / 'benchmarks/noop_executor.py')]}
                            for i in range(executors)]}
    path = Path(out_dir) / 'noop.yml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def p50_ms(times):
    return 1000 * statistics.median(times)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def per_doc_requests(client, endpoint, ids, vectors, size=1000):
    times = []
    for start in range(0, len(ids), size):
        docs = DocList[Doc]([Doc(id=ids[i], tensor=vectors[i]) for i in range(start, min(start + size, len(ids)))])
        times.append(timed(lambda: client.post(endpoint, docs, request_size=size))[0])
    return times


def flow_search_ids(client, queries, batch, **parameters):
    """(seconds, ids [Q, k]) of searching ``queries`` in requests of ``batch``."""
    docs = DocList[Doc]([Doc(id=f'q{i}', tensor=q) for i, q in enumerate(queries)])
    seconds, answers = timed(lambda: client.post('/search', docs, request_size=batch, return_type=DocList[Doc],
                                                 parameters={'limit': LIMIT, **parameters}))
    by_id = {a.id: a.match_ids for a in answers}
    return seconds, [by_id[f'q{i}'] for i in range(len(queries))]


def batch1_times(client, queries, **parameters):
    times = []
    for q in queries:
        docs = DocList[Doc]([Doc(tensor=q)])
        times.append(timed(lambda: client.post('/search', docs, parameters={'limit': LIMIT, **parameters}))[0])
    return times


def flow_bulk_search_rows(client, queries, batch, **parameters):
    """(seconds, row numbers [Q, k]) of ``/search/bulk`` with ``batch`` queries per Batch doc."""
    from executors.data.schema import Batch
    from executors.search.results import bulk_matches
    seconds, answers = timed(lambda: client.post('/search/bulk', list(bulk_batches(None, queries, batch_size=batch)),
                                                 request_size=1, results_in_order=True, return_type=DocList[Batch],
                                                 parameters={'limit': LIMIT, **parameters}))
    rows = [[int(m['id'][1:]) for m in row] for answer in answers for row in bulk_matches(answer)]
    return seconds, rows


def raw_search(model, index, queries, batch, params=None):
    """(seconds, row ids [Q, k]) of the model + FAISS in-process, ``batch`` queries per call."""
    rows = []
    start = time.perf_counter()
    for s in range(0, len(queries), batch):
        q = embed(list(queries[s:s + batch]), model)
        faiss.normalize_L2(q)
        rows.append(index.search(q, LIMIT, params=params)[1])
    return time.perf_counter() - start, np.concatenate(rows)


def raw_batch1_times(model, index, queries):
    times = []
    for q in queries:
        start = time.perf_counter()
        v = embed([q], model)
        faiss.normalize_L2(v)
        index.search(v, LIMIT)
        times.append(time.perf_counter() - start)
    return times


def part_flat(work, args, results):
    n, dim, per_doc = args.n, args.dim, args.per_doc
    print(f'== {n:,} x {dim} flat ==', flush=True)
    model = publish(work, 'bench', dim)
    data = clustered(n, dim, 1000, 0, spread=3.0)
    ids = [f'p{i}' for i in range(n)]
    queries = clustered(args.queries, dim, 1000, 1, spread=3.0)
    flow_yaml = search_flow_yaml(work, 'flat', dim=dim, model_name='bench', indexer={'index_factory': 'Flat'})
    noop_yaml = noop_flow_yaml(work)
    out = {}
    with FlowProcess(flow_yaml, work, free_ports=True) as flow, FlowProcess(noop_yaml, work / 'noop', free_ports=True) as noop:
        client, floor = Client(port=flow.ports['grpc']), Client(port=noop.ports['grpc'])
        rss_start = client.post('/model/status', return_type=DocList[Report])[0].data['indexer']['peak_rss_mb']
        # --- indexing: per-document path and its floor, then the bulk path
        floor_times = per_doc_requests(floor, '/index', ids[:per_doc], data[:per_doc])
        doc_times = per_doc_requests(client, '/index', ids[:per_doc], data[:per_doc])
        bulk_times = []
        for batch in bulk_batches(ids[per_doc:], data[per_doc:], batch_size=1000):
            bulk_times.append(timed(lambda: client.post('/index/bulk', [batch]))[0])
            if len(bulk_times) % 10 == 0:
                print(f'  bulk: {per_doc + 1000 * len(bulk_times):,} docs indexed, last request '
                      f'{1000 * bulk_times[-1]:.0f} ms', flush=True)
        status = client.post('/model/status', return_type=DocList[Report])[0].data['indexer']
        assert status['num_docs'] == n, status
        out['indexing'] = {
            'per_doc_docs_per_s': per_doc / sum(doc_times), 'noop_floor_per_doc_docs_per_s': per_doc / sum(floor_times),
            'per_doc_vs_floor': sum(floor_times) / sum(doc_times),
            'bulk_docs_per_s': (n - per_doc) / sum(bulk_times),
            'bulk_first10_ms': 1000 * float(np.mean(bulk_times[:10])), 'bulk_last10_ms': 1000 * float(np.mean(bulk_times[-10:])),
            'bulk_last10_vs_first10': float(np.mean(bulk_times[-10:]) / np.mean(bulk_times[:10])),
            'indexer_peak_rss_mb': status['peak_rss_mb'], 'indexer_rss_after_start_mb': rss_start,
            'raw_vectors_mb': n * dim * 4 / 2 ** 20,
        }
        print(json.dumps(out['indexing'], indent=1), flush=True)
        # --- search: raw index over the same embeddings
        vectors = embed(list(data), model, batch_size=4096)
        faiss.normalize_L2(vectors)
        raw = faiss.IndexFlatIP(dim)
        raw.add(vectors)
        flow_s, flow_ids = flow_search_ids(client, queries, 64)
        raw_s, raw_rows = raw_search(model, raw, queries, 64)
        raw_ids = [[ids[r] for r in row] for row in raw_rows]
        same = float(np.mean([a == b for a, b in zip(flow_ids, raw_ids)]))
        single = queries[:args.single]
        flow1 = batch1_times(client, single)
        raw1 = raw_batch1_times(model, raw, single)
        floor1 = batch1_times(floor, single)
        out['search'] = {
            'flow_batch64_qps': len(queries) / flow_s, 'raw_batch64_qps': len(queries) / raw_s,
            'batch64_ratio': raw_s / flow_s, 'top10_identical_fraction': same,
            'flow_batch1_p50_ms': p50_ms(flow1), 'raw_batch1_p50_ms': p50_ms(raw1), 'noop_floor_batch1_p50_ms': p50_ms(floor1),
            'batch1_budget_ms': p50_ms(raw1) + p50_ms(floor1) + 3.0,
        }
        print(json.dumps(out['search'], indent=1), flush=True)
    return out


def part_approximate(work, args):
    n, dim = args.large_n, 128
    print(f'== {n:,} x {dim} clustered: HNSW32 and IVF1024,Flat ==', flush=True)
    model = publish(work, 'bench128', dim)
    data = clustered(n, dim, 1000, 2, spread=args.spread)
    queries = clustered(args.queries, dim, 1000, 3, spread=args.spread)
    ids = [f'p{i}' for i in range(n)]
    vectors = embed(list(data), model, batch_size=8192)
    faiss.normalize_L2(vectors)
    qv = embed(list(queries), model)
    faiss.normalize_L2(qv)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    truth = exact.search(qv, LIMIT)[1]

    def recall(rows):
        return float(np.mean([len(set(r) & set(t)) / LIMIT for r, t in zip(rows, truth)]))
    out = {}
    for factory, setting, values in (('HNSW32', 'efSearch', args.ef), ('IVF1024,Flat', 'nprobe', args.nprobe)):
        if factory.split(',')[0] not in args.factories:
            continue
        raw = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        build_s, _ = timed(lambda: (raw.train(vectors), raw.add(vectors)))
        yml = search_flow_yaml(work, factory.split(',')[0].lower(), dim=dim, model_name='bench128',
                               indexer={'index_factory': factory})
        flow_dir = work / factory.split(',')[0].lower()
        (flow_dir / 'workspace').mkdir(parents=True, exist_ok=True)
        os.symlink(work / 'workspace' / 'models', flow_dir / 'workspace' / 'models')
        rows_out = []
        with FlowProcess(yml, flow_dir, free_ports=True) as flow:
            client = Client(port=flow.ports['grpc'])
            index_s, _ = timed(lambda: [client.post('/index/bulk', [b]) for b in bulk_batches(ids, data, batch_size=1000)])
            for value in values:
                params = (faiss.SearchParametersHNSW(efSearch=value) if setting == 'efSearch'
                          else faiss.SearchParametersIVF(nprobe=value))
                raw_s, raw_rows = raw_search(model, raw, queries, args.bulk_batch, params)
                flow_s, flow_rows = flow_bulk_search_rows(client, queries, args.bulk_batch, **{setting: value})
                row = {setting: value, 'raw_recall@10': recall(raw_rows), 'flow_recall@10': recall(flow_rows),
                       'raw_qps': len(queries) / raw_s, 'flow_qps': len(queries) / flow_s, 'flow_vs_raw': raw_s / flow_s}
                rows_out.append(row)
                print(f'  {factory} {setting}={value}: ' + ', '.join(f'{k} {v:.3f}' for k, v in row.items() if k != setting),
                      flush=True)
        out[factory] = {'raw_build_s': build_s, 'flow_bulk_index_s': index_s, 'settings': rows_out}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=100_000)
    parser.add_argument('--dim', type=int, default=384)
    parser.add_argument('--per-doc', type=int, default=10_000, help='docs indexed per document (the rest in bulk)')
    parser.add_argument('--queries', type=int, default=2048)
    parser.add_argument('--single', type=int, default=200, help='batch-1 queries for the p50s')
    parser.add_argument('--large-n', type=int, default=100_000, help='points of the HNSW/IVF part (0: skip it)')
    parser.add_argument('--ef', type=int, nargs='+', default=[16, 64, 256])
    parser.add_argument('--nprobe', type=int, nargs='+', default=[16, 64, 256])
    parser.add_argument('--spread', type=float, default=0.5, help='scale of the cluster centres in part 3 (unit noise)')
    parser.add_argument('--bulk-batch', type=int, default=1000, help='queries per call in part 3')
    parser.add_argument('--parts', default='flat,approximate', help='comma-separated: flat, approximate')
    parser.add_argument('--factories', nargs='+', default=['HNSW32', 'IVF1024'], help='index types of part 3')
    parser.add_argument('--out', default=str(REPO / 'results' / 'bench_search.json'))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix='bench-search-'))
    results = {'args': vars(args), 'cpus': os.cpu_count()}
    try:
        if 'flat' in args.parts:
            results['flat'] = part_flat(work, args, results)
        if args.large_n and 'approximate' in args.parts:
            results['approximate'] = part_approximate(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checks = {}
    if 'flat' in results:
        flat = results['flat']
        checks.update({
            'batch64 flow/raw >= 0.8': flat['search']['batch64_ratio'] >= 0.8,
            'top-10 ids identical': flat['search']['top10_identical_fraction'] == 1.0,
            'batch-1 p50 <= raw + floor + 3 ms':
                flat['search']['flow_batch1_p50_ms'] <= flat['search']['batch1_budget_ms'],
            'bulk >= 5,000 docs/s': flat['indexing']['bulk_docs_per_s'] >= 5000,
            'per-doc >= 0.8x floor': flat['indexing']['per_doc_vs_floor'] >= 0.8,
            'last 10 / first 10 requests <= 1.5': flat['indexing']['bulk_last10_vs_first10'] <= 1.5,
        })
    for name, part in results.get('approximate', {}).items():
        good = [s for s in part['settings'] if s['raw_recall@10'] >= 0.95]
        checks[f'{name}: a setting with recall@10 >= 0.95'] = bool(good)
        if good:
            checks[f'{name}: flow q/s >= 0.8x raw there'] = good[0]['flow_vs_raw'] >= 0.8
    results['checks'] = checks
    print('\n'.join(f'{"PASS" if ok else "FAIL"}  {name}' for name, ok in checks.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
