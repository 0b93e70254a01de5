import numpy as np
import pytest
import torch

from executors.data.decoding import build_decoder
from executors.data.transforms import build_transform
from executors.data.vector import VectorDecoder, VectorTransform, check_vector
from executors.errors import InputError


def test_check_vector():
    vector = check_vector([1, 2, 3], dim=3)
    assert vector.dtype == np.float32 and vector.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(InputError, match=r'tensor: expected a 1-D vector of length 3, got shape \(2, 2\)'):
        check_vector(np.zeros((2, 2)), dim=3)
    with pytest.raises(InputError, match=r'tensor: NaN or infinite values at positions \[1\]'):
        check_vector([0.0, np.inf])
    with pytest.raises(InputError, match='tensor: expected a vector of numbers, got str'):
        check_vector('abc')
    with pytest.raises(InputError, match='tensor: missing'):
        check_vector(None)


def test_decoder():
    decoder = build_decoder({'modality': 'vector', 'dim': 2})
    assert isinstance(decoder, VectorDecoder)
    values = decoder.decode_batch([{'tensor': [1, 2]}, {'tensor': np.array([3.0, 4.0])}])
    assert [v.tolist() for v in values] == [[1, 2], [3, 4]] and values[0].dtype == np.float32
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'b'\): tensor: expected a 1-D vector of length 2"):
        decoder.decode_batch([{'tensor': [1, 2]}, {'id': 'b', 'tensor': [1, 2, 3]}])
    with pytest.raises(InputError, match='tensor: missing'):
        decoder.decode({'uri': 'a'})


def test_transform_standardises_and_checks():
    transform = build_transform({'modality': 'vector', 'dim': 3, 'mean': [1, 2, 3], 'std': 2})
    x = np.array([[3.0, 2.0, 1.0], [1.0, 4.0, 7.0]], np.float32)
    expected = (x - np.array([1, 2, 3])) / 2
    for values in (x, list(x), [x[0].tolist(), x[1].tolist()]):  # an array, rows, lists
        batch = transform.batch(values)
        assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
        np.testing.assert_allclose(batch.numpy(), expected)
    np.testing.assert_allclose(transform.apply(x[1]), expected[1])
    identity = VectorTransform()
    np.testing.assert_array_equal(identity.batch(x).numpy(), x)
    with pytest.raises(InputError, match=r'inputs\[1\]: tensor: NaN or infinite values at positions \[0\]'):
        transform.batch(np.array([[1, 2, 3], [np.nan, 0, 0]], np.float32))
    with pytest.raises(InputError, match=r'inputs\[0\]: tensor: expected a 1-D vector of length 3'):
        transform.batch(np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match=r"inputs\[1\]: model input shape \(3,\) differs from the first item's \(2,\)"):
        VectorTransform().batch([[1, 2], [1, 2, 3]])
    with pytest.raises(InputError, match="the transform's mean has 2"):
        VectorTransform(mean=[1, 2]).apply([1, 2, 3])


@pytest.mark.parametrize('spec, message', [
    ({'modality': 'vector', 'std': 0}, 'std: expected a number in (0, inf)'),
    ({'modality': 'vector', 'std': [1, -1]}, 'std: expected a number in (0, inf)'),
    ({'modality': 'vector', 'dim': 3, 'mean': [1, 2]}, 'mean: expected a number or a list of 3 numbers'),
    ({'modality': 'vector', 'mean': 'a'}, "mean: expected a number in (-inf, inf), got 'a'"),
    ({'modality': 'vector', 'dim': 0}, 'dim: expected an integer >= 1'),
])
def test_bad_transform_specs(spec, message):
    with pytest.raises(InputError) as error:
        build_transform(spec)
    assert message in str(error.value)
