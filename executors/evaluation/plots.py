"""PNG figures for people who would rather look than read (matplotlib, no display needed)."""
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: List[Dict[str, float]], path) -> Path:
    """Loss curves (train/val) and retrieval metrics per epoch from ``tuner.state.history``."""
    path = Path(path)
    epochs = [h['epoch'] for h in history]
    metric_names = sorted({k for h in history for k in h if '@' in k or k in ('MRR', 'R-precision')})
    fig, axes = plt.subplots(1, 2 if metric_names else 1, figsize=(10 if metric_names else 5, 4), squeeze=False)
    for key in ('train_loss', 'val_loss'):
        if any(key in h for h in history):
            axes[0, 0].plot(epochs, [h.get(key) for h in history], marker='o', label=key)
    axes[0, 0].set(xlabel='epoch', ylabel='loss', title='loss')
    axes[0, 0].legend()
    if metric_names:
        for key in metric_names:
            axes[0, 1].plot(epochs, [h.get(key) for h in history], marker='o', label=key)
        axes[0, 1].set(xlabel='epoch', title='validation retrieval metrics')
        axes[0, 1].legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
