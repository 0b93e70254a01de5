"""Time our triplet miners against pytorch-metric-learning's on one batch, in the same run.

    python benchmarks/bench_miners.py [--batch 256 --dim 128 --classes 32 --repeats 50 --device cpu]

Prints median milliseconds per call and the ratio ours/theirs, and writes ``results/bench_miners.json``.
``same_output`` says whether both returned the same set of triplets (``null`` where the two miners
define the selection differently, e.g. FaceNet semi-hard vs PML's margin band).
"""
import argparse
import json
import math
import platform
import statistics
from pathlib import Path

import pytorch_metric_learning
import torch
from pytorch_metric_learning import distances, miners
from timing import seconds

from executors.tuner.miners import AllTripletsMiner, TripletEasyHardMiner

RESULTS = Path(__file__).resolve().parents[1] / 'results' / 'bench_miners.json'


def median_ms(function, repeats: int, device: torch.device) -> float:
    for _ in range(3):
        function()
    return statistics.median(seconds(function, device) * 1e3 for _ in range(repeats))


def triplet_set(indices) -> set:
    """PML miners return (a, p, n) or (a1, p, a2, n) with a1 == a2; ours (a, p, n)."""
    anchor, positive, negative = (indices[0], indices[1], indices[3]) if len(indices) == 4 else indices
    return set(zip(anchor.tolist(), positive.tolist(), negative.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--dim', type=int, default=128)
    parser.add_argument('--classes', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=50)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(args.batch, args.dim, generator=generator).to(device)
    shuffle = torch.randperm(args.batch, generator=generator)
    labels = torch.arange(args.batch).remainder(args.classes)[shuffle].to(device)
    cosine = distances.CosineSimilarity()
    cases = [
        ('hard/hard', TripletEasyHardMiner('hard', 'hard'), miners.BatchHardMiner(distance=cosine), True),
        ('hard/semihard', TripletEasyHardMiner('hard', 'semihard'),
         miners.BatchEasyHardMiner('hard', 'semihard', distance=cosine), True),
        ('all/semihard vs TripletMarginMiner semihard', TripletEasyHardMiner('all', 'semihard'),
         miners.TripletMarginMiner(margin=0.2, type_of_triplets='semihard', distance=cosine), False),
        ('all triplets', AllTripletsMiner(),
         miners.TripletMarginMiner(margin=math.inf, type_of_triplets='all', distance=cosine), True),
    ]
    rows = []
    for name, ours, theirs, comparable in cases:
        ours_ms = median_ms(lambda: ours(embeddings, labels), args.repeats, device)
        theirs_ms = median_ms(lambda: theirs(embeddings, labels), args.repeats, device)
        mined = ours(embeddings, labels)
        same = triplet_set(mined) == triplet_set(theirs(embeddings, labels)) if comparable else None
        rows.append({'case': name, 'ours_ms': round(ours_ms, 3), 'pml_ms': round(theirs_ms, 3),
                     'ratio_ours_over_pml': round(ours_ms / theirs_ms, 3), 'same_output': same,
                     'ours_triplets': len(mined[0]), 'pml': type(theirs).__name__})

    print(f'{"case":46} {"ours ms":>9} {"pml ms":>9} {"ours/pml":>9} {"same":>6} {"triplets":>9}')
    for row in rows:
        print(f'{row["case"]:46} {row["ours_ms"]:9.3f} {row["pml_ms"]:9.3f} {row["ratio_ours_over_pml"]:9.3f} '
              f'{str(row["same_output"]):>6} {row["ours_triplets"]:9d}')
    report = {'batch': args.batch, 'dim': args.dim, 'classes': args.classes, 'repeats': args.repeats,
              'device': str(device), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
              'pytorch_metric_learning': pytorch_metric_learning.__version__, 'machine': platform.machine(),
              'rows': rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
