"""Winograd F(2x2, 3x3) transforms in plain NumPy: the spec the Numba version is tested against.

Each tile's 4x4 input patch is gathered with 16 strided slices of the zero-padded input, and the
transforms are the matrix products of the package docstring, written as einsums.
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.winograd import A_T, B_T, G, check_array, check_tile_rows, check_weight, winograd_geometry


def weight_transform(weight: np.ndarray) -> np.ndarray:
    """U = G g G^T for every 3x3 filter g = weight[co, c], laid out for the products.

    Args:
        weight: (C_out, C, 3, 3) float32 or float64, a conv2d weight.

    Returns:
        U: (16, C_out, C) C-contiguous, weight's dtype, ``U[4*i + j, co, c] = (G @ weight[co, c] @ G.T)[i, j]``.

    Raises:
        TypeError: for a non-float weight. ValueError: unless weight is (C_out, C, 3, 3).
    """
    check_weight(weight)
    g = G.astype(weight.dtype)
    U = np.einsum("iu,ocuv,jv->ijoc", g, weight, g)  # (4, 4, C_out, C)
    return np.ascontiguousarray(U).reshape(16, *U.shape[2:])


def input_transform(x: np.ndarray, padding, tile_rows=None, out=None) -> np.ndarray:
    """V = B^T d B for every 4x4 input tile d of tile rows R0..R1-1 (see the package docstring).

    Args:
        x: (N, C, H, W) float32 or float64, C-contiguous.
        padding: (pad_h, pad_w) of the convolution.
        tile_rows: (R0, R1), tile rows R = n*TH + ti to transform; None for all, (0, N*TH).
        out: optional C-contiguous (16, C, (R1 - R0)*TW) array of x's dtype to write V into.

    Returns:
        V: (16, C, (R1 - R0)*TW), x's dtype.

    Raises:
        TypeError: for a non-float x. ValueError: for bad padding, tile rows or ``out``.
    """
    check_float(x, "x")
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    Wp = 2 * TW + 2  # tile column tj reads padded columns 2*tj .. 2*tj + 3
    cols = min(W, Wp - pad_w)
    B = B_T.astype(x.dtype)
    parts = []
    for n in range(R0 // TH, -(-R1 // TH)):  # the images whose tile rows lie in R0..R1-1
        ti0, ti1 = max(R0, n * TH) - n * TH, min(R1, (n + 1) * TH) - n * TH
        # padded rows 2*ti0 .. 2*ti1 + 1 of image n: input rows r0 .. r0 + rows - 1 (zero outside x)
        r0, rows = 2 * ti0 - pad_h, 2 * (ti1 - ti0) + 2
        slab = np.zeros((C, rows, Wp), dtype=x.dtype)
        lo, hi = max(r0, 0), min(r0 + rows, H)
        if lo < hi:
            slab[:, lo - r0 : hi - r0, pad_w : pad_w + cols] = x[n, :, lo:hi, :cols]
        # d[i, j, c, ti, tj] = slab[c, 2*ti + i, 2*tj + j]
        d = np.stack([np.stack([slab[:, i : i + rows - 2 : 2, j : j + 2 * TW : 2] for j in range(4)])
                      for i in range(4)])
        parts.append(np.einsum("ai,bj,ijctu->abctu", B, B, d).reshape(16, C, (ti1 - ti0) * TW))
    V = np.concatenate(parts, axis=2) if parts else np.zeros((16, C, 0), dtype=x.dtype)
    if out is None:
        return np.ascontiguousarray(V)
    check_array(out, V.shape, x.dtype, "out")
    out[...] = V
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
    N, C_out, OH, OW = (int(s) for s in out.shape)
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    check_array(out, out.shape, M.dtype, "out")
    check_array(M, (16, C_out, (R1 - R0) * TW), M.dtype, "M")
    m = M.reshape(4, 4, C_out, R1 - R0, TW)
    A = A_T.astype(M.dtype)
    y = np.einsum("ai,bj,ijcrt->crtab", A, A, m)  # (C_out, R, TW, 2, 2)
    y = y.transpose(0, 1, 3, 2, 4).reshape(C_out, R1 - R0, 2, 2 * TW)  # rows 2*ti + a, columns 2*tj + b
    for R in range(R0, R1):
        n, ti = divmod(R, TH)
        rows = min(2, OH - 2 * ti)
        out[n, :, 2 * ti : 2 * ti + rows] = y[:, R - R0, :rows, :OW]
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
        TypeError: for a non-float dout. ValueError: for bad tile rows or ``out``.
    """
    check_float(dout, "dout")
    N, C_out, OH, OW = (int(s) for s in dout.shape)
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    R0, R1 = check_tile_rows(tile_rows, N, TH)
    padded = np.zeros((N, C_out, 2 * TH, 2 * TW), dtype=dout.dtype)
    padded[:, :, :OH, :OW] = dout
    # y[a, b, co, R, tj] = padded[n, co, 2*ti + a, 2*tj + b] for tile row R = n*TH + ti
    y = np.stack([np.stack([padded[:, :, a::2, b::2] for b in range(2)]) for a in range(2)])  # (2, 2, N, C_out, TH, TW)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, C_out, N * TH, TW)[:, :, :, R0:R1]
    A = A_T.astype(dout.dtype)
    Y = np.einsum("ai,bj,abcrt->ijcrt", A, A, y).reshape(16, C_out, (R1 - R0) * TW)
    if out is None:
        return np.ascontiguousarray(Y)
    check_array(out, Y.shape, dout.dtype, "out")
    out[...] = Y
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
    g = G.astype(Q.dtype)
    return np.ascontiguousarray(np.einsum("iu,ijoc,jv->ocuv", g, Q.reshape(4, 4, *Q.shape[1:]), g))
