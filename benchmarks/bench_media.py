"""Embedding throughput of images and point clouds through the Encoder path vs a plain PyTorch loop, in one run.

    python benchmarks/bench_media.py [--images 256 --image-size 128 --clouds 512 --points 512 --batch 64
                                      --repeats 5 --device cpu]

Encoder path: the model version is published to a ModelStore with its input transform and served by
``VersionedEncoder`` (what the Encoder executor runs): decoded values in (uint8 RGB pixels [H, W, 3] at the
model's size; point clouds [2 x points, 3] as the mesh decoder stores them), the version's transform
(normalise, HWC -> CHW; subsample, centre, unit sphere) and the forward per batch, embeddings out.
Plain loop: the same model and weights, ``model(x)`` under ``torch.no_grad()`` on batches sliced from one
input tensor built beforehand (no transform at all), i.e. the ceiling. After a warm-up of each, the two
are timed alternately ``--repeats`` times; reported: items/s of each (medians), the ratio
encoder/plain of throughputs (target >= 0.9) and the median of per-pair ratios, plus the largest
difference between the two paths' embeddings (they did the same work). Writes ``results/bench_media.json``.
"""
import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import seconds

from executors.data.transforms import attach_transform, transform_of
from executors.models import ModelStore, build_model
from executors.models.serving import VersionedEncoder

RESULTS = Path(__file__).resolve().parents[1] / 'results' / 'bench_media.json'


def image_case(count: int, size: int):
    rng = np.random.default_rng(0)
    model = build_model({'builder': 'efficientnet_lite0_embedding',
                         'kwargs': {'num_frozen_blocks': 8, 'input_size': [3, size, size]}})
    transform = {'modality': 'image', 'size': [size, size], 'mean': [0.5] * 3, 'std': [0.5] * 3}
    values = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(count)]
    return 'images', attach_transform(model, transform), values


def cloud_case(count: int, points: int):
    rng = np.random.default_rng(0)
    model = build_model({'builder': 'pointnet', 'kwargs': {'embedding_dim': 128, 'point_widths': [64, 128, 512],
                                                           'head_widths': [256]}}, seed=0)
    values = [rng.normal(size=(2 * points, 3)).astype(np.float32) for _ in range(count)]
    return 'point clouds', attach_transform(model, {'modality': 'mesh', 'num_points': points}), values


def measure(name, model, values, batch_size, repeats, device, store_dir):
    store = ModelStore(store_dir)
    store.publish(name, model, {})
    encoder = VersionedEncoder(store, name, batch_size=batch_size, device=str(device))
    encoder.ensure_active()
    inputs = transform_of(model).batch(values).to(device)
    plain_model = model.to(device).eval()

    @torch.no_grad()
    def plain():
        return torch.cat([plain_model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]).cpu()

    encoder_result = {}

    def through_encoder():
        encoder_result['embeddings'] = encoder.embed(values)[0]

    plain_embeddings = plain().numpy()
    through_encoder()  # warm-up of both
    plain_times, encoder_times = [], []
    for _ in range(repeats):
        plain_times.append(seconds(plain, device))
        encoder_times.append(seconds(through_encoder, device))
    ratio = statistics.median(plain_times) / statistics.median(encoder_times)
    return {
        'items': len(values), 'batch_size': batch_size,
        'plain_items_per_s': len(values) / statistics.median(plain_times),
        'encoder_items_per_s': len(values) / statistics.median(encoder_times),
        'throughput_ratio_encoder_over_plain': ratio,
        'median_pair_ratio': statistics.median(p / e for p, e in zip(plain_times, encoder_times)),
        'max_abs_embedding_difference': float(np.abs(encoder_result['embeddings'] - plain_embeddings).max()),
        'target': '>= 0.9',
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--clouds', type=int, default=512)
    parser.add_argument('--points', type=int, default=512)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {'python': platform.python_version(), 'torch': torch.__version__, 'device': str(device),
              'threads': torch.get_num_threads(), 'cases': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, model, values) in enumerate([image_case(args.images, args.image_size),
                                                       cloud_case(args.clouds, args.points)]):
            report['cases'][name] = result = measure(f'bench-{index}', model, values, args.batch, args.repeats,
                                                     device, Path(tmp) / 'models')
            print(f"{name}: encoder {result['encoder_items_per_s']:.1f}/s, plain {result['plain_items_per_s']:.1f}/s, "
                  f"ratio {result['throughput_ratio_encoder_over_plain']:.3f} (pairs {result['median_pair_ratio']:.3f}), "
                  f"max |diff| {result['max_abs_embedding_difference']:.2e}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f'wrote {RESULTS}')


if __name__ == '__main__':
    main()
