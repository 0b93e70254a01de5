"""Time one training epoch through ``fit`` against a minimal hand-written PyTorch loop, in the same run.

    python benchmarks/bench_fit.py [--n 20000 --dim 64 --hidden 256 --out-dim 128 --classes 100
                                    --batch 256 --repeats 15 --device cpu --profile]

Both loops train the same MLP from the same initial weights with ``SiameseLoss`` and Adam, on the same
batches (the class-balanced ``ClassSampler`` order ``fit`` uses by default for ``seed=0``, see
``default_items_per_class``). ``fit`` is timed end to end (input
checks, data normalisation, sampler, hooks); the plain loop indexes a pre-built tensor. After a warm-up
run of each, the two are timed alternately ``--repeats`` times; the report has the medians, the ratio
fit/plain (target <= 1.05), the median of the per-pair ratios (less sensitive to load drifting during the
run) and the largest weight difference between the two results (0: they did the same work). Writes
``results/bench_fit.json``; ``--profile`` also prints a cProfile of one ``fit``.
"""
import argparse
import cProfile
import json
import platform
import pstats
import statistics
from pathlib import Path

import numpy as np
import torch
from timing import seconds

from executors.models.builders import build_model
from executors.tuner.losses import SiameseLoss
from executors.tuner.samplers import ClassSampler
from executors.tuner.trainer import default_items_per_class, fit

RESULTS = Path(__file__).resolve().parents[1] / 'results' / 'bench_fit.json'
SEED = 0


def plain_epoch(model, X, y, batch_size, lr, device):
    """The reference: one epoch of sampler -> index -> forward -> loss -> backward -> Adam step."""
    X_t, y_t = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    loss_fn = SiameseLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    items_per_class, batch = default_items_per_class(y, batch_size)
    sampler = ClassSampler(y, batch, items_per_class, seed=SEED)
    sampler.set_epoch(0)
    model.train()
    for indices in sampler:
        index = torch.as_tensor(indices, device=device)
        loss = loss_fn(model(X_t[index]), y_t[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def fit_epoch(model, X, y, batch_size, lr, device):
    return fit(model, (X, y), loss='SiameseLoss', epochs=1, batch_size=batch_size, learning_rate=lr,
               optimizer='adam', seed=SEED, device=str(device), progress_bar=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=20000)
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--out-dim', type=int, default=128)
    parser.add_argument('--classes', type=int, default=100)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--profile', action='store_true', help='print a cProfile of one fit epoch')
    parser.add_argument('--out', type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    rng = np.random.default_rng(SEED)
    y = rng.integers(0, args.classes, args.n)
    centres = rng.normal(0, 1, (args.classes, args.dim))
    X = (centres[y] + rng.normal(0, 1, (args.n, args.dim))).astype(np.float32)
    spec = {'builder': 'mlp', 'kwargs': {'layer_sizes': [args.dim, args.hidden, args.out_dim]}}
    initial = build_model(spec, seed=SEED).state_dict()

    def fresh():
        model = build_model(spec)
        model.load_state_dict(initial)
        return model.to(device)

    runs = {'fit': fit_epoch, 'plain': plain_epoch}
    results = {name: run(fresh(), X, y, args.batch, args.lr, device) for name, run in runs.items()}  # warm-up
    max_weight_diff = max(float((a - b).abs().max()) for a, b in
                          zip(results['fit'].state_dict().values(), results['plain'].state_dict().values()))
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            model = fresh()
            times[name].append(seconds(lambda: run(model, X, y, args.batch, args.lr, device), device))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median['fit'] / median['plain']
    paired = statistics.median(f / p for f, p in zip(times['fit'], times['plain']))  # robust to load drift
    num_batches = -(-args.n // args.batch)
    print(f'{args.n} x {args.dim} -> MLP {args.dim}-{args.hidden}-{args.out_dim}, batch {args.batch} '
          f'({num_batches} batches), SiameseLoss + Adam, {device}, {torch.get_num_threads()} threads')
    for name in runs:
        print(f'{name:6} median {median[name] * 1e3:8.1f} ms/epoch  '
              f'({median[name] / num_batches * 1e3:.3f} ms/batch; runs {[round(t * 1e3, 1) for t in times[name]]})')
    print(f'ratio fit/plain {ratio:.3f} (target <= 1.05; median of paired ratios {paired:.3f}); '
          f'max |weight diff| {max_weight_diff:.2e}')

    report = {'n': args.n, 'dim': args.dim, 'layer_sizes': spec['kwargs']['layer_sizes'], 'classes': args.classes,
              'batch': args.batch, 'num_batches': num_batches, 'loss': 'SiameseLoss', 'optimizer': 'adam',
              'repeats': args.repeats, 'device': str(device), 'torch': torch.__version__,
              'threads': torch.get_num_threads(), 'machine': platform.machine(),
              'fit_ms': round(median['fit'] * 1e3, 2), 'plain_ms': round(median['plain'] * 1e3, 2),
              'ratio_fit_over_plain': round(ratio, 4), 'target_ratio': 1.05, 'within_target': ratio <= 1.05,
              'median_paired_ratio': round(paired, 4),
              'fit_runs_ms': [round(t * 1e3, 2) for t in times['fit']],
              'plain_runs_ms': [round(t * 1e3, 2) for t in times['plain']],
              'max_abs_weight_diff': max_weight_diff}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {args.out}')

    if args.profile:
        profiler = cProfile.Profile()
        model = fresh()
        profiler.runcall(fit_epoch, model, X, y, args.batch, args.lr, device)
        pstats.Stats(profiler).sort_stats('cumulative').print_stats(30)


if __name__ == '__main__':
    main()
