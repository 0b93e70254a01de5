"""Tuple miners: which pairs or triplets of a batch a loss is computed on.

Conventions shared by the class-label miners:

* called as ``miner(embeddings [B, D] float, labels [B] int)``; items with equal labels are
  positives of each other, items with different labels negatives; an item is never its own positive;
* return a tuple of 1-D int64 index tensors into the batch (on the embeddings' device), one entry per
  mined pair or triplet: pair miners ``(pos_i, pos_j, neg_i, neg_j)``, triplet miners
  ``(anchor, positive, negative)``;
* selection is vectorised (no loop over anchors) and runs without gradient on
  :func:`~executors.tuner.distances.pairwise_distance` with the miner's ``distance``. A miner built
  without one (``distance=None``, the default) uses the distance of the loss it is given to (the old
  Finetuner's behaviour: a loss passes ``distance=`` to its miner's call), and ``'cosine'`` when called
  on its own; an explicit ``distance`` always wins;
* exact ties in distance are broken arbitrarily.

Easy/hard strategies (per anchor ``a``, with positives ``P(a)`` and negatives ``N(a)``):

========== ============================================ ============================================
strategy   positive side                                negative side
========== ============================================ ============================================
'all'      every ``p`` in ``P(a)``                      every ``n`` in ``N(a)``
'hard'     farthest positive, ``argmax_p d(a, p)``      closest negative, ``argmin_n d(a, n)``
'easy'     closest positive, ``argmin_p d(a, p)``       farthest negative, ``argmax_n d(a, n)``
'semihard' for each selected negative ``n``: the        for each selected positive ``p``: the
           farthest positive still closer than it,      closest negative still farther than it,
           ``argmax {d(a, p) : d(a, p) < d(a, n)}``     ``argmin {d(a, n) : d(a, n) > d(a, p)}``
========== ============================================ ============================================

'semihard' is defined relative to the other side's selection, so at most one side may be 'semihard'.
"""
import torch
from torch import Tensor

from executors.errors import InputError
from executors.tuner.distances import check_distance, pairwise_distance

STRATEGIES = ('easy', 'semihard', 'hard', 'all')


def check_batch(embeddings, labels, labels_field: str = 'labels') -> None:
    """Raise :class:`InputError` unless ``embeddings`` is a float ``[B, D]`` tensor and ``labels``
    an integer ``[B]`` tensor on the same device (messages name ``labels_field``)."""
    if not isinstance(embeddings, Tensor):
        raise InputError(f'embeddings: expected a torch.Tensor of shape [batch, dim], got {type(embeddings).__name__}')
    if embeddings.dim() != 2:
        raise InputError(f'embeddings: expected a 2-D tensor [batch, dim], got shape {tuple(embeddings.shape)}; '
                         'flatten or pool the model output to [batch, dim]')
    if not embeddings.is_floating_point():
        raise InputError(f'embeddings: expected a floating-point tensor, got {embeddings.dtype}')
    if not isinstance(labels, Tensor):
        raise InputError(f'{labels_field}: expected a torch.Tensor of shape [batch], got {type(labels).__name__}')
    if labels.dim() != 1:
        raise InputError(f'{labels_field}: expected a 1-D tensor [batch], got shape {tuple(labels.shape)}')
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f'{labels_field}: expected integers, got {labels.dtype}; convert with .long()')
    if len(labels) != len(embeddings):
        raise InputError(f'{labels_field}: expected one value per embedding (got {len(labels)} for '
                         f'{len(embeddings)} embeddings); pass a tensor of shape ({len(embeddings)},)')
    if labels.device != embeddings.device:
        raise InputError(f'{labels_field}: on {labels.device} but embeddings on {embeddings.device}; '
                         f'move it to {embeddings.device}')


def _check_strategies(pos_strategy, neg_strategy) -> None:
    allowed = ', '.join(repr(name) for name in STRATEGIES)
    for field, value in (('pos_strategy', pos_strategy), ('neg_strategy', neg_strategy)):
        if not isinstance(value, str) or value not in STRATEGIES:
            raise InputError(f'{field}: unknown value {value!r}; use one of {allowed}')
    if pos_strategy == neg_strategy == 'semihard':
        raise InputError("pos_strategy, neg_strategy: at most one side may be 'semihard' (it is chosen relative "
                         "to the other side's selection); set the other to 'easy', 'hard' or 'all'")


def _label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, B]`` bool masks: positives (same label, off-diagonal) and negatives (different label)."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device), ~same


def _no_indices(count: int, device: torch.device) -> tuple[Tensor, ...]:
    return tuple(torch.zeros(0, dtype=torch.long, device=device) for _ in range(count))


def _resolve_distance(own, given) -> str:
    """The miner's own distance, else the one its loss passes, else cosine."""
    return own or (check_distance(given) if given is not None else 'cosine')


def _check_miner_distance(distance):
    return None if distance is None else check_distance(distance)


def _mining_distances(embeddings: Tensor, distance: str) -> Tensor:
    with torch.no_grad():
        return pairwise_distance(embeddings.detach(), distance=distance)


def _select(dist: Tensor, mask: Tensor, strategy: str, side: str) -> Tensor:
    """``[B, B]`` bool: per anchor row, the ``mask`` entries the (non-semihard) strategy keeps on ``side``."""
    if strategy == 'all':
        return mask
    farthest = (strategy == 'hard') == (side == 'pos')
    if farthest:
        index = dist.masked_fill(~mask, -torch.inf).argmax(1)
    else:
        index = dist.masked_fill(~mask, torch.inf).argmin(1)
    return torch.zeros_like(mask).scatter_(1, index[:, None], mask.any(1, keepdim=True))


def _closest_beyond(dist: Tensor, mask: Tensor, anchors: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """For each ``(anchor, threshold)``: the closest ``mask`` column of the anchor's row with distance
    ``> threshold``, and whether one exists."""
    rows = dist[anchors]
    candidates = mask[anchors] & (rows > thresholds[:, None])
    return rows.masked_fill(~candidates, torch.inf).argmin(1), candidates.any(1)


def _farthest_within(dist: Tensor, mask: Tensor, anchors: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """For each ``(anchor, threshold)``: the farthest ``mask`` column of the anchor's row with distance
    ``< threshold``, and whether one exists."""
    rows = dist[anchors]
    candidates = mask[anchors] & (rows < thresholds[:, None])
    return rows.masked_fill(~candidates, -torch.inf).argmax(1), candidates.any(1)


def _triplets_from_pair_masks(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every ``(a, p, n)`` with ``pos[a, p]`` and ``neg[a, n]``, ordered by ``(a, p, n)``."""
    anchor, positive = pos.nonzero(as_tuple=True)
    row, negative = neg[anchor].nonzero(as_tuple=True)
    return anchor[row], positive[row], negative


class AllPairsMiner:
    """Every pair once: ``(pos_i, pos_j, neg_i, neg_j)`` with ``i < j``; positives share a label.

    ``distance`` is validated and kept for a uniform ``Miner(distance=...)`` signature; the
    selection itself does not depend on it.
    """

    def __init__(self, distance: str | None = None):
        self.distance = _check_miner_distance(distance)

    def __call__(self, embeddings: Tensor, labels: Tensor, distance: str | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        check_batch(embeddings, labels)
        pos, neg = _label_masks(labels)
        upper = torch.ones_like(pos).triu_(1)
        return (*(pos & upper).nonzero(as_tuple=True), *(neg & upper).nonzero(as_tuple=True))


class AllTripletsMiner:
    """Every valid triplet ``(anchor, positive, negative)``: ``a != p``, ``label[a] == label[p]``,
    ``label[n] != label[a]``, ordered by ``(a, p, n)``.

    ``distance`` is validated and kept for a uniform signature; the selection does not depend on it.
    """

    def __init__(self, distance: str | None = None):
        self.distance = _check_miner_distance(distance)

    def __call__(self, embeddings: Tensor, labels: Tensor, distance: str | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        check_batch(embeddings, labels)
        return _triplets_from_pair_masks(*_label_masks(labels))


class SiameseEasyHardMiner:
    """Pairs picked per anchor by the easy/hard strategies of the module docstring.

    Returns ``(pos_i, pos_j, neg_i, neg_j)`` with ``i`` the anchor and ``j`` the selected item, so
    pairs are ordered (``'all'`` lists each pair in both directions). An anchor contributes only if
    both its positive and its negative selection are non-empty; otherwise it is skipped.
    'semihard' on one side needs a single selected item on the other: it cannot be combined with
    'all' (use :class:`TripletEasyHardMiner` for per-positive semihard negatives).
    """

    def __init__(self, pos_strategy: str = 'hard', neg_strategy: str = 'hard', distance: str | None = None):
        _check_strategies(pos_strategy, neg_strategy)
        if 'semihard' in (pos_strategy, neg_strategy) and 'all' in (pos_strategy, neg_strategy):
            raise InputError("pos_strategy, neg_strategy: 'semihard' is chosen relative to one selected item "
                             "per anchor, so it cannot be combined with 'all' in SiameseEasyHardMiner; "
                             "use 'easy' or 'hard' for the other side")
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.distance = _check_miner_distance(distance)

    def __call__(self, embeddings: Tensor, labels: Tensor, distance: str | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        check_batch(embeddings, labels)
        if len(labels) == 0:
            return _no_indices(4, labels.device)
        dist = _mining_distances(embeddings, _resolve_distance(self.distance, distance))
        pos_mask, neg_mask = _label_masks(labels)
        if self.neg_strategy == 'semihard':
            pos = _select(dist, pos_mask, self.pos_strategy, 'pos')
            anchor, positive = pos.nonzero(as_tuple=True)
            negative, found = _closest_beyond(dist, neg_mask, anchor, dist[anchor, positive])
            neg = torch.zeros_like(neg_mask)
            neg[anchor[found], negative[found]] = True
        elif self.pos_strategy == 'semihard':
            neg = _select(dist, neg_mask, self.neg_strategy, 'neg')
            anchor, negative = neg.nonzero(as_tuple=True)
            positive, found = _farthest_within(dist, pos_mask, anchor, dist[anchor, negative])
            pos = torch.zeros_like(pos_mask)
            pos[anchor[found], positive[found]] = True
        else:
            pos = _select(dist, pos_mask, self.pos_strategy, 'pos')
            neg = _select(dist, neg_mask, self.neg_strategy, 'neg')
        keep = (pos.any(1) & neg.any(1))[:, None]
        return (*(pos & keep).nonzero(as_tuple=True), *(neg & keep).nonzero(as_tuple=True))


class TripletEasyHardMiner:
    """Triplets ``(anchor, positive, negative)`` picked per anchor by the strategies of the module docstring.

    Without 'semihard' the triplets are every combination of an anchor's selected positives and
    selected negatives (``'all'``/``'all'`` equals :class:`AllTripletsMiner`). With
    ``neg_strategy='semihard'`` each selected positive ``p`` gets the closest negative farther than
    ``p`` (with ``pos_strategy='all'`` this is FaceNet's semi-hard mining); with ``pos_strategy='semihard'``
    each selected negative ``n`` gets the farthest positive closer than ``n``. Items with no such partner
    are skipped, as are anchors without a positive or a negative. Semihard mining holds a ``[K, B]``
    mask for the ``K`` selected items of the other side.
    """

    def __init__(self, pos_strategy: str = 'hard', neg_strategy: str = 'hard', distance: str | None = None):
        _check_strategies(pos_strategy, neg_strategy)
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.distance = _check_miner_distance(distance)

    def __call__(self, embeddings: Tensor, labels: Tensor, distance: str | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        check_batch(embeddings, labels)
        if len(labels) == 0:
            return _no_indices(3, labels.device)
        dist = _mining_distances(embeddings, _resolve_distance(self.distance, distance))
        pos_mask, neg_mask = _label_masks(labels)
        if self.neg_strategy == 'semihard':
            anchor, positive = _select(dist, pos_mask, self.pos_strategy, 'pos').nonzero(as_tuple=True)
            negative, found = _closest_beyond(dist, neg_mask, anchor, dist[anchor, positive])
        elif self.pos_strategy == 'semihard':
            anchor, negative = _select(dist, neg_mask, self.neg_strategy, 'neg').nonzero(as_tuple=True)
            positive, found = _farthest_within(dist, pos_mask, anchor, dist[anchor, negative])
        else:
            return _triplets_from_pair_masks(_select(dist, pos_mask, self.pos_strategy, 'pos'),
                                             _select(dist, neg_mask, self.neg_strategy, 'neg'))
        return anchor[found], positive[found], negative[found]


class SessionMiner:
    """Pairs and triplets within sessions (query + rated matches).

    Called as ``miner(embeddings [B, D], session_ids [B] int, roles [B] int)``. Items sharing a session
    id form one session; in each session exactly one item has role ``0`` (the query, i.e. the anchor),
    the others ``+1`` (positive match) or ``-1`` (negative match). Returns ``(pairs, triplets)``:

    * ``pairs = (anchor, other, target)``: one pair per match, ``anchor`` its session's query,
      ``target`` its role (``+1``/``-1``, int64), ordered by ``other``;
    * ``triplets = (anchor, positive, negative)``: every (positive, negative) combination within a
      session, with the session's query as anchor.

    Only the ``embeddings``' length and device are used. Feed the results to
    :meth:`SiameseLoss.pair_loss` (``is_positive = target > 0``) or :meth:`TripletLoss.triplet_loss`.
    """

    def __call__(self, embeddings: Tensor, session_ids: Tensor,
                 roles: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        check_batch(embeddings, session_ids, 'session_ids')
        check_batch(embeddings, roles, 'roles')
        if not ((roles == 0) | (roles == 1) | (roles == -1)).all():
            raise InputError(f'roles: expected 0 (query), 1 (positive) or -1 (negative), got values '
                             f'{sorted(set(roles.tolist()) - {0, 1, -1})}')
        session_values, session = torch.unique(session_ids, return_inverse=True)
        is_query = roles == 0
        queries_per_session = torch.bincount(session[is_query], minlength=len(session_values))
        bad = (queries_per_session != 1).nonzero(as_tuple=True)[0]
        if len(bad):
            raise InputError(f'roles: session {session_values[bad[0]].item()} has {queries_per_session[bad[0]].item()} '
                             'items with role 0; each session needs exactly one query (role 0)')
        items = torch.arange(len(roles), device=roles.device)
        query_of_session = torch.empty(len(session_values), dtype=torch.long, device=roles.device)
        query_of_session[session[is_query]] = items[is_query]
        other = items[~is_query]
        pairs = (query_of_session[session[other]], other, roles[other].long())
        positive, negative = items[roles == 1], items[roles == -1]
        row, column = (session[positive][:, None] == session[negative][None, :]).nonzero(as_tuple=True)
        triplets = (query_of_session[session[positive[row]]], positive[row], negative[column])
        return pairs, triplets
