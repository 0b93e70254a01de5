"""3-D mesh scenario: a point-cloud network pre-trained on some classes, tuned on others, through the flows.

Mirrors the old Finetuner's ModelNet40 tutorial (PointConv pre-trained on ShapeNet, then tuned with a
triplet loss, an easy/semihard miner, Adam + MultiStepLR through ``configure_optimizer`` and a logger
callback) on a generated ModelNet-style tree (:func:`executors.demos.datasets.make_mesh_dataset`:
15 classes of objects assembled from trimesh primitives, ``<class>/train|test/<name>.off``).

1. Pre-train PointNet on 8 of the classes (everything but furniture) with the Python API: ``fit``
   with TripletLoss + ``TripletEasyHardMiner('easy', 'semihard')``, Adam + MultiStepLR from
   ``configure_optimizer``, a ``MetricsLogger`` callback; the weights go to
   ``<workdir>/pretrained/pointnet.safetensors``.
2. Start ``flows/meshes-train.yml`` (label by the uri's class folder, decode meshes to 512 surface
   points, fit) and ``flows/meshes-search.yml`` from ``<workdir>``; the trainer publishes the
   pre-trained network as version 1 with its input transform (256 of the points, centred, unit sphere;
   rotation about z, scaling and jitter when training).
3. Index the train split of the 7 furniture classes (bed, bookshelf, chair, monitor, sofa, stool, table;
   the search flow decodes and embeds them), query with their test split over gRPC: the "pre-trained" row.
4. Send the same train split to the training flow, ``/fit`` with the same loss, miner and scheduler,
   hot-swap the tuned version into the running search flow, query again over HTTP: the "tuned" row.

Relevance = same class; mAP@k and NDCG@k for k = 1, 5, 10 as in the seed's table. Writes
``results/meshes.json`` (``meshes-quick.json`` with ``--quick``), ``results/meshes_neighbours.png``
(a query and its top-5 neighbours before/after as 3-D scatter plots) and the pre-training log
``results/meshes_pretrain_log.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = 'mesh-pointnet'
POINTNET = {'embedding_dim': 128, 'point_widths': [32, 64, 256], 'head_widths': [128], 'dropout': 0.3}
DECODING = {'modality': 'mesh', 'num_points': 512}
INPUT_TRANSFORM = {'modality': 'mesh', 'num_points': 256}
MINER = {'name': 'TripletEasyHardMiner', 'pos_strategy': 'easy', 'neg_strategy': 'semihard'}
MARGIN = 0.4
BATCH_SIZE, ITEMS_PER_CLASS = 56, 8
SETTINGS = {
    'full': {'num_train': 32, 'num_test': 8, 'pretrain_epochs': 15, 'tune_epochs': 30},
    'quick': {'num_train': 12, 'num_test': 4, 'pretrain_epochs': 15, 'tune_epochs': 20},
}
METRICS = ('mAP', 'NDCG')
TUNE_CLASSES = ['bed', 'bookshelf', 'chair', 'monitor', 'sofa', 'stool', 'table']
"""Tuned and evaluated on the furniture (confusable with each other); pre-trained on the 8 other classes."""


def multistep_schedule(epochs: int) -> dict:
    """MultiStepLR settings: the learning rate x0.3 after 60 % and 85 % of the epochs."""
    return {'name': 'MultiStepLR', 'milestones': [max(1, int(epochs * 0.6)), max(2, int(epochs * 0.85))], 'gamma': 0.3}


def pretrain(data_root: Path, classes, epochs: int, out_path: Path, log_path: Path):
    """PointNet tuned on the train split of ``classes`` (Python API, see the module docstring); saves
    its weights to ``out_path`` and returns the model."""
    import torch
    from safetensors.torch import save_file

    from executors.data.decoding import build_decoder
    from executors.data.layouts import read_mesh_folders
    from executors.data.transforms import attach_transform
    from executors.models import build_model
    from executors.tuner.callbacks import MetricsLogger
    from executors.tuner.losses import TripletLoss
    from executors.tuner.miners import build_miner
    from executors.tuner.trainer import fit

    docs = read_mesh_folders(data_root, splits=['train'], classes=classes)
    decoder = build_decoder(DECODING, root=str(data_root))
    clouds = [decoder.decode({'uri': d.uri}) for d in docs]
    model = attach_transform(build_model({'builder': 'pointnet', 'kwargs': POINTNET}, seed=0), INPUT_TRANSFORM)
    schedule = multistep_schedule(epochs)

    def configure_optimizer(module):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, schedule['milestones'], schedule['gamma'])

    log_path.unlink(missing_ok=True)
    fit(model, (clouds, [d.label for d in docs]), loss=TripletLoss(margin=MARGIN, miner=build_miner(MINER)),
        epochs=epochs, batch_size=BATCH_SIZE, num_items_per_class=ITEMS_PER_CLASS,
        configure_optimizer=configure_optimizer, scheduler_step='epoch', callbacks=[MetricsLogger(log_path)], seed=0)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_path))
    return model


def plot_neighbours(clouds: dict, query_id: str, rankings: dict, path: Path, labels: dict, top: int = 5) -> None:
    """Rows = rankings (before/after); first panel the query, then its ``top`` neighbours, as 3-D scatter
    plots; a neighbour's title is its class (green: the query's class, red: another)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2.6 * (top + 1), 2.8 * len(rankings)))
    for row, (name, ids) in enumerate(rankings.items()):
        for column, doc_id in enumerate([query_id, *ids[:top]]):
            ax = fig.add_subplot(len(rankings), top + 1, row * (top + 1) + column + 1, projection='3d')
            points = clouds[doc_id]
            ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=1.5, c=points[:, 2], cmap='viridis')
            ax.set_axis_off()
            same = labels[doc_id] == labels[query_id]
            title = f'{name}\nquery: {labels[doc_id]}' if column == 0 else f'#{column} {labels[doc_id]}'
            ax.set_title(title, fontsize=9, color='black' if column == 0 else ('green' if same else 'red'))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(results_dir: Path, workdir: Path, quick: bool = False) -> dict:
    from executors.data.decoding import build_decoder
    from executors.data.layouts import read_mesh_folders
    from executors.data.schema import Doc, DocList
    from executors.demos.datasets import MESH_CLASSES, make_mesh_dataset
    from executors.demos.scenario import markdown_table, ranking_metrics, tune_through_flows

    settings = SETTINGS['quick' if quick else 'full']
    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    data_root = workdir / 'data'
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f'generating {len(MESH_CLASSES)} classes x {settings["num_train"]}+{settings["num_test"]} meshes in {data_root} ...',
          flush=True)
    make_mesh_dataset(data_root, num_train=settings['num_train'], num_test=settings['num_test'], seed=0)
    classes = sorted(MESH_CLASSES)
    tune_classes = TUNE_CLASSES
    pretrain_classes = [c for c in classes if c not in tune_classes]
    print(f'pre-training PointNet on {pretrain_classes} ...', flush=True)
    pretrain(data_root, pretrain_classes, settings['pretrain_epochs'], workdir / 'pretrained' / 'pointnet.safetensors',
             results_dir / f'meshes{"-quick" if quick else ""}_pretrain_log.jsonl')

    index_docs = read_mesh_folders(data_root, splits=['train'], classes=tune_classes)
    query_docs = read_mesh_folders(data_root, splits=['test'], classes=tune_classes)
    ids_of_class = {c: {d.id for d in index_docs if d.label == c} for c in tune_classes}
    relevant = [ids_of_class[d.label] for d in query_docs]
    fit_parameters = {'epochs': settings['tune_epochs'], 'miner': MINER, 'lr_scheduler': multistep_schedule(settings['tune_epochs'])}
    print(f'tuning and evaluating on {tune_classes}: {len(index_docs)} indexed, {len(query_docs)} queries', flush=True)
    # the training flow labels the docs itself (the class folder of each uri) and decodes them
    before, after, swap, job = tune_through_flows(
        REPO / 'flows/meshes-train.yml', REPO / 'flows/meshes-search.yml', workdir,
        DocList[Doc]([Doc(id=d.id, uri=d.uri, label=d.label) for d in index_docs]),
        DocList[Doc]([Doc(id=d.id, uri=d.uri) for d in index_docs]), query_docs, fit_parameters)

    table = {'pre-trained (v1)': ranking_metrics(before, relevant, METRICS),
             f"tuned (v{swap['version']})": ranking_metrics(after, relevant, METRICS)}
    decoder = build_decoder(DECODING, root=str(data_root))
    query = query_docs[0]
    shown = {query.id, *before[0][:5], *after[0][:5]}
    labels = {d.id: d.label for d in [*index_docs, *query_docs]}
    uris = {d.id: d.uri for d in [*index_docs, *query_docs]}
    clouds = {doc_id: decoder.decode({'uri': uris[doc_id]}) for doc_id in shown}
    suffix = '-quick' if quick else ''
    plot_neighbours(clouds, query.id, {'pre-trained': before[0], 'tuned': after[0]},
                    results_dir / f'meshes{suffix}_neighbours.png', labels)
    result = {'scenario': 'meshes', 'mode': 'quick' if quick else 'full', 'pretrain_classes': pretrain_classes,
              'tune_classes': tune_classes, 'num_index': len(index_docs), 'num_queries': len(query_docs),
              'model': {'builder': 'pointnet', 'kwargs': POINTNET}, 'decoding': DECODING,
              'input_transform': INPUT_TRANSFORM, 'fit': {**fit_parameters, 'loss': 'TripletLoss', 'margin': MARGIN,
                                                          'pretrain_epochs': settings['pretrain_epochs']},
              'table': table, 'markdown': markdown_table(table),
              'fit_job': {k: job.get(k) for k in ('version', 'parent', 'metrics_before', 'metrics_after')},
              'seconds': round(time.monotonic() - started, 1)}
    (results_dir / f'meshes{suffix}.json').write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='fewer meshes and epochs (used by the tests)')
    parser.add_argument('--results', type=Path, default=REPO / 'results')
    parser.add_argument('--workdir', type=Path, default=REPO / 'results' / 'meshes-workspace')
    args = parser.parse_args(argv)
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    result = run(args.results, args.workdir.resolve(), quick=args.quick)
    print(f"\n{result['markdown']}\n\nwrote {args.results}/meshes{'-quick' if args.quick else ''}.json and the "
          f"neighbour plot in {result['seconds']} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
