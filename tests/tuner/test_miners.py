import itertools

import pytest
import torch

from executors.errors import InputError
from executors.tuner.distances import DISTANCES, pairwise_distance
from executors.tuner.miners import (
    STRATEGIES,
    AllPairsMiner,
    AllTripletsMiner,
    SessionMiner,
    SiameseEasyHardMiner,
    TripletEasyHardMiner,
)

ALL_COMBINATIONS = list(itertools.product(STRATEGIES, STRATEGIES))
TRIPLET_COMBINATIONS = [c for c in ALL_COMBINATIONS if c != ('semihard', 'semihard')]
SIAMESE_COMBINATIONS = [c for c in TRIPLET_COMBINATIONS if not ('semihard' in c and 'all' in c)]


def random_batch(seed, size=12, dim=5, classes=4):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(size, dim, generator=generator)
    labels = torch.randint(classes, (size,), generator=generator)
    return embeddings, labels


def as_set(*indices):
    return set(zip(*(i.tolist() for i in indices)))


def reference_sides(dist, labels, anchor):
    positives = [p for p in range(len(labels)) if p != anchor and labels[p] == labels[anchor]]
    negatives = [n for n in range(len(labels)) if labels[n] != labels[anchor]]
    return positives, negatives


def reference_pick(candidates, key, strategy, side):
    """Non-semihard selection for one anchor, by the definitions in the miners' docstring."""
    if strategy == 'all' or not candidates:
        return list(candidates)
    farthest = (strategy == 'hard') == (side == 'pos')
    return [max(candidates, key=key) if farthest else min(candidates, key=key)]


def reference_triplets(dist, labels, pos_strategy, neg_strategy):
    triplets = set()
    for a in range(len(labels)):
        positives, negatives = reference_sides(dist, labels, a)
        d = dist[a].__getitem__
        if neg_strategy == 'semihard':
            for p in reference_pick(positives, d, pos_strategy, 'pos'):
                farther = [n for n in negatives if d(n) > d(p)]
                if farther:
                    triplets.add((a, p, min(farther, key=d)))
        elif pos_strategy == 'semihard':
            for n in reference_pick(negatives, d, neg_strategy, 'neg'):
                closer = [p for p in positives if d(p) < d(n)]
                if closer:
                    triplets.add((a, max(closer, key=d), n))
        else:
            for p in reference_pick(positives, d, pos_strategy, 'pos'):
                for n in reference_pick(negatives, d, neg_strategy, 'neg'):
                    triplets.add((a, p, n))
    return triplets


def reference_pairs(dist, labels, pos_strategy, neg_strategy):
    positive_pairs, negative_pairs = set(), set()
    for a in range(len(labels)):
        positives, negatives = reference_sides(dist, labels, a)
        d = dist[a].__getitem__
        if neg_strategy == 'semihard':
            chosen_pos = reference_pick(positives, d, pos_strategy, 'pos')
            farther = [n for n in negatives if chosen_pos and d(n) > d(chosen_pos[0])]
            chosen_neg = [min(farther, key=d)] if farther else []
        elif pos_strategy == 'semihard':
            chosen_neg = reference_pick(negatives, d, neg_strategy, 'neg')
            closer = [p for p in positives if chosen_neg and d(p) < d(chosen_neg[0])]
            chosen_pos = [max(closer, key=d)] if closer else []
        else:
            chosen_pos = reference_pick(positives, d, pos_strategy, 'pos')
            chosen_neg = reference_pick(negatives, d, neg_strategy, 'neg')
        if chosen_pos and chosen_neg:
            positive_pairs.update((a, p) for p in chosen_pos)
            negative_pairs.update((a, n) for n in chosen_neg)
    return positive_pairs, negative_pairs


@pytest.mark.parametrize('seed', range(3))
def test_all_pairs(seed):
    embeddings, labels = random_batch(seed)
    pos_i, pos_j, neg_i, neg_j = AllPairsMiner()(embeddings, labels)
    pairs = list(itertools.combinations(range(len(labels)), 2))
    assert list(zip(pos_i.tolist(), pos_j.tolist())) == [(i, j) for i, j in pairs if labels[i] == labels[j]]
    assert list(zip(neg_i.tolist(), neg_j.tolist())) == [(i, j) for i, j in pairs if labels[i] != labels[j]]
    assert all(t.dtype == torch.long for t in (pos_i, pos_j, neg_i, neg_j))


@pytest.mark.parametrize('seed', range(3))
def test_all_triplets(seed):
    embeddings, labels = random_batch(seed)
    triplets = AllTripletsMiner()(embeddings, labels)
    expected = [(a, p, n) for a, p, n in itertools.product(range(len(labels)), repeat=3)
                if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    assert list(zip(*(t.tolist() for t in triplets))) == expected


@pytest.mark.parametrize('pos_strategy, neg_strategy', TRIPLET_COMBINATIONS)
@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_easy_hard(pos_strategy, neg_strategy, distance):
    miner = TripletEasyHardMiner(pos_strategy, neg_strategy, distance=distance)
    for seed in range(4):
        embeddings, labels = random_batch(seed, size=6 + 3 * seed)
        dist = pairwise_distance(embeddings, distance=distance).tolist()
        triplets = miner(embeddings, labels)
        assert len(set(map(len, triplets))) == 1
        assert as_set(*triplets) == reference_triplets(dist, labels.tolist(), pos_strategy, neg_strategy)
        assert len(as_set(*triplets)) == len(triplets[0])


@pytest.mark.parametrize('pos_strategy, neg_strategy', SIAMESE_COMBINATIONS)
@pytest.mark.parametrize('distance', DISTANCES)
def test_siamese_easy_hard(pos_strategy, neg_strategy, distance):
    miner = SiameseEasyHardMiner(pos_strategy, neg_strategy, distance=distance)
    for seed in range(4):
        embeddings, labels = random_batch(seed, size=6 + 3 * seed)
        dist = pairwise_distance(embeddings, distance=distance).tolist()
        pos_i, pos_j, neg_i, neg_j = miner(embeddings, labels)
        expected_pos, expected_neg = reference_pairs(dist, labels.tolist(), pos_strategy, neg_strategy)
        assert as_set(pos_i, pos_j) == expected_pos and len(pos_i) == len(expected_pos)
        assert as_set(neg_i, neg_j) == expected_neg and len(neg_i) == len(expected_neg)


def test_all_all_equals_all_triplets():
    embeddings, labels = random_batch(5, size=20)
    assert as_set(*TripletEasyHardMiner('all', 'all')(embeddings, labels)) == \
        as_set(*AllTripletsMiner()(embeddings, labels))


def test_anchors_without_partners_are_skipped():
    embeddings = torch.randn(5, 3)
    labels = torch.tensor([0, 0, 1, 2, 2])  # item 2 has no positive
    for miner in (TripletEasyHardMiner('hard', 'hard'), SiameseEasyHardMiner('hard', 'hard')):
        assert 2 not in miner(embeddings, labels)[0].tolist()
    same = torch.zeros(5, dtype=torch.long)  # no negatives at all
    assert all(len(t) == 0 for t in SiameseEasyHardMiner('all', 'all')(embeddings, same))
    assert all(len(t) == 0 for t in TripletEasyHardMiner('hard', 'semihard')(embeddings, same))
    assert all(len(t) == 0 for t in AllTripletsMiner()(embeddings[:1], same[:1]))


@pytest.mark.parametrize('size', [0, 1])
def test_tiny_batches_give_no_tuples(size):
    embeddings, labels = torch.randn(size, 3), torch.zeros(size, dtype=torch.long)
    miners = [AllPairsMiner(), AllTripletsMiner()]
    miners += [SiameseEasyHardMiner(*c) for c in SIAMESE_COMBINATIONS]
    miners += [TripletEasyHardMiner(*c) for c in TRIPLET_COMBINATIONS]
    for miner in miners:
        indices = miner(embeddings, labels)
        assert len(indices) in (3, 4) and all(t.dtype == torch.long and len(t) == 0 for t in indices)


@pytest.mark.parametrize('miner_class', [SiameseEasyHardMiner, TripletEasyHardMiner])
def test_matches_pml_batch_easy_hard_miner(miner_class):
    """Same selections as pytorch-metric-learning's BatchEasyHardMiner for the combinations it supports
    (every anchor here has a positive and a negative, so the anchor-skipping rules agree)."""
    pml_miners = pytest.importorskip('pytorch_metric_learning.miners')
    pml_distances = pytest.importorskip('pytorch_metric_learning.distances')
    embeddings = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat(4)
    pml_for = {'cosine': pml_distances.CosineSimilarity(),
               'euclidean': pml_distances.LpDistance(normalize_embeddings=False)}
    for (pos_strategy, neg_strategy), distance in itertools.product(SIAMESE_COMBINATIONS, pml_for):
        ours = miner_class(pos_strategy, neg_strategy, distance=distance)(embeddings, labels)
        a1, p, a2, n = pml_miners.BatchEasyHardMiner(pos_strategy, neg_strategy,
                                                     distance=pml_for[distance])(embeddings, labels)
        if miner_class is SiameseEasyHardMiner:
            assert as_set(*ours[:2]) == as_set(a1, p) and as_set(*ours[2:]) == as_set(a2, n)
        else:
            negatives = as_set(a2, n)
            expected = {(a, q, m) for a, q in as_set(a1, p) for b, m in negatives if a == b}
            assert as_set(*ours) == expected


@pytest.mark.parametrize('miner_class', [SiameseEasyHardMiner, TripletEasyHardMiner])
def test_invalid_strategies(miner_class):
    with pytest.raises(InputError, match=r"^pos_strategy: unknown value 'medium'; use one of 'easy', 'semihard', "
                                         r"'hard', 'all'$"):
        miner_class('medium', 'hard')
    with pytest.raises(InputError, match='^neg_strategy: '):
        miner_class('hard', None)
    with pytest.raises(InputError, match='^pos_strategy, neg_strategy: '):
        miner_class('semihard', 'semihard')
    with pytest.raises(InputError, match='^distance: '):
        miner_class(distance='dot')


@pytest.mark.parametrize('combination', [('all', 'semihard'), ('semihard', 'all')])
def test_siamese_rejects_semihard_with_all(combination):
    with pytest.raises(InputError, match='^pos_strategy, neg_strategy: .*cannot be combined'):
        SiameseEasyHardMiner(*combination)
    TripletEasyHardMiner(*combination)


@pytest.mark.parametrize('miner', [AllPairsMiner(), AllTripletsMiner(), SiameseEasyHardMiner(),
                                   TripletEasyHardMiner()])
def test_bad_batches(miner):
    embeddings = torch.randn(4, 3)
    with pytest.raises(InputError, match=r'^labels: expected one value per embedding \(got 3 for 4'):
        miner(embeddings, torch.tensor([0, 1, 0]))
    with pytest.raises(InputError, match='^labels: expected integers'):
        miner(embeddings, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(InputError, match='^labels: expected a 1-D'):
        miner(embeddings, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(InputError, match='^embeddings: expected a 2-D'):
        miner(embeddings[None], torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match='^embeddings: expected a floating-point'):
        miner(embeddings.long(), torch.zeros(4, dtype=torch.long))


def reference_session(session_ids, roles):
    query = {s: i for i, (s, r) in enumerate(zip(session_ids, roles)) if r == 0}
    pairs = [(query[s], i, r) for i, (s, r) in enumerate(zip(session_ids, roles)) if r != 0]
    triplets = {(query[s], p, n) for p, (s, rp) in enumerate(zip(session_ids, roles)) if rp == 1
                for n, (t, rn) in enumerate(zip(session_ids, roles)) if rn == -1 and t == s}
    return pairs, triplets


@pytest.mark.parametrize('seed', range(5))
def test_session_miner(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 6, (4,), generator=generator).tolist()
    session_ids, roles = [], []
    for session, size in zip([7, 3, 11, 5], sizes):
        session_ids += [session] * size
        roles += [0] + torch.randint(2, (size - 1,), generator=generator).mul(2).sub(1).tolist()
    order = torch.randperm(len(roles), generator=generator).tolist()
    session_ids, roles = [session_ids[i] for i in order], [roles[i] for i in order]
    embeddings = torch.randn(len(roles), 3)
    (anchor, other, target), triplets = SessionMiner()(embeddings, torch.tensor(session_ids), torch.tensor(roles))
    expected_pairs, expected_triplets = reference_session(session_ids, roles)
    assert list(zip(anchor.tolist(), other.tolist(), target.tolist())) == expected_pairs
    assert as_set(*triplets) == expected_triplets and len(triplets[0]) == len(expected_triplets)


@pytest.mark.parametrize('session_ids, roles, message', [
    ([1, 1, 2, 2], [0, 1, 0, 0], '^roles: session 2 has 2 items with role 0'),
    ([1, 1, 2, 2], [0, 1, 1, -1], '^roles: session 2 has 0 items with role 0'),
    ([1, 1, 2, 2], [0, 2, 0, -1], r'^roles: expected 0 \(query\), 1 \(positive\) or -1 \(negative\), got values \[2\]'),
    ([1, 1, 2], [0, 1, 0, -1], '^session_ids: expected one value per embedding'),
])
def test_session_miner_bad_input(session_ids, roles, message):
    with pytest.raises(InputError, match=message):
        SessionMiner()(torch.randn(4, 3), torch.tensor(session_ids), torch.tensor(roles))
