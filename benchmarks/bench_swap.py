"""Model swap time of the search index on CLINC150 train texts: full re-embedding vs head-only.

The index holds ``--docs`` CLINC150 train texts (15,000 = all) embedded by pretrained
all-MiniLM-L6-v2 (max_length 64), version 1 of a model store. Swaps run in-process as a search flow
that follows the store runs them: the store's pointer moves to the new version (a promotion) and
the Indexer's :class:`executors.search.lifecycle.ModelFollower` swaps the index to it;
the time is from the pointer move until the index serves the new version:

* (a) ``full``: pretrained MiniLM served -> a fine-tuned full transformer version (the pretrained
  weights after one AdamW step on same-intent pairs: the swap time does not depend on quality);
  every doc goes through the transformer again.
* (b0) ``seed``: pretrained MiniLM served -> MiniLM + FeedForwardTuner head 1 (its base fingerprint
  is the served version's, so the served embeddings are kept as base embeddings and the head is
  applied to them).
* (b) ``head``: MiniLM + head 1 served -> MiniLM + head 2 (head-only: the head over the stored base
  embeddings, no transformer call).

Reported: seconds per swap, docs/s, ``full / head`` (how many times cheaper the head-only swap is),
and the largest difference between the head-only vectors and a full re-embedding of 256 docs.
Writes ``results/bench_swap.json``. ``--quick``: 300 docs.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 64
MODEL = 'minilm-text'


def one_step_fine_tune(model, texts, intents, lr=2e-5, pairs=16):
    """The model after one AdamW step pulling ``pairs`` same-intent pairs together (cosine)."""
    from executors.data.transforms import transform_of

    by_intent = {}
    for text, intent in zip(texts, intents):
        by_intent.setdefault(intent, []).append(text)
    chosen = [items[:2] for items in by_intent.values() if len(items) >= 2][:pairs]
    anchors, positives = [a for a, _ in chosen], [p for _, p in chosen]
    transform = transform_of(model)
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    loss = -torch.nn.functional.cosine_similarity(model(transform.batch(anchors)), model(transform.batch(positives))).mean()
    loss.backward()
    optimizer.step()
    return model.eval()


def timed_swap(follower, store, version):
    """Seconds from moving the store's pointer to ``version`` (a promotion) until the follower's
    index serves it, and the follower's head-swap routes."""
    index = follower.index
    start = time.perf_counter()
    store.set_current(MODEL, version)
    while index.active_version != version or index.pending_version is not None:
        if follower.error:
            raise RuntimeError(follower.error)
        time.sleep(0.01)
    return time.perf_counter() - start, dict(follower.progress.get('head_swap', {}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--docs', type=int, default=15000, help='CLINC150 train texts to index (15,000 = all)')
    parser.add_argument('--quick', action='store_true', help='300 docs')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (1 on a busy machine)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--out', default=str(REPO / 'results' / 'bench_swap.json'))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from executors.data.document_store import StoredDoc
    from executors.data.transforms import attach_transform
    from executors.demos.clinc150 import load_clinc150
    from executors.models import ModelStore, build_model
    from executors.models.heads import with_head
    from executors.models.inference import embed
    from executors.search.lifecycle import ModelFollower
    from executors.search.vector_index import SearchIndex
    from executors.tuner.head_tuners import FeedForwardTuner

    num_docs = 300 if args.quick else args.docs
    texts, intents = load_clinc150('train')
    order = np.random.default_rng(0).permutation(len(texts))[:num_docs]
    texts, intents = [texts[i] for i in order], [intents[i] for i in order]
    work = Path(tempfile.mkdtemp(prefix='bench-swap-'))
    store = ModelStore(work / 'models')
    pretrained = attach_transform(build_model({'builder': 'transformer', 'kwargs': {}}),
                                  {'modality': 'text', 'max_length': MAX_LENGTH})
    v_pretrained = store.publish(MODEL, pretrained).version
    print(f'{num_docs} docs; embedding them with pretrained MiniLM (the served index) ...', file=sys.stderr)
    start = time.perf_counter()
    base_vectors = embed(texts, store.load(MODEL, v_pretrained)[0], batch_size=args.batch_size)
    index_seconds = time.perf_counter() - start

    fine_tuned = one_step_fine_tune(store.load(MODEL, v_pretrained)[0], texts, intents)
    v_full = store.publish(MODEL, fine_tuned, make_current=False).version
    heads = []
    for seed in (0, 1):
        tuner = FeedForwardTuner(hidden_dim=256, n_epochs=5, random_state=seed).fit(base_vectors, intents)
        base, config = store.load(MODEL, v_pretrained)
        model = attach_transform(with_head(base, tuner.head_module()), config['input_transform'])
        heads.append(store.publish(MODEL, model, make_current=False).version)

    def served_index(name):
        index = SearchIndex(work / name, snapshot_interval=3600)
        index.add([StoredDoc(id=f'd{i}', label=intent, text=text) for i, (text, intent) in enumerate(zip(texts, intents))],
                  {v_pretrained: base_vectors})
        return index

    results = {'docs': num_docs, 'threads': torch.get_num_threads(), 'initial_index_seconds': index_seconds}
    print('(a) pretrained -> fine-tuned transformer (full re-embedding) ...', file=sys.stderr)
    index = served_index('a')
    follower = ModelFollower(index, store, MODEL, poll_interval=0.01, batch_size=args.batch_size)
    results['full_seconds'], results['full_routes'] = timed_swap(follower, store, v_full)
    follower.close()
    index.close()
    store.set_current(MODEL, v_pretrained)
    index = served_index('b')
    follower = ModelFollower(index, store, MODEL, poll_interval=0.01, batch_size=args.batch_size)
    print('(b0) pretrained -> MiniLM + head 1 ...', file=sys.stderr)
    results['seed_seconds'], results['seed_routes'] = timed_swap(follower, store, heads[0])
    print('(b) MiniLM + head 1 -> MiniLM + head 2 ...', file=sys.stderr)
    results['head_seconds'], results['head_routes'] = timed_swap(follower, store, heads[1])
    follower.close()
    sample = np.arange(min(256, num_docs))
    rows, stored, _ = index.store.embeddings_after(heads[1], 0)
    by_row = dict(zip(rows.tolist(), stored))
    row_of = index.store.rows_for_ids([f'd{i}' for i in sample])
    reference = embed([texts[i] for i in sample], store.load(MODEL, heads[1])[0], batch_size=args.batch_size)
    head_vectors = np.stack([by_row[row_of[f'd{i}']] for i in sample])
    results['head_vs_full_max_abs_diff'] = float(np.abs(head_vectors - reference).max())
    index.close()
    results['full_over_head'] = results['full_seconds'] / results['head_seconds']

    print(f'\nswap time on {num_docs} CLINC150 train docs ({results["threads"]} torch threads)')
    print(f'{"swap":58s} {"seconds":>9s} {"docs/s":>9s}')
    for label, key in (('initial index: embed with pretrained MiniLM', 'initial_index_seconds'),
                       ('(a) pretrained -> fine-tuned transformer (full)', 'full_seconds'),
                       ('(b0) pretrained -> MiniLM + head 1 (served = base)', 'seed_seconds'),
                       ('(b) MiniLM + head 1 -> MiniLM + head 2 (head-only)', 'head_seconds')):
        print(f'{label:58s} {results[key]:9.2f} {num_docs / results[key]:9.0f}')
    print(f'full / head-only: {results["full_over_head"]:.1f}x; head-only vs full re-embedding max |diff| '
          f'{results["head_vs_full_max_abs_diff"]:.2e}')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
