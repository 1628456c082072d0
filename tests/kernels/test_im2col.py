"""im2col / col2im: the hand case, the spec's equation, backend parity, the adjoint identity, torch's unfold/fold."""
import numpy as np
import pytest
from minimaskrcnn.kernels.im2col import conv_output_size, cpu, cuda, reference

# (x_shape, kernel_size, stride, padding, dilation): square and (h, w) pairs, strides, padding
# wider than the kernel's reach, dilation, 1x1 kernels
CASES = [
    ((2, 3, 6, 7), 3, 1, 1, 1),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 2), (2, 1)),
    ((2, 2, 5, 5), 1, 2, 0, 1),
    ((1, 1, 4, 4), 5, 3, 3, 1),
    ((1, 2, 8, 9), 3, 2, 2, 2),
]
# stride 1 with OW == W: the CPU's one-run-per-tap kernels (a 3x3 "same" conv, dilation in either
# direction, a kernel taller than its padding covers, a single row, a mask-head-sized map)
SAME_WIDTH_CASES = [
    ((2, 3, 6, 7), (3, 5), 1, (0, 2), (2, 1)),
    ((1, 2, 5, 6), 3, 1, (1, 2), (1, 2)),
    ((1, 2, 1, 4), 3, 1, 1, 1),
    ((3, 4, 14, 14), 3, 1, 1, 1),
]
CASES += SAME_WIDTH_CASES
# the CUDA simulator runs one Python thread per CUDA thread: keep its inputs tiny
CUDA_CASES = [((1, 2, 5, 4), 3, 1, 1, 1), ((1, 1, 5, 6), (3, 2), (2, 1), (1, 2), (2, 1))]

BACKENDS = [pytest.param(cpu, id="numba"), pytest.param(cuda, id="cuda", marks=pytest.mark.cuda)]


def im2col_by_definition(x, kernel_size, stride, padding, dilation):
    """cols[n, (c*KH + kh)*KW + kw, oh*OW + ow] = x[n, c, oh*SH - pad_h + kh*DH, ow*SW - pad_w + kw*DW] (0 outside)."""
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (KH, KW), (SH, SW), (pad_h, pad_w), (DH, DW) = map(pair, (kernel_size, stride, padding, dilation))
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, KH, SH, pad_h, DH), conv_output_size(W, KW, SW, pad_w, DW)
    cols = np.zeros((N, C * KH * KW, OH * OW), x.dtype)
    for n, c, kh, kw, oh, ow in np.ndindex(N, C, KH, KW, OH, OW):
        ih, iw = oh * SH - pad_h + kh * DH, ow * SW - pad_w + kw * DW
        if 0 <= ih < H and 0 <= iw < W:
            cols[n, (c * KH + kh) * KW + kw, oh * OW + ow] = x[n, c, ih, iw]
    return cols


def test_hand_case():
    # x = [[0 1 2] [3 4 5] [6 7 8]], 2x2 patches at (0,0) (0,1) (1,0) (1,1): row kh*2 + kw holds tap (kh, kw)
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    expected = np.array([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]], dtype=float)[None]
    np.testing.assert_array_equal(reference.im2col(x, 2), expected)
    # each pixel comes back once per patch that holds it: the corners once, the centre four times
    counts = reference.col2im(np.ones_like(expected), x.shape, 2)
    np.testing.assert_array_equal(counts[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", CASES)
def test_reference_matches_definition(x_shape, kernel_size, stride, padding, dilation):
    x = np.random.default_rng(1).standard_normal(x_shape)
    np.testing.assert_array_equal(
        reference.im2col(x, kernel_size, stride, padding, dilation),
        im2col_by_definition(x, kernel_size, stride, padding, dilation),
    )


def _check_backend(module, x_shape, kernel_size, stride, padding, dilation, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(dtype)
    expected = reference.im2col(x, kernel_size, stride, padding, dilation)
    cols = module.im2col(x, kernel_size, stride, padding, dilation)
    assert cols.dtype == dtype and cols.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(cols), expected)  # a copy: exact

    c = rng.standard_normal(expected.shape).astype(dtype)
    dx = module.col2im(c, x_shape, kernel_size, stride, padding, dilation)
    assert dx.dtype == dtype and dx.shape == x_shape
    rtol = 1e-6 if dtype == np.float32 else 1e-14  # the sums may add in another order
    np.testing.assert_allclose(np.asarray(dx), reference.col2im(c, x_shape, kernel_size, stride, padding, dilation),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", CASES)
def test_numba_matches_reference(x_shape, kernel_size, stride, padding, dilation, dtype):
    _check_backend(cpu, x_shape, kernel_size, stride, padding, dilation, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", CUDA_CASES)
def test_cuda_matches_reference(x_shape, kernel_size, stride, padding, dilation, dtype):
    _check_backend(cuda, x_shape, kernel_size, stride, padding, dilation, dtype)


@pytest.mark.parametrize("module", [pytest.param(reference, id="numpy")] + BACKENDS)
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", CUDA_CASES + CASES[3:])
def test_col2im_is_adjoint_of_im2col(module, x_shape, kernel_size, stride, padding, dilation):
    """<im2col(x), c> == <x, col2im(c)> for random x and c: col2im is exactly im2col's transpose."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape)
    cols = np.asarray(module.im2col(x, kernel_size, stride, padding, dilation))
    c = rng.standard_normal(cols.shape)
    dx = np.asarray(module.col2im(c, x_shape, kernel_size, stride, padding, dilation))
    lhs, rhs = float((cols * c).sum()), float((x * dx).sum())
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(cols * c).sum())


@pytest.mark.reference
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", CASES)
def test_matches_torch_unfold_fold(x_shape, kernel_size, stride, padding, dilation):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal(x_shape)
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
    cols = cpu.im2col(x, kernel_size, stride, padding, dilation)
    np.testing.assert_array_equal(cols, torch.nn.functional.unfold(torch.from_numpy(x), **args).numpy())
    c = np.random.default_rng(5).standard_normal(cols.shape)
    expected = torch.nn.functional.fold(torch.from_numpy(c), output_size=x_shape[2:], **args).numpy()
    np.testing.assert_allclose(
        cpu.col2im(c, x_shape, kernel_size, stride, padding, dilation), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("module", [pytest.param(reference, id="numpy"), pytest.param(cpu, id="numba")])
def test_bad_arguments_raise(module):
    x = np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        module.im2col(x, 5)  # a 5x5 kernel in a 3x3 image without padding
    with pytest.raises(ValueError, match="cols has shape"):
        module.col2im(np.zeros((1, 9, 4)), (1, 1, 3, 3), 3, padding=1)  # 9 positions, not 4
    with pytest.raises(ValueError):
        module.im2col(np.zeros((1, 3, 3)), 1)  # not (N, C, H, W)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, dilation", SAME_WIDTH_CASES)
def test_numba_same_width_col2im_adds_in_the_reference_order(x_shape, kernel_size, stride, padding, dilation, dtype):
    """The one-run-per-tap col2im adds each pixel's taps in the reference's (kh, kw) order: equal bits."""
    cols = cpu.im2col(np.zeros(x_shape, dtype), kernel_size, stride, padding, dilation)
    c = np.random.default_rng(6).standard_normal(cols.shape).astype(dtype)
    np.testing.assert_array_equal(cpu.col2im(c, x_shape, kernel_size, stride, padding, dilation),
                                  reference.col2im(c, x_shape, kernel_size, stride, padding, dilation))
