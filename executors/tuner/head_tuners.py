"""Heads tuned on frozen embeddings, as scikit-learn transformers.

Both take embeddings ``X [N, D]`` (e.g. from a frozen sentence encoder) with labels ``y [N]`` and
learn a small torch head; ``transform(X)`` gives the new embeddings ``[N, hidden_dim]``. They fit
in ``make_pipeline(encoder, tuner, PCA())``. ``fit`` starts from a fresh head; ``partial_fit``
continues training the same head (and optimiser state) on the next batch of data.

* :class:`FeedForwardTuner`: a classifier ``softmax(W2 tanh(W1 x + b1) + b2)`` trained with cross
  entropy on the labels; the hidden layer ``tanh(W1 x + b1)`` is the embedding.
* :class:`ContrastiveTuner`: a shared linear map ``z = W x``; each epoch pairs every item with one
  item of its label (if any) and ``n_neg`` items of other labels, and minimises
  ``mean over pairs (cos(z_a, z_b) - t_ab)^2`` with ``t_ab = 1`` for a same-label pair, 0 otherwise.

``head_module()`` returns the embedding part as a torch module with a builder spec, so a frozen
encoder plus the tuned head is one publishable model (see :mod:`executors.models.heads`).
"""
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from executors.errors import InputError
from executors.models.builders import build_model


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f'{name}: must be a positive integer, got {value!r}')
    return int(value)


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f'{name}: must be a positive number, got {value!r}')
    return float(value)


class _HeadTuner(TransformerMixin, BaseEstimator):
    """Shared fit/partial_fit/transform; subclasses define the head and one epoch of training."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ['float64', 'float32']
        return tags

    # ---- subclass API
    def _check_params(self) -> None:
        raise NotImplementedError

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        raise NotImplementedError

    def _train_epoch(self, X: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> float:
        raise NotImplementedError

    def _embed(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- sklearn API
    def fit(self, X, y):
        """Train a fresh head on ``(X, y)``; returns self."""
        for attribute in ('module_', 'optimizer_', 'classes_', 'n_features_in_', 'loss_curve_'):
            self.__dict__.pop(attribute, None)
        return self.partial_fit(X, y)

    def partial_fit(self, X, y, classes=None):
        """Continue training on ``(X, y)`` (the first call builds the head). ``classes``: every label
        the calls will see, needed on the first call when later batches hold labels the first lacks."""
        self._check_params()
        first = not hasattr(self, 'module_')
        X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if first:
            self.classes_ = np.unique(y if classes is None else np.asarray(classes))
            if len(self.classes_) < 2:
                raise InputError(f'y: {type(self).__name__} needs at least two labels (got one class, '
                                 f'{self.classes_.tolist()}); give items of several labels')
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed())
                self.module_ = self._build(X.shape[1], len(self.classes_))
            self.optimizer_ = torch.optim.Adam(self.module_.parameters(), lr=self.learning_rate)
            self.loss_curve_ = []
            self.n_calls_ = 0
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise InputError(f'y: labels {unknown[:5].tolist()} were not in the classes of the first fit '
                             f'call; pass classes=[...] with every label to the first partial_fit')
        labels = torch.from_numpy(np.searchsorted(self.classes_, y)).long()
        inputs = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        rng = np.random.default_rng([self._seed(), self.n_calls_])
        self.module_.train()
        for _ in range(self._epochs()):
            self.loss_curve_.append(self._train_epoch(inputs, labels, rng))
        self.module_.eval()
        self.n_calls_ += 1
        return self

    def transform(self, X):
        """Embeddings ``[N, hidden_dim]`` of ``X [N, D]`` (in ``X``'s float dtype)."""
        check_is_fitted(self, 'module_')
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        with torch.no_grad():
            out = self._embed(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
        return out.numpy().astype(X.dtype, copy=False)

    def head_module(self) -> nn.Module:
        """The embedding part of the fitted head as a torch module ``[B, D] -> [B, hidden_dim]``
        (built by :func:`executors.models.heads.build_head`, so it is stored as safetensors + JSON)."""
        check_is_fitted(self, 'module_')
        head = build_model({'builder': 'head', 'kwargs': self._head_spec()})
        head.load_state_dict(self._head_state())
        return head.eval()

    def _seed(self) -> int:
        return 0 if self.random_state is None else int(self.random_state)


class FeedForwardTuner(_HeadTuner):
    """Classifier on frozen embeddings whose hidden layer is the new embedding (module docstring).

    ``hidden_dim``: embedding size; ``n_epochs`` passes per ``fit``/``partial_fit`` call, in shuffled
    mini-batches of ``batch_size``; Adam at ``learning_rate``.
    """

    def __init__(self, hidden_dim: int = 256, n_epochs: int = 20, learning_rate: float = 1e-3,
                 batch_size: int = 64, random_state: Optional[int] = None):
        self.hidden_dim, self.n_epochs, self.learning_rate = hidden_dim, n_epochs, learning_rate
        self.batch_size, self.random_state = batch_size, random_state

    def _check_params(self):
        _positive_int('hidden_dim', self.hidden_dim)
        _positive_int('n_epochs', self.n_epochs)
        _positive_int('batch_size', self.batch_size)
        _positive_float('learning_rate', self.learning_rate)

    def _epochs(self) -> int:
        return self.n_epochs

    def _build(self, n_features, n_classes):
        return nn.ModuleDict({'hidden': nn.Linear(n_features, self.hidden_dim),
                              'out': nn.Linear(self.hidden_dim, n_classes)})

    def _embed(self, X):
        return torch.tanh(self.module_['hidden'](X))

    def _train_epoch(self, X, y, rng):
        order = torch.from_numpy(rng.permutation(len(X)))
        total = 0.0
        for start in range(0, len(X), self.batch_size):
            batch = order[start:start + self.batch_size]
            loss = nn.functional.cross_entropy(self.module_['out'](self._embed(X[batch])), y[batch])
            self.optimizer_.zero_grad()
            loss.backward()
            self.optimizer_.step()
            total += float(loss.detach()) * len(batch)
        return total / len(X)

    def _head_spec(self):
        return {'kind': 'feedforward', 'in_dim': int(self.n_features_in_), 'out_dim': int(self.hidden_dim)}

    def _head_state(self):
        return {f'layer.{k}': v for k, v in self.module_['hidden'].state_dict().items()}


class ContrastiveTuner(_HeadTuner):
    """Shared linear map trained on same/different-label pairs (module docstring).

    ``hidden_dim``: embedding size; ``n_neg`` negatives per item and epoch; ``epochs`` passes per
    ``fit``/``partial_fit`` call over the pairs in shuffled mini-batches of ``batch_size``; Adam at
    ``learning_rate``.
    """

    def __init__(self, hidden_dim: int = 256, n_neg: int = 3, epochs: int = 20, learning_rate: float = 1e-3,
                 batch_size: int = 256, random_state: Optional[int] = None):
        self.hidden_dim, self.n_neg, self.epochs, self.learning_rate = hidden_dim, n_neg, epochs, learning_rate
        self.batch_size, self.random_state = batch_size, random_state

    def _check_params(self):
        _positive_int('hidden_dim', self.hidden_dim)
        _positive_int('n_neg', self.n_neg)
        _positive_int('epochs', self.epochs)
        _positive_int('batch_size', self.batch_size)
        _positive_float('learning_rate', self.learning_rate)

    def _epochs(self) -> int:
        return self.epochs

    def _build(self, n_features, n_classes):
        return nn.Linear(n_features, self.hidden_dim, bias=False)

    def _embed(self, X):
        return self.module_(X)

    def _pairs(self, y: np.ndarray, rng: np.random.Generator):
        """``(first, second, target)``: each item with one same-label item (if its label has another)
        and ``n_neg`` items of other labels."""
        n = len(y)
        order = np.argsort(y, kind='stable')
        starts = np.searchsorted(y[order], y, side='left')
        counts = np.bincount(y, minlength=y.max() + 1)[y]
        has_partner = counts > 1
        anchors = np.flatnonzero(has_partner)
        # a random other member of the label: offset in [1, count) from the item's own rank within the label
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.searchsorted(y[order], y[order], side='left')
        offset = rng.integers(1, counts[anchors])
        partner = order[starts[anchors] + (rank[anchors] + offset) % counts[anchors]]
        negative_first = np.repeat(np.arange(n), self.n_neg)
        negative_second = rng.integers(0, n, len(negative_first))
        keep = y[negative_first] != y[negative_second]  # a draw that hit the own label is dropped
        first = np.concatenate([anchors, negative_first[keep]])
        second = np.concatenate([partner, negative_second[keep]])
        target = np.concatenate([np.ones(len(anchors)), np.zeros(int(keep.sum()))]).astype(np.float32)
        return first, second, target

    def _train_epoch(self, X, y, rng):
        first, second, target = self._pairs(y.numpy(), rng)
        order = rng.permutation(len(first))
        first, second = torch.from_numpy(first[order]), torch.from_numpy(second[order])
        target = torch.from_numpy(target[order])
        total = 0.0
        for start in range(0, len(first), self.batch_size):
            s = slice(start, start + self.batch_size)
            cosine = nn.functional.cosine_similarity(self.module_(X[first[s]]), self.module_(X[second[s]]), dim=1)
            loss = ((cosine - target[s]) ** 2).mean()
            self.optimizer_.zero_grad()
            loss.backward()
            self.optimizer_.step()
            total += float(loss.detach()) * len(cosine)
        return total / max(1, len(first))

    def _head_spec(self):
        return {'kind': 'linear', 'in_dim': int(self.n_features_in_), 'out_dim': int(self.hidden_dim)}

    def _head_state(self):
        return {f'layer.{k}': v for k, v in self.module_.state_dict().items()}
