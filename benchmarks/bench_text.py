"""Text fine-tuning and embedding speed: our ``fit`` vs sentence-transformers' trainer, in one run.

Both fine-tune all-MiniLM-L6-v2 for one epoch on the same CLINC150 same-intent (anchor, positive)
pairs with ``MultipleNegativesRankingLoss`` (scale 20, cosine), ``--batch-pairs`` pairs per batch,
max_length 64, AdamW at the same lr with 10 % linear warm-up. ``fit`` gets the pairs as class data,
each pair its own label (so both train on exactly the same pairs; the quality setting of the demo
labels by intent instead); the peer gets them as an (anchor, positive) dataset with its NO_DUPLICATES
sampler. Reported: training sentences/s of each and ``ours / peer`` (target >= 1.0);
embedding sentences/s of the Encoder path (``VersionedEncoder.embed`` over a published version, i.e.
``embed`` through the version's text transform) vs plain batched model calls and vs
sentence-transformers' ``model.encode`` (same batch size and max_length), and the ratios. The
pairs are split into ``--rounds`` rounds that alternate which trainer runs first. Writes ``results/bench_text.json``.

``--quality`` measures quality instead, in one run: the text demo's best ``fit`` setting (``FINE_TUNE``,
labels = intents, per ``--seeds``) and the peer's trainer on all 7,500 same-intent pairs (per
``--peer-lrs``), both 1 epoch, scored on CLINC150 test -> train with the demo's metrics. Writes
``results/bench_text_quality.json``.

Needs the ``bench`` extra (sentence-transformers; its trainer also needs ``datasets`` and ``accelerate``).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 64


def pairs_of(texts, labels, num_pairs, seed=0):
    """``num_pairs`` (anchor, positive, intent) triples: consecutive items of each intent, shuffled."""
    rng = np.random.default_rng(seed)
    by_label = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    pairs = []
    for label, items in by_label.items():
        items = [items[i] for i in rng.permutation(len(items))]
        pairs += [(items[i], items[i + 1], label) for i in range(0, len(items) - 1, 2)]
    order = rng.permutation(len(pairs))[:num_pairs]
    return [pairs[i] for i in order]


def ours(pairs, batch_pairs, lr):
    from executors.data.transforms import attach_transform
    from executors.models import build_model
    from executors.tuner.trainer import fit

    model = attach_transform(build_model({'builder': 'transformer', 'kwargs': {}}),
                             {'modality': 'text', 'max_length': MAX_LENGTH})
    texts = [t for a, p, _ in pairs for t in (a, p)]
    labels = [f'{i}' for i in range(len(pairs)) for _ in range(2)]  # each pair its own label: the same pairs
    start = time.perf_counter()
    fit(model, (texts, labels), loss='MultipleNegativesRankingLoss', epochs=1, batch_size=2 * batch_pairs,
        learning_rate=lr, optimizer='adamw', weight_decay=0.01, scheduler='linear', warmup_ratio=0.1,
        progress_bar=False, seed=0)
    return len(texts) / (time.perf_counter() - start)


def peer(pairs, batch_pairs, lr):
    """sentence-transformers' trainer on the pairs: ``(sentences/s, the tuned SentenceTransformer)``."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from executors.models.transformer import default_model_path

    model = SentenceTransformer(default_model_path(), device='cpu')
    model.max_seq_length = MAX_LENGTH
    data = Dataset.from_dict({'anchor': [a for a, _, _ in pairs], 'positive': [p for _, p, _ in pairs]})
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, num_train_epochs=1, per_device_train_batch_size=batch_pairs, learning_rate=lr,
            warmup_steps=0.1, batch_sampler='no_duplicates', save_strategy='no', report_to=[], seed=0,
            use_cpu=True, logging_strategy='no', dataloader_drop_last=False)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return 2 * len(pairs) / seconds, model


def embedding(texts, batch_size=128):
    """(Encoder path, plain batched model calls, sentence-transformers ``encode``): sentences/s each."""
    from executors.data.transforms import attach_transform
    from executors.models import ModelStore, build_model
    from executors.models.serving import VersionedEncoder

    model = attach_transform(build_model({'builder': 'transformer', 'kwargs': {}}),
                             {'modality': 'text', 'max_length': MAX_LENGTH})
    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(root)
        store.publish('bench', model)
        encoder = VersionedEncoder(store, 'bench', batch_size=batch_size)
        encoder.ensure_active()
        start = time.perf_counter()
        encoder.embed(list(texts))
        encoder_rate = len(texts) / (time.perf_counter() - start)
    tokenizer = model.input_transform
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():  # plain loop: tokenize a batch, call the model (model.encode-style)
        for i in range(0, len(texts), batch_size):
            model(tokenizer.batch(texts[i:i + batch_size]))
    plain_rate = len(texts) / (time.perf_counter() - start)
    from sentence_transformers import SentenceTransformer

    from executors.models.transformer import default_model_path

    peer_model = SentenceTransformer(default_model_path(), device='cpu')
    peer_model.max_seq_length = MAX_LENGTH
    start = time.perf_counter()
    peer_model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True)
    return encoder_rate, plain_rate, len(texts) / (time.perf_counter() - start)


def quality(seeds, peer_lrs, batch_pairs) -> dict:
    """mAP@10 etc. (the demo's definition) on CLINC150 test -> train: the demo's best ``fit`` setting per seed
    vs sentence-transformers' trainer on all 7,500 same-intent pairs (1 epoch, NO_DUPLICATES) per lr."""
    from executors.demos.text import FINE_TUNE, Tokenize, embed_texts, load_data, scores
    from executors.models import build_model
    from executors.models.transformer import default_model_path
    from executors.tuner.trainer import fit

    (train_texts, train_labels), (test_texts, test_labels) = load_data(quick=False)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    tokenize = Tokenize(default_model_path(), MAX_LENGTH)
    result = {'ours': {}, 'peer': {}, 'ours_setting': FINE_TUNE}
    for seed in seeds:
        model = build_model({'builder': 'transformer', 'kwargs': {}})
        start = time.perf_counter()
        fit(model, (train_texts, list(train_labels)), collate_fn=tokenize, seed=seed, progress_bar=False, **FINE_TUNE)
        seconds = time.perf_counter() - start
        space = scores(embed_texts(model, test_texts, tokenize), test_labels,
                       embed_texts(model, train_texts, tokenize), train_labels)
        result['ours'][f'seed {seed}'] = {**space, 'fit (s)': round(seconds, 1)}
        print(f'ours, seed {seed}: {space} ({seconds:.0f} s)', flush=True)
    pairs = pairs_of(train_texts, train_labels, len(train_texts) // 2)
    for lr in peer_lrs:
        rate, model = peer(pairs, batch_pairs, lr)
        model.eval()
        test, train = (model.encode(list(texts), batch_size=128, normalize_embeddings=True)
                       for texts in (test_texts, train_texts))
        space = scores(test, test_labels, train, train_labels)
        result['peer'][f'lr {lr:g}'] = {**space, 'fit (s)': round(2 * len(pairs) / rate, 1)}
        print(f'peer, lr {lr:g}: {space}', flush=True)
    best_peer = max(v['mAP@10'] for v in result['peer'].values())
    ours_maps = [v['mAP@10'] for v in result['ours'].values()]
    result.update(ours_mean_mAP10=float(np.mean(ours_maps)), peer_best_mAP10=best_peer,
                  ours_mean_minus_peer_best=float(np.mean(ours_maps)) - best_peer)
    return result


def write(result: dict, out: Path) -> None:
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', type=int, default=7500, help='training pairs (7,500 = CLINC150 train, 1 epoch)')
    parser.add_argument('--batch-pairs', type=int, default=64)
    parser.add_argument('--lr', type=float, default=2e-4)
    parser.add_argument('--rounds', type=int, default=2, help='alternating rounds (the pairs split among them)')
    parser.add_argument('--embed', type=int, default=2000, help='sentences for the embedding throughput')
    parser.add_argument('--quality', action='store_true',
                        help='instead: mAP@10 of the demo setting vs the peer trainer on full CLINC150 test -> train')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0], help='--quality: seeds of our fit')
    parser.add_argument('--peer-lrs', type=float, nargs='+', default=[5e-5, 2e-4],
                        help="--quality: the peer's learning rates (5e-5 its default, 2e-4 its best)")
    parser.add_argument('--out', type=Path, default=None,
                        help='default results/bench_text.json (results/bench_text_quality.json with --quality)')
    args = parser.parse_args(argv)
    for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'JINA_OPTOUT_TELEMETRY'):
        os.environ.setdefault(name, '1')
    if args.quality:
        write(quality(args.seeds, args.peer_lrs, args.batch_pairs),
              args.out or REPO / 'results' / 'bench_text_quality.json')
        return 0
    from executors.demos.clinc150 import load_clinc150

    texts, labels = load_clinc150('train')
    pairs = pairs_of(texts, labels, args.pairs)
    result = {'pairs': len(pairs), 'batch_pairs': args.batch_pairs, 'max_length': MAX_LENGTH, 'lr': args.lr,
              'threads': torch.get_num_threads()}
    # rounds alternate which trainer goes first, so a change of machine load hits both alike
    rates = {'ours': [], 'peer': []}
    chunks = np.array_split(np.arange(len(pairs)), args.rounds)
    for round_no, chunk in enumerate(chunks):
        chunk_pairs = [pairs[i] for i in chunk]
        order = ('ours', 'peer') if round_no % 2 == 0 else ('peer', 'ours')
        for name in order:
            rate = ours(chunk_pairs, args.batch_pairs, args.lr) if name == 'ours' else \
                peer(chunk_pairs, args.batch_pairs, args.lr)[0]
            rates[name].append(rate)
            print(f'round {round_no + 1}/{args.rounds}: {name} {rate:.1f} sentences/s', flush=True)
    # sentences/s over all rounds = total sentences / total seconds
    total = 2 * len(pairs)
    result['fit_sentences_per_s'] = total / sum(2 * len(c) / r for c, r in zip(chunks, rates['ours']))
    result['peer_trainer_sentences_per_s'] = total / sum(2 * len(c) / r for c, r in zip(chunks, rates['peer']))
    result['fit_ratio'] = result['fit_sentences_per_s'] / result['peer_trainer_sentences_per_s']
    result['rounds'] = {name: [round(r, 2) for r in values] for name, values in rates.items()}
    encoder_rate, plain_rate, peer_rate = embedding(texts[:args.embed])
    result.update(encoder_sentences_per_s=encoder_rate, plain_sentences_per_s=plain_rate,
                  encoder_ratio=encoder_rate / plain_rate, peer_encode_sentences_per_s=peer_rate,
                  encoder_vs_peer_encode=encoder_rate / peer_rate)
    write(result, args.out or REPO / 'results' / 'bench_text.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
