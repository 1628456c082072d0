"""im2col / col2im compiled with Numba for the CPU (same layout and arguments as reference.py).

im2col runs one parallel task per column-matrix row (n, c, kh, kw); col2im one per image channel
(n, c), so that each task alone adds into its own dx[n, c]: no races and a fixed summation order.
For each row the range of ``ow`` whose tap lies inside the image is computed once, so the inner
loops are plain copies with no bounds test (slice copies, vectorised, when the stride is 1).

Stride 1 with an output as wide as the input (the "same" padding of a 3x3 conv, the common case)
has a faster pair of kernels, ``_im2col_same_width_kernel`` and ``_col2im_same_width_kernel``:
there, cols row (c, kh, kw) is the whole image plane shifted by ``r*W + s`` (r = kh*DH - pad_h rows,
s = kw*DW - pad_w columns), so it is copied as one run instead of OH short runs of OW, with the
columns that fall off the image's left or right edge (the padding) masked to zero. On small maps
(14x14 RoIs, 32x32 and smaller feature maps) the short runs cost more than the copy itself: the
long runs are 2-6x faster. The values, and the order in which col2im adds them, are the same.
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.im2col import check_cols_shape, check_out, im2col_geometry


@numba.njit(cache=True, inline="always")
def _inside_range(kw: int, W: int, SW: int, pad_w: int, DW: int, OW: int) -> tuple:
    """[ow_lo, ow_hi): the output columns whose tap kw reads an image pixel, 0 <= ow*SW - pad_w + kw*DW < W."""
    ow_lo = -((kw * DW - pad_w) // SW)  # ceil((pad_w - kw*DW) / SW)
    ow_hi = -((kw * DW - pad_w - W) // SW)  # ceil((W + pad_w - kw*DW) / SW)
    ow_lo = min(max(ow_lo, 0), OW)
    ow_hi = min(max(ow_hi, ow_lo), OW)
    return ow_lo, ow_hi


@numba.njit(cache=True, parallel=True)
def _im2col_kernel(x, cols, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW):
    N, C, H, W = x.shape
    for task in numba.prange(N * C * KH * KW):
        # task -> (n, c, kh, kw); row = (c*KH + kh)*KW + kw is the row of cols[n] it fills
        n, row = task // (C * KH * KW), task % (C * KH * KW)
        c, kh, kw = row // (KH * KW), (row // KW) % KH, row % KW
        image, cols_row = x[n, c], cols[n, row]  # (H, W) and (OH*OW,) views
        ow_lo, ow_hi = _inside_range(kw, W, SW, pad_w, DW, OW)
        iw_lo = ow_lo * SW - pad_w + kw * DW  # the image column output column ow_lo reads
        for oh in range(OH):
            ih = oh * SH - pad_h + kh * DH  # the image row tap kh of output row oh reads
            start = oh * OW  # column of (oh, 0) in cols
            if ih < 0 or ih >= H:
                cols_row[start : start + OW] = 0  # the whole output row reads zero padding
                continue
            cols_row[start : start + ow_lo] = 0
            if SW == 1:  # a contiguous run of pixels: a slice copy, which LLVM vectorises
                cols_row[start + ow_lo : start + ow_hi] = image[ih, iw_lo : iw_lo + ow_hi - ow_lo]
            else:
                for ow in range(ow_lo, ow_hi):
                    cols_row[start + ow] = image[ih, ow * SW - pad_w + kw * DW]
            cols_row[start + ow_hi : start + OW] = 0


@numba.njit(cache=True, parallel=True)
def _col2im_kernel(cols, dx, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW):
    N, C, H, W = dx.shape
    for task in numba.prange(N * C):
        n, c = task // C, task % C  # this task owns dx[n, c]: nobody else writes there
        image = dx[n, c]  # (H, W) view
        image[:, :] = 0
        for kh in range(KH):
            for kw in range(KW):
                cols_row = cols[n, (c * KH + kh) * KW + kw]
                ow_lo, ow_hi = _inside_range(kw, W, SW, pad_w, DW, OW)
                iw_lo = ow_lo * SW - pad_w + kw * DW
                for oh in range(OH):
                    ih = oh * SH - pad_h + kh * DH
                    if ih < 0 or ih >= H:
                        continue  # this tap read the zero padding: nothing to give back
                    start = oh * OW
                    if SW == 1:
                        image[ih, iw_lo : iw_lo + ow_hi - ow_lo] += cols_row[start + ow_lo : start + ow_hi]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            image[ih, ow * SW - pad_w + kw * DW] += cols_row[start + ow]


@numba.njit(cache=True)
def _column_masks(W: int, KW: int, pad_w: int, DW: int, OH: int, OW: int) -> np.ndarray:
    """(KW, OH*OW) bool: True where tap kw of output column ow reads inside the image, 0 <= ow + s < W."""
    masks = np.zeros((KW, OH * OW), dtype=np.bool_)
    for kw in range(KW):
        s = kw * DW - pad_w  # the column shift of tap kw
        for oh in range(OH):
            for ow in range(OW):
                masks[kw, oh * OW + ow] = 0 <= ow + s < W
    return masks


@numba.njit(cache=True, inline="always")
def _same_width_run(kh: int, kw: int, H: int, W: int, pad_h: int, pad_w: int, DH: int, DW: int, L: int) -> tuple:
    """Stride 1, OW == W: cols column j of tap (kh, kw) reads plane pixel j + offset; the columns
    [j_lo, j_hi) read rows inside the image (the others read the zero padding above or below)."""
    r = kh * DH - pad_h  # row shift
    offset = r * W + kw * DW - pad_w
    j_lo = min(max(0, -offset, -r * W), L)
    j_hi = max(min(L, H * W - offset, (H - r) * W), j_lo)
    return offset, j_lo, j_hi


@numba.njit(cache=True, parallel=True)
def _im2col_same_width_kernel(x, cols, masks, KH, KW, pad_h, pad_w, DH, DW, OH, OW):
    N, C, H, W = x.shape
    L = OH * OW
    planes = x.reshape(N * C, H * W)
    rows = cols.reshape(N * C * KH * KW, L)
    for task in numba.prange(N * C):  # task = n*C + c: the plane x[n, c] and its KH*KW rows of cols
        plane = planes[task]
        for kh in range(KH):
            for kw in range(KW):
                cols_row = rows[task * KH * KW + kh * KW + kw]
                offset, j_lo, j_hi = _same_width_run(kh, kw, H, W, pad_h, pad_w, DH, DW, L)
                cols_row[:j_lo] = 0
                cols_row[j_hi:] = 0
                # views, so that the loop index starts at 0 and LLVM vectorises the masked copy
                dst, src, inside = cols_row[j_lo:j_hi], plane[j_lo + offset : j_hi + offset], masks[kw, j_lo:j_hi]
                for t in range(dst.size):
                    dst[t] = src[t] if inside[t] else 0


@numba.njit(cache=True, parallel=True)
def _col2im_same_width_kernel(cols, dx, masks, KH, KW, pad_h, pad_w, DH, DW, OH, OW):
    N, C, H, W = dx.shape
    L = OH * OW
    planes = dx.reshape(N * C, H * W)
    rows = cols.reshape(N * C * KH * KW, L)
    for task in numba.prange(N * C):  # this task owns dx[n, c]: nobody else writes there
        plane = planes[task]
        plane[:] = 0
        for kh in range(KH):
            for kw in range(KW):
                cols_row = rows[task * KH * KW + kh * KW + kw]
                offset, j_lo, j_hi = _same_width_run(kh, kw, H, W, pad_h, pad_w, DH, DW, L)
                dst, src, inside = plane[j_lo + offset : j_hi + offset], cols_row[j_lo:j_hi], masks[kw, j_lo:j_hi]
                for t in range(dst.size):
                    dst[t] += src[t] if inside[t] else 0  # + 0 leaves a pixel as it is: the same sums


def _same_width(SH: int, SW: int, W: int, OW: int) -> bool:
    return SH == 1 and SW == 1 and OW == W


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0, dilation=1, out=None) -> np.ndarray:
    """Unfold every (KH, KW) patch of ``x`` into a column (see reference.im2col).

    Args:
        x: (N, C, H, W) float32 or float64 images.
        kernel_size, stride, padding, dilation: ints or (height, width) pairs.
        out: optional C-contiguous (N, C*KH*KW, OH*OW) array of x's dtype to write cols into.

    Returns:
        cols: (N, C*KH*KW, OH*OW), x's dtype (``out`` when given).
    """
    check_float(x, "x")
    geometry = im2col_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)
    check_out(out, (N, C * KH * KW, OH * OW), x.dtype)
    if _same_width(SH, SW, W, OW):
        masks = _column_masks(W, KW, pad_w, DW, OH, OW)
        _im2col_same_width_kernel(x, out, masks, KH, KW, pad_h, pad_w, DH, DW, OH, OW)
    else:
        _im2col_kernel(x, out, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)
    return out


def col2im(cols: np.ndarray, x_shape, kernel_size, stride=1, padding=0, dilation=1, out=None) -> np.ndarray:
    """Fold columns back into images, adding overlaps (see reference.col2im). Deterministic.

    Args:
        cols: (N, C*KH*KW, OH*OW) float32 or float64.
        x_shape: (N, C, H, W) of the images.
        kernel_size, stride, padding, dilation: as given to ``im2col``.
        out: optional C-contiguous (N, C, H, W) array of cols' dtype to write dx into (overwritten).

    Returns:
        dx: (N, C, H, W), cols' dtype (``out`` when given).
    """
    check_float(cols, "cols")
    geometry = im2col_geometry(x_shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    check_cols_shape(cols.shape, geometry)
    cols = np.ascontiguousarray(cols)
    if out is None:
        out = np.empty((N, C, H, W), dtype=cols.dtype)
    check_out(out, (N, C, H, W), cols.dtype)
    dx = out
    if _same_width(SH, SW, W, OW):
        masks = _column_masks(W, KW, pad_w, DW, OH, OW)
        _col2im_same_width_kernel(cols, dx, masks, KH, KW, pad_h, pad_w, DH, DW, OH, OW)
    else:
        _col2im_kernel(cols, dx, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)
    return dx
