"""Where a search request's time goes, in one process (cProfile), without the network.

Replays what the search flow does for one batch of queries: the protobuf round trip of the
request at each hop (client -> gateway -> Preprocessor -> Encoder -> Indexer -> gateway ->
client, as Jina serialises DocLists), the Encoder's embedding and the Indexer's FAISS search and
SQLite read, and the same answer with nested ``Match`` documents (the old form) for comparison.

    PYTHONPATH=. python benchmarks/profile_search.py --n 100000 --dim 384 --batch 64
"""
import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from executors.data.document_store import StoredDoc  # noqa: E402
from executors.data.schema import Doc, DocList, Match  # noqa: E402
from executors.models import build_model  # noqa: E402
from executors.models.inference import embed  # noqa: E402
from executors.search.vector_index import SearchIndex  # noqa: E402

HOPS = 5  # protobuf (de)serialisations of the docs on the way: gateway, 3 executors, back


def round_trip(docs):
    return DocList[Doc].from_protobuf(docs.to_protobuf())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=100_000)
    parser.add_argument('--dim', type=int, default=384)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--repeat', type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    model = build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [args.dim, args.dim]}}, seed=0)
    data = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix='profile-search-'))
    index = SearchIndex(work, snapshot_interval=3600)
    for start in range(0, args.n, 10_000):
        part = data[start:start + 10_000]
        index.add([StoredDoc(id=f'p{start + i}', label=str(i % 10), tensor=v) for i, v in enumerate(part)],
                  {1: embed(list(part), model, batch_size=4096)})
    queries = rng.normal(size=(args.batch, args.dim)).astype(np.float32)
    timings = {'serialise request (per hop)': 0.0, 'embed (Encoder)': 0.0, 'FAISS + SQLite (Indexer)': 0.0,
               'serialise compact answer (per hop)': 0.0, 'serialise nested-Match answer (per hop)': 0.0}

    def one_request():
        docs = DocList[Doc]([Doc(tensor=q) for q in queries])
        t0 = time.perf_counter()
        docs = round_trip(docs)
        t1 = time.perf_counter()
        vectors = embed([np.asarray(d.tensor) for d in docs], model)
        for doc, v in zip(docs, vectors):
            doc.embedding, doc.model_version, doc.tensor = v, 1, None
        t2 = time.perf_counter()
        hits = index.search(np.stack([np.asarray(d.embedding) for d in docs]), 1, 10)
        for i, doc in enumerate(docs):
            doc.match_ids, doc.match_scores = hits.ids[i], hits.scores[i]
            doc.match_fields = {'label': hits.fields['label'][i]}
            doc.embedding = None
        t3 = time.perf_counter()
        round_trip(docs)
        t4 = time.perf_counter()
        nested = DocList[Doc]([Doc(id=d.id, model_version=1, matches=[
            Match(id=m, score=float(s), label=lab) for m, s, lab in zip(d.match_ids, d.match_scores,
                                                                        d.match_fields['label'])]) for d in docs])
        t5 = time.perf_counter()
        round_trip(nested)
        t6 = time.perf_counter()
        timings['serialise request (per hop)'] += t1 - t0
        timings['embed (Encoder)'] += t2 - t1
        timings['FAISS + SQLite (Indexer)'] += t3 - t2
        timings['serialise compact answer (per hop)'] += t4 - t3
        timings['serialise nested-Match answer (per hop)'] += t6 - t5

    one_request()
    timings = {k: 0.0 for k in timings}
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.repeat):
        one_request()
    profiler.disable()
    per_request = {k: 1000 * v / args.repeat for k, v in timings.items()}
    print(f'ms per request of {args.batch} queries over {args.n:,} x {args.dim} (flat):')
    for name, ms in per_request.items():
        print(f'  {name:42s} {ms:8.2f}')
    print(f'  x {HOPS} hops: request {HOPS * per_request["serialise request (per hop)"]:.1f} ms, compact answer '
          f'{HOPS * per_request["serialise compact answer (per hop)"]:.1f} ms vs nested '
          f'{HOPS * per_request["serialise nested-Match answer (per hop)"]:.1f} ms')
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats('cumulative').print_stats(25)
    print(stream.getvalue())
    out = REPO / 'results' / 'profile_search.json'
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({'args': vars(args), 'ms_per_request': per_request}, indent=2))
    index.close()


if __name__ == '__main__':
    main()
