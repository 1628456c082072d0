"""Group normalisation kernels: Numba against the array-code reference, float32 accuracy, arguments."""
import numpy as np
import pytest
from minimaskrcnn.kernels.group_norm import cpu, reference

import minimaskrcnn
from minimaskrcnn import Tensor
from minimaskrcnn.ops.norm import group_norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((2, 6, 20), 3), ((3, 4, 9), 1), ((1, 8, 5), 8), ((4, 64, 196), 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_numba_matches_the_reference(rng, dtype, shape, groups, affine):
    x = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    C = shape[1]
    w, b = (rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)) if affine else (None, None)
    dout = rng.standard_normal(shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    ours, ref = cpu.group_norm_forward(x, w, b, groups, 1e-5), reference.group_norm_forward(x, w, b, groups, 1e-5)
    for a, r in zip(ours, ref):
        assert a.dtype == dtype and a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)
    grads = cpu.group_norm_backward(dout, ref[1], ref[2], w), reference.group_norm_backward(dout, ref[1], ref[2], w)
    for a, r in zip(*grads):
        if r is None:
            assert a is None and not affine
            continue
        assert a.dtype == dtype
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol * np.abs(r).max())


def test_float32_statistics_are_summed_in_float64(rng):
    """A large common offset (mean 1000, spread 1) in float32: xhat as accurate as float64's to float32 rounding."""
    x64 = 1000 + rng.standard_normal((2, 4, 4096))
    out32 = cpu.group_norm_forward(x64.astype(np.float32), None, None, 2, 1e-5)[0]
    out64 = reference.group_norm_forward(x64.astype(np.float32).astype(np.float64), None, None, 2, 1e-5)[0]
    np.testing.assert_allclose(out32, out64, atol=2e-3)  # float32's own rounding of x near 1000 is 6e-5 / 1


def test_backward_skips_what_is_not_needed(rng):
    x, dout, w = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6)), rng.standard_normal(4)
    _, xhat, invstd = cpu.group_norm_forward(x, w, None, 2, 1e-5)
    dx, dweight, dbias = cpu.group_norm_backward(dout, xhat, invstd, w, need_weight=False, need_bias=False)
    assert dx.shape == x.shape and dweight is None and dbias is None


def test_an_empty_batch_normalises_to_nothing():
    """No image (the reference's array code handles it; the Numba kernel is not called)."""
    x = Tensor(np.zeros((0, 4, 3, 3)), requires_grad=True)
    with minimaskrcnn.use_backend("numba"):
        out = group_norm(x, 2, Tensor(np.ones(4)), Tensor(np.zeros(4)))
        out.sum().backward()
    assert out.shape == (0, 4, 3, 3) and x.grad.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("k", [reference, cpu])
def test_bad_arguments_raise(k):
    with pytest.raises(ValueError, match="do not split"):
        k.group_norm_forward(np.zeros((1, 5, 4)), None, None, 2, 1e-5)
    with pytest.raises(ValueError, match=r"expected \(N, C, L\)"):
        k.group_norm_forward(np.zeros((1, 4, 2, 2)), None, None, 2, 1e-5)
    with pytest.raises(TypeError, match="float32 or float64"):
        k.group_norm_forward(np.zeros((1, 4, 4), np.int32), None, None, 2, 1e-5)
