"""kernels/max_pool: the three backends agree with each other and with torch (values, argmax, dx)."""
import importlib

import numpy as np
import pytest
from minimaskrcnn.kernels.max_pool import max_pool_geometry, pool_output_size

torch = pytest.importorskip("torch")

# (x_shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),  # ResNet's stem pool
    ((1, 2, 8, 7), 1, 2, 0, 1, False),  # FPN's extra level (LastLevelMaxPool)
    ((2, 2, 7, 10), (3, 2), (2, 3), (1, 0), (2, 1), True),  # pairs, dilation, ceil_mode
    ((1, 1, 5, 5), 2, None, 0, 1, True),  # stride defaults to the kernel; ceil keeps a partial window
    ((1, 2, 6, 6), 2, 2, 1, 1, True),  # ceil_mode drops a window that would start in the padding
]
MODULES = ["reference", "cpu", pytest.param("cuda", marks=pytest.mark.cuda)]  # cuda: the simulator in CI


def _module(name):
    return importlib.import_module(f"minimaskrcnn.kernels.max_pool.{name}")


def _input(rng, shape):
    x = rng.standard_normal(shape)
    return np.maximum(x, 0)  # ReLU'd: many tied zeros, where tie-breaking matters


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", MODULES)
def test_each_backend_equals_torch(name, case, rng):
    shape, k, s, p, d, ceil = case
    x = _input(rng, shape)
    mod = _module(name)
    out, argmax = mod.max_pool2d_forward(x, k, s, p, d, ceil)
    xt = torch.tensor(x, requires_grad=True)
    out_t, idx_t = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil, return_indices=True)
    np.testing.assert_array_equal(np.asarray(out), out_t.detach().numpy())
    np.testing.assert_array_equal(np.asarray(argmax), idx_t.numpy())  # the same winner, ties included
    dout = rng.standard_normal(out.shape)
    dx = mod.max_pool2d_backward(dout, argmax, x.shape, k, s, p, d, ceil)
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nan_and_minus_inf_like_the_reference(name):
    x = np.array([[[[1.0, np.nan, 2.0, -np.inf],
                    [0.5, 3.0, -np.inf, -np.inf],
                    [7.0, 7.0, 1.0, np.nan]]]])
    ref = _module("reference").max_pool2d_forward(x, 2, 1, 0, 1, False)
    got = _module(name).max_pool2d_forward(x, 2, 1, 0, 1, False)
    np.testing.assert_array_equal(np.asarray(got[0]), ref[0])
    np.testing.assert_array_equal(np.asarray(got[1]), ref[1])
    out_t, idx_t = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 1, return_indices=True)
    np.testing.assert_array_equal(ref[0], out_t.numpy())  # NaN wins; an all -inf window keeps its first pixel
    np.testing.assert_array_equal(ref[1], idx_t.numpy())


@pytest.mark.parametrize("name", MODULES)
def test_float32_keeps_its_dtype(name, rng):
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    out, argmax = _module(name).max_pool2d_forward(x, 3, 2, 1)
    assert out.dtype == np.float32 and argmax.dtype == np.int64 and out.shape == (1, 2, 3, 3)
    dx = _module(name).max_pool2d_backward(np.ones(out.shape, np.float32), argmax, x.shape, 3, 2, 1)
    assert dx.dtype == np.float32 and dx.sum() == out.size  # every output sends exactly its dout


@pytest.mark.parametrize(
    "size,k,s,p,d,ceil",
    [(10, 3, 2, 1, 1, False), (10, 3, 2, 1, 1, True), (7, 2, 2, 1, 1, True), (6, 2, 2, 1, 1, True),
     (5, 3, 3, 0, 1, True), (9, 3, 2, 1, 2, True), (5, 1, 2, 0, 1, False)],
)
def test_output_size_matches_torch(size, k, s, p, d, ceil):
    out = torch.nn.functional.max_pool2d(torch.zeros(1, 1, size, size), k, s, p, d, ceil)
    assert pool_output_size(size, k, s, p, d, ceil) == out.shape[-1]


def test_geometry_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at most half"):
        max_pool_geometry((1, 1, 5, 5), 3, 1, 2)
    with pytest.raises(ValueError, match="too small"):
        max_pool_geometry((1, 1, 2, 2), 3, 1, 0)
    with pytest.raises(ValueError, match="expects an"):
        max_pool_geometry((1, 5, 5), 3)
    with pytest.raises(ValueError, match=">= 1"):
        max_pool_geometry((1, 1, 5, 5), 0)
    with pytest.raises(ValueError, match="expected"):
        _module("cpu").max_pool2d_backward(
            np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), (1, 1, 5, 5), 3, 1, 1
        )


@pytest.mark.parametrize("name", MODULES)
def test_a_dilated_window_that_sees_only_padding(name):
    # H = W = 2, kernel 2 with dilation 3 and padding 1: the one window's taps are at -1 and 2, both outside
    x = np.ones((1, 1, 2, 2))
    out, argmax = _module(name).max_pool2d_forward(x, 2, 1, 1, 3)
    assert np.asarray(out).shape == (1, 1, 1, 1) and np.asarray(out)[0, 0, 0, 0] == -np.inf
    assert torch.nn.functional.max_pool2d(torch.tensor(x), 2, 1, 1, 3).item() == -np.inf  # torch agrees
    assert np.asarray(argmax)[0, 0, 0, 0] == -1
    dx = _module(name).max_pool2d_backward(np.ones((1, 1, 1, 1)), argmax, x.shape, 2, 1, 1, 3)
    np.testing.assert_array_equal(np.asarray(dx), 0)
