"""ops/_utils: argument pairs, and the stable sigmoid / softmax / log-softmax on arrays against the
plain formulas where those are exact, against torch, and at logits where the plain formulas overflow."""
import numpy as np
import pytest

from minimaskrcnn.ops._utils import log_softmax_array, pair, sigmoid_array, softmax_array


def test_pair():
    assert pair(3) == (3, 3) and pair((2, 5)) == (2, 5) and pair([1, 4], "stride") == (1, 4)
    assert pair(2.5, "scale_factor", float) == (2.5, 2.5) and pair(7.0) == (7, 7)
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        pair((1, 2, 3), "stride")
    with pytest.raises(ValueError, match="scale_factor must be a number or a pair of numbers"):
        pair([2.0], "scale_factor", float)
    with pytest.raises(ValueError, match="padding"):
        pair("same", "padding")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_array_equals_the_formula_and_never_overflows(dtype):
    x = np.linspace(-30, 30, 121).astype(dtype)
    expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    got = sigmoid_array(x)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    with np.errstate(over="raise"):  # exp(-x) of the plain formula overflows here
        extreme = sigmoid_array(np.array([-1e4, -800.0, 0.0, 800.0, 1e4], dtype))
    np.testing.assert_array_equal(extreme, np.array([0.0, 0.0, 0.5, 1.0, 1.0], dtype))
    # tiny but not zero far left: e / (1 + e), not 1 - 1 / (1 + e)
    assert sigmoid_array(np.array([-80.0]))[0] == pytest.approx(np.exp(-80.0), rel=1e-12)


def test_softmax_and_log_softmax_arrays(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((5, 7)) * 10
    for axis in (0, 1, -1):
        np.testing.assert_allclose(softmax_array(x, axis), torch.softmax(torch.from_numpy(x), axis).numpy(),
                                   rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(log_softmax_array(x, axis),
                                   torch.log_softmax(torch.from_numpy(x), axis).numpy(), rtol=1e-12, atol=1e-12)
    big = np.array([[1000.0, 1000.0, -1000.0]], np.float32)  # exp(1000) overflows float32 and float64
    with np.errstate(over="raise", under="ignore"):
        p, logp = softmax_array(big), log_softmax_array(big)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-7)
    np.testing.assert_allclose(logp, [[-np.log(2), -np.log(2), -2000 - np.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(softmax_array(x).sum(axis=-1), 1.0, rtol=1e-12)
