"""roi_align: hand cases on a ramp, torchvision parity on every backend (values and input gradients)
on random and edge-case boxes, float64 gradcheck, the box formats, empty RoIs and bad input."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.nn import RoIAlign
from minimaskrcnn.ops.roi_align import convert_boxes_to_roi_format, roi_align

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _device(backend):
    """Where the backend computes: CuPy arrays under "cuda" on a GPU, NumPy otherwise (a copy)."""
    cp = cupy_or_none() if backend == "cuda" else None
    return cp.asarray if cp is not None else np.array


def ramp(H=4, W=4, dtype=np.float64):
    """(1, 1, H, W) with value 4*y + x at (y, x): bilinear interpolation of it is exact, 4y + x."""
    y, x = np.mgrid[0:H, 0:W]
    return (4.0 * y + x).astype(dtype)[None, None]


def random_rois(rng, num_rois, N, H, W, spatial_scale):
    """(K, 5) [b, x1, y1, x2, y2]: boxes of any size overlapping the map and its surroundings."""
    x1 = rng.uniform(-0.3 * W, 1.1 * W, num_rois)
    y1 = rng.uniform(-0.3 * H, 1.1 * H, num_rois)
    x2, y2 = x1 + rng.uniform(0.05, 1.2 * W, num_rois), y1 + rng.uniform(0.05, 1.2 * H, num_rois)
    boxes = np.stack([x1, y1, x2, y2], axis=1) / spatial_scale
    return np.concatenate([rng.integers(0, N, (num_rois, 1)), boxes], axis=1)


def edge_rois(N, H, W, spatial_scale):
    """(K, 5): boxes partly and wholly outside the map, of zero width/height/area, tiny, huge and
    reversed (x2 < x1), on every image of the batch; coordinates in image pixels."""
    boxes = np.array(
        [
            [-2.3, -1.7, 2.6, 3.1],  # across the top-left corner
            [W - 1.6, H - 2.2, W + 2.7, H + 1.4],  # across the bottom-right corner
            [W + 1.5, 0.5, W + 4.0, 2.5],  # wholly right of the map
            [-6.0, -5.0, -1.6, -1.2],  # wholly above-left, beyond the -1 margin
            [-0.9, -0.8, -0.2, -0.3],  # inside the [-1, 0] margin: clamped to pixel 0
            [1.3, 0.7, 1.3, 3.2],  # zero width
            [0.6, 2.4, 3.3, 2.4],  # zero height
            [2.2, 1.1, 2.2, 1.1],  # a point
            [1.37, 1.61, 1.42, 1.66],  # tiny
            [-1.7 * W, -1.3 * H, 2.6 * W, 2.2 * H],  # huge: many samples in every bin
            [3.1, 2.9, 1.2, 0.8],  # reversed
        ]
    )
    batch_idx = (np.arange(len(boxes)) % N)[:, None]
    return np.concatenate([batch_idx, boxes / spatial_scale], axis=1)


# ------------------------------------------------------------------------------------ hand cases
def test_hand_computed_ramp_aligned():
    # aligned: box [0, 4] -> [-0.5, 3.5], 2 bins of 2 pixels, one sample each at -0.5 + 1 = 0.5 and 2.5
    out = roi_align(Tensor(ramp()), np.array([[0, 0, 0, 4, 4.0]]), 2, 1.0, 1, aligned=True)
    np.testing.assert_allclose(out.numpy()[0, 0], [[2.5, 4.5], [10.5, 12.5]], rtol=0, atol=1e-12)


def test_hand_computed_ramp_legacy_and_borders():
    x = Tensor(ramp(), requires_grad=True)
    rois = np.array(
        [
            [0, 0, 0, 3, 3],  # not aligned: one bin of 3 px, its sample at (1.5, 1.5): 4*1.5 + 1.5
            [0, 0.25, 0.25, 1, 1],  # a 0.75-px box is widened to 1 px: sample at 0.75 -> 3.75
            [0, 3.2, 3.2, 3.6, 3.6],  # sample at 3.7, past the last pixel: reads pixel (3, 3) = 15
            [0, 5.5, 0, 6, 1],  # sample at x = 6 > W: outside, counts as 0
        ]
    )
    out = roi_align(x, rois, 1, 1.0, 1, aligned=False)
    np.testing.assert_allclose(out.numpy()[:, 0, 0, 0], [7.5, 3.75, 15.0, 0.0], rtol=0, atol=1e-12)
    dout = np.zeros((4, 1, 1, 1))
    dout[0] = 1.0
    out.backward(dout)
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 0.25  # (1.5, 1.5) sits in the middle of 4 pixels
    np.testing.assert_allclose(x.grad[0, 0], expected, rtol=0, atol=1e-12)


def test_hand_computed_clamp_in_the_margin():
    # aligned box [0, 1] -> [-0.5, 0.5]; samples at -0.25 (clamped to 0) and 0.25 on each axis:
    # mean of 4y + x over y, x in {0, 0.25} = 4*0.125 + 0.125
    out = roi_align(Tensor(ramp()), np.array([[0, 0, 0, 1, 1.0]]), 1, 1.0, 2, aligned=True)
    assert abs(out.item() - 0.625) < 1e-12


# ----------------------------------------------------------------------- parity with torchvision
def _check_against_torchvision(backend, x, rois, output_size, spatial_scale, sampling_ratio, aligned, rng):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    dtype = x.dtype.type
    xt = torch.from_numpy(x.copy()).requires_grad_()
    expected = torchvision.ops.roi_align(
        xt, torch.from_numpy(rois), output_size, spatial_scale, sampling_ratio, aligned
    )
    dout = rng.standard_normal(tuple(expected.shape)).astype(dtype)
    expected.backward(torch.from_numpy(dout))

    on_device = _device(backend)
    xs = Tensor(on_device(x), requires_grad=True)
    out = roi_align(xs, on_device(rois), output_size, spatial_scale, sampling_ratio, aligned)
    out.backward(on_device(dout))
    assert out.dtype == dtype and xs.grad.dtype == dtype
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(to_numpy(xs.grad), xt.grad.numpy(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_random_boxes_equal_torchvision(backend, dtype, aligned, sampling_ratio):
    rng = np.random.default_rng(10 + aligned + 2 * sampling_ratio)
    N, C, H, W, scale = 2, 3, 5, 6, 0.5  # C = 3: the Numba forward's 4-channel groups have a tail
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = random_rois(rng, 6, N, H, W, scale).astype(dtype)
    _check_against_torchvision(backend, x, rois, (2, 3), scale, sampling_ratio, aligned, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("aligned", [False, True])
def test_edge_case_boxes_equal_torchvision(backend, dtype, aligned):
    rng = np.random.default_rng(20 + aligned)
    N, C, H, W, scale = 3, 2, 4, 5, 0.25
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = edge_rois(N, H, W, scale).astype(dtype)
    _check_against_torchvision(backend, x, rois, 2, scale, -1, aligned, rng)
    _check_against_torchvision(backend, x, rois, (1, 2), scale, 1, aligned, rng)


def test_no_rois(backend):
    x = Tensor(_device(backend)(np.ones((2, 3, 4, 4))), requires_grad=True)
    out = roi_align(x, np.zeros((0, 5)), (2, 3), 0.5, 2, True)
    assert out.shape == (0, 3, 2, 3)
    out.backward(_device(backend)(np.zeros((0, 3, 2, 3))))
    np.testing.assert_array_equal(to_numpy(x.grad), np.zeros((2, 3, 4, 4)))


# ----------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("backend_name", ["numpy", "numba", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, 2), (True, 2), (False, -1), (True, -1)])
def test_gradcheck(backend_name, aligned, sampling_ratio):
    rng = np.random.default_rng(30)
    x = Tensor(rng.standard_normal((2, 1, 4, 5)), requires_grad=True)
    rois = np.array([[0, 0.3, 0.6, 6.1, 5.3], [1, -1.2, 1.1, 3.7, 9.4], [1, 2.2, 0.4, 2.9, 1.3]])
    with use_backend(backend_name):
        result = gradcheck(lambda t: roi_align(t, rois, 2, 0.5, sampling_ratio, aligned), [x])
    assert result.passed, result.report()


# --------------------------------------------------------------------------------- box formats
def test_list_of_boxes_equals_roi_array(rng):
    x = Tensor(rng.standard_normal((2, 2, 6, 6)))
    boxes = [rng.uniform(0, 10, (3, 4)), Tensor(rng.uniform(0, 10, (2, 4)))]  # arrays or Tensors
    rois = convert_boxes_to_roi_format(boxes)
    np.testing.assert_array_equal(rois[:, 0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(rois[3:, 1:], boxes[1].data)
    from_list = roi_align(x, boxes, 3, 0.5, 2, True)
    from_array = roi_align(x, Tensor(rois), 3, 0.5, 2, True)
    np.testing.assert_array_equal(from_list.numpy(), from_array.numpy())


def test_boxes_take_the_input_dtype(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    rois = np.array([[0, 0.3, 0.7, 4.1, 3.9]])
    out32 = roi_align(Tensor(x.astype(np.float32)), rois, 2, 1.0, 2)  # float64 boxes, float32 input
    out64 = roi_align(Tensor(x), rois.astype(np.float32), 2, 1.0, 2)  # float32 boxes, float64 input
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    np.testing.assert_allclose(out32.numpy(), out64.numpy(), rtol=1e-5, atol=1e-6)


def test_module_matches_function(rng):
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    assert repr(layer) == "RoIAlign(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)"
    x = Tensor(rng.standard_normal((1, 2, 8, 8)))
    rois = np.array([[0, 1.0, 2.0, 20.0, 25.0]])
    np.testing.assert_array_equal(layer(x, rois).numpy(), roi_align(x, rois, 7, 0.25, 2, True).numpy())


@pytest.mark.parametrize(
    "boxes,error",
    [
        (np.zeros((3, 4)), ValueError),  # (K, 4) without batch indices
        ([np.zeros((2, 5))], ValueError),  # a list holds (Ki, 4)
        (np.array([[2, 0, 0, 1, 1.0]]), ValueError),  # image 2 of a batch of 2
        (np.array([[-1, 0, 0, 1, 1.0]]), ValueError),
    ],
)
def test_bad_boxes_are_refused(boxes, error):
    with pytest.raises(error):
        roi_align(Tensor(np.zeros((2, 1, 4, 4))), boxes, 2)


def test_bad_input_is_refused():
    rois = np.array([[0, 0, 0, 1, 1.0]])
    with pytest.raises(TypeError):
        roi_align(Tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), rois, 2)
    with pytest.raises(ValueError):
        roi_align(Tensor(np.zeros((1, 4, 4))), rois, 2)
    with pytest.raises(ValueError):
        roi_align(Tensor(np.zeros((1, 1, 4, 4))), rois, (0, 2))
