"""Small models and data shared by the tuner tests."""
import numpy as np

from executors.models.builders import build_model


def mlp(*sizes, seed=0):
    """``build_model`` MLP with ``layer_sizes=sizes`` and a seeded init."""
    return build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': list(sizes)}}, seed=seed)


def blobs(per_class=10, classes=3, dim=4, seed=0):
    """Gaussian blobs: ``(X float32 [per_class * classes, dim], y int [N])``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y
