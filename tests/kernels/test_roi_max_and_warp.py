"""RoIAlign with max pooling and RoIWarp (Mask R-CNN Table 2c): every backend against reference.py,
reference.py against torchvision (max = RoIAlign at one sample per finer bin, then max_pool2d;
RoIWarp = RoIAlign on the RoIPool-rounded box), RoIPool's rounding by hand, the edge cases."""
import numpy as np
import pytest
from minimaskrcnn.kernels.roi_align import cpu as align_cpu
from minimaskrcnn.kernels.roi_align import cuda as align_cuda
from minimaskrcnn.kernels.roi_align import reference as align_ref
from minimaskrcnn.kernels.roi_warp import cpu as warp_cpu
from minimaskrcnn.kernels.roi_warp import cuda as warp_cuda
from minimaskrcnn.kernels.roi_warp import quantize_rois
from minimaskrcnn.kernels.roi_warp import reference as warp_ref

ALIGN_BACKENDS = [pytest.param(align_cpu, id="numba"), pytest.param(align_cuda, id="cuda", marks=pytest.mark.cuda)]
WARP_BACKENDS = [pytest.param(warp_cpu, id="numba"), pytest.param(warp_cuda, id="cuda", marks=pytest.mark.cuda)]
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def make_rois(rng, N, H, W, spatial_scale, num_random=5):
    """(K, 5) RoIs in image pixels: random ones, then boxes across the borders, outside the map,
    of zero size, reversed and huge; corners on half-pixels of the feature grid (rounding ties)."""
    x1, y1 = rng.uniform(-0.4 * W, W, num_random), rng.uniform(-0.4 * H, H, num_random)
    boxes = [np.stack([x1, y1, x1 + rng.uniform(0, W, num_random), y1 + rng.uniform(0, H, num_random)], axis=1)]
    boxes.append([[-2.5, -1.5, 2.5, 3.5], [W - 1.5, H - 0.5, W + 3.0, H + 2.0], [W + 2.0, -4.0, W + 5.0, -2.0],
                  [1.5, 0.5, 1.5, 2.5], [2.0, 1.0, 2.0, 1.0], [3.0, 2.0, 1.0, 0.5], [-W, -H, 3.0 * W, 2.0 * H]])
    boxes = np.concatenate(boxes) / spatial_scale
    return np.concatenate([(np.arange(len(boxes)) % N)[:, None], boxes], axis=1)


def _features(rng, dtype, N=2, C=3, H=4, W=5):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x[0, 0, 1, 2] = np.nan  # NaN never wins a max
    x[1, 1] = 0.25  # a flat channel: ties between samples keep the first
    return x


# ------------------------------------------------------------------------------- RoIPool's rounding
def test_quantize_rois_rounds_like_roipool():
    rois = np.array([[1, 0.5, 1.5, 2.5, -0.5], [0, 1.4999, -1.5, 7.75, 8.25]], dtype=np.float64)
    np.testing.assert_array_equal(quantize_rois(rois, 1.0), [[1, 1, 2, 3, -1], [0, 1, -2, 8, 8]])
    np.testing.assert_array_equal(quantize_rois(rois, 0.5), [[1, 0, 1, 1, 0], [0, 1, -1, 4, 4]])
    below_half = np.nextafter(np.float32(0.5), np.float32(0))  # floor(v + 0.5) would round it up
    assert quantize_rois(np.array([[0, below_half, 0, 1, 1]], np.float32), 1.0)[0, 1] == 0
    assert quantize_rois(rois.astype(np.float32), 1.0).dtype == np.float32


# ------------------------------------------------------------------------------ backends vs reference
@pytest.mark.parametrize("module", ALIGN_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("output_size,spatial_scale,sampling_ratio,aligned",
                         [((2, 3), 0.5, -1, True), ((3, 2), 1.0, 2, False), ((1, 1), 0.25, 0, False)])
def test_roi_align_max_backend_equals_reference(module, dtype, output_size, spatial_scale, sampling_ratio, aligned):
    rng = np.random.default_rng(3)
    x = _features(rng, dtype)
    rois = make_rois(rng, 2, 4, 5, spatial_scale).astype(dtype)
    args = (spatial_scale, *output_size, sampling_ratio, aligned)
    expected, expected_argmax = align_ref.roi_align_max_forward(x, rois, *args)
    out, argmax = module.roi_align_max_forward(x, rois, *args)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert not np.isnan(out).any()
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = module.roi_align_max_backward(dout, rois, argmax, *args, x.shape)
    expected_dx = align_ref.roi_align_max_backward(dout, rois, argmax, *args, x.shape)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, expected_dx, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("module", WARP_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("output_size,spatial_scale,sampling_ratio", [((2, 3), 0.5, -1), ((3, 2), 0.25, 2)])
def test_roi_warp_backend_equals_reference(module, dtype, output_size, spatial_scale, sampling_ratio):
    rng = np.random.default_rng(4)
    x = _features(rng, dtype)
    rois = make_rois(rng, 2, 4, 5, spatial_scale).astype(dtype)
    args = (spatial_scale, *output_size, sampling_ratio)
    out = module.roi_warp_forward(x, rois, *args)
    np.testing.assert_allclose(out, warp_ref.roi_warp_forward(x, rois, *args), rtol=TOL[dtype], atol=TOL[dtype])
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(module.roi_warp_backward(dout, rois, *args, x.shape),
                               warp_ref.roi_warp_backward(dout, rois, *args, x.shape), rtol=TOL[dtype], atol=TOL[dtype])
    out, argmax = module.roi_warp_max_forward(x, rois, *args)
    expected, expected_argmax = warp_ref.roi_warp_max_forward(x, rois, *args)
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_allclose(module.roi_warp_max_backward(dout, rois, argmax, *args, x.shape),
                               warp_ref.roi_warp_max_backward(dout, rois, argmax, *args, x.shape),
                               rtol=TOL[dtype], atol=TOL[dtype])


# --------------------------------------------------------------------------------- the definitions
def test_max_keeps_the_largest_sample_and_empty_bins_give_zero():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 8.0
    x[0, 0, 2, 2] = -1.0
    # one bin of 2 x 2 samples; aligned: the box [0, 2] shifts by -0.5, so the samples sit exactly on
    # the centres of pixels 0 and 1 along each axis, the 4th one (row-major) on pixel (1, 1)
    rois = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    out, argmax = align_ref.roi_align_max_forward(x, rois, 1.0, 1, 1, 2, True)
    assert out[0, 0, 0, 0] == 8.0 and argmax[0, 0, 0, 0] == 3
    dx = align_ref.roi_align_max_backward(np.ones((1, 1, 1, 1)), rois, argmax, 1.0, 1, 1, 2, True, x.shape)
    assert dx.sum() == 1.0 and dx[0, 0, 1, 1] == 1.0  # all of dout to the winning pixel
    assert align_ref.roi_align_forward(x, rois, 1.0, 1, 1, 2, True)[0, 0, 0, 0] == 2.0  # the mean: (8 + 0 + 0 + 0) / 4
    # a zero-size aligned box with adaptive sampling has no samples at all: 0, and no winner
    empty = np.array([[0, 1.0, 1.0, 1.0, 1.0]])
    out, argmax = align_ref.roi_align_max_forward(x, empty, 1.0, 1, 1, 0, True)
    assert out[0, 0, 0, 0] == 0.0 and argmax[0, 0, 0, 0] == -1
    assert not align_ref.roi_align_max_backward(np.ones((1, 1, 1, 1)), empty, argmax, 1.0, 1, 1, 0, True, x.shape).any()


def test_warp_of_a_box_on_the_grid_is_roialign_and_off_grid_boxes_snap():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 6, 6))
    on_grid = np.array([[0, 32.0, 64.0, 128.0, 160.0]])  # stride 32: corners on the grid
    np.testing.assert_array_equal(warp_ref.roi_warp_forward(x, on_grid, 1 / 32, 3, 3, 2),
                                  align_ref.roi_align_forward(x, on_grid, 1 / 32, 3, 3, 2, False))
    shifted = on_grid + [0, 15.0, 15.0, 15.0, 15.0]  # less than half a stride: the same pooled features
    np.testing.assert_array_equal(warp_ref.roi_warp_forward(x, shifted, 1 / 32, 3, 3, 2),
                                  warp_ref.roi_warp_forward(x, on_grid, 1 / 32, 3, 3, 2))
    assert not np.allclose(align_ref.roi_align_forward(x, shifted, 1 / 32, 3, 3, 2, False),
                           align_ref.roi_align_forward(x, on_grid, 1 / 32, 3, 3, 2, False))


def test_numba_max_backward_is_deterministic():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 9, 10))
    rois = make_rois(rng, 2, 9, 10, 0.5, num_random=40)
    dout = rng.standard_normal((len(rois), 8, 3, 3))
    _, argmax = align_cpu.roi_align_max_forward(x, rois, 0.5, 3, 3, 2, True)
    first = align_cpu.roi_align_max_backward(dout, rois, argmax, 0.5, 3, 3, 2, True, x.shape)
    np.testing.assert_array_equal(align_cpu.roi_align_max_backward(dout, rois, argmax, 0.5, 3, 3, 2, True, x.shape),
                                  first)


@pytest.mark.parametrize("align,warp", [(align_ref, warp_ref), (align_cpu, warp_cpu),
                                        pytest.param(align_cuda, warp_cuda, marks=pytest.mark.cuda)])
def test_max_and_warp_kernels_check_their_arguments(align, warp):
    x = np.zeros((2, 1, 4, 4))
    rois = np.array([[1, 0, 0, 2, 2.0]])
    _, argmax = align.roi_align_max_forward(x, rois, 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError, match="argmax"):
        align.roi_align_max_backward(np.zeros((1, 1, 2, 2)), rois, argmax[:, :, :1], 1.0, 2, 2, 2, False, x.shape)
    with pytest.raises(ValueError, match="roi_warp"):  # image 2 of 2
        warp.roi_warp_forward(x, rois + [1, 0, 0, 0, 0], 1.0, 2, 2, 2)
    with pytest.raises(TypeError, match="roi_warp"):
        warp.roi_warp_max_forward(x, rois.astype(np.float32), 1.0, 2, 2, 2)
    with pytest.raises(ValueError, match="roi_warp"):
        warp.roi_warp_backward(np.zeros((1, 1, 2, 3)), rois, 1.0, 2, 2, 2, x.shape)


# ------------------------------------------------------------------------------ torchvision oracle
def _torch_max(torch, torchvision, x, rois, scale, PH, PW, g, aligned):
    """RoIAlign max from torchvision: one sample in each of g x g finer bins, then max_pool2d."""
    fine = torchvision.ops.roi_align(x, rois, (PH * g, PW * g), scale, 1, aligned)
    return torch.nn.functional.max_pool2d(fine, g)


@pytest.mark.reference
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_max_matches_torchvision(aligned):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 7, 9))
    rois = np.array([[0, 1.3, 0.7, 20.1, 15.2], [1, -3, -2, 8, 9], [1, 10, 4, 33, 30], [0, 30, 20, 40, 26]])
    scale, PH, PW, g = 0.25, 3, 2, 2
    out, argmax = align_ref.roi_align_max_forward(x, rois, scale, PH, PW, g, aligned)
    xt = torch.tensor(x, requires_grad=True)
    expected = _torch_max(torch, torchvision, xt, torch.tensor(rois), scale, PH, PW, g, aligned)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    expected.backward(torch.tensor(dout))
    dx = align_ref.roi_align_max_backward(dout, rois, argmax, scale, PH, PW, g, aligned, x.shape)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_warp_matches_torchvision_on_the_rounded_boxes(mode):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 7))
    rois = np.array([[0, 10.0, 20.0, 100.0, 150.0], [1, 47.9, -12.0, 200.0, 90.2], [1, 16.0, 16.0, 17.0, 170.0]])
    scale, PH, PW, g = 1 / 32, 3, 3, 2
    # RoIPool's rounding, done here with torch: round half away from zero of x * scale
    scaled = torch.tensor(rois[:, 1:]) * scale
    rounded = torch.sign(scaled) * torch.floor(torch.abs(scaled) + 0.5)
    rounded_rois = torch.cat([torch.tensor(rois[:, :1]), rounded], dim=1)
    xt = torch.tensor(x, requires_grad=True)
    if mode == "avg":
        expected = torchvision.ops.roi_align(xt, rounded_rois, (PH, PW), 1.0, g, False)
        out = warp_ref.roi_warp_forward(x, rois, scale, PH, PW, g)
    else:
        expected = _torch_max(torch, torchvision, xt, rounded_rois, 1.0, PH, PW, g, False)
        out, argmax = warp_ref.roi_warp_max_forward(x, rois, scale, PH, PW, g)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    expected.backward(torch.tensor(dout))
    if mode == "avg":
        dx = warp_ref.roi_warp_backward(dout, rois, scale, PH, PW, g, x.shape)
    else:
        dx = warp_ref.roi_warp_max_backward(dout, rois, argmax, scale, PH, PW, g, x.shape)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
