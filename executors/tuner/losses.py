"""Metric-learning losses, each called as ``loss(embeddings [B, D] float, labels [B] int) -> scalar``.

Shared behaviour:

* inputs are validated (:func:`~executors.tuner.miners.check_batch`): embeddings 2-D float, labels 1-D
  integer of the same length and device, else :class:`InputError`;
* the loss is computed in the embeddings' dtype (float32 / float64), with float16 / bfloat16 upcast to
  float32 and autocast disabled inside the loss;
* a batch without any term the loss is defined on (e.g. no valid triplet) gives ``embeddings.sum() * 0``:
  a zero that keeps the autograd graph, so ``backward()`` still works (zero gradients), and sets
  ``loss.found_no_terms = True`` until the next call (``fit`` counts and reports such batches);
* ``s(x, y)`` is cosine similarity, ``d(x, y)`` the loss's ``distance``
  (see :mod:`executors.tuner.distances`);
* every loss takes an optional ``miner``. :class:`TripletLoss` takes a triplet miner
  ``(anchor, positive, negative)``, the others a pair miner
  ``miner(embeddings, labels) -> (pos_i, pos_j, neg_i, neg_j)`` (e.g.
  :class:`~executors.tuner.miners.SiameseEasyHardMiner`), called without gradient. Each loss's docstring
  says how the mined pairs enter it. :class:`SiameseLoss` and :class:`TripletLoss` use each mined
  tuple as listed. The other losses take the mined pairs as sets (a pair listed twice counts once), and
  for the per-anchor ones (:class:`NTXentLoss`, :class:`MultipleNegativesRankingLoss`,
  :class:`MultiSimilarityLoss`) a pair ``(i, j)`` is directed: ``i`` is the anchor, as the miners'
  selections are per anchor (so :class:`~executors.tuner.miners.AllPairsMiner`, which lists each pair
  once with ``i < j``, gives each pair to its smaller index only). Mining that gives no term of the loss
  gives the graph-keeping zero. ``miner=None`` is the behaviour without mining described in each docstring.
  A miner built without a ``distance`` mines with the loss's ``distance`` (cosine for the losses that
  have none), as in the old Finetuner.

:func:`get_loss` builds a loss from its class name.
"""
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from executors.data.specs import boolean
from executors.errors import InputError, positive_int
from executors.tuner.distances import check_distance, pairwise_distance
from executors.tuner.miners import AllPairsMiner, AllTripletsMiner, check_batch


def _check_number(value, field: str, minimum: float = None, above: float = None, below: float = None) -> float:
    """``value`` as float if it is a real number ``>= minimum``, ``> above`` and ``< below`` (where given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f'{field}: expected a number, got {value!r}')
    if (minimum is not None and value < minimum) or (above is not None and value <= above) \
            or (below is not None and value >= below):
        bounds = [f'>= {minimum}' if minimum is not None else '', f'> {above}' if above is not None else '',
                  f'< {below:.4g}' if below is not None else '']
        raise InputError(f'{field}: must be {" and ".join(b for b in bounds if b)}, got {value!r}')
    return float(value)


def _refuse_old_argument_order(loss, margin, distance) -> None:
    """The old Finetuner's losses took ``(distance, margin)`` positionally; ours take ``(margin, distance)``."""
    if isinstance(margin, str):
        name, old_margin = type(loss).__name__, 1.0 if isinstance(distance, str) else distance
        raise InputError(f'margin: got {margin!r}, a distance; the first argument of {name} is margin '
                         f'(the old Finetuner had distance first): write {name}(distance={margin!r}, '
                         f'margin={old_margin!r})')


def _zero(embeddings: Tensor) -> Tensor:
    """A zero loss that keeps the graph to ``embeddings``."""
    return embeddings.sum() * 0


def _cosine_similarity(embeddings: Tensor, others: Tensor = None) -> Tensor:
    """``[N, M]`` cosine similarities of the rows of ``embeddings`` with those of ``others`` (itself if None)."""
    normalized = F.normalize(embeddings, dim=1)
    return normalized @ (normalized if others is None else F.normalize(others, dim=1)).T


def _positive_mask(labels: Tensor) -> Tensor:
    """``[B, B]`` bool: same label, off the diagonal."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def _mined_pair_masks(miner, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, B]`` bool masks of the pairs ``miner`` returns: ``pos[i, j]`` for each mined positive pair
    ``(i, j)``, ``neg[i, j]`` for each mined negative pair (mining runs without gradient)."""
    with torch.no_grad():
        mined = miner(embeddings.detach(), labels)
    if not isinstance(mined, (tuple, list)) or len(mined) != 4:
        raise InputError(f'miner: a pair miner must return (pos_i, pos_j, neg_i, neg_j), got '
                         f'{type(mined).__name__}{f" of {len(mined)}" if isinstance(mined, (tuple, list)) else ""}; '
                         'use a pair miner such as SiameseEasyHardMiner')
    pos_i, pos_j, neg_i, neg_j = (torch.as_tensor(index, device=labels.device).long() for index in mined)
    pos = torch.zeros(len(labels), len(labels), dtype=torch.bool, device=labels.device)
    neg = torch.zeros_like(pos)
    pos[pos_i, pos_j] = True
    neg[neg_i, neg_j] = True
    return pos, neg


def _log1p_sum_exp(values: Tensor, mask: Tensor) -> Tensor:
    """Per row, ``log(1 + sum_{j in mask} exp(values_j))``, computed stably; ``[B, M] -> [B]``."""
    padded = torch.cat([values.new_zeros(len(values), 1), values.masked_fill(~mask, -torch.inf)], dim=1)
    return torch.logsumexp(padded, dim=1)


class BatchLoss(nn.Module):
    """Base class: validates ``(embeddings, labels)``, upcasts half precision, disables autocast and
    calls :meth:`compute`."""

    found_no_terms = False  # the last call had no pair/triplet/anchor to compute the loss on
    items_per_label = None  # a loss defined only on batches with exactly this many items per label

    def _no_terms(self, embeddings: Tensor) -> Tensor:
        self.found_no_terms = True
        return _zero(embeddings)

    def _mine(self, embeddings: Tensor, labels: Tensor):
        """``self.miner(embeddings, labels)``; a miner without its own distance gets the loss's."""
        if getattr(self.miner, 'distance', 'own') is None:
            return self.miner(embeddings, labels, distance=getattr(self, 'distance', 'cosine'))
        return self.miner(embeddings, labels)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        self.found_no_terms = False
        check_batch(embeddings, labels)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(embeddings, labels)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError


class SiameseLoss(BatchLoss):
    """Contrastive loss (Hadsell et al. 2006, unsquared form as in the old Finetuner and
    pytorch-metric-learning's ``ContrastiveLoss``), the project's default loss::

        loss = mean over mined pairs (i, j) of  y_ij * d(i, j) + (1 - y_ij) * max(0, margin - d(i, j))

    ``y_ij = 1`` for a positive pair (same label), 0 for a negative pair; the mean runs over positive and
    negative pairs together. ``miner(embeddings, labels) -> (pos_i, pos_j, neg_i, neg_j)``, by default
    :class:`AllPairsMiner` (every unordered pair once). Needs ``B >= 2``; no pair gives the graph-keeping zero.
    """

    def __init__(self, margin: float = 1.0, distance: str = 'cosine', miner=None):
        super().__init__()
        _refuse_old_argument_order(self, margin, distance)
        self.margin = _check_number(margin, 'margin', minimum=0)
        self.distance = check_distance(distance)
        self.miner = AllPairsMiner(distance) if miner is None else miner

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        pos_i, pos_j, neg_i, neg_j = self._mine(embeddings, labels)
        is_positive = torch.cat([torch.ones_like(pos_i, dtype=torch.bool), torch.zeros_like(neg_i, dtype=torch.bool)])
        return self.pair_loss(embeddings, torch.cat([pos_i, neg_i]), torch.cat([pos_j, neg_j]), is_positive)

    def pair_loss(self, embeddings: Tensor, first: Tensor, second: Tensor, is_positive: Tensor) -> Tensor:
        """The loss over explicit pairs ``(first[k], second[k])``, ``is_positive [K]`` bool (e.g. from
        :class:`~executors.tuner.miners.SessionMiner`: ``target > 0``)."""
        if len(first) == 0:
            return self._no_terms(embeddings)
        dist = pairwise_distance(embeddings, distance=self.distance)[first, second]
        return torch.where(is_positive, dist, F.relu(self.margin - dist)).mean()


class TripletLoss(BatchLoss):
    """Triplet margin loss::

        loss = mean over mined triplets (a, p, n) of  max(0, d(a, p) - d(a, n) + margin)

    ``miner(embeddings, labels) -> (anchor, positive, negative)``, by default :class:`AllTripletsMiner`.
    Needs a label with two items and another label; no triplet gives the graph-keeping zero.
    """

    def __init__(self, margin: float = 1.0, distance: str = 'cosine', miner=None):
        super().__init__()
        _refuse_old_argument_order(self, margin, distance)
        self.margin = _check_number(margin, 'margin', minimum=0)
        self.distance = check_distance(distance)
        self.miner = AllTripletsMiner(distance) if miner is None else miner

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.triplet_loss(embeddings, *self._mine(embeddings, labels))

    def triplet_loss(self, embeddings: Tensor, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """The loss over explicit triplets (e.g. from :class:`~executors.tuner.miners.SessionMiner`)."""
        if len(anchor) == 0:
            return self._no_terms(embeddings)
        dist = pairwise_distance(embeddings, distance=self.distance)
        return F.relu(dist[anchor, positive] - dist[anchor, negative] + self.margin).mean()


class NTXentLoss(BatchLoss):
    """Normalised-temperature cross entropy, supervised-contrastive form (Khosla et al. 2020, ``L_out``)::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s(i, p) / t) / sum_{k != i} exp(s(i, k) / t) )
        loss   = mean of loss_i over anchors i with at least one positive

    ``P(i)``: the other items with ``i``'s label; the denominator runs over every other item of the
    batch (positives included). With exactly two items per label this is SimCLR's NT-Xent. No anchor
    with a positive gives the graph-keeping zero.

    With a pair ``miner`` the loss is the pairwise NT-Xent over the mined pairs (as
    pytorch-metric-learning's ``NTXentLoss`` with an ``indices_tuple``)::

        loss_ap = -log( exp(s(a, p) / t) / (exp(s(a, p) / t) + sum_{n in N_m(a)} exp(s(a, n) / t)) )
        loss    = mean of loss_ap over the mined positive pairs (a, p)

    ``N_m(a)``: the items ``n`` of the mined negative pairs ``(a, n)`` (an empty set gives
    ``loss_ap = 0``). Other positives of ``a`` are not in the denominator, so a miner listing every
    ordered pair reproduces the default only with two items per label. No mined positive pair gives
    the graph-keeping zero.
    """

    def __init__(self, temperature: float = 0.1, miner=None):
        super().__init__()
        self.temperature = _check_number(temperature, 'temperature', above=0)
        self.miner = miner

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.miner is not None:
            return self._mined_loss(embeddings, labels)
        positives = _positive_mask(labels)
        has_positive = positives.any(1)
        if not has_positive.any():
            return self._no_terms(embeddings)
        self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        logits = (_cosine_similarity(embeddings) / self.temperature).masked_fill(self_mask, -torch.inf)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        per_anchor = -log_prob.masked_fill(~positives, 0).sum(1) / positives.sum(1).clamp_min(1)
        return per_anchor[has_positive].mean()

    def _mined_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        positives, negatives = _mined_pair_masks(self._mine, embeddings, labels)
        anchor, positive = positives.nonzero(as_tuple=True)
        if len(anchor) == 0:
            return self._no_terms(embeddings)
        logits = _cosine_similarity(embeddings) / self.temperature
        has_negative = negatives.any(1)
        # rows without a negative are filled with 0 (not -inf) and then replaced, so no NaN gradient
        negative_lse = torch.where(has_negative, torch.logsumexp(
            logits.masked_fill(~negatives & has_negative[:, None], -torch.inf), dim=1), -torch.inf)
        # -log(e^x / (e^x + e^y)) = softplus(y - x)
        return F.softplus(negative_lse[anchor] - logits[anchor, positive]).mean()


class MultipleNegativesRankingLoss(BatchLoss):
    """Multiple-negatives ranking loss (Henderson et al. 2017; sentence-transformers) for pairs with
    in-batch negatives.

    The batch holds pairs: every label occurs exactly twice (else :class:`InputError`); its first
    occurrence is the anchor ``a_k``, its second the positive ``p_k``. With ``K`` pairs::

        loss = mean_k  -log( exp(scale * s(a_k, p_k)) / sum_{l=1..K} exp(scale * s(a_k, p_l)) )

    i.e. cross entropy of each anchor against every positive of the batch. An empty batch gives the
    graph-keeping zero.

    With a pair ``miner`` (called on the whole batch) an anchor's in-batch negatives are only the
    mined ones::

        loss = mean over k with (a_k, p_k) mined positive of
               -log( exp(scale * s(a_k, p_k)) / sum_{l in {k} + M(k)} exp(scale * s(a_k, p_l)) )

    ``M(k)``: the ``l != k`` with ``(a_k, p_l)`` a mined negative pair. The anchor's own positive always
    stays in the softmax; mined pairs of another form (e.g. ``(p_k, a_k)``, ``(a_k, a_l)``) are ignored.
    ``SiameseEasyHardMiner('all', 'all')`` reproduces the default. No mined ``(a_k, p_k)`` gives the
    graph-keeping zero.

    ``symmetric=True`` (sentence-transformers' MultipleNegativesSymmetricRankingLoss) also scores each
    positive against every anchor and averages the two directions::

        loss = mean_k ( CE_k(anchor -> positives) + CE_k(positive -> anchors) ) / 2,
        CE_k(positive -> anchors) = -log( exp(scale * s(p_k, a_k)) / sum_l exp(scale * s(p_k, a_l)) )

    (with a miner, ``p_k``'s softmax holds ``a_k`` and the ``a_l`` with ``(a_l, p_k)`` mined negative).

    Class prototypes (``prototype_weight = w > 0``; off by default, as in sentence-transformers): in-batch
    negatives cover only the batch's labels, so a running prototype of every label seen so far adds the
    others. ``P_c`` is a momentum mean of the L2-normalised embeddings of label ``c`` (no gradient):
    set to the batch mean ``m_c`` when ``c`` first occurs, then ``P_c <- mu * P_c + (1 - mu) * m_c``
    after each training batch holding ``c`` (``mu = prototype_momentum``; updated only while gradients
    are enabled, so validation leaves them alone). With ``t = prototype_scale``, ``m = prototype_margin``
    (an additive cosine margin on the item's own prototype, as in CosFace), ``S`` the labels that had a
    prototype before the batch and ``z_ic = t * (s(x_i, P_c) - m * [c = y_i])``::

        loss += w * mean over items i with y_i in S of  -log( exp(z_{i,y_i}) / sum_{c in S} exp(z_ic) )

    (nothing is added while no item's label is in ``S``, or when the pair part has no term). ``fit``
    starts every run with no prototypes (:meth:`reset_state`); a resumed run rebuilds them from its
    batches. Processes of a distributed run see the same gathered batches, hence the same prototypes.
    On CLINC150 (MiniLM, 1 epoch, 32 pairs per batch) ``w = 1, t = 30, mu = 0.5`` raised mAP@10 from
    0.961 to 0.963-0.964, and ``m = 0.1`` on top to 0.9643-0.9656 (three seeds).
    """

    items_per_label = 2  # fit samples pairs (num_items_per_class=2) and keeps pairs whole in validation

    def __init__(self, scale: float = 20.0, miner=None, symmetric: bool = False, prototype_weight: float = 0.0,
                 prototype_scale: float = 30.0, prototype_momentum: float = 0.5, prototype_margin: float = 0.0):
        super().__init__()
        self.scale = _check_number(scale, 'scale', above=0)
        self.miner = miner
        self.symmetric = boolean('symmetric', symmetric)
        self.prototype_weight = _check_number(prototype_weight, 'prototype_weight', minimum=0)
        self.prototype_scale = _check_number(prototype_scale, 'prototype_scale', above=0)
        self.prototype_momentum = _check_number(prototype_momentum, 'prototype_momentum', minimum=0, below=1)
        self.prototype_margin = _check_number(prototype_margin, 'prototype_margin', minimum=0, below=2)
        self.reset_state()

    def reset_state(self) -> None:
        """Forgets the class prototypes: ``prototype_labels [C]`` (sorted) and ``prototypes [C, D]``."""
        self.prototype_labels: Tensor | None = None
        self.prototypes: Tensor | None = None

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if len(labels) == 0:
            return self._no_terms(embeddings)
        values, pair_of_item, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if (counts != 2).any():
            wrong = (counts != 2).nonzero(as_tuple=True)[0][0]
            raise InputError(f'labels: MultipleNegativesRankingLoss expects each label exactly twice (anchor, '
                             f'positive); label {values[wrong].item()} occurs {counts[wrong].item()} time(s). '
                             'Sample two items per label')
        anchor, positive = torch.argsort(pair_of_item, stable=True).view(-1, 2).unbind(1)
        loss = self._pair_loss(embeddings, labels, anchor, positive)
        if self.prototype_weight > 0 and not self.found_no_terms:
            loss = loss + self.prototype_weight * self._prototype_loss(embeddings, labels)
            if torch.is_grad_enabled() and embeddings.requires_grad:
                self._update_prototypes(embeddings.detach(), labels)
        return loss

    def _pair_loss(self, embeddings: Tensor, labels: Tensor, anchor: Tensor, positive: Tensor) -> Tensor:
        logits = self.scale * _cosine_similarity(embeddings[anchor], embeddings[positive])  # [K, K]
        if self.miner is None:
            targets = torch.arange(len(anchor), device=labels.device)
            loss = F.cross_entropy(logits, targets)
            return (loss + F.cross_entropy(logits.T, targets)) / 2 if self.symmetric else loss
        positives, negatives = _mined_pair_masks(self._mine, embeddings, labels)
        has_term = positives[anchor, positive]
        if not has_term.any():
            return self._no_terms(embeddings)
        in_softmax = negatives[anchor[:, None], positive[None, :]]
        in_softmax.fill_diagonal_(True)
        per_pair = torch.logsumexp(logits.masked_fill(~in_softmax, -torch.inf), dim=1) - logits.diagonal()
        if self.symmetric:
            reverse = torch.logsumexp(logits.T.masked_fill(~in_softmax.T, -torch.inf), dim=1) - logits.diagonal()
            per_pair = (per_pair + reverse) / 2
        return per_pair[has_term].mean()

    def _prototype_rows(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(row [B], has_prototype [B])``: each label's row in ``prototypes`` (valid where it has one)."""
        if self.prototype_labels is None:
            return torch.zeros_like(labels), torch.zeros_like(labels, dtype=torch.bool)
        known = self.prototype_labels.to(labels.device)
        rows = torch.searchsorted(known, labels).clamp(max=len(known) - 1)
        return rows, known[rows] == labels

    def _prototype_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        rows, has_prototype = self._prototype_rows(labels)
        if not has_prototype.any():
            return _zero(embeddings)
        prototypes = self.prototypes.to(device=embeddings.device, dtype=embeddings.dtype)
        targets = rows[has_prototype]
        similarities = _cosine_similarity(embeddings[has_prototype], prototypes)
        margins = self.prototype_margin * F.one_hot(targets, len(prototypes)).to(similarities.dtype)
        return F.cross_entropy(self.prototype_scale * (similarities - margins), targets)

    def _update_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        values, item_label = torch.unique(labels, return_inverse=True)
        means = torch.zeros(len(values), embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
        means.index_add_(0, item_label, F.normalize(embeddings, dim=1))
        means /= torch.bincount(item_label, minlength=len(values))[:, None]
        if self.prototype_labels is None:
            self.prototype_labels, self.prototypes = values, means
            return
        self.prototypes = self.prototypes.to(device=embeddings.device, dtype=embeddings.dtype)
        rows, has_prototype = self._prototype_rows(values)
        mu = self.prototype_momentum
        self.prototypes[rows[has_prototype]] = mu * self.prototypes[rows[has_prototype]] \
            + (1 - mu) * means[has_prototype]
        if not has_prototype.all():
            all_labels = torch.cat([self.prototype_labels.to(values.device), values[~has_prototype]])
            order = torch.argsort(all_labels)
            self.prototype_labels = all_labels[order]
            self.prototypes = torch.cat([self.prototypes, means[~has_prototype]])[order]


class ArcFaceLoss(BatchLoss):
    """Additive angular margin loss (Deng et al. 2019) with learnable class weights ``weight [C, D]``::

        cos_ic = s(x_i, w_c),  theta_i = arccos(cos_i,y_i)
        target logit: cos(theta_i + margin) if theta_i <= pi - margin, else cos_i,y_i - margin * sin(margin)
        loss = mean_i cross_entropy(scale * [cos_ic with the target logit at c = y_i], y_i)

    The fallback past ``pi - margin`` keeps the target logit decreasing in ``theta`` (as insightface and
    pytorch-metric-learning do). Labels must lie in ``[0, num_classes)`` and embeddings have
    ``embedding_dim`` columns, else :class:`InputError`. An empty batch gives the graph-keeping zero.

    With a pair ``miner`` the mean runs only over the items ``i`` that occur in any mined pair (either
    position, positive or negative pair), each once; no mined pair gives the graph-keeping zero.
    (pytorch-metric-learning instead weights every item by its number of occurrences over the largest
    one, averages over the whole batch, and treats an empty mining result as no mining: with every mined
    item occurring equally often its value is this loss times ``#mined items / B``.)
    """

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 64.0,
                 miner=None):
        super().__init__()
        self.num_classes = positive_int('num_classes', num_classes)
        self.embedding_dim = positive_int('embedding_dim', embedding_dim)
        self.margin = _check_number(margin, 'margin', minimum=0, below=math.pi)
        self.scale = _check_number(scale, 'scale', above=0)
        self.miner = miner
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.shape[1] != self.embedding_dim:
            raise InputError(f'embeddings: ArcFaceLoss was built for embedding_dim={self.embedding_dim}, got '
                             f'{embeddings.shape[1]} columns; set embedding_dim to the model output size')
        if len(labels) == 0:
            return self._no_terms(embeddings)
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise InputError(f'labels: ArcFaceLoss expects class ids in [0, {self.num_classes}), got values in '
                             f'[{labels.min().item()}, {labels.max().item()}]; map labels to 0..num_classes-1')
        if self.miner is not None:
            positives, negatives = _mined_pair_masks(self._mine, embeddings, labels)
            mined = positives.any(0) | positives.any(1) | negatives.any(0) | negatives.any(1)
            if not mined.any():
                return self._no_terms(embeddings)
            embeddings, labels = embeddings[mined], labels[mined]
        labels = labels.long()
        cosine = _cosine_similarity(embeddings, self.weight.to(embeddings.dtype))
        target_cos = cosine.gather(1, labels[:, None]).clamp(-1, 1)
        target_sin = (1 - target_cos ** 2).clamp_min(1e-12).sqrt()
        with_margin = torch.where(target_cos >= math.cos(math.pi - self.margin),
                                  target_cos * math.cos(self.margin) - target_sin * math.sin(self.margin),
                                  target_cos - self.margin * math.sin(self.margin))
        logits = self.scale * cosine.scatter(1, labels[:, None], with_margin)
        return F.cross_entropy(logits, labels)


class MultiSimilarityLoss(BatchLoss):
    """Multi-similarity loss (Wang et al. 2019), the weighting term only (no pair-mining step)::

        loss_i = 1/alpha * log(1 + sum_{p in P(i)} exp(-alpha * (s(i, p) - base)))
               + 1/beta  * log(1 + sum_{n in N(i)} exp( beta  * (s(i, n) - base)))
        loss   = mean of loss_i over all B anchors

    ``P(i)``: other items with ``i``'s label, ``N(i)``: items with another label (an empty set adds 0).
    Fewer than two items give the graph-keeping zero.

    With a pair ``miner``, ``P(i)`` is the set of ``p`` with ``(i, p)`` a mined positive pair and
    ``N(i)`` that of ``n`` with ``(i, n)`` a mined negative pair (pairs directed, as
    pytorch-metric-learning's ``MultiSimilarityLoss`` with an ``indices_tuple``), and the mean runs over
    the anchors ``i`` with at least one mined pair; no mined pair gives the graph-keeping zero. A miner
    listing every ordered pair reproduces the default (there, every anchor has a pair). PML averages
    over all ``B`` items instead, so it equals this loss times ``#anchors / B``.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, miner=None):
        super().__init__()
        self.alpha = _check_number(alpha, 'alpha', above=0)
        self.beta = _check_number(beta, 'beta', above=0)
        self.base = _check_number(base, 'base')
        self.miner = miner

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if len(labels) < 2:
            return self._no_terms(embeddings)
        if self.miner is None:
            positives, negatives = _positive_mask(labels), labels[:, None] != labels[None, :]
        else:
            positives, negatives = _mined_pair_masks(self._mine, embeddings, labels)
        is_anchor = positives.any(1) | negatives.any(1)
        if not is_anchor.any():
            return self._no_terms(embeddings)
        similarity = _cosine_similarity(embeddings)
        pos_term = _log1p_sum_exp(-self.alpha * (similarity - self.base), positives) / self.alpha
        neg_term = _log1p_sum_exp(self.beta * (similarity - self.base), negatives) / self.beta
        return (pos_term + neg_term)[is_anchor].mean()


LOSSES = {cls.__name__: cls for cls in (SiameseLoss, TripletLoss, NTXentLoss, MultipleNegativesRankingLoss,
                                        ArcFaceLoss, MultiSimilarityLoss)}


def get_loss(name_or_instance, **kwargs) -> nn.Module:
    """A loss module from its class name in :data:`LOSSES` and constructor ``kwargs``, or an already
    built ``nn.Module`` returned as is (then ``kwargs`` must be empty)."""
    if isinstance(name_or_instance, nn.Module):
        if kwargs:
            raise InputError(f'loss: got a built {type(name_or_instance).__name__} and settings {sorted(kwargs)}; '
                             'pass either a loss name with settings or a built loss')
        return name_or_instance
    if not isinstance(name_or_instance, str) or name_or_instance not in LOSSES:
        raise InputError(f'loss: unknown loss {name_or_instance!r}; use one of {", ".join(LOSSES)} '
                         'or pass a torch.nn.Module')
    loss_class = LOSSES[name_or_instance]
    try:
        inspect.signature(loss_class).bind(**kwargs)
    except TypeError as error:
        settings = ', '.join(inspect.signature(loss_class).parameters)
        raise InputError(f'loss: bad settings for {name_or_instance} ({error}); its settings are {settings}') from None
    return loss_class(**kwargs)
