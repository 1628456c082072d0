"""Max pooling compiled with Numba for the CPU (same arguments and results as reference.py).

One parallel task per image channel (n, c): the forward scans each window in row-major order,
the backward adds each dout[n, c] into dx[n, c] alone, so there are no races and the summation
order is fixed (deterministic).
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.max_pool import check_pooled_shape, max_pool_geometry


@numba.njit(cache=True, inline="always")
def _inside_taps(o: int, S: int, pad: int, D: int, K: int, size: int) -> tuple:
    """[k_lo, k_hi): the taps k of output o that read a pixel, 0 <= o*S - pad + k*D < size."""
    start = o * S - pad  # the pixel tap 0 reads
    k_lo = 0
    while k_lo < K and start + k_lo * D < 0:
        k_lo += 1
    k_hi = K
    while k_hi > k_lo and start + (k_hi - 1) * D >= size:
        k_hi -= 1
    return k_lo, k_hi


@numba.njit(cache=True, parallel=True)
def _forward_kernel(x, out, argmax, KH, KW, SH, SW, pad_h, pad_w, DH, DW):
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for task in numba.prange(N * C):
        n, c = task // C, task % C
        for oh in range(OH):
            ih_start = oh * SH - pad_h  # the image row tap kh=0 reads
            kh_lo, kh_hi = _inside_taps(oh, SH, pad_h, DH, KH, H)  # taps outside are padding: skipped
            for ow in range(OW):
                iw_start = ow * SW - pad_w
                kw_lo, kw_hi = _inside_taps(ow, SW, pad_w, DW, KW, W)
                if kh_lo == kh_hi or kw_lo == kw_hi:  # a dilated window that sees only padding
                    out[n, c, oh, ow] = -np.inf
                    argmax[n, c, oh, ow] = -1
                    continue
                # the first pixel of the window is taken whatever it holds (even -inf)
                best_idx = (ih_start + kh_lo * DH) * W + iw_start + kw_lo * DW
                best = x[n, c, ih_start + kh_lo * DH, iw_start + kw_lo * DW]
                for kh in range(kh_lo, kh_hi):
                    ih = ih_start + kh * DH
                    for kw in range(kw_lo, kw_hi):
                        iw = iw_start + kw * DW
                        value = x[n, c, ih, iw]
                        # strictly larger (ties keep the first) or NaN (NaN propagates), as PyTorch
                        if value > best or np.isnan(value):
                            best = value
                            best_idx = ih * W + iw
                out[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_idx


@numba.njit(cache=True, parallel=True)
def _backward_kernel(dout, argmax, dx):
    N, C, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
    for task in numba.prange(N * C):
        n, c = task // C, task % C  # this task owns dx[n, c]
        for ih in range(H):
            for iw in range(W):
                dx[n, c, ih, iw] = 0
        for oh in range(OH):
            for ow in range(OW):
                idx = argmax[n, c, oh, ow]  # ih*W + iw of the pixel that won (-1: none)
                if idx >= 0:
                    dx[n, c, idx // W, idx % W] += dout[n, c, oh, ow]


def max_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> tuple:
    """The maximum of every window and the flat index of its pixel (see reference.max_pool2d_forward).

    Args:
        x: (N, C, H, W) float32 or float64.
        kernel_size, stride, padding, dilation, ceil_mode: as torch.nn.functional.max_pool2d.

    Returns:
        out: (N, C, OH, OW), x's dtype; argmax: (N, C, OH, OW) int64, ``ih*W + iw``.
    """
    check_float(x, "x")
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    _forward_kernel(x, out, argmax, KH, KW, SH, SW, pad_h, pad_w, DH, DW)
    return out, argmax


def max_pool2d_backward(dout: np.ndarray, argmax: np.ndarray, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False) -> np.ndarray:
    """Send each output gradient to the pixel that won its window (see reference). Deterministic.

    Args:
        dout: (N, C, OH, OW) float32 or float64; argmax: (N, C, OH, OW) int64.
        x_shape: (N, C, H, W) of the pooled input.
        kernel_size, stride, padding, dilation, ceil_mode: as given to ``max_pool2d_forward``.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    check_float(dout, "dout")
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x_shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    check_pooled_shape(dout.shape, argmax.shape, (N, C, OH, OW))
    dx = np.empty((N, C, H, W), dtype=dout.dtype)
    _backward_kernel(np.ascontiguousarray(dout), np.ascontiguousarray(argmax), dx)
    return dx
