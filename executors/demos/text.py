"""Text scenario: sentence embeddings for CLINC150 intent retrieval, before and after tuning.

Queries = the CLINC150 test split (4,500 sentences), index = the train split (15,000), a neighbour
is relevant when it has the query's intent. Four embedding spaces are compared:

1. pretrained all-MiniLM-L6-v2 (masked mean pooling, L2-normalised, max_length 64);
2. MiniLM fine-tuned with this project's ``fit``: ``MultipleNegativesRankingLoss`` (scale 20,
   cosine, plus class prototypes) on same-intent (anchor, positive) pairs, one pair per intent per batch, 1 epoch
   (each training sentence seen once), AdamW with linear warm-up and decay;
3. ``FeedForwardTuner`` and 4. ``ContrastiveTuner`` heads on the frozen pretrained embeddings.

Metrics at k = 10: hit@1, hit@10, mAP@10 and NDCG@10, where mAP@10 is the mean over queries of
``sum_{r<=10} P@r * rel_r / (relevant items in the top 10)`` (0 when none), the metric
``'mAP-retrieved'`` of :mod:`executors.evaluation.metrics`.

Writes ``results/text.json`` and ``results/text.png`` (2-D PCA of test embeddings of 10 intents
before/after, coloured by intent, and the fine-tuning loss curve). ``--quick`` runs a small
subset (the tests use it). Stage outputs are cached in ``--cache`` so an interrupted run resumes.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[2]
K = 10
MAX_LENGTH = 64
#: the fine-tuning settings of the full scenario (also the text flow's /fit defaults)
FINE_TUNE = {'loss': 'MultipleNegativesRankingLoss', 'epochs': 1, 'batch_size': 64, 'learning_rate': 2e-4,
             'loss_kwargs': {'prototype_weight': 1.0, 'prototype_scale': 30.0, 'prototype_momentum': 0.5,
                             'prototype_margin': 0.1},
             'optimizer': 'adamw', 'weight_decay': 0.01, 'scheduler': 'linear', 'warmup_ratio': 0.1}
FINE_TUNED = 'MiniLM fine-tuned (fit, MNRL + class prototypes with margin, 1 epoch)'  # its row in the table
HEADS = {'FeedForwardTuner': {'hidden_dim': 256, 'n_epochs': 20, 'learning_rate': 1e-3, 'batch_size': 64},
         'ContrastiveTuner': {'hidden_dim': 256, 'n_neg': 3, 'epochs': 20, 'learning_rate': 1e-3}}
#: what a user sets on the text training flow's /fit (the rest are flows/text-train.yml's defaults)
FLOW_FIT = {'loss': 'MultipleNegativesRankingLoss', 'epochs': 1}
QUICK = {'intents': 12, 'train_per_intent': 20, 'test_per_intent': 6}


class Tokenize:
    """collate_fn: texts -> ``{'input_ids', 'attention_mask'}`` int64 ``[B, L]``, L <= max_length."""

    def __init__(self, path: str, max_length: int = MAX_LENGTH):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_length = max_length

    def __call__(self, texts: List[str]):
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors='pt'))


def embed_texts(model, texts: List[str], tokenize: Tokenize, batch_size: int = 128) -> np.ndarray:
    """``[N, D]`` embeddings, batched in order of length (less padding), returned in input order."""
    import torch

    model.eval()
    order = np.argsort([len(t) for t in texts], kind='stable')
    out = None
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            vectors = model(tokenize([texts[i] for i in rows])).float().numpy()
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
    return out


def scores(queries, query_labels, index, index_labels) -> Dict[str, float]:
    """hit@1, hit@10, mAP@10 (retrieved-normalised) and NDCG@10 of cosine retrieval."""
    from executors.evaluation.metrics import evaluate_embeddings

    at_k = evaluate_embeddings(queries, query_labels, index, index_labels, k=K,
                               metrics=['hit', 'mAP-retrieved', 'NDCG'])
    at_1 = evaluate_embeddings(queries, query_labels, index, index_labels, k=1, metrics=['hit'])
    return {'hit@1': at_1['hit@1'], f'hit@{K}': at_k[f'hit@{K}'], f'mAP@{K}': at_k[f'mAP-retrieved@{K}'],
            f'NDCG@{K}': at_k[f'NDCG@{K}']}


def load_data(quick: bool):
    from executors.demos.clinc150 import clinc150_intents, load_clinc150

    if not quick:
        return load_clinc150('train'), load_clinc150('test')
    intents = clinc150_intents()[::len(clinc150_intents()) // QUICK['intents']][:QUICK['intents']]

    def first(split, per_intent):
        texts, labels = load_clinc150(split, intents)
        kept = {intent: 0 for intent in intents}
        rows = []
        for i, label in enumerate(labels):
            if kept[label] < per_intent:
                kept[label] += 1
                rows.append(i)
        return [texts[i] for i in rows], [labels[i] for i in rows]

    return first('train', QUICK['train_per_intent']), first('test', QUICK['test_per_intent'])


class _LossCurve:
    """A fit callback recording the loss of every batch."""

    def __init__(self):
        from executors.tuner.callbacks import Callback

        outer = self
        self.losses: List[float] = []

        class Recorder(Callback):
            def on_train_batch_end(self, tuner):
                outer.losses.append(float(tuner.state.current_loss))
                if len(outer.losses) % 10 == 0:
                    print(f'  batch {len(outer.losses)}/{tuner.state.num_batches} loss {outer.losses[-1]:.4f}',
                          flush=True)

        self.callback = Recorder()


def run(results_dir: Path, cache: Path, quick: bool = False, seed: int = 0, through_flow: bool = True) -> dict:
    import torch

    from executors.models import ModelStore, build_model
    from executors.models.transformer import default_model_path
    from executors.tuner.head_tuners import ContrastiveTuner, FeedForwardTuner
    from executors.tuner.trainer import fit

    started = time.monotonic()
    timings: Dict[str, float] = {}
    results_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (train_texts, train_labels), (test_texts, test_labels) = load_data(quick)
    train_labels, test_labels = np.array(train_labels), np.array(test_labels)
    print(f'CLINC150{" (quick subset)" if quick else ""}: {len(test_texts)} queries, {len(train_texts)} '
          f'indexed sentences, {len(set(train_labels))} intents', flush=True)
    tokenize = Tokenize(default_model_path())

    def cached_embeddings(name, model):
        path = cache / f'{name}.npz'
        if path.is_file():
            data = np.load(path)
            return data['test'], data['train']
        tick = time.monotonic()
        test = embed_texts(model, test_texts, tokenize)
        train = embed_texts(model, train_texts, tokenize)
        timings[f'embed {name} (s)'] = round(time.monotonic() - tick, 1)
        print(f'  embedded {len(test_texts) + len(train_texts)} sentences with {name} in '
              f'{timings[f"embed {name} (s)"]} s', flush=True)
        np.savez(path, test=test, train=train)
        return test, train

    spec = {'builder': 'transformer', 'kwargs': {'pooling': 'mean', 'normalize': True}}
    print('pretrained MiniLM ...', flush=True)
    pretrained = build_model(spec)
    spaces = {'pretrained MiniLM': cached_embeddings('pretrained', pretrained)}

    # the fine-tuned stage is cached per setting: a change to FINE_TUNE fine-tunes again
    setting = hashlib.sha1(json.dumps(FINE_TUNE, sort_keys=True).encode()).hexdigest()[:10]
    store = ModelStore(cache / f'models-{setting}')
    curve_file = cache / f'loss_curve-{setting}.json'
    if store.current_version('minilm-clinc') is None:
        print(f'fine-tuning MiniLM: {FINE_TUNE}', flush=True)
        model = build_model(spec)
        curve = _LossCurve()
        tick = time.monotonic()
        options = {k: v for k, v in FINE_TUNE.items() if k != 'loss'}
        fit(model, (train_texts, train_labels), loss=FINE_TUNE['loss'], collate_fn=tokenize, seed=seed,
            callbacks=[curve.callback], progress_bar=False, **options)
        timings['fine-tune (s)'] = round(time.monotonic() - tick, 1)
        store.publish('minilm-clinc', model, {'fit': FINE_TUNE, 'seconds': timings['fine-tune (s)']})
        curve_file.write_text(json.dumps(curve.losses))
    tuned, tuned_config = store.load('minilm-clinc')
    timings.setdefault('fine-tune (s)', tuned_config.get('seconds'))
    spaces[FINE_TUNED] = cached_embeddings(f'fine-tuned-{setting}', tuned)
    losses = json.loads(curve_file.read_text())
    if not quick and through_flow:
        # cached per flow file and request: a changed default or request fits again
        flow_setting = hashlib.sha1((REPO / 'flows/text-train.yml').read_bytes()
                                    + json.dumps(FLOW_FIT, sort_keys=True).encode()).hexdigest()[:10]
        flow_model, flow_job = fit_through_flow(train_texts, train_labels, cache / f'flow-{flow_setting}')
        timings['flow /fit (s)'] = flow_job.get('seconds')
        spaces['MiniLM fine-tuned through the flow (/fit with loss + epochs only)'] = cached_embeddings(
            f'flow-fit-{flow_setting}', flow_model)

    base_test, base_train = spaces['pretrained MiniLM']
    for name, settings in HEADS.items():
        tuner = (FeedForwardTuner if name == 'FeedForwardTuner' else ContrastiveTuner)(random_state=seed, **settings)
        tick = time.monotonic()
        with torch.random.fork_rng(devices=[]):
            tuner.fit(base_train, train_labels)
        timings[f'{name} fit (s)'] = round(time.monotonic() - tick, 1)
        spaces[f'{name} on frozen MiniLM'] = (tuner.transform(base_test), tuner.transform(base_train))
        print(f'  {name} fitted in {timings[f"{name} fit (s)"]} s', flush=True)

    table = {name: scores(test, test_labels, train, train_labels) for name, (test, train) in spaces.items()}
    plot_path = results_dir / ('text_quick.png' if quick else 'text.png')
    plot_scenario(spaces['pretrained MiniLM'][0], spaces[FINE_TUNED][0],
                  test_labels, losses, plot_path)
    result = {'scenario': 'text (CLINC150)', 'quick': quick, 'k': K, 'num_queries': len(test_texts),
              'num_index': len(train_texts), 'num_intents': int(len(set(train_labels))), 'max_length': MAX_LENGTH,
              'fine_tune': FINE_TUNE, 'heads': HEADS, 'spaces': table, 'timings': timings,
              'mAP_definition': 'mean over queries of sum_{r<=10} P@r * rel_r / (relevant in top 10), 0 when none',
              'seconds': round(time.monotonic() - started, 1), 'plot': str(plot_path)}
    (results_dir / ('text_quick.json' if quick else 'text.json')).write_text(json.dumps(result, indent=2))
    return result


def fit_through_flow(texts: List[str], labels, workdir: Path, request_size: int = 500):
    """``(model, job)``: the training flow ``flows/text-train.yml`` started in ``workdir`` (free ports),
    the labelled sentences streamed to ``/train`` over gRPC (label from ``tags['intent']``), ``/fit``
    with only ``loss`` and ``epochs`` set (every other setting is the flow's default), and the version
    it published loaded from the flow's model store. Reuses a version already published in ``workdir``."""
    from jina import Client

    from executors.data.schema import Doc, DocList
    from executors.demos.scenario import wait_for_fit
    from executors.models import ModelStore
    from executors.service.flow_process import FlowProcess

    store_dir, name = workdir / 'workspace' / 'models', 'minilm-text'
    done_file = workdir / 'fit_job.json'
    if not done_file.is_file():
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        print(f'fine-tuning through {REPO / "flows/text-train.yml"}: /fit {FLOW_FIT}', flush=True)
        with FlowProcess(REPO / 'flows/text-train.yml', workdir, free_ports=True) as flow:
            client = Client(port=flow.ports['grpc'])
            client.post('/train', DocList[Doc]([Doc(id=f'clinc-train-{i}', text=text, tags={'intent': str(label)})
                                                for i, (text, label) in enumerate(zip(texts, labels))]),
                        request_size=request_size)
            tick = time.monotonic()
            client.post('/fit', parameters=FLOW_FIT)
            job = wait_for_fit(client, poll_seconds=5.0)
            job['seconds'] = round(time.monotonic() - tick, 1)
        done_file.write_text(json.dumps(job))
    job = json.loads(done_file.read_text())
    model, _ = ModelStore(store_dir).load(name, job['version'])
    return model, job


def plot_scenario(before: np.ndarray, after: np.ndarray, labels: np.ndarray, losses: List[float], path: Path,
                  num_intents: int = 10) -> Path:
    """Three panels: 2-D PCA of the test embeddings of ``num_intents`` intents before and after
    fine-tuning (coloured by intent) and the loss per batch."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    shown = sorted(set(labels.tolist()))[:num_intents]
    rows = np.isin(labels, shown)
    colour = np.searchsorted(np.array(shown), labels[rows])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (title, vectors) in zip(axes, [('pretrained MiniLM', before), ('fine-tuned MiniLM', after)]):
        points = PCA(2, random_state=0).fit_transform(vectors[rows])
        scatter = ax.scatter(points[:, 0], points[:, 1], c=colour, cmap='tab10', s=12)
        ax.set_title(f'{title}: test sentences of {len(shown)} intents (PCA)')
    axes[1].legend(scatter.legend_elements()[0], shown, fontsize='x-small', loc='best')
    axes[2].plot(np.arange(1, len(losses) + 1), losses, lw=1)
    axes[2].set(xlabel='batch', ylabel='loss (MNRL + prototype term)', title='fine-tuning loss (1 epoch)')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown_table(result: dict) -> str:
    lines = [f'| embedding space | hit@1 | hit@{K} | mAP@{K} | NDCG@{K} |', '|---|---|---|---|---|']
    for name, metrics in result['spaces'].items():
        lines.append(f"| {name} | {metrics['hit@1']:.3f} | {metrics[f'hit@{K}']:.3f} | "
                     f"{metrics[f'mAP@{K}']:.3f} | {metrics[f'NDCG@{K}']:.3f} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='a small subset of intents (seconds, not an hour)')
    parser.add_argument('--results', type=Path, default=REPO / 'results')
    parser.add_argument('--cache', type=Path, default=None, help='stage outputs (default results/text-cache[-quick])')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-flow', action='store_true',
                        help='skip the fit through flows/text-train.yml (the full run does it; --quick never does)')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch CPU threads (default torch's; 1 is faster on a machine busy with other work)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name in ('JINA_OPTOUT_TELEMETRY', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        os.environ.setdefault(name, '1')
    cache = args.cache or args.results / ('text-cache-quick' if args.quick else 'text-cache')
    result = run(args.results, cache, quick=args.quick, seed=args.seed, through_flow=not args.no_flow)
    print('\n' + markdown_table(result))
    print(f"\nwrote {args.results / ('text_quick.json' if args.quick else 'text.json')} and {result['plot']} "
          f"in {result['seconds']} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
