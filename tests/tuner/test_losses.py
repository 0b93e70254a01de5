import itertools
import math

import pytest
import torch
from torch import nn

from executors.errors import InputError
from executors.tuner.distances import DISTANCES
from executors.tuner.losses import (
    LOSSES,
    ArcFaceLoss,
    MultipleNegativesRankingLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SiameseLoss,
    TripletLoss,
    get_loss,
)
from executors.tuner.miners import (
    AllPairsMiner,
    AllTripletsMiner,
    SessionMiner,
    SiameseEasyHardMiner,
    TripletEasyHardMiner,
)

DTYPES = [torch.float32, torch.float64]
LABELS = [0, 0, 0, 1, 1, 2, 2, 3, 1, 4]  # a singleton class, uneven class sizes


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def cos_sim(u, v):
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def dist(u, v, distance):
    if distance == 'cosine':
        return 1 - cos_sim(u, v)
    squared = sum((a - b) ** 2 for a, b in zip(u, v))
    return math.sqrt(squared) if distance == 'euclidean' else squared


def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def batch(dtype, labels=LABELS, dim=6, seed=0):
    embeddings = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return embeddings, torch.tensor(labels)


def reference_siamese(x, y, margin, distance):
    terms = [dist(x[i], x[j], distance) if y[i] == y[j] else max(0.0, margin - dist(x[i], x[j], distance))
             for i, j in itertools.combinations(range(len(y)), 2)]
    return sum(terms) / len(terms)


def reference_triplet(x, y, margin, distance):
    terms = [max(0.0, dist(x[a], x[p], distance) - dist(x[a], x[n], distance) + margin)
             for a, p, n in itertools.product(range(len(y)), repeat=3)
             if a != p and y[a] == y[p] and y[n] != y[a]]
    return sum(terms) / len(terms)


def reference_ntxent(x, y, temperature):
    per_anchor = []
    for i in range(len(y)):
        positives = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if positives:
            log_denominator = log_sum_exp([cos_sim(x[i], x[k]) / temperature for k in range(len(y)) if k != i])
            per_anchor.append(-sum(cos_sim(x[i], x[p]) / temperature - log_denominator
                                   for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def reference_mnrl(x, y, scale, symmetric=False):
    firsts = {}
    for i, label in enumerate(y):
        firsts.setdefault(label, []).append(i)
    pairs = list(firsts.values())
    terms = []
    for anchor, positive in pairs:
        logits = [scale * cos_sim(x[anchor], x[other]) for _, other in pairs]
        term = log_sum_exp(logits) - scale * cos_sim(x[anchor], x[positive])
        if symmetric:  # the positive against every anchor
            reverse = [scale * cos_sim(x[positive], x[other]) for other, _ in pairs]
            term = (term + log_sum_exp(reverse) - scale * cos_sim(x[positive], x[anchor])) / 2
        terms.append(term)
    return sum(terms) / len(terms)


def reference_arcface(x, y, weight, margin, scale):
    terms = []
    for xi, yi in zip(x, y):
        logits = []
        for c, w in enumerate(weight):
            cosine = cos_sim(xi, w)
            if c == yi:
                theta = math.acos(max(-1.0, min(1.0, cosine)))
                cosine = math.cos(theta + margin) if theta <= math.pi - margin else cosine - margin * math.sin(margin)
            logits.append(scale * cosine)
        terms.append(log_sum_exp(logits) - logits[yi])
    return sum(terms) / len(terms)


def reference_multi_similarity(x, y, alpha, beta, base):
    terms = []
    for i in range(len(y)):
        pos = sum(math.exp(-alpha * (cos_sim(x[i], x[p]) - base)) for p in range(len(y)) if p != i and y[p] == y[i])
        neg = sum(math.exp(beta * (cos_sim(x[i], x[n]) - base)) for n in range(len(y)) if y[n] != y[i])
        terms.append(math.log(1 + pos) / alpha + math.log(1 + neg) / beta)
    return sum(terms) / len(terms)


def assert_loss(value, expected, dtype):
    assert value.dtype == dtype and value.dim() == 0
    torch.testing.assert_close(value, torch.tensor(expected, dtype=dtype), atol=1e-5, rtol=1e-5)


# ---- equal to brute-force loops ---------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('distance', DISTANCES)
def test_siamese_matches_loop(dtype, distance):
    x, y = batch(dtype)
    expected = reference_siamese(x.tolist(), y.tolist(), 1.5, distance)
    assert_loss(SiameseLoss(margin=1.5, distance=distance)(x, y), expected, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_matches_loop(dtype, distance):
    x, y = batch(dtype)
    expected = reference_triplet(x.tolist(), y.tolist(), 0.7, distance)
    assert_loss(TripletLoss(margin=0.7, distance=distance)(x, y), expected, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_ntxent_matches_loop(dtype):
    x, y = batch(dtype)
    assert_loss(NTXentLoss(temperature=0.2)(x, y), reference_ntxent(x.tolist(), y.tolist(), 0.2), dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_mnrl_matches_loop(dtype):
    x, y = batch(dtype, labels=[3, 1, 7, 1, 3, 0, 7, 0])
    assert_loss(MultipleNegativesRankingLoss(scale=10.0)(x, y), reference_mnrl(x.tolist(), y.tolist(), 10.0), dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_symmetric_mnrl_matches_loop(dtype):
    x, y = batch(dtype, labels=[3, 1, 7, 1, 3, 0, 7, 0])
    symmetric = MultipleNegativesRankingLoss(scale=10.0, symmetric=True)(x, y)
    assert_loss(symmetric, reference_mnrl(x.tolist(), y.tolist(), 10.0, symmetric=True), dtype)
    assert abs(symmetric.item() - MultipleNegativesRankingLoss(scale=10.0)(x, y).item()) > 1e-3  # not the default


def reference_prototype_run(batches, scale, weight, proto_scale, momentum, margin=0.0, symmetric=False):
    """MNRL with class prototypes over a sequence of training batches, as plain loops: per-batch losses and
    the final ``{label: prototype}``."""
    prototypes, losses = {}, []
    for x, y in batches:
        value = reference_mnrl(x, y, scale, symmetric)
        terms = []
        for xi, yi in zip(x, y):
            if yi in prototypes:
                logits = {c: proto_scale * (cos_sim(xi, p) - (margin if c == yi else 0.0))
                          for c, p in prototypes.items()}
                terms.append(log_sum_exp(list(logits.values())) - logits[yi])
        if terms:
            value += weight * sum(terms) / len(terms)
        losses.append(value)
        for label in sorted(set(y)):
            members = [[v / math.sqrt(dot(xi, xi)) for v in xi] for xi, yi in zip(x, y) if yi == label]
            mean = [sum(column) / len(members) for column in zip(*members)]
            old = prototypes.get(label)
            prototypes[label] = mean if old is None else [momentum * o + (1 - momentum) * m
                                                          for o, m in zip(old, mean)]
    return losses, prototypes


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('margin, symmetric', [(0.0, False), (0.3, True)])
def test_mnrl_prototypes_match_loop(dtype, margin, symmetric):
    # labels are arbitrary ints; batch 2 brings a new label (9) and lacks one (0); batch 3 has both
    labels = [[3, 1, 7, 1, 3, 0, 7, 0], [9, 7, 3, 9, 3, 7], [0, 9, 9, 0, 1, 1]]
    generator = torch.Generator().manual_seed(5)
    batches = [(torch.randn(len(y), 6, generator=generator, dtype=dtype, requires_grad=True), torch.tensor(y))
               for y in labels]
    loss = MultipleNegativesRankingLoss(scale=10.0, symmetric=symmetric, prototype_weight=0.7, prototype_scale=15.0,
                                        prototype_momentum=0.4, prototype_margin=margin)
    values = [loss(x, y) for x, y in batches]
    expected, prototypes = reference_prototype_run([(x.tolist(), y.tolist()) for x, y in batches],
                                                   10.0, 0.7, 15.0, 0.4, margin, symmetric)
    for value, reference in zip(values, expected):
        assert_loss(value, reference, dtype)
    assert values[0].item() == pytest.approx(reference_mnrl(batches[0][0].tolist(), labels[0], 10.0, symmetric))
    assert loss.prototype_labels.tolist() == sorted(prototypes)
    torch.testing.assert_close(loss.prototypes, torch.tensor([prototypes[c] for c in sorted(prototypes)],
                                                             dtype=dtype))
    values[-1].backward()  # the prototype term has a gradient through the embeddings only
    assert batches[-1][0].grad is not None and torch.isfinite(batches[-1][0].grad).all()


def test_mnrl_prototypes_frozen_without_gradients_and_reset():
    loss = MultipleNegativesRankingLoss(prototype_weight=1.0)
    # fixed inputs: with random ones the two labels can lie so far apart that the prototype term
    # (scale 30) underflows to 0 in float32 and the comparison below fails by chance
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    y = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():  # validation: uses no prototypes it has not got, and records none
        loss(x, y)
    assert loss.prototypes is None
    loss(x, y)
    saved = loss.prototypes.clone()
    with torch.no_grad():
        with_prototypes = loss(x, y)
    torch.testing.assert_close(loss.prototypes, saved)
    assert with_prototypes > MultipleNegativesRankingLoss()(x, y)  # the prototype term was added
    loss.reset_state()
    assert loss.prototypes is None and loss.prototype_labels is None


def test_mnrl_without_prototypes_keeps_no_state():
    loss = MultipleNegativesRankingLoss()
    loss(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 0, 1]))
    assert loss.prototypes is None


@pytest.mark.parametrize('dtype', DTYPES)
def test_arcface_matches_loop(dtype):
    x, y = batch(dtype, labels=[0, 0, 1, 1, 2, 2, 3, 4, 4, 4])
    loss = ArcFaceLoss(num_classes=6, embedding_dim=6, margin=0.4, scale=30.0)
    with torch.no_grad():  # one target far from its class weight: exercises the theta > pi - margin branch
        loss.weight[0] = -x[0].float()
    expected = reference_arcface(x.tolist(), y.tolist(), loss.weight.tolist(), 0.4, 30.0)
    assert_loss(loss(x, y), expected, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_multi_similarity_matches_loop(dtype):
    x, y = batch(dtype)
    expected = reference_multi_similarity(x.tolist(), y.tolist(), 2.0, 10.0, 0.3)
    assert_loss(MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.3)(x, y), expected, dtype)


# ---- gradients --------------------------------------------------------------------------------------------

GRAD_CASES = [
    (lambda: SiameseLoss(distance='cosine'), [0, 0, 1, 1, 2, 2]),
    (lambda: SiameseLoss(distance='euclidean', margin=3.0), [0, 0, 1, 1, 2, 2]),
    (lambda: TripletLoss(distance='sqeuclidean', margin=5.0), [0, 0, 1, 1, 2, 2]),
    (lambda: TripletLoss(distance='cosine'), [0, 0, 1, 1, 2, 2]),
    (lambda: NTXentLoss(), [0, 0, 0, 1, 1, 2]),
    (lambda: MultipleNegativesRankingLoss(), [0, 1, 2, 0, 1, 2]),
    (lambda: ArcFaceLoss(num_classes=3, embedding_dim=4), [0, 0, 1, 1, 2, 2]),
    (lambda: MultiSimilarityLoss(), [0, 0, 1, 1, 2, 2]),
]


@pytest.mark.parametrize('make_loss, labels', GRAD_CASES)
def test_gradcheck(make_loss, labels):
    torch.manual_seed(0)
    loss = make_loss().double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))


def test_arcface_gradcheck_weights():
    torch.manual_seed(0)
    loss = ArcFaceLoss(num_classes=3, embedding_dim=4).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    weight = loss.weight.detach().clone().requires_grad_()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(loss, {'weight': w}, (x, y)), (weight,))


def all_losses(dim=4, num_classes=5):
    return [SiameseLoss(), TripletLoss(), NTXentLoss(), MultipleNegativesRankingLoss(),
            ArcFaceLoss(num_classes=num_classes, embedding_dim=dim), MultiSimilarityLoss()]


def assert_graph_keeping_zero(loss, embeddings, labels):
    embeddings.requires_grad_()
    value = loss(embeddings, labels)
    assert value.item() == 0 and value.requires_grad
    value.backward()
    assert embeddings.grad is not None and not embeddings.grad.any()


@pytest.mark.parametrize('loss', all_losses(), ids=lambda loss: type(loss).__name__)
def test_empty_batch_gives_graph_keeping_zero(loss):
    assert_graph_keeping_zero(loss, torch.randn(0, 4), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize('loss', [SiameseLoss(), TripletLoss(), NTXentLoss(), MultiSimilarityLoss()],
                         ids=lambda loss: type(loss).__name__)
def test_single_item_gives_graph_keeping_zero(loss):
    assert_graph_keeping_zero(loss, torch.randn(1, 4), torch.tensor([2]))


@pytest.mark.parametrize('loss', [TripletLoss(), NTXentLoss()], ids=lambda loss: type(loss).__name__)
def test_no_positive_pair_gives_graph_keeping_zero(loss):
    assert_graph_keeping_zero(loss, torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))


def test_half_precision_and_autocast_are_computed_in_float32():
    x, y = batch(torch.float32, labels=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    for loss in all_losses(dim=6):
        value = loss(x.to(torch.bfloat16), y)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, loss(x.to(torch.bfloat16).float(), y))
        expected = loss(x, y)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            torch.testing.assert_close(loss(x, y), expected)


def test_custom_miner_and_session_helpers():
    x, y = batch(torch.float64, labels=[0, 0, 1, 1, 2, 2])
    miner = TripletEasyHardMiner('hard', 'hard', distance='euclidean')
    a, p, n = miner(x, y)
    loss = TripletLoss(margin=0.5, distance='euclidean', miner=miner)
    expected = sum(max(0.0, dist(x[i].tolist(), x[j].tolist(), 'euclidean') - dist(x[i].tolist(), x[k].tolist(),
                                                                                   'euclidean') + 0.5)
                   for i, j, k in zip(a.tolist(), p.tolist(), n.tolist())) / len(a)
    assert_loss(loss(x, y), expected, torch.float64)
    (anchor, other, target), triplets = SessionMiner()(x, torch.tensor([1, 1, 1, 2, 2, 2]),
                                                      torch.tensor([0, 1, -1, -1, 0, 1]))
    siamese = SiameseLoss(margin=2.0, distance='euclidean')
    expected = sum(dist(x[i].tolist(), x[j].tolist(), 'euclidean') if t > 0
                   else max(0.0, 2.0 - dist(x[i].tolist(), x[j].tolist(), 'euclidean'))
                   for i, j, t in zip(anchor.tolist(), other.tolist(), target.tolist())) / len(anchor)
    assert_loss(siamese.pair_loss(x, anchor, other, target > 0), expected, torch.float64)
    expected = sum(max(0.0, dist(x[i].tolist(), x[j].tolist(), 'cosine') - dist(x[i].tolist(), x[k].tolist(),
                                                                                'cosine') + 1.0)
                   for i, j, k in zip(*(t.tolist() for t in triplets))) / len(triplets[0])
    assert_loss(TripletLoss().triplet_loss(x, *triplets), expected, torch.float64)


# ---- same values as pytorch-metric-learning ----------------------------------------------------------------

@pytest.fixture
def pml():
    pytest.importorskip('pytorch_metric_learning')
    from pytorch_metric_learning import distances, losses, reducers
    return distances, losses, reducers


PML_LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1]  # every item has a positive and a negative


def pml_distance(distances, distance):
    if distance == 'cosine':
        return distances.CosineSimilarity()
    return distances.LpDistance(normalize_embeddings=False, power=1 if distance == 'euclidean' else 2)


@pytest.mark.parametrize('distance', DISTANCES)
def test_siamese_matches_pml_contrastive(pml, distance):
    distances, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    margin = 0.8 if distance == 'cosine' else 3.0
    # PML works on similarities for cosine: its margins are 1 - our distances' margins
    pos_margin, neg_margin = (1.0, 1.0 - margin) if distance == 'cosine' else (0.0, margin)
    theirs = losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin,
                                    distance=pml_distance(distances, distance), reducer=reducers.SumReducer())
    pairs = AllPairsMiner()(x, y)
    ours = SiameseLoss(margin=margin, distance=distance)(x, y)
    # PML sums positive and negative terms separately; our mean runs over all pairs together
    torch.testing.assert_close(ours, theirs(x, y, pairs) / sum(len(i) for i in pairs[::2]))


@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_matches_pml(pml, distance):
    distances, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    theirs = losses.TripletMarginLoss(margin=0.3, distance=pml_distance(distances, distance),
                                      reducer=reducers.MeanReducer())
    torch.testing.assert_close(TripletLoss(margin=0.3, distance=distance)(x, y), theirs(x, y))
    triplets = AllTripletsMiner()(x, y)
    torch.testing.assert_close(TripletLoss(margin=0.3, distance=distance)(x, y), theirs(x, y, triplets))


def test_ntxent_matches_pml_supcon(pml):
    _, losses, _ = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    torch.testing.assert_close(NTXentLoss(temperature=0.15)(x, y), losses.SupConLoss(temperature=0.15)(x, y))


def test_ntxent_matches_pml_ntxent_on_pairs(pml):
    _, losses, reducers = pml
    x, y = batch(torch.float64, labels=[0, 1, 2, 3, 0, 1, 2, 3])
    theirs = losses.NTXentLoss(temperature=0.3, reducer=reducers.MeanReducer())
    torch.testing.assert_close(NTXentLoss(temperature=0.3)(x, y), theirs(x, y))


def test_multi_similarity_matches_pml(pml):
    _, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    theirs = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, reducer=reducers.MeanReducer())
    torch.testing.assert_close(MultiSimilarityLoss()(x, y), theirs(x, y))


@pytest.mark.parametrize('dtype', DTYPES)
def test_arcface_matches_pml(pml, dtype):
    _, losses, reducers = pml
    x, y = batch(dtype, labels=PML_LABELS)
    ours = ArcFaceLoss(num_classes=5, embedding_dim=6, margin=0.5, scale=64.0)
    theirs = losses.ArcFaceLoss(num_classes=5, embedding_size=6, margin=math.degrees(0.5), scale=64.0,
                                reducer=reducers.MeanReducer())
    with torch.no_grad():
        ours.weight[0] = -x[0].float()  # a target past pi - margin
        theirs.W.copy_(ours.weight.T)
    torch.testing.assert_close(ours(x, y), theirs(x, y), atol=1e-5, rtol=1e-5)


# ---- training: every loss separates a tiny data set ----------------------------------------------------------

# cosine distance: each item's classmate is closer than every other item by at least this (the smallest
# gap seen over 16 seeds was 0.08, for ArcFaceLoss; the margin losses reach ~1)
OVERFIT_MARGIN = 0.05


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_overfits_five_pairs(name):
    torch.manual_seed(0)
    inputs = torch.randn(10, 16)
    labels = torch.arange(5).repeat(2)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 32))
    loss = get_loss(name, **({'num_classes': 5, 'embedding_dim': 32} if name == 'ArcFaceLoss' else {}))
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss(model(inputs), labels).backward()
        optimizer.step()
    with torch.no_grad():
        embeddings = nn.functional.normalize(model(inputs), dim=1)
    distance = 1 - embeddings @ embeddings.T
    for i in range(10):
        mate = (i + 5) % 10
        others = [k for k in range(10) if k not in (i, mate)]
        assert distance[i, mate] + OVERFIT_MARGIN < distance[i, others].min(), name


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('loss', all_losses(dim=3, num_classes=4), ids=lambda loss: type(loss).__name__)
def test_bad_batches(loss):
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match=r'^labels: expected one value per embedding \(got 3 for 4 embeddings\)'):
        loss(x, torch.tensor([0, 1, 0]))
    with pytest.raises(InputError, match='^embeddings: expected a 2-D'):
        loss(x.reshape(2, 2, 3), torch.tensor([0, 1]))
    with pytest.raises(InputError, match='^embeddings: expected a 2-D'):
        loss(x[0], torch.tensor([0, 1, 0]))
    with pytest.raises(InputError, match='^labels: expected a 1-D'):
        loss(x, torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(InputError, match='^labels: expected integers'):
        loss(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))


@pytest.mark.parametrize('loss_class', [SiameseLoss, TripletLoss])
def test_unknown_distance(loss_class):
    with pytest.raises(InputError, match=r"^distance: unknown value 'manhattan'; use one of 'cosine'"):
        loss_class(distance='manhattan')


@pytest.mark.parametrize('make, field', [
    (lambda: SiameseLoss(margin=-1), 'margin'),
    (lambda: NTXentLoss(temperature=0), 'temperature'),
    (lambda: MultipleNegativesRankingLoss(scale='big'), 'scale'),
    (lambda: MultipleNegativesRankingLoss(prototype_weight=-1), 'prototype_weight'),
    (lambda: MultipleNegativesRankingLoss(symmetric='yes'), 'symmetric'),
    (lambda: MultipleNegativesRankingLoss(prototype_margin=-0.1), 'prototype_margin'),
    (lambda: MultipleNegativesRankingLoss(prototype_margin=2.0), 'prototype_margin'),
    (lambda: MultipleNegativesRankingLoss(prototype_scale=0), 'prototype_scale'),
    (lambda: MultipleNegativesRankingLoss(prototype_momentum=1.0), 'prototype_momentum'),
    (lambda: MultipleNegativesRankingLoss(prototype_momentum=float('nan')), 'prototype_momentum'),
    (lambda: ArcFaceLoss(num_classes=0, embedding_dim=3), 'num_classes'),
    (lambda: ArcFaceLoss(num_classes=2, embedding_dim=3, margin=4.0), 'margin'),
    (lambda: MultiSimilarityLoss(beta=-2), 'beta'),
])
def test_bad_hyperparameters(make, field):
    with pytest.raises(InputError, match=f'^{field}: '):
        make()


def test_mnrl_needs_exact_pairs():
    with pytest.raises(InputError, match=r'^labels: MultipleNegativesRankingLoss expects each label exactly twice.*'
                                         r'label 1 occurs 3 time\(s\)'):
        MultipleNegativesRankingLoss()(torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]))


def test_arcface_label_range_and_dim():
    loss = ArcFaceLoss(num_classes=3, embedding_dim=4)
    with pytest.raises(InputError, match=r'^labels: ArcFaceLoss expects class ids in \[0, 3\), got values in \[0, 3\]'):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(InputError, match=r'^labels: .*\[-1, 0\]'):
        loss(torch.randn(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(InputError, match='^embeddings: ArcFaceLoss was built for embedding_dim=4'):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))


def test_get_loss():
    assert isinstance(get_loss('TripletLoss', margin=0.2, distance='euclidean'), TripletLoss)
    built = NTXentLoss()
    assert get_loss(built) is built
    with pytest.raises(InputError, match=r"^loss: unknown loss 'ContrastiveLoss'; use one of SiameseLoss, "
                                         r"TripletLoss, NTXentLoss, MultipleNegativesRankingLoss, ArcFaceLoss, "
                                         r"MultiSimilarityLoss"):
        get_loss('ContrastiveLoss')
    with pytest.raises(InputError, match=r'^loss: bad settings for SiameseLoss .*its settings are margin, distance, '
                                         r'miner'):
        get_loss('SiameseLoss', temperature=0.1)
    with pytest.raises(InputError, match='^loss: got a built NTXentLoss and settings'):
        get_loss(built, temperature=0.5)
    with pytest.raises(InputError, match='^loss: unknown loss 3'):
        get_loss(3)


# ---- losses with a pair miner ------------------------------------------------------------------------------

class FixedPairMiner:
    """Returns the given ``(pos_i, pos_j, neg_i, neg_j)`` whatever the batch."""

    def __init__(self, pos_pairs, neg_pairs):
        self.pairs = [torch.tensor([pair[k] for pair in pairs], dtype=torch.long)
                      for pairs in (pos_pairs, neg_pairs) for k in (0, 1)]

    def __call__(self, embeddings, labels):
        assert not embeddings.requires_grad  # mining runs without gradient
        return tuple(self.pairs)


def mined_pairs(miner, x, y):
    pos_i, pos_j, neg_i, neg_j = (t.tolist() for t in miner(x.detach(), y))
    return set(zip(pos_i, pos_j)), set(zip(neg_i, neg_j))


def all_ordered_pairs(labels):
    return ([(i, j) for i, j in itertools.permutations(range(len(labels)), 2) if labels[i] == labels[j]],
            [(i, j) for i, j in itertools.permutations(range(len(labels)), 2) if labels[i] != labels[j]])


def reference_mined_multi_similarity(x, pos, neg, alpha, beta, base):
    terms = []
    for i in sorted({i for i, _ in pos | neg}):
        pos_sum = sum(math.exp(-alpha * (cos_sim(x[i], x[p]) - base)) for a, p in pos if a == i)
        neg_sum = sum(math.exp(beta * (cos_sim(x[i], x[n]) - base)) for a, n in neg if a == i)
        terms.append(math.log(1 + pos_sum) / alpha + math.log(1 + neg_sum) / beta)
    return sum(terms) / len(terms)


def reference_mined_ntxent(x, pos, neg, temperature):
    terms = []
    for a, p in sorted(pos):
        numerator = math.exp(cos_sim(x[a], x[p]) / temperature)
        denominator = numerator + sum(math.exp(cos_sim(x[a], x[n]) / temperature) for i, n in neg if i == a)
        terms.append(-math.log(numerator / denominator))
    return sum(terms) / len(terms)


def reference_mined_mnrl(x, y, pos, neg, scale, symmetric=False):
    items = {}
    for i, label in enumerate(y):
        items.setdefault(label, []).append(i)
    pairs = list(items.values())
    terms = []
    for k, (anchor, positive) in enumerate(pairs):
        if (anchor, positive) in pos:
            logits = [scale * cos_sim(x[anchor], x[other]) for l, (_, other) in enumerate(pairs)
                      if l == k or (anchor, other) in neg]
            term = log_sum_exp(logits) - scale * cos_sim(x[anchor], x[positive])
            if symmetric:  # the positive against its anchor and the anchors mined as its negatives
                reverse = [scale * cos_sim(x[positive], x[other]) for l, (other, _) in enumerate(pairs)
                           if l == k or (other, positive) in neg]
                term = (term + log_sum_exp(reverse) - scale * cos_sim(x[positive], x[anchor])) / 2
            terms.append(term)
    return sum(terms) / len(terms)


def reference_mined_arcface(x, y, pos, neg, weight, margin, scale):
    items = sorted({i for pair in pos | neg for i in pair})
    return reference_arcface([x[i] for i in items], [y[i] for i in items], weight, margin, scale)


# LABELS: anchor 2 has only a negative pair, 5 only a positive one, 4, 6, 8 anchor none; (0, 3) listed twice
FIXED_MINER = FixedPairMiner(pos_pairs=[(0, 1), (0, 2), (1, 0), (3, 4), (3, 8), (5, 6)],
                             neg_pairs=[(0, 3), (0, 9), (2, 5), (7, 0), (9, 1), (0, 3), (1, 7)])
# labels [3, 1, 7, 1, 3, 0, 7, 0]: (anchor, positive) = (0, 4), (1, 3), (2, 6), (5, 7); only (5, 7) and (1, 3)
# are mined as such; (4, 0), (1, 2), (3, 5), (2, 7) are of another form and ignored
MNRL_LABELS = [3, 1, 7, 1, 3, 0, 7, 0]
MNRL_FIXED_MINER = FixedPairMiner(pos_pairs=[(5, 7), (1, 3), (4, 0)],
                                  neg_pairs=[(5, 3), (5, 4), (1, 6), (1, 2), (3, 5), (2, 7)])
HARD_MINER = SiameseEasyHardMiner('hard', 'hard')
MINERS = {'fixed': FIXED_MINER, 'hard': HARD_MINER}


@pytest.mark.parametrize('miner', MINERS.values(), ids=MINERS.keys())
def test_mined_multi_similarity_matches_loop(miner):
    x, y = batch(torch.float64)
    pos, neg = mined_pairs(miner, x, y)
    expected = reference_mined_multi_similarity(x.tolist(), pos, neg, 2.0, 10.0, 0.3)
    loss = MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.3, miner=miner)
    torch.testing.assert_close(loss(x, y), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize('miner', MINERS.values(), ids=MINERS.keys())
def test_mined_ntxent_matches_loop(miner):
    x, y = batch(torch.float64)
    pos, neg = mined_pairs(miner, x, y)
    expected = reference_mined_ntxent(x.tolist(), pos, neg, 0.2)
    torch.testing.assert_close(NTXentLoss(temperature=0.2, miner=miner)(x, y),
                               torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_mined_ntxent_anchor_without_negative_adds_zero():
    x, y = batch(torch.float64)
    miner = FixedPairMiner(pos_pairs=[(0, 1), (3, 4)], neg_pairs=[(0, 5)])  # anchor 3 has no negative
    expected = reference_mined_ntxent(x.tolist(), {(0, 1), (3, 4)}, {(0, 5)}, 0.2)
    x.requires_grad_()
    value = NTXentLoss(temperature=0.2, miner=miner)(x, y)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    value.backward()
    assert torch.isfinite(x.grad).all() and not x.grad[[3, 4]].any()


@pytest.mark.parametrize('miner', [MNRL_FIXED_MINER, HARD_MINER], ids=['fixed', 'hard'])
def test_mined_mnrl_matches_loop(miner):
    x, y = batch(torch.float64, labels=MNRL_LABELS)
    pos, neg = mined_pairs(miner, x, y)
    for symmetric in (False, True):
        expected = reference_mined_mnrl(x.tolist(), y.tolist(), pos, neg, 10.0, symmetric)
        torch.testing.assert_close(MultipleNegativesRankingLoss(scale=10.0, miner=miner, symmetric=symmetric)(x, y),
                                   torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


ARCFACE_MINER = FixedPairMiner(pos_pairs=[(0, 1)], neg_pairs=[(2, 5), (5, 9)])  # items 0, 1, 2, 5, 9


@pytest.mark.parametrize('miner', [ARCFACE_MINER, HARD_MINER], ids=['fixed', 'hard'])
def test_mined_arcface_matches_loop(miner):
    x, y = batch(torch.float64)
    pos, neg = mined_pairs(miner, x, y)
    loss = ArcFaceLoss(num_classes=5, embedding_dim=6, margin=0.4, scale=30.0, miner=miner).double()
    with torch.no_grad():
        loss.weight[0] = -x[0]
    expected = reference_mined_arcface(x.tolist(), y.tolist(), pos, neg, loss.weight.tolist(), 0.4, 30.0)
    torch.testing.assert_close(loss(x, y), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_miner_listing_every_ordered_pair_reproduces_default():
    x, y = batch(torch.float64)
    every_pair = FixedPairMiner(*all_ordered_pairs(y.tolist()))
    torch.testing.assert_close(MultiSimilarityLoss(beta=10.0, miner=every_pair)(x, y),
                               MultiSimilarityLoss(beta=10.0)(x, y))
    x, y = batch(torch.float64, labels=MNRL_LABELS)  # two items per label: NT-Xent = SupCon
    every_pair = FixedPairMiner(*all_ordered_pairs(y.tolist()))
    torch.testing.assert_close(NTXentLoss(temperature=0.3, miner=every_pair)(x, y), NTXentLoss(temperature=0.3)(x, y))
    for symmetric in (False, True):
        torch.testing.assert_close(
            MultipleNegativesRankingLoss(miner=SiameseEasyHardMiner('all', 'all'), symmetric=symmetric)(x, y),
            MultipleNegativesRankingLoss(symmetric=symmetric)(x, y))
    mined_arcface = ArcFaceLoss(num_classes=8, embedding_dim=6, miner=every_pair).double()
    arcface = ArcFaceLoss(num_classes=8, embedding_dim=6).double()
    arcface.load_state_dict(mined_arcface.state_dict())
    torch.testing.assert_close(mined_arcface(x, y), arcface(x, y))


MINED_GRAD_CASES = [
    (lambda miner: NTXentLoss(miner=miner), [0, 0, 0, 1, 1, 2],
     FixedPairMiner([(0, 1), (0, 2), (2, 1), (3, 4)], [(0, 3), (0, 5), (2, 4), (3, 0), (5, 1)])),
    (lambda miner: MultipleNegativesRankingLoss(miner=miner), [0, 1, 2, 0, 1, 2],
     FixedPairMiner([(0, 3), (1, 4)], [(0, 4), (0, 5), (1, 5)])),
    (lambda miner: ArcFaceLoss(num_classes=3, embedding_dim=4, miner=miner), [0, 0, 1, 1, 2, 2],
     FixedPairMiner([(0, 1)], [(0, 4), (5, 2)])),
    (lambda miner: MultiSimilarityLoss(miner=miner), [0, 0, 1, 1, 2, 2],
     FixedPairMiner([(0, 1), (3, 2), (4, 5)], [(0, 2), (0, 5), (1, 3), (3, 4)])),
]


@pytest.mark.parametrize('make_loss, labels, miner', MINED_GRAD_CASES,
                         ids=['NTXentLoss', 'MNRL', 'ArcFaceLoss', 'MultiSimilarityLoss'])
@pytest.mark.parametrize('use_hard_miner', [False, True], ids=['fixed', 'hard'])
def test_mined_gradcheck(make_loss, labels, miner, use_hard_miner):
    torch.manual_seed(0)
    loss = make_loss(HARD_MINER if use_hard_miner else miner).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))


@pytest.mark.parametrize('make_loss', [
    lambda miner: NTXentLoss(miner=miner), lambda miner: MultipleNegativesRankingLoss(miner=miner),
    lambda miner: ArcFaceLoss(num_classes=5, embedding_dim=4, miner=miner),
    lambda miner: MultiSimilarityLoss(miner=miner)], ids=['NTXentLoss', 'MNRL', 'ArcFaceLoss', 'MultiSimilarityLoss'])
def test_miner_without_pairs_gives_graph_keeping_zero(make_loss):
    assert_graph_keeping_zero(make_loss(FixedPairMiner([], [])), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    # a miner that finds nothing: no anchor has both a positive and a negative
    assert_graph_keeping_zero(make_loss(HARD_MINER), torch.randn(2, 4), torch.tensor([1, 1]))


def test_ntxent_without_mined_positive_gives_graph_keeping_zero():
    loss = NTXentLoss(miner=FixedPairMiner([], [(0, 1), (2, 3)]))
    assert_graph_keeping_zero(loss, torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))


def test_pair_miner_output_is_checked():
    loss = MultiSimilarityLoss(miner=AllTripletsMiner())
    with pytest.raises(InputError, match=r'^miner: a pair miner must return \(pos_i, pos_j, neg_i, neg_j\), got '
                                         r'tuple of 3'):
        loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))


def pml_tuple(miner, x, y):
    pos, neg = mined_pairs(miner, x, y)
    return tuple(torch.tensor([pair[k] for pair in sorted(pairs)], dtype=torch.long)
                 for pairs in (pos, neg) for k in (0, 1))


PML_FIXED_MINER = FixedPairMiner(pos_pairs=[(0, 1), (0, 2), (1, 0), (3, 4), (5, 6), (9, 10)],
                                 neg_pairs=[(0, 3), (0, 9), (2, 5), (7, 0), (9, 1), (1, 7)])  # anchors 0 1 2 3 5 7 9


@pytest.mark.parametrize('miner', [PML_FIXED_MINER, HARD_MINER], ids=['fixed', 'hard'])
def test_mined_multi_similarity_matches_pml(pml, miner):
    _, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    indices = pml_tuple(miner, x, y)
    theirs = losses.MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.4, reducer=reducers.MeanReducer())
    ours = MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.4, miner=miner)(x, y)
    # PML averages over all B items, this loss over the anchors of mined pairs
    anchors = len(set(indices[0].tolist()) | set(indices[2].tolist()))
    assert anchors == (7 if miner is PML_FIXED_MINER else len(y))
    torch.testing.assert_close(ours * anchors / len(y), theirs(x, y, indices))


@pytest.mark.parametrize('miner', [PML_FIXED_MINER, HARD_MINER], ids=['fixed', 'hard'])
def test_mined_ntxent_matches_pml(pml, miner):
    _, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    theirs = losses.NTXentLoss(temperature=0.25, reducer=reducers.MeanReducer())
    torch.testing.assert_close(NTXentLoss(temperature=0.25, miner=miner)(x, y), theirs(x, y, pml_tuple(miner, x, y)))


def test_mined_arcface_relates_to_pml(pml):
    _, losses, reducers = pml
    x, y = batch(torch.float64, labels=PML_LABELS)
    miner = FixedPairMiner(pos_pairs=[(0, 1), (3, 4)], neg_pairs=[(2, 5), (7, 9)])  # 8 items, each once
    ours = ArcFaceLoss(num_classes=5, embedding_dim=6, margin=0.5, scale=64.0, miner=miner).double()
    theirs = losses.ArcFaceLoss(num_classes=5, embedding_size=6, margin=math.degrees(0.5), scale=64.0,
                                reducer=reducers.MeanReducer()).double()
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)
    # PML weights items by occurrence count / max count (here 1 or 0) and averages over all B items
    torch.testing.assert_close(ours(x, y) * 8 / len(y), theirs(x, y, pml_tuple(miner, x, y)))
