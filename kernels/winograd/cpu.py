"""Winograd F(2x2, 3x3) transforms compiled with Numba for the CPU (same layout and arguments as reference.py).

Both transforms are separable (B^T d B is B^T applied to the tile's columns, then to its rows) and
run one parallel task per channel. For each tile row, the input transform first combines the four
input rows the tile row reads into four rows of B^T d (one pass along the whole row, zeros where
the rows or columns lie in the padding), then combines their columns tile by tile; the output
transform combines the 16 products of each tile into two rows of A^T m A, then writes them into the
output. Each loop runs along a row of tiles, so it is a plain loop over contiguous memory.
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.winograd import check_array, check_output, check_tile_rows, check_weight, winograd_geometry


@numba.njit(cache=True, parallel=True)
def _weight_kernel(w, U):
    # U[4*i + j, a, b] = (G w[a, b] G^T)[i, j]
    A, B = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    for a in numba.prange(A):
        gg = np.empty((4, 3), dtype=w.dtype)  # G g of one filter
        for b in range(B):
            for v in range(3):
                g0, g1, g2 = w[a, b, 0, v], w[a, b, 1, v], w[a, b, 2, v]
                gg[0, v] = g0
                gg[1, v] = half * (g0 + g1 + g2)
                gg[2, v] = half * (g0 - g1 + g2)
                gg[3, v] = g2
            for i in range(4):
                h0, h1, h2 = gg[i, 0], gg[i, 1], gg[i, 2]
                U[4 * i, a, b] = h0
                U[4 * i + 1, a, b] = half * (h0 + h1 + h2)
                U[4 * i + 2, a, b] = half * (h0 - h1 + h2)
                U[4 * i + 3, a, b] = h2


@numba.njit(cache=True, parallel=True)
def _input_kernel(x, V, pad_h, pad_w, TH, TW, R0, R1):
    N, C, H, W = x.shape
    Wp = 2 * TW + 2
    for c in numba.prange(C):
        rows = np.zeros((4, Wp), dtype=x.dtype)  # the 4 input rows one tile row reads, zero-padded
        e = np.empty((4, Wp), dtype=x.dtype)  # B^T applied along the columns of those rows
        q0 = pad_w  # x's column 0 lands at column pad_w of ``rows``
        q1 = min(Wp, pad_w + W)
        for R in range(R0, R1):
            n = R // TH
            r0 = 2 * (R % TH) - pad_h
            for i in range(4):
                r = r0 + i
                if 0 <= r < H:
                    for q in range(q0, q1):
                        rows[i, q] = x[n, c, r, q - pad_w]
                else:
                    for q in range(q0, q1):
                        rows[i, q] = 0
            for q in range(Wp):
                a0 = rows[0, q]
                a1 = rows[1, q]
                a2 = rows[2, q]
                a3 = rows[3, q]
                e[0, q] = a0 - a2
                e[1, q] = a1 + a2
                e[2, q] = a2 - a1
                e[3, q] = a1 - a3
            base = (R - R0) * TW
            for i in range(4):
                for tj in range(TW):
                    b0 = e[i, 2 * tj]
                    b1 = e[i, 2 * tj + 1]
                    b2 = e[i, 2 * tj + 2]
                    b3 = e[i, 2 * tj + 3]
                    V[4 * i, c, base + tj] = b0 - b2
                    V[4 * i + 1, c, base + tj] = b1 + b2
                    V[4 * i + 2, c, base + tj] = b2 - b1
                    V[4 * i + 3, c, base + tj] = b1 - b3


@numba.njit(cache=True, parallel=True)
def _output_kernel(M, out, TH, TW, R0, R1):
    N, C_out, OH, OW = out.shape
    for co in numba.prange(C_out):
        y = np.empty((2, 2 * TW), dtype=M.dtype)  # the two output rows of one tile row
        for R in range(R0, R1):
            base = (R - R0) * TW
            for tj in range(TW):
                t = base + tj
                s00 = M[0, co, t] + M[4, co, t] + M[8, co, t]
                s01 = M[1, co, t] + M[5, co, t] + M[9, co, t]
                s02 = M[2, co, t] + M[6, co, t] + M[10, co, t]
                s03 = M[3, co, t] + M[7, co, t] + M[11, co, t]
                s10 = M[4, co, t] - M[8, co, t] - M[12, co, t]
                s11 = M[5, co, t] - M[9, co, t] - M[13, co, t]
                s12 = M[6, co, t] - M[10, co, t] - M[14, co, t]
                s13 = M[7, co, t] - M[11, co, t] - M[15, co, t]
                y[0, 2 * tj] = s00 + s01 + s02
                y[0, 2 * tj + 1] = s01 - s02 - s03
                y[1, 2 * tj] = s10 + s11 + s12
                y[1, 2 * tj + 1] = s11 - s12 - s13
            n = R // TH
            oh = 2 * (R % TH)
            for a in range(min(2, OH - oh)):
                for ow in range(OW):
                    out[n, co, oh + a, ow] = y[a, ow]


@numba.njit(cache=True, parallel=True)
def _output_adjoint_kernel(dout, Y, TH, TW, R0, R1):
    N, C_out, OH, OW = dout.shape
    for co in numba.prange(C_out):
        rows = np.zeros((2, 2 * TW), dtype=dout.dtype)  # the two dout rows of one tile row, zero-padded
        z = np.empty((4, 2 * TW), dtype=dout.dtype)  # A applied along the columns of those rows
        for R in range(R0, R1):
            n = R // TH
            oh = 2 * (R % TH)
            for a in range(2):
                if oh + a < OH:
                    for ow in range(OW):
                        rows[a, ow] = dout[n, co, oh + a, ow]
                else:
                    for ow in range(OW):
                        rows[a, ow] = 0
            for q in range(2 * TW):  # A's rows are (1, 0), (1, 1), (1, -1), (0, -1)
                y0 = rows[0, q]
                y1 = rows[1, q]
                z[0, q] = y0
                z[1, q] = y0 + y1
                z[2, q] = y0 - y1
                z[3, q] = -y1
            base = (R - R0) * TW
            for i in range(4):
                for tj in range(TW):
                    b0 = z[i, 2 * tj]
                    b1 = z[i, 2 * tj + 1]
                    Y[4 * i, co, base + tj] = b0
                    Y[4 * i + 1, co, base + tj] = b0 + b1
                    Y[4 * i + 2, co, base + tj] = b0 - b1
                    Y[4 * i + 3, co, base + tj] = -b1


@numba.njit(cache=True, parallel=True)
def _weight_adjoint_kernel(Q, dw):
    C_out, C = Q.shape[1], Q.shape[2]
    half = Q.dtype.type(0.5)
    for co in numba.prange(C_out):
        h = np.empty((3, 4), dtype=Q.dtype)  # G^T q of one (co, c)
        for c in range(C):
            for j in range(4):
                q0, q1, q2, q3 = Q[j, co, c], Q[4 + j, co, c], Q[8 + j, co, c], Q[12 + j, co, c]
                h[0, j] = q0 + half * (q1 + q2)
                h[1, j] = half * (q1 - q2)
                h[2, j] = half * (q1 + q2) + q3
            for u in range(3):
                h0, h1, h2, h3 = h[u, 0], h[u, 1], h[u, 2], h[u, 3]
                dw[co, c, u, 0] = h0 + half * (h1 + h2)
                dw[co, c, u, 1] = half * (h1 - h2)
                dw[co, c, u, 2] = half * (h1 + h2) + h3


def weight_transform(weight: np.ndarray) -> np.ndarray:
    """U = G g G^T for every 3x3 filter; arguments and result as reference.py."""
    C_out, C = check_weight(weight)
    U = np.empty((16, C_out, C), dtype=weight.dtype)
    _weight_kernel(np.ascontiguousarray(weight), U)
    return U


def input_transform(x: np.ndarray, padding, tile_rows=None, out=None) -> np.ndarray:
    """V = B^T d B for every 4x4 input tile of tile rows R0..R1-1; arguments and result as reference.py."""
    check_float(x, "x")
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    shape = (16, C, (R1 - R0) * TW)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    check_array(out, shape, x.dtype, "out")
    _input_kernel(np.ascontiguousarray(x), out, pad_h, pad_w, TH, TW, R0, R1)
    return out


def output_transform(M: np.ndarray, out: np.ndarray, tile_rows=None) -> np.ndarray:
    """Write Y = A^T m A of tile rows R0..R1-1 into ``out``; arguments and result as reference.py."""
    check_float(M, "M")
    N, C_out, OH, OW, TH, TW = check_output(out, M.dtype)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    check_array(M, (16, C_out, (R1 - R0) * TW), M.dtype, "M")
    _output_kernel(M, out, TH, TW, R0, R1)
    return out


def output_transform_adjoint(dout: np.ndarray, tile_rows=None, out=None) -> np.ndarray:
    """A dY A^T for every 2x2 tile of dout; arguments and result as reference.py."""
    check_float(dout, "dout")
    N, C_out, OH, OW, TH, TW = check_output(dout, dout.dtype, "dout", contiguous=False)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    shape = (16, C_out, (R1 - R0) * TW)
    if out is None:
        out = np.empty(shape, dtype=dout.dtype)
    check_array(out, shape, dout.dtype, "out")
    _output_adjoint_kernel(np.ascontiguousarray(dout), out, TH, TW, R0, R1)
    return out


def weight_transform_adjoint(Q: np.ndarray) -> np.ndarray:
    """G^T q G for every (co, c): the weight's gradient; arguments and result as reference.py."""
    check_float(Q, "Q")
    if Q.ndim != 3 or Q.shape[0] != 16:
        raise ValueError(f"winograd: Q must be (16, C_out, C), got {tuple(Q.shape)}")
    dw = np.empty((Q.shape[1], Q.shape[2], 3, 3), dtype=Q.dtype)
    _weight_adjoint_kernel(np.ascontiguousarray(Q), dw)
    return dw
