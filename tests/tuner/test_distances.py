import math

import pytest
import torch

from executors.errors import InputError
from executors.tuner.distances import DISTANCES, check_distance, pairwise_distance


def reference_distance(u, v, distance):
    """One distance from Python floats."""
    if distance == 'cosine':
        dot = sum(a * b for a, b in zip(u, v))
        return 1 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))
    squared = sum((a - b) ** 2 for a, b in zip(u, v))
    return math.sqrt(squared) if distance == 'euclidean' else squared


@pytest.mark.parametrize('distance', DISTANCES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_reference(distance, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=generator, dtype=dtype)
    y = torch.randn(4, 7, generator=generator, dtype=dtype)
    result = pairwise_distance(x, y, distance=distance)
    assert result.shape == (5, 4) and result.dtype == dtype
    expected = [[reference_distance(u, v, distance) for v in y.tolist()] for u in x.tolist()]
    torch.testing.assert_close(result, torch.tensor(expected, dtype=dtype), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('distance', DISTANCES)
def test_within_one_set(distance):
    x = torch.randn(6, 3, dtype=torch.float64)
    result = pairwise_distance(x, distance=distance)
    torch.testing.assert_close(result, result.T)
    torch.testing.assert_close(result, pairwise_distance(x, x.clone(), distance=distance).fill_diagonal_(
        1e-6 if distance == 'euclidean' else 0.0))
    assert torch.all(result.diagonal() <= 1e-6)


@pytest.mark.parametrize('distance', DISTANCES)
def test_gradcheck(distance):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pairwise_distance(a, b, distance=distance), (x, y))
    # within one set: includes the zero self-distances
    assert torch.autograd.gradcheck(lambda a: pairwise_distance(a, distance=distance), (x,))


def test_euclidean_gradient_finite_at_zero_distance():
    x = torch.randn(2, 4, dtype=torch.float64)
    x = torch.cat([x, x[:1]]).requires_grad_()  # rows 0 and 2 coincide
    pairwise_distance(x, distance='euclidean').sum().backward()
    assert torch.isfinite(x.grad).all()
    y = x.detach().clone().requires_grad_()
    pairwise_distance(y, y.detach().clone(), distance='euclidean').sum().backward()
    assert torch.isfinite(y.grad).all()


def test_check_distance_message():
    assert check_distance('euclidean') == 'euclidean'
    with pytest.raises(InputError, match=r"^distance: unknown value 'foo'; use one of 'cosine', 'euclidean', "
                                         r"'sqeuclidean'$"):
        check_distance('foo')
    with pytest.raises(InputError, match='^metric: '):
        check_distance(None, field='metric')


@pytest.mark.parametrize('x, y, field', [
    (torch.zeros(3), None, 'x'),
    (torch.zeros(3, 2, dtype=torch.long), None, 'x'),
    ([[0.0, 1.0]], None, 'x'),
    (torch.zeros(3, 2), torch.zeros(3, 4), 'y'),
    (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), 'y'),
])
def test_bad_input(x, y, field):
    with pytest.raises(InputError, match=f'^{field}: '):
        pairwise_distance(x, y)
    with pytest.raises(InputError, match='^distance: '):
        pairwise_distance(torch.zeros(2, 2), distance='manhattan')
