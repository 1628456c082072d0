"""Winograd F(2x2, 3x3) transforms: each against its definition, the backends against each other, and
the whole pipeline (weight and input transforms, 16 products, output transform) against a direct
3x3 convolution, by blocks of tile rows, and for the adjoint (rotated filters)."""
import numpy as np
import pytest
from minimaskrcnn.kernels.winograd import A_T, B_T, G, adjoint_position, cpu, reference, winograd_geometry

BACKENDS = [pytest.param(reference, id="numpy"), pytest.param(cpu, id="numba")]
# (x_shape, padding): the "same" 3x3 conv, no padding, padding 2, odd output sizes (a last half
# tile in either direction), one output pixel, a mask-head-sized map
CASES = [
    ((2, 3, 6, 7), (1, 1)),
    ((1, 2, 5, 6), (0, 0)),
    ((2, 2, 4, 3), (2, 2)),
    ((1, 3, 5, 4), (0, 2)),
    ((3, 1, 3, 3), (0, 0)),
    ((2, 4, 14, 14), (1, 1)),
]


def direct_correlation(x, w, padding):
    """y[n, co, oh, ow] = sum over c, u, v of x_padded[n, c, oh + u, ow + v] * w[co, c, u, v]."""
    x_padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    OH, OW = x_padded.shape[2] - 2, x_padded.shape[3] - 2
    y = np.zeros((x.shape[0], w.shape[0], OH, OW))
    for u in range(3):
        for v in range(3):
            y += np.einsum("nchw,oc->nohw", x_padded[:, :, u : u + OH, v : v + OW], w[:, :, u, v])
    return y


def tiles_by_definition(x, padding):
    """V[4*i + j, c, t] = (B^T d B)[i, j], d the 4x4 tile t of channel c (zeros outside the image)."""
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    V = np.zeros((16, C, N * TH * TW))
    for n, c, ti, tj in np.ndindex(N, C, TH, TW):
        d = np.zeros((4, 4))
        for i, j in np.ndindex(4, 4):
            r, q = 2 * ti - pad_h + i, 2 * tj - pad_w + j
            if 0 <= r < H and 0 <= q < W:
                d[i, j] = x[n, c, r, q]
        V[:, c, (n * TH + ti) * TW + tj] = (B_T @ d @ B_T.T).reshape(16)
    return V


def convolve(k, x, w, padding, rows_per_block=None, adjoint=False):
    """The 3x3 correlation by the transforms, a block of tile rows at a time (as ops.conv does)."""
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    U = k.weight_transform(w)
    C_out = U.shape[2] if adjoint else U.shape[1]
    out = np.full((N, C_out, OH, OW), np.nan, dtype=x.dtype)
    step = rows_per_block or N * TH
    for R0 in range(0, N * TH, step):
        R1 = min(N * TH, R0 + step)
        V = k.input_transform(x, padding, (R0, R1))
        M = np.stack([U[adjoint_position(p)].T @ V[p] for p in range(16)]) if adjoint else U @ V
        k.output_transform(M, out, (R0, R1))
    return out


def test_the_matrices_compute_a_2x2_block_of_a_3x3_correlation(rng):
    """Lavin and Gray's identity on one tile: A^T [(G g G^T) * (B^T d B)] A = the 2x2 correlation of d with g."""
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
    expected = np.array([[np.sum(d[a : a + 3, b : b + 3] * g) for b in range(2)] for a in range(2)])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BACKENDS)
@pytest.mark.parametrize("x_shape, padding", CASES)
def test_input_transform_is_its_definition(k, rng, x_shape, padding):
    x = rng.standard_normal(x_shape)
    np.testing.assert_allclose(k.input_transform(x, padding), tiles_by_definition(x, padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BACKENDS)
def test_input_transform_of_a_range_of_tile_rows(k, rng):
    """Tile rows R0..R1-1, across an image boundary, are the same columns of the whole batch's V."""
    x = rng.standard_normal((3, 2, 7, 6))
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, (1, 1))
    whole = k.input_transform(x, (1, 1))
    for R0, R1 in [(0, 1), (2, 6), (5, N * TH), (4, 4)]:
        out = np.empty((16, C, (R1 - R0) * TW))
        assert k.input_transform(x, (1, 1), (R0, R1), out=out) is out
        np.testing.assert_array_equal(out, whole[:, :, R0 * TW : R1 * TW])


@pytest.mark.parametrize("k", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_transform_is_its_definition(k, rng, dtype):
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    U = k.weight_transform(w)
    assert U.shape == (16, 4, 3) and U.dtype == dtype and U.flags.c_contiguous
    for co, c in np.ndindex(4, 3):
        expected = G @ w[co, c].astype(np.float64) @ G.T
        np.testing.assert_allclose(U[:, co, c], expected.reshape(16), rtol=1e-6, atol=1e-6)


def test_adjoint_positions_are_the_rotated_filters_transform(rng):
    """U of the filters rotated by 180 degrees, channels swapped, is U at the adjoint positions, transposed."""
    w = rng.standard_normal((4, 3, 3, 3))
    rotated = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    U, U_rotated = reference.weight_transform(w), reference.weight_transform(rotated)
    for position in range(16):
        np.testing.assert_allclose(U[adjoint_position(position)].T, U_rotated[position], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BACKENDS)
@pytest.mark.parametrize("x_shape, padding", CASES)
@pytest.mark.parametrize("rows_per_block", [None, 1, 2])
def test_transforms_and_products_are_a_3x3_correlation(k, rng, x_shape, padding, rows_per_block):
    x, w = rng.standard_normal(x_shape), rng.standard_normal((3, x_shape[1], 3, 3))
    out = convolve(k, x, w, padding, rows_per_block)  # every output pixel written (no NaN left)
    np.testing.assert_allclose(out, direct_correlation(x, w, padding), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", BACKENDS)
def test_adjoint_products_are_the_gradient_of_the_input(k, rng):
    """dx of y = corr(x, w, pad 1) is the adjoint: corr(dy, rotated filters, pad 2 - 1) via adjoint_position."""
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 6, 5))
    dx = convolve(k, dy, w, (1, 1), adjoint=True)
    # <corr(x, w), dy> == <x, dx> for every x: check on the basis via the explicit rotated correlation
    rotated = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    np.testing.assert_allclose(dx, direct_correlation(dy, rotated, (1, 1)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.sum(direct_correlation(x, w, (1, 1)) * dy), np.sum(x * dx), rtol=1e-10)


def test_backends_agree_in_float32(rng):
    x, w = rng.standard_normal((2, 8, 9, 10)).astype(np.float32), rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    a, b = convolve(reference, x, w, (1, 1)), convolve(cpu, x, w, (1, 1))
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("k", BACKENDS)
def test_output_transform_writes_only_its_tile_rows(k, rng):
    N, C_out, OH, OW = 2, 3, 5, 4  # TH = 3: tile row 2 is image 0's last (one output row), 3 is image 1's first
    M = rng.standard_normal((16, C_out, 2 * 2))
    out = np.full((N, C_out, OH, OW), 7.0)
    k.output_transform(M, out, (2, 4))
    written = np.zeros(out.shape, bool)
    written[0, :, 4:5] = written[1, :, 0:2] = True
    assert np.all(out[~written] == 7.0) and np.all(out[written] != 7.0)


@pytest.mark.parametrize("k", BACKENDS)
def test_bad_arguments_raise(k):
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="weight must be"):
        k.weight_transform(np.zeros((2, 2, 5, 5)))
    with pytest.raises(TypeError, match="float32 or float64"):
        k.weight_transform(np.zeros((2, 2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="padding"):
        k.input_transform(x, (-1, 0))
    with pytest.raises(ValueError, match="does not fit"):
        k.input_transform(np.zeros((1, 2, 1, 4)), (0, 0))
    with pytest.raises(ValueError, match="tile rows"):
        k.input_transform(x, (1, 1), (0, 3))
    with pytest.raises(ValueError, match="out must be"):
        k.input_transform(x, (1, 1), out=np.zeros((16, 2, 3)))
    with pytest.raises(ValueError, match="M must be"):
        k.output_transform(np.zeros((16, 2, 3)), np.zeros((1, 2, 4, 4)))


def adjoint_tiles_by_definition(dout):
    """Y[4*i + j, co, t] = (A dY A^T)[i, j], dY the 2x2 tile t of dout (zeros past OH or OW)."""
    N, C_out, OH, OW = dout.shape
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    Y = np.zeros((16, C_out, N * TH * TW))
    for n, co, ti, tj in np.ndindex(N, C_out, TH, TW):
        tile = np.zeros((2, 2))
        for a, b in np.ndindex(2, 2):
            if 2 * ti + a < OH and 2 * tj + b < OW:
                tile[a, b] = dout[n, co, 2 * ti + a, 2 * tj + b]
        Y[:, co, (n * TH + ti) * TW + tj] = (A_T.T @ tile @ A_T).reshape(16)
    return Y


@pytest.mark.parametrize("k", BACKENDS)
@pytest.mark.parametrize("dout_shape", [(2, 3, 6, 7), (1, 2, 5, 5), (3, 1, 1, 2)])
def test_output_transform_adjoint_is_its_definition(k, rng, dout_shape):
    dout = rng.standard_normal(dout_shape)
    whole = adjoint_tiles_by_definition(dout)
    np.testing.assert_allclose(k.output_transform_adjoint(dout), whole, rtol=1e-12, atol=1e-12)
    TH, TW = (dout_shape[2] + 1) // 2, (dout_shape[3] + 1) // 2
    R0, R1 = 1, dout_shape[0] * TH  # a range that starts inside the first image
    np.testing.assert_allclose(k.output_transform_adjoint(dout, (R0, R1)), whole[:, :, R0 * TW : R1 * TW],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BACKENDS)
def test_weight_transform_adjoint_is_its_definition(k, rng):
    Q = rng.standard_normal((16, 3, 2))
    dw = k.weight_transform_adjoint(Q)
    assert dw.shape == (3, 2, 3, 3)
    for co, c in np.ndindex(3, 2):
        np.testing.assert_allclose(dw[co, c], G.T @ Q[:, co, c].reshape(4, 4) @ G, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BACKENDS)
@pytest.mark.parametrize("x_shape, padding", CASES)
def test_transforms_give_the_weight_gradient(k, rng, x_shape, padding):
    """dw[co, c, u, v] = sum over n, oh, ow of dout[n, co, oh, ow] * x_padded[n, c, oh + u, ow + v], by blocks."""
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x_shape, padding)
    x, dout = rng.standard_normal(x_shape), rng.standard_normal((N, 3, OH, OW))
    Q = sum(k.output_transform_adjoint(dout, (R, R + 1)) @ k.input_transform(x, padding, (R, R + 1)).transpose(0, 2, 1)
            for R in range(N * TH))  # one tile row per block
    x_padded = np.pad(x, ((0, 0), (0, 0), (pad_h,) * 2, (pad_w,) * 2))
    expected = np.stack([np.stack([np.einsum("nohw,nchw->oc", dout, x_padded[:, :, u : u + OH, v : v + OW])
                                   for v in range(3)], axis=-1) for u in range(3)], axis=-2)
    np.testing.assert_allclose(k.weight_transform_adjoint(Q), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_and_numba_give_the_same_bits(rng, dtype):
    """Every transform, on tile-row ranges that start and end inside images: bit for bit."""
    x, w = rng.standard_normal((3, 5, 7, 9)).astype(dtype), rng.standard_normal((4, 5, 3, 3)).astype(dtype)
    dout, Q = rng.standard_normal((3, 4, 7, 9)).astype(dtype), rng.standard_normal((16, 4, 5)).astype(dtype)
    np.testing.assert_array_equal(reference.weight_transform(w), cpu.weight_transform(w))
    np.testing.assert_array_equal(reference.weight_transform_adjoint(Q), cpu.weight_transform_adjoint(Q))
    for R0, R1 in [(0, 12), (2, 7), (5, 6)]:  # TH = 4 tile rows per image, TW = 5
        np.testing.assert_array_equal(reference.input_transform(x, (1, 1), (R0, R1)),
                                      cpu.input_transform(x, (1, 1), (R0, R1)))
        np.testing.assert_array_equal(reference.output_transform_adjoint(dout, (R0, R1)),
                                      cpu.output_transform_adjoint(dout, (R0, R1)))
        M = rng.standard_normal((16, 4, (R1 - R0) * 5)).astype(dtype)
        a, b = np.full((3, 4, 7, 9), 5, dtype), np.full((3, 4, 7, 9), 5, dtype)
        np.testing.assert_array_equal(reference.output_transform(M, a, (R0, R1)), cpu.output_transform(M, b, (R0, R1)))


@pytest.mark.parametrize("k", BACKENDS)
def test_more_bad_arguments_raise(k):
    with pytest.raises(ValueError, match="padding must be a pair"):
        k.input_transform(np.zeros((1, 2, 4, 4)), 1)
    with pytest.raises(ValueError, match=r"out must be \(N, C_out, OH, OW\)"):
        k.output_transform(np.zeros((16, 2, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"dout must be \(N, C_out, OH, OW\)"):
        k.output_transform_adjoint(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        k.output_transform(np.zeros((16, 2, 4)), np.zeros((1, 2, 4, 4), order="F"))
    with pytest.raises(ValueError, match="Q must be"):
        k.weight_transform_adjoint(np.zeros((9, 2, 2)))
