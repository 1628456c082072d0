"""im2col / col2im in plain NumPy: the spec the Numba and CUDA versions are tested against.

One strided slice of the zero-padded image per kernel tap (kh, kw): that slice holds, for every
output position (oh, ow), the pixel the tap sees, i.e. x[n, c, oh*SH - pad_h + kh*DH, ow*SW - pad_w + kw*DW].
col2im is the adjoint: it adds each tap's slice back where it came from (overlaps add up).
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels.im2col import check_cols_shape, check_out, im2col_geometry


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0, dilation=1, out=None) -> np.ndarray:
    """Unfold every (KH, KW) patch of ``x`` into a column.

    Args:
        x: (N, C, H, W) float32 or float64 images.
        kernel_size, stride, padding, dilation: ints or (height, width) pairs, as in
            torch.nn.functional.conv2d; padding is with zeros.
        out: optional C-contiguous (N, C*KH*KW, OH*OW) array of x's dtype to write cols into.

    Returns:
        cols: (N, C*KH*KW, OH*OW), x's dtype, with
        ``cols[n, (c*KH + kh)*KW + kw, oh*OW + ow] = x_padded[n, c, oh*SH + kh*DH, ow*SW + kw*DW]``,
        where ``OH = (H + 2*pad_h - DH*(KH - 1) - 1) // SH + 1`` (and likewise OW).
    """
    geometry = im2col_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    x_padded = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    if out is None:
        out = np.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)
    check_out(out, (N, C * KH * KW, OH * OW), x.dtype)
    cols = out.reshape(N, C, KH, KW, OH, OW)  # a view: the taps as separate axes
    for kh in range(KH):
        for kw in range(KW):
            top, left = kh * DH, kw * DW  # where tap (kh, kw) of the patch at (0, 0) lands
            rows = slice(top, top + SH * (OH - 1) + 1, SH)  # image rows oh*SH + kh*DH, oh = 0..OH-1
            columns = slice(left, left + SW * (OW - 1) + 1, SW)
            cols[:, :, kh, kw] = x_padded[:, :, rows, columns]
    return out


def col2im(cols: np.ndarray, x_shape, kernel_size, stride=1, padding=0, dilation=1, out=None) -> np.ndarray:
    """Fold columns back into images, adding the values of overlapping patches (im2col's adjoint).

    Args:
        cols: (N, C*KH*KW, OH*OW) float32 or float64, laid out as ``im2col`` returns.
        x_shape: (N, C, H, W), the shape of the images the columns came from.
        kernel_size, stride, padding, dilation: as given to ``im2col``.
        out: optional C-contiguous (N, C, H, W) array of cols' dtype to write dx into (overwritten).

    Returns:
        dx: (N, C, H, W), cols' dtype (``out`` when given): each pixel gets the sum of every column
        entry that ``im2col`` copied from it (entries that came from the zero padding are dropped).
    """
    geometry = im2col_geometry(x_shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    check_cols_shape(cols.shape, geometry)
    cols = cols.reshape(N, C, KH, KW, OH, OW)
    dx_padded = np.zeros((N, C, H + 2 * pad_h, W + 2 * pad_w), dtype=cols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            top, left = kh * DH, kw * DW
            # a strided slice never repeats a pixel, so += adds each value exactly once
            rows = slice(top, top + SH * (OH - 1) + 1, SH)
            columns = slice(left, left + SW * (OW - 1) + 1, SW)
            dx_padded[:, :, rows, columns] += cols[:, :, kh, kw]
    dx = dx_padded[:, :, pad_h : pad_h + H, pad_w : pad_w + W]
    if out is None:
        return np.ascontiguousarray(dx)
    check_out(out, (N, C, H, W), cols.dtype)
    out[...] = dx
    return out
