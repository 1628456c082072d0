"""max_pool2d: a hand-computed case, float64 gradcheck, and parity with torch on every backend."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.ops.pool import max_pool2d

torch = pytest.importorskip("torch")

# (x_shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),  # ResNet's stem pool
    ((1, 2, 8, 7), 1, 2, 0, 1, False),  # FPN's extra level
    ((2, 2, 7, 10), (3, 2), (2, 3), (1, 0), (2, 1), True),
    ((1, 1, 5, 5), 2, None, 0, 1, True),
]
CUDA_CASES = [((1, 2, 5, 6), 3, 2, 1, 1, False), ((1, 1, 5, 5), 2, None, 0, 1, True)]  # tiny: the simulator is slow


def _device(backend):
    """Where the backend computes: CuPy arrays under "cuda" on a GPU, NumPy otherwise (a copy)."""
    cp = cupy_or_none() if backend == "cuda" else None
    return cp.asarray if cp is not None else np.array


def test_hand_computed_2x2_pool():
    x = Tensor(np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4), requires_grad=True)
    out = max_pool2d(x, 2)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[5, 7], [13, 15]])
    out.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(x.grad[0, 0], expected)


def test_overlapping_windows_add_their_gradients():
    x = Tensor(np.zeros((1, 1, 3, 3)), requires_grad=True)
    x.data[0, 0, 1, 1] = 5.0  # the centre wins all four 2x2 windows of a stride-1 pool
    max_pool2d(x, 2, 1).sum().backward()
    assert x.grad[0, 0, 1, 1] == 4.0 and x.grad.sum() == 4.0


def test_fpn_extra_level_keeps_every_other_pixel(rng):
    x = Tensor(rng.standard_normal((1, 3, 7, 6)))
    np.testing.assert_array_equal(max_pool2d(x, 1, 2, 0).numpy(), x.data[:, :, ::2, ::2])


def _case_params():
    params = [pytest.param("numpy", c) for c in CASES] + [pytest.param("numba", c) for c in CASES]
    params += [pytest.param("cuda", c, marks=pytest.mark.cuda) for c in CUDA_CASES]
    return params


@pytest.mark.parametrize("backend_name,case", _case_params())
def test_forward_and_backward_equal_torch(backend_name, case, rng):
    shape, k, s, p, d, ceil = case
    x = np.maximum(rng.standard_normal(shape), 0)  # ReLU'd: ties everywhere, broken as torch does
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(dout))
    with use_backend(backend_name):
        on_device = _device(backend_name)
        xs = Tensor(on_device(x), requires_grad=True)
        out = max_pool2d(xs, k, s, p, d, ceil)
        out.backward(on_device(dout))
    np.testing.assert_array_equal(out.numpy(), out_t.detach().numpy())
    np.testing.assert_allclose(to_numpy(xs.grad), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize(
    "shape,k,s,p", [((1, 2, 5, 6), 3, 2, 1), ((2, 1, 4, 4), 2, 2, 0), ((1, 1, 6, 5), (2, 3), 1, (1, 1))]
)
def test_gradcheck(backend_name, shape, k, s, p, rng):
    x = Tensor(rng.standard_normal(shape), requires_grad=True)  # distinct values: no ties within eps
    with use_backend(backend_name):
        result = gradcheck(lambda t: max_pool2d(t, k, s, p), [x])
    assert result.passed, result.report()


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_float32_in_float32_out(backend_name, rng):
    x = Tensor(rng.standard_normal((1, 2, 6, 6)).astype(np.float32), requires_grad=True)
    with use_backend(backend_name):
        out = max_pool2d(x, 3, 2, 1)
        out.sum().backward()
    assert out.dtype == np.float32 and x.grad.dtype == np.float32 and out.shape == (1, 2, 3, 3)


def test_return_indices_is_refused():
    with pytest.raises(NotImplementedError):
        max_pool2d(Tensor(np.zeros((1, 1, 4, 4))), 2, return_indices=True)
