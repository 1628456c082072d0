"""RoIAlign / RoIPool kernels: the 1-D rules of the spec, and every backend against reference.py
(outputs, argmax, input gradients) on random and edge-case RoIs, in float32 and float64."""
import numpy as np
import pytest
from minimaskrcnn.kernels.roi_align import cpu as align_cpu
from minimaskrcnn.kernels.roi_align import cuda as align_cuda
from minimaskrcnn.kernels.roi_align import reference as align_ref
from minimaskrcnn.kernels.roi_pool import cpu as pool_cpu
from minimaskrcnn.kernels.roi_pool import cuda as pool_cuda
from minimaskrcnn.kernels.roi_pool import reference as pool_ref

ALIGN_BACKENDS = [pytest.param(align_cpu, id="numba"), pytest.param(align_cuda, id="cuda", marks=pytest.mark.cuda)]
POOL_BACKENDS = [pytest.param(pool_cpu, id="numba"), pytest.param(pool_cuda, id="cuda", marks=pytest.mark.cuda)]
# the same arithmetic in the same dtype: only the order of float additions differs
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def make_rois(rng, N, H, W, spatial_scale, num_random=5):
    """(K, 5) RoIs in image pixels: random ones, then boxes across the borders, outside the map,
    of zero size, reversed and huge."""
    x1, y1 = rng.uniform(-0.4 * W, W, num_random), rng.uniform(-0.4 * H, H, num_random)
    boxes = [np.stack([x1, y1, x1 + rng.uniform(0, W, num_random), y1 + rng.uniform(0, H, num_random)], axis=1)]
    boxes.append(
        [
            [-2.5, -1.5, 2.5, 3.5],
            [W - 1.5, H - 0.5, W + 3.0, H + 2.0],
            [W + 2.0, -4.0, W + 5.0, -2.0],
            [1.5, 0.5, 1.5, 2.5],
            [2.0, 1.0, 2.0, 1.0],
            [3.0, 2.0, 1.0, 0.5],
            [-W, -H, 3.0 * W, 2.0 * H],
        ]
    )
    boxes = np.concatenate(boxes) / spatial_scale
    return np.concatenate([(np.arange(len(boxes)) % N)[:, None], boxes], axis=1)


# ----------------------------------------------------------------------------- 1-D rules of the spec
@pytest.mark.parametrize("interp_1d", [align_ref.interp_1d, align_cpu.interp_1d])
def test_interp_1d_border_rules(interp_1d):
    T = np.float64
    assert interp_1d(T(-1.0001), 4, T)[0] is False  # beyond the 1-px margin: the sample is 0
    assert interp_1d(T(4.0001), 4, T)[0] is False
    assert tuple(interp_1d(T(-1.0), 4, T)) == (True, 0, 1, 0.0, 1.0)  # the margin reads pixel 0
    assert tuple(interp_1d(T(-0.3), 4, T)) == (True, 0, 1, 0.0, 1.0)
    assert tuple(interp_1d(T(1.25), 4, T)) == (True, 1, 2, 0.25, 0.75)
    assert tuple(interp_1d(T(3.5), 4, T)) == (True, 3, 3, 0.0, 1.0)  # past the last pixel: reads it
    assert tuple(interp_1d(T(4.0), 4, T)) == (True, 3, 3, 0.0, 1.0)
    assert interp_1d(T(np.nan), 4, T)[0] is False


@pytest.mark.parametrize("round_half_away", [pool_ref.round_half_away, pool_cpu.round_half_away])
def test_round_half_away(round_half_away):
    values = [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, -2.5001, 0.0]
    assert [round_half_away(np.float64(v)) for v in values] == [1, 2, 3, -1, -2, 2, -3, 0]
    # the float32 just below 0.5: adding 0.5 and flooring would round it up
    assert round_half_away(np.nextafter(np.float32(0.5), np.float32(0))) == 0


@pytest.mark.parametrize("bin_range", [pool_ref.bin_range, pool_cpu.bin_range])
def test_bin_range_floor_ceil_and_clip(bin_range):
    T = np.float64
    # 5 px in 2 bins of 2.5: [0, 3) and [2, 5), sharing pixel 2; shifted by the RoI start and clipped
    assert tuple(bin_range(0, T(2.5), 0, 8, T)) == (0, 3)
    assert tuple(bin_range(1, T(2.5), 0, 8, T)) == (2, 5)
    assert tuple(bin_range(1, T(2.5), 5, 8, T)) == (7, 8)
    assert tuple(bin_range(0, T(2.5), -4, 8, T)) == (0, 0)  # wholly left of the map: empty


# -------------------------------------------------------------------------- backends vs reference
@pytest.mark.parametrize("module", ALIGN_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "C,output_size,spatial_scale,sampling_ratio,aligned",
    [(5, (2, 3), 0.5, -1, True), (1, (3, 2), 1.0, 2, False), (4, (1, 1), 0.25, 0, False)],
)
def test_roi_align_backend_equals_reference(module, dtype, C, output_size, spatial_scale, sampling_ratio, aligned):
    rng = np.random.default_rng(C)
    N, H, W = 2, 4, 5
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = make_rois(rng, N, H, W, spatial_scale).astype(dtype)
    args = (spatial_scale, *output_size, sampling_ratio, aligned)
    expected = align_ref.roi_align_forward(x, rois, *args)
    out = module.roi_align_forward(x, rois, *args)
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = module.roi_align_backward(dout, rois, *args, x.shape)
    assert dx.dtype == dtype
    expected_dx = align_ref.roi_align_backward(dout, rois, *args, x.shape)
    np.testing.assert_allclose(dx, expected_dx, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("module", POOL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("C,output_size,spatial_scale", [(5, (2, 3), 0.5), (1, (3, 2), 1.0), (4, (1, 1), 0.25)])
def test_roi_pool_backend_equals_reference(module, dtype, C, output_size, spatial_scale):
    rng = np.random.default_rng(C)
    N, H, W = 2, 4, 5
    x = np.maximum(rng.standard_normal((N, C, H, W)), 0).astype(dtype)  # ReLU'd: ties to break alike
    x[0, 0, 1, 2] = np.nan  # NaN never wins
    rois = make_rois(rng, N, H, W, spatial_scale).astype(dtype)
    expected, expected_argmax = pool_ref.roi_pool_forward(x, rois, spatial_scale, *output_size)
    out, argmax = module.roi_pool_forward(x, rois, spatial_scale, *output_size)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert (argmax == -1).any() and (argmax >= 0).any()  # the cases hold empty and full bins
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = module.roi_pool_backward(dout, rois, argmax, x.shape)
    expected_dx = pool_ref.roi_pool_backward(dout, rois, argmax, x.shape)
    np.testing.assert_allclose(dx, expected_dx, rtol=TOL[dtype], atol=TOL[dtype])


def test_numba_backwards_are_deterministic():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 9, 10))
    rois = make_rois(rng, 2, 9, 10, 0.5, num_random=40)
    dout = rng.standard_normal((len(rois), 8, 3, 3))
    first = align_cpu.roi_align_backward(dout, rois, 0.5, 3, 3, 2, True, x.shape)
    np.testing.assert_array_equal(align_cpu.roi_align_backward(dout, rois, 0.5, 3, 3, 2, True, x.shape), first)
    _, argmax = pool_cpu.roi_pool_forward(x, rois, 0.5, 3, 3)
    first = pool_cpu.roi_pool_backward(dout, rois, argmax, x.shape)
    np.testing.assert_array_equal(pool_cpu.roi_pool_backward(dout, rois, argmax, x.shape), first)


@pytest.mark.parametrize("module", [align_ref, align_cpu, pytest.param(align_cuda, marks=pytest.mark.cuda)])
def test_roi_align_kernels_check_their_arguments(module):
    x = np.zeros((2, 1, 4, 4))
    rois = np.array([[1, 0, 0, 2, 2.0]])
    with pytest.raises(TypeError):  # rois of another dtype
        module.roi_align_forward(x, rois.astype(np.float32), 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError):  # image 2 of 2
        module.roi_align_forward(x, rois + [1, 0, 0, 0, 0], 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError):  # dout of the wrong shape
        module.roi_align_backward(np.zeros((1, 1, 2, 3)), rois, 1.0, 2, 2, 2, False, x.shape)


@pytest.mark.parametrize("module", [pool_ref, pool_cpu, pytest.param(pool_cuda, marks=pytest.mark.cuda)])
def test_roi_pool_kernels_check_their_arguments(module):
    x = np.zeros((2, 1, 4, 4))
    rois = np.array([[1, 0, 0, 2, 2.0]])
    with pytest.raises(TypeError):
        module.roi_pool_forward(x.astype(np.float16), rois.astype(np.float16), 1.0, 2, 2)
    with pytest.raises(ValueError):
        module.roi_pool_forward(x, rois[:, 1:], 1.0, 2, 2)
    with pytest.raises(ValueError):
        module.roi_pool_backward(np.zeros((1, 1, 2, 2)), rois, np.zeros((1, 1, 2, 3), np.int32), x.shape)
