"""Swiss-roll scenario, end to end through the real flows.

1,500 points of ``make_swiss_roll(noise=0.05)``; labels = min-max-normalised ``X[:, 1]`` cut
into 5 bins (the LabelAssigner's numeric-bins rule). 1,000 points are training data and the
search index, 500 are held-out queries. A 3->6->6->6 ReLU MLP is tuned with SiameseLoss.

Steps: start ``flows/train.yml`` and ``flows/search.yml`` (the trainer publishes the random
MLP as version 1), index the points, query them (random MLP), stream the training points to
the training flow over gRPC, fit, hot-swap the tuned version into the running search flow,
query again over HTTP (tuned MLP). Prints a before/after table for four spaces (original 3-D
coordinates by euclidean distance, random MLP, tuned MLP, ground-truth labels) and writes
``results/demo.json`` and ``results/demo_neighbours.png`` (+ ``results/demo_loss.png``).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
K = 100


def _space_metrics(query_labels, neighbour_labels, index_labels, k=K):
    from executors.evaluation.metrics import label_relevance, retrieval_metrics

    counts = {label: int((index_labels == label).sum()) for label in np.unique(index_labels)}
    relevance = label_relevance(query_labels, neighbour_labels)
    metrics = retrieval_metrics(relevance, np.array([counts[q] for q in query_labels]), k)
    return {'label_purity@100': metrics[f'precision@{k}'], 'mAP@100': metrics[f'mAP@{k}']}


HTTP_MAX_DOCS = 100  # Jina's HTTP gateway answers with the first 100 docs of a request only


def _search_http(port, docs, limit):
    import httpx

    answers = []
    for start in range(0, len(docs), HTTP_MAX_DOCS):
        payload = {'data': [{'id': d.id, 'tensor': np.asarray(d.tensor).tolist()}
                            for d in docs[start:start + HTTP_MAX_DOCS]],
                   'parameters': {'limit': limit}}
        response = httpx.post(f'http://localhost:{port}/search', json=payload, timeout=120)
        response.raise_for_status()
        answers.extend(response.json()['data'])
    return answers


def plot_neighbours(points, query, spaces, path):
    """One 3-D panel per space: all indexed points (grey), the query (red star) and its
    neighbours (coloured by rank)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5 * len(spaces), 5))
    for i, (name, neighbour_idx) in enumerate(spaces.items()):
        ax = fig.add_subplot(1, len(spaces), i + 1, projection='3d')
        ax.scatter(*points.T, c='lightgrey', s=2, alpha=0.4)
        ax.scatter(*points[neighbour_idx].T, c=np.arange(len(neighbour_idx)), cmap='viridis', s=8)
        ax.scatter(*query, c='red', marker='*', s=250)
        ax.set_title(name)
        ax.view_init(elev=10, azim=-75)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(results_dir: Path, workdir: Path) -> dict:
    from jina import Client
    from sklearn.datasets import make_swiss_roll

    from executors.data.labels import assign_labels, build_rule
    from executors.data.schema import Doc, DocList, Report
    from executors.evaluation.metrics import nearest_neighbours
    from executors.search.results import matches
    from executors.search.swap import hot_swap, wait_until_serving
    from executors.service.flow_process import FlowProcess

    started = time.monotonic()
    points, _ = make_swiss_roll(1500, noise=0.05, random_state=0)
    points = points.astype(np.float32)
    train_points, query_points = points[:1000], points[1000:]
    # the same rule the LabelAssigner applies; fitted on the training points as it is there
    rule = build_rule({'rule': 'numeric_bins', 'column': 1, 'num_bins': 5})
    train_labels = np.array(assign_labels(rule, [{'tensor': p} for p in train_points]))
    query_labels = np.array(assign_labels(rule, [{'tensor': p} for p in query_points]))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f'starting the training and search flows in {workdir} ...', flush=True)
    with FlowProcess(REPO / 'flows/train.yml', workdir, free_ports=True) as train_flow, \
            FlowProcess(REPO / 'flows/search.yml', workdir, free_ports=True) as search_flow:
        train_client = Client(port=train_flow.ports['grpc'])
        search_client = Client(port=search_flow.ports['grpc'])
        index_docs = DocList[Doc]([Doc(id=f'p{i}', tensor=p, label=str(label))
                                   for i, (p, label) in enumerate(zip(train_points, train_labels))])
        query_docs = DocList[Doc]([Doc(id=f'q{i}', tensor=p) for i, p in enumerate(query_points)])

        search_client.post('/index', index_docs, request_size=250)
        before = search_client.post('/search', query_docs, parameters={'limit': K}, return_type=DocList[Doc])
        row_of = {f'p{i}': i for i in range(len(train_points))}
        random_idx = np.array([[row_of[m['id']] for m in matches(d)] for d in before])
        print(f'indexed {len(index_docs)} points with model version {before[0].model_version} (random MLP)')

        # the training flow labels the raw points itself (numeric bins over one request)
        train_docs = DocList[Doc]([Doc(id=f'p{i}', tensor=p) for i, p in enumerate(train_points)])
        train_client.post('/train', train_docs, request_size=len(train_docs))
        train_client.post('/fit', parameters={'seed': 0})
        while True:
            status = train_client.post('/status', return_type=DocList[Report])[0].data
            job = status['job']
            if job['state'] != 'running':
                break
            print(f"\r  fit: epoch {job.get('epoch', 0)}/{job.get('epochs', '?')} loss {job.get('loss', float('nan')):.4f}",
                  end='', flush=True)
            time.sleep(1)
        print()
        if job['state'] != 'done':
            raise RuntimeError(f"fit failed: {job.get('error')}")
        print(f"published version {job['version']}; held-out fit metrics:\n{status.get('table', '')}")

        if job.get('promotion', {}).get('promoted'):
            # flows/search.yml follows the store: the promoted version is swapped in by the flow itself
            wait_until_serving(search_client, job['version'])
            print(f"the search flow swapped itself to the promoted version {job['version']}")
        else:
            swap = hot_swap(search_client, version=job['version'])
            print(f"hot-swapped the search flow to version {swap['version']} ({swap['reindexed']} docs re-embedded)")
        after = _search_http(search_flow.ports['http'], query_docs, K)
        tuned_idx = np.array([[row_of[m['id']] for m in matches(d)] for d in after])
        tuned_version = after[0]['model_version']
        shutil.copy(workdir / 'workspace' / 'models' / 'swiss-roll-mlp' / f"{job['version']:06d}" / 'loss.png',
                    results_dir / 'demo_loss.png')

    original_idx, _ = nearest_neighbours(query_points, train_points, K, distance='euclidean')
    spaces = {'original 3-D (euclidean)': original_idx, 'random MLP (v1)': random_idx,
              f'tuned MLP (v{tuned_version})': tuned_idx}
    table = {name: _space_metrics(query_labels, train_labels[idx], train_labels) for name, idx in spaces.items()}
    table['ground-truth labels'] = {'label_purity@100': 1.0, 'mAP@100': 1.0}  # neighbours = same-label points
    plot_neighbours(train_points, query_points[0], {name: idx[0] for name, idx in spaces.items()},
                    results_dir / 'demo_neighbours.png')
    result = {'scenario': 'swiss-roll', 'k': K, 'num_index': len(train_points), 'num_queries': len(query_points),
              'spaces': table, 'fit': {k: job.get(k) for k in ('version', 'parent', 'metrics_before', 'metrics_after')},
              'seconds': round(time.monotonic() - started, 1)}
    (results_dir / 'demo.json').write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', type=Path, default=REPO / 'results')
    parser.add_argument('--workdir', type=Path, default=REPO / 'results' / 'demo-workspace')
    args = parser.parse_args(argv)
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    result = run(args.results, args.workdir)
    print(f"\n| space | label purity@{K} | mAP@{K} |\n|---|---|---|")
    for name, metrics in result['spaces'].items():
        print(f"| {name} | {metrics['label_purity@100']:.3f} | {metrics['mAP@100']:.3f} |")
    print(f"\nwrote {args.results / 'demo.json'} and {args.results / 'demo_neighbours.png'} "
          f"in {result['seconds']} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
