"""Winograd F(2x2, 3x3) transforms in plain NumPy: the spec the Numba version is tested against.

Every transform is separable: B^T d B is B^T applied along one axis of the tile, then along the
other. Each application is four additions or subtractions of strided slices (``_b_t``, ``_a_t``,
``_a``, ``_g``, ``_g_t``), the rows of the package docstring's matrices written out, in the same
order as cpu.py computes them, so that both give the same numbers to the last bit, and a NaN or
infinity reaches only the outputs whose sums it enters (as in a direct convolution).
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.winograd import check_array, check_output, check_tile_rows, check_weight, winograd_geometry


# ------------------------------------------------------------ the matrices' rows, written out
def _b_t(d0, d1, d2, d3) -> tuple:
    """B^T @ (d0, d1, d2, d3): B^T's rows are (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _a_t(m0, m1, m2, m3) -> tuple:
    """A^T @ (m0, m1, m2, m3): A^T's rows are (1, 1, 1, 0) and (0, 1, -1, -1)."""
    return m0 + m1 + m2, m1 - m2 - m3


def _a(y0, y1) -> tuple:
    """A @ (y0, y1), A = (A^T)^T: rows (1, 0), (1, 1), (1, -1), (0, -1)."""
    return y0, y0 + y1, y0 - y1, -y1


def _g(g0, g1, g2, half) -> tuple:
    """G @ (g0, g1, g2): G's rows are (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)."""
    return g0, half * (g0 + g1 + g2), half * (g0 - g1 + g2), g2


def _g_t(q0, q1, q2, q3, half) -> tuple:
    """G^T @ (q0, q1, q2, q3): G^T's rows are (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1)."""
    return q0 + half * (q1 + q2), half * (q1 - q2), half * (q1 + q2) + q3


# ---------------------------------------------------------------------------------- transforms
def weight_transform(weight: np.ndarray) -> np.ndarray:
    """U = G g G^T for every 3x3 filter g = weight[co, c], laid out for the products.

    Args:
        weight: (C_out, C, 3, 3) float32 or float64, a conv2d weight.

    Returns:
        U: (16, C_out, C) C-contiguous, weight's dtype, ``U[4*i + j, co, c] = (G @ weight[co, c] @ G.T)[i, j]``.

    Raises:
        TypeError: for a non-float weight. ValueError: unless weight is (C_out, C, 3, 3).
    """
    C_out, C = check_weight(weight)
    half = weight.dtype.type(0.5)
    gg = _g(weight[:, :, 0], weight[:, :, 1], weight[:, :, 2], half)  # G g: 4 of (C_out, C, 3), along u
    U = np.empty((4, 4, C_out, C), dtype=weight.dtype)
    for i in range(4):
        U[i] = np.stack(_g(gg[i][..., 0], gg[i][..., 1], gg[i][..., 2], half))  # (G g) G^T, along v
    return U.reshape(16, C_out, C)


def input_transform(x: np.ndarray, padding, tile_rows=None, out=None) -> np.ndarray:
    """V = B^T d B for every 4x4 input tile d of tile rows R0..R1-1 (see the package docstring).

    Args:
        x: (N, C, H, W) float32 or float64.
        padding: (pad_h, pad_w) of the convolution.
        tile_rows: (R0, R1), tile rows R = n*TH + ti to transform; None for all, (0, N*TH).
        out: optional C-contiguous (16, C, (R1 - R0)*TW) array of x's dtype to write V into.

    Returns:
        V: (16, C, (R1 - R0)*TW), x's dtype.

    Raises:
        TypeError: for a non-float x. ValueError: for a bad shape, padding, tile rows or ``out``.
    """
    check_float(x, "x")
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    if out is None:
        out = np.empty((16, C, (R1 - R0) * TW), dtype=x.dtype)
    check_array(out, (16, C, (R1 - R0) * TW), x.dtype, "out")
    Wp = 2 * TW + 2  # tile column tj reads padded columns 2*tj .. 2*tj + 3
    cols = min(W, Wp - pad_w)
    V = out.reshape(4, 4, C, R1 - R0, TW)
    for n in range(R0 // TH, -(-R1 // TH)):  # the images whose tile rows lie in R0..R1-1
        ti0, ti1 = max(R0, n * TH) - n * TH, min(R1, (n + 1) * TH) - n * TH
        # padded rows 2*ti0 .. 2*ti1 + 1 of image n: input rows r0 .. r0 + rows - 1 (zero outside x)
        r0, rows = 2 * ti0 - pad_h, 2 * (ti1 - ti0) + 2
        slab = np.zeros((C, rows, Wp), dtype=x.dtype)
        lo, hi = max(r0, 0), min(r0 + rows, H)
        if lo < hi:
            slab[:, lo - r0 : hi - r0, pad_w : pad_w + cols] = x[n, :, lo:hi, :cols]
        # B^T along each tile's rows (input rows 2*ti + 0..3), then along its columns (2*tj + 0..3)
        e = _b_t(*(slab[:, i : i + rows - 2 : 2] for i in range(4)))  # 4 of (C, ti1 - ti0, Wp)
        first = n * TH + ti0 - R0
        for i in range(4):
            v = _b_t(*(e[i][..., j : j + 2 * TW : 2] for j in range(4)))  # 4 of (C, ti1 - ti0, TW)
            for j in range(4):
                V[i, j, :, first : first + ti1 - ti0] = v[j]
    return out


def output_transform(M: np.ndarray, out: np.ndarray, tile_rows=None) -> np.ndarray:
    """Write Y = A^T m A of every tile of tile rows R0..R1-1 into ``out`` (see the package docstring).

    Args:
        M: (16, C_out, (R1 - R0)*TW) float32 or float64, the products of those tiles.
        out: (N, C_out, OH, OW) C-contiguous, M's dtype: the convolution's output, written in place
            (rows 2*ti, 2*ti + 1 of each tile row; what lies past OH or OW is dropped).
        tile_rows: (R0, R1), as given to ``input_transform``; None for all.

    Returns:
        out.

    Raises:
        TypeError: for a non-float M. ValueError: for shapes that do not match.
    """
    check_float(M, "M")
    N, C_out, OH, OW, TH, TW = check_output(out, M.dtype)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    check_array(M, (16, C_out, (R1 - R0) * TW), M.dtype, "M")
    m = M.reshape(4, 4, C_out, R1 - R0, TW)
    s = _a_t(m[0], m[1], m[2], m[3])  # A^T along the tile's rows: 2 of (4, C_out, R, TW)
    rows = np.empty((C_out, R1 - R0, 2, TW, 2), dtype=M.dtype)  # [co, R, a, tj, b]: row 2*ti + a, column 2*tj + b
    for a in range(2):
        rows[:, :, a, :, 0], rows[:, :, a, :, 1] = _a_t(s[a][0], s[a][1], s[a][2], s[a][3])  # then along its columns
    rows = rows.reshape(C_out, R1 - R0, 2, 2 * TW)
    for R in range(R0, R1):
        n, ti = divmod(R, TH)
        count = min(2, OH - 2 * ti)
        out[n, :, 2 * ti : 2 * ti + count] = rows[:, R - R0, :count, :OW]
    return out


def output_transform_adjoint(dout: np.ndarray, tile_rows=None, out=None) -> np.ndarray:
    """A dY A^T for every 2x2 tile dY of dout (the adjoint of ``output_transform``), for the weight's gradient.

    Args:
        dout: (N, C_out, OH, OW) float32 or float64, the gradient of a convolution's output; a tile
            past OH or OW (odd sizes) reads zeros there.
        tile_rows: (R0, R1), tile rows R = n*TH + ti (TH = ceil(OH/2)); None for all.
        out: optional C-contiguous (16, C_out, (R1 - R0)*TW) array of dout's dtype to write into.

    Returns:
        (16, C_out, (R1 - R0)*TW), dout's dtype: ``[4*i + j, co, t] = (A @ dY_t @ A.T)[i, j]``.

    Raises:
        TypeError: for a non-float dout. ValueError: for a bad shape, tile rows or ``out``.
    """
    check_float(dout, "dout")
    N, C_out, OH, OW, TH, TW = check_output(dout, dout.dtype, "dout", contiguous=False)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    if out is None:
        out = np.empty((16, C_out, (R1 - R0) * TW), dtype=dout.dtype)
    check_array(out, (16, C_out, (R1 - R0) * TW), dout.dtype, "out")
    # the tile rows' dout rows, zero-padded to 2 rows per tile row and 2*TW columns
    padded = np.zeros((C_out, R1 - R0, 2, 2 * TW), dtype=dout.dtype)
    for R in range(R0, R1):
        n, ti = divmod(R, TH)
        count = min(2, OH - 2 * ti)
        padded[:, R - R0, :count, :OW] = dout[n, :, 2 * ti : 2 * ti + count]
    Y = out.reshape(4, 4, C_out, R1 - R0, TW)
    z = _a(padded[:, :, 0], padded[:, :, 1])  # A along the tile's rows: 4 of (C_out, R, 2*TW)
    for i in range(4):
        y = _a(z[i][..., 0::2], z[i][..., 1::2])  # then along its columns
        for j in range(4):
            Y[i, j] = y[j]
    return out


def weight_transform_adjoint(Q: np.ndarray) -> np.ndarray:
    """G^T q G for every (co, c) (the adjoint of ``weight_transform``): the weight's gradient.

    Args:
        Q: (16, C_out, C) float32 or float64, ``sum over tiles t of output_transform_adjoint(dout)[k, co, t]
            * input_transform(x)[k, c, t]`` at each tile position k.

    Returns:
        (C_out, C, 3, 3), Q's dtype: ``[co, c] = G.T @ Q[:, co, c].reshape(4, 4) @ G``.

    Raises:
        TypeError: for a non-float Q. ValueError: unless Q is (16, C_out, C).
    """
    check_float(Q, "Q")
    if Q.ndim != 3 or Q.shape[0] != 16:
        raise ValueError(f"winograd: Q must be (16, C_out, C), got {tuple(Q.shape)}")
    half = Q.dtype.type(0.5)
    q = Q.reshape(4, 4, *Q.shape[1:])
    h = _g_t(q[0], q[1], q[2], q[3], half)  # G^T along i: 3 of (4, C_out, C)
    dw = np.empty((Q.shape[1], Q.shape[2], 3, 3), dtype=Q.dtype)
    for u in range(3):
        for v, values in enumerate(_g_t(h[u][0], h[u][1], h[u][2], h[u][3], half)):  # then along j
            dw[:, :, u, v] = values
    return dw
