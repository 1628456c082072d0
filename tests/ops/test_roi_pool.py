"""roi_pool: hand cases on a ramp (rounding halves away from zero, empty bins), torchvision parity on
every backend (values, argmax and input gradients), float64 gradcheck, the saved argmax."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, kernel, to_numpy
from minimaskrcnn.nn import RoIPool
from minimaskrcnn.ops.roi_pool import roi_pool

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _device(backend):
    """Where the backend computes: CuPy arrays under "cuda" on a GPU, NumPy otherwise (a copy)."""
    cp = cupy_or_none() if backend == "cuda" else None
    return cp.asarray if cp is not None else np.array


def ramp(H=4, W=4, dtype=np.float64):
    """(1, 1, H, W) with value 4*y + x at (y, x): for W = 4 each value is its own flat index."""
    y, x = np.mgrid[0:H, 0:W]
    return (4.0 * y + x).astype(dtype)[None, None]


def pool_rois(rng, N, H, W, spatial_scale):
    """(K, 5) image-pixel RoIs: random ones, corners that land on .5 after scaling (rounding), boxes
    across the border, outside, zero-size, reversed and huge, on every image of the batch."""
    x1, y1 = rng.uniform(-0.3 * W, W, 6), rng.uniform(-0.3 * H, H, 6)
    random_boxes = np.stack([x1, y1, x1 + rng.uniform(0, W, 6), y1 + rng.uniform(0, H, 6)], axis=1)
    edge_boxes = np.array(
        [
            [0.5, 1.5, 2.5, 3.5],  # every corner on a half: rounds away from zero
            [-0.5, -1.5, 1.5, 0.5],  # negative halves
            [-3.0, -2.0, 1.6, 2.4],  # across the top-left corner
            [W - 1.4, H - 0.6, W + 3.0, H + 2.0],  # across the bottom-right corner
            [W + 2.0, 0.0, W + 4.0, 2.0],  # wholly outside: every bin empty
            [1.2, 0.4, 1.2, 3.3],  # zero width: one pixel column
            [2.0, 2.0, 2.0, 2.0],  # a point: one pixel
            [3.0, 2.0, 1.0, 0.0],  # reversed: forced to 1x1
            [-W, -H, 3.0 * W, 2.0 * H],  # huge
        ]
    )
    boxes = np.concatenate([random_boxes, edge_boxes]) / spatial_scale
    batch_idx = (np.arange(len(boxes)) % N)[:, None]
    return np.concatenate([batch_idx, boxes], axis=1)


# ------------------------------------------------------------------------------------ hand cases
def test_hand_computed_ramp():
    x = Tensor(ramp(), requires_grad=True)
    # box [0, 3] covers pixels 0..3 (inclusive: 4 px), 2 bins of 2 px; each maximum is its bottom-right pixel
    out = roi_pool(x, np.array([[0, 0, 0, 3, 3.0]]), 2)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[5, 7], [13, 15]])
    out.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(x.grad[0, 0], expected)


def test_rounding_is_half_away_from_zero():
    # scale 0.5: [1, 1, 5, 5] -> [0.5, 0.5, 2.5, 2.5] -> pixels 1..3 (np.round would give 0..2, max 10)
    out = roi_pool(Tensor(ramp()), np.array([[0, 1, 1, 5, 5.0]]), 1, 0.5)
    assert out.item() == 15.0
    # -0.5 rounds to -1: [-1, -1, 1, 1] * 0.5 -> pixels -1..1, clipped to 0..1 (np.round: 0..0, max 0)
    out = roi_pool(Tensor(ramp()), np.array([[0, -1, -1, 1, 1.0]]), 1, 0.5)
    assert out.item() == 5.0


def test_empty_bins_give_zero_and_no_gradient():
    x = Tensor(ramp() + 100.0, requires_grad=True)
    rois = np.array([[0, 5.0, 0, 7, 3]])  # pixels 5..7 of a 4-wide map: all bins empty
    output, argmax = kernel("roi_pool").roi_pool_forward(x.data, rois, 1.0, 2, 2)
    np.testing.assert_array_equal(output, 0)
    np.testing.assert_array_equal(argmax, -1)
    out = roi_pool(x, rois, 2)
    out.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(x.grad, 0)


def test_backward_uses_the_saved_argmax():
    x = Tensor(ramp(), requires_grad=True)
    out = roi_pool(x, np.array([[0, 0, 0, 3, 3.0]]), 2)
    x.data[...] = -x.data  # the maxima would now be the top-left pixels
    out.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(np.argwhere(x.grad[0, 0] == 1), [[1, 1], [1, 3], [3, 1], [3, 3]])


# ----------------------------------------------------------------------- parity with torchvision
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("output_size,spatial_scale", [((2, 3), 0.5), (1, 1.0), (3, 0.25)])
def test_equal_torchvision(backend, dtype, output_size, spatial_scale):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(40)
    N, C, H, W = 2, 3, 5, 6  # C = 3: the Numba forward's 4-channel groups have a tail
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = pool_rois(rng, N, H, W, spatial_scale).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    expected = torchvision.ops.roi_pool(xt, torch.from_numpy(rois), output_size, spatial_scale)
    _, expected_argmax = torch.ops.torchvision.roi_pool(
        torch.from_numpy(x), torch.from_numpy(rois), spatial_scale, *np.broadcast_to(output_size, 2).tolist()
    )
    dout = rng.standard_normal(tuple(expected.shape)).astype(dtype)
    expected.backward(torch.from_numpy(dout))

    on_device = _device(backend)
    xs = Tensor(on_device(x), requires_grad=True)
    out = roi_pool(xs, on_device(rois), output_size, spatial_scale)
    out.backward(on_device(dout))
    _, argmax = kernel("roi_pool").roi_pool_forward(on_device(x), on_device(rois), spatial_scale, *out.shape[2:])
    assert out.dtype == dtype and xs.grad.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), expected.detach().numpy())  # a maximum is exact
    np.testing.assert_array_equal(to_numpy(argmax), expected_argmax.numpy())
    np.testing.assert_allclose(to_numpy(xs.grad), xt.grad.numpy(), rtol=TOL[dtype], atol=TOL[dtype])


def test_no_rois(backend):
    x = Tensor(_device(backend)(np.ones((2, 3, 4, 4))), requires_grad=True)
    out = roi_pool(x, [np.zeros((0, 4)), np.zeros((0, 4))], 2)
    assert out.shape == (0, 3, 2, 2)
    out.backward(_device(backend)(np.zeros((0, 3, 2, 2))))
    np.testing.assert_array_equal(to_numpy(x.grad), np.zeros((2, 3, 4, 4)))


@pytest.mark.parametrize("backend_name", ["numpy", "numba", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_gradcheck(backend_name):
    rng = np.random.default_rng(50)
    x = Tensor(rng.standard_normal((2, 1, 5, 4)), requires_grad=True)  # distinct values: no ties within eps
    rois = np.array([[0, 0.2, 0.3, 7.1, 9.2], [1, -2.1, 1.7, 4.4, 6.6], [1, 3.0, 3.0, 5.0, 5.0]])
    with use_backend(backend_name):
        result = gradcheck(lambda t: roi_pool(t, rois, (2, 3), 0.5), [x])
    assert result.passed, result.report()


def test_module_matches_function(rng):
    layer = RoIPool(7, spatial_scale=1 / 16)
    assert repr(layer) == "RoIPool(output_size=7, spatial_scale=0.0625)"
    x = Tensor(rng.standard_normal((1, 2, 8, 8)))
    boxes = [np.array([[3.0, 5.0, 90.0, 110.0]])]
    np.testing.assert_array_equal(layer(x, boxes).numpy(), roi_pool(x, boxes, 7, 1 / 16).numpy())
