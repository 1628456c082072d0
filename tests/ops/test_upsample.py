"""interpolate (nearest, bilinear, bicubic): hand cases, PyTorch's index rules, gradcheck, parity with torch."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.ops.upsample import (
    cubic_convolution_weights,
    cubic_source_weights,
    interpolate,
    linear_source_weights,
    nearest_source_index,
    resize_bicubic,
)

torch = pytest.importorskip("torch")

NEAREST = [dict(scale_factor=2), dict(size=(10, 14)), dict(size=(11, 9)), dict(size=(3, 4)), dict(scale_factor=1.7),
           dict(scale_factor=(3, 0.5)), dict(size=7), dict(size=(5, 7)), dict(size=(15, 21))]
BILINEAR = [dict(size=(13, 17)), dict(scale_factor=2.5), dict(size=(3, 4)), dict(size=(4, 3), align_corners=True),
            dict(scale_factor=2, align_corners=True), dict(size=(1, 1)), dict(size=(9, 2))]
BICUBIC = [dict(size=(13, 17)), dict(scale_factor=2.5), dict(size=(3, 4)), dict(size=(4, 3), align_corners=True),
           dict(scale_factor=2, align_corners=True), dict(size=(1, 1)), dict(size=(9, 2)), dict(size=(5, 6)),
           dict(scale_factor=(0.4, 1.7)), dict(size=(40, 3))]


# These ops have no kernel: "numpy" and "numba" run the same array code; "cuda" runs it on CuPy
# arrays, which needs a GPU (under the CUDA simulator it would be the NumPy path a third time).
XP_BACKENDS = ["numpy", "numba"] + (["cuda"] if cupy_or_none() is not None else [])


@pytest.fixture(params=XP_BACKENDS)
def xp_backend(request):
    """Switch to the backend and return the function that puts an array where it computes."""
    with use_backend(request.param):
        yield cupy_or_none().asarray if request.param == "cuda" else np.array


def _compare(kwargs, x, on_device, rng):
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.interpolate(xt, **kwargs)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(dout))
    xs = Tensor(on_device(x), requires_grad=True)
    out = interpolate(xs, **kwargs)
    out.backward(on_device(dout))
    ref = out_t.detach().numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
    ref_grad = xt.grad.numpy()
    np.testing.assert_allclose(to_numpy(xs.grad), ref_grad, rtol=1e-10, atol=1e-10 * np.abs(ref_grad).max())


def test_nearest_2x_repeats_each_pixel_and_sums_the_gradient():
    x = Tensor(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), requires_grad=True)
    out = interpolate(x, scale_factor=2)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    out.backward(np.arange(16.0).reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(x.grad[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


def test_nearest_index_rule_is_torchs_floor():
    np.testing.assert_array_equal(nearest_source_index(3, 5), [0, 0, 1, 1, 2])  # floor(dst * 3/5)
    np.testing.assert_array_equal(nearest_source_index(5, 3), [0, 1, 3])  # downsampling skips pixels
    np.testing.assert_array_equal(nearest_source_index(4, 8), np.arange(8) // 2)


def test_bilinear_weights_by_hand():
    i0, i1, w0, w1 = linear_source_weights(2, 4, align_corners=False)
    # src = (dst + 0.5) / 2 - 0.5, clamped at 0: 0, 0.25, 0.75, 1.25; the last one reads pixel 1 twice
    np.testing.assert_array_equal(i0, [0, 0, 0, 1])
    np.testing.assert_array_equal(i1, [1, 1, 1, 1])
    np.testing.assert_allclose(w1, [0.0, 0.25, 0.75, 0.25])
    np.testing.assert_allclose(w0 + w1, 1.0)


@pytest.mark.parametrize("kwargs", NEAREST)
def test_nearest_equals_torch(xp_backend, kwargs, rng):
    _compare(kwargs, rng.standard_normal((2, 3, 5, 7)), xp_backend, rng)


@pytest.mark.parametrize("kwargs", BILINEAR)
def test_bilinear_equals_torch(xp_backend, kwargs, rng):
    _compare(dict(mode="bilinear", align_corners=False) | kwargs, rng.standard_normal((1, 2, 5, 6)), xp_backend, rng)


def test_cubic_kernel_by_hand():
    # Keys' kernel with a = -0.75 at the tap distances 1 + t, t, 1 - t, 2 - t
    np.testing.assert_allclose(np.array(cubic_convolution_weights(np.float64(0.0))), [0, 1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(np.array(cubic_convolution_weights(np.float64(0.5))),
                               [-0.09375, 0.59375, 0.59375, -0.09375], atol=1e-15)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(sum(cubic_convolution_weights(t)), 1.0, atol=1e-14)  # a partition of unity


def test_bicubic_taps_by_hand():
    idx, w = cubic_source_weights(2, 4, align_corners=False)
    # src = (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25: NOT clamped at 0 (bilinear clamps)
    np.testing.assert_array_equal(idx, [[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    np.testing.assert_allclose(w[0], cubic_convolution_weights(np.float64(0.75)))  # floor(-0.25) = -1, t = 0.75
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # a constant stays constant; a step overshoots on both sides (a = -0.75 sharpens, unlike bilinear)
    constant = interpolate(Tensor(np.full((1, 1, 3, 4), 2.5)), size=(7, 9), mode="bicubic").numpy()
    np.testing.assert_allclose(constant, 2.5)
    step = interpolate(Tensor(np.repeat([[[[0.0] * 4 + [1.0] * 4]]], 2, axis=2)), size=(2, 32), mode="bicubic").numpy()
    assert step.min() < 0 and step.max() > 1


@pytest.mark.parametrize("kwargs", BICUBIC)
def test_bicubic_equals_torch(xp_backend, kwargs, rng):
    _compare(dict(mode="bicubic", align_corners=False) | kwargs, rng.standard_normal((1, 2, 5, 6)), xp_backend, rng)


@pytest.mark.parametrize("size", [(56, 56), (123, 77), (300, 41), (20, 30)])
def test_resize_bicubic_float32_equals_torch(size, rng):
    # what Keypoint R-CNN does with each RoI's 56 x 56 heatmaps: float32 throughout
    x = (rng.standard_normal((17, 56, 56)) * 5).astype(np.float32)
    out = resize_bicubic(x, *size)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=size, mode="bicubic",
                                          align_corners=False)[:, 0].numpy()
    assert out.dtype == np.float32 and out.shape == ref.shape
    # a few float32 rounding steps (the summation order differs): ~1e-6 relative to the values
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_fpn_sizes_float32(rng):
    # FPN upsamples each level to the size of the next one, which need not be exactly 2x (odd sizes)
    x = rng.standard_normal((1, 4, 13, 17)).astype(np.float32)
    out = interpolate(Tensor(x), size=(25, 34))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(25, 34)).numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("kwargs", [dict(scale_factor=2), dict(size=(5, 3)), dict(size=(2, 7), mode="bilinear"),
                                    dict(scale_factor=1.5, mode="bilinear", align_corners=True),
                                    dict(size=(7, 2), mode="bicubic"),
                                    dict(scale_factor=1.5, mode="bicubic", align_corners=True)])
def test_gradcheck(kwargs, rng):
    x = Tensor(rng.standard_normal((1, 2, 3, 4)), requires_grad=True)
    result = gradcheck(lambda t: interpolate(t, **kwargs), [x])
    assert result.passed, result.report()


def test_argument_errors():
    x = Tensor(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="exactly one"):
        interpolate(x)
    with pytest.raises(ValueError, match="exactly one"):
        interpolate(x, size=2, scale_factor=2)
    with pytest.raises(ValueError, match="align_corners"):
        interpolate(x, size=8, align_corners=True)
    with pytest.raises(ValueError, match="mode"):
        interpolate(x, size=8, mode="trilinear")
    with pytest.raises(ValueError, match="N, C, H, W"):
        interpolate(Tensor(np.zeros((4, 4))), size=8)
