"""Max pooling as Numba-CUDA kernels (same arguments and results as reference.py).

Thread mapping (1-D grid, up to 256 threads a block, kernels/_cuda.py):
  forward: one thread per output element (N, C, OH, OW), i = ((n*C + c)*OH + oh)*OW + ow; it scans
      its window in row-major order (ties keep the first maximum, NaN wins, as in PyTorch).
  backward: one thread per input pixel (N, C, H, W), i = ((n*C + c)*H + ih)*W + iw. It GATHERS the
      dout of every output whose window covers the pixel and whose argmax is this pixel, so there
      are no atomics and the summation order is fixed (deterministic).
Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

import math

from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels._cuda import launch, unravel_4d
from minimaskrcnn.kernels.im2col import _scalar
from minimaskrcnn.kernels.max_pool import check_pooled_shape, max_pool_geometry
from numba import cuda

from minimaskrcnn.backend import get_array_module

# the window rule of im2col's _scalar.py, compiled as a CUDA device function
(tap_output,) = compile_helpers(cuda.jit(device=True), _scalar.tap_output)


@cuda.jit
def _forward_kernel(x, out, argmax, KH, KW, SH, SW, pad_h, pad_w, DH, DW):
    i = cuda.grid(1)
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    if i >= N * C * OH * OW:
        return
    n, c, oh, ow = unravel_4d(i, C, OH, OW)  # i = ((n*C + c)*OH + oh)*OW + ow
    best = x[n, c, 0, 0]  # overwritten by the first pixel of the window (best_idx < 0)
    best_idx = -1
    for kh in range(KH):
        ih = oh * SH - pad_h + kh * DH  # the image row tap kh of output row oh reads
        if ih < 0 or ih >= H:
            continue
        for kw in range(KW):
            iw = ow * SW - pad_w + kw * DW
            if iw < 0 or iw >= W:
                continue
            value = x[n, c, ih, iw]
            if best_idx < 0 or value > best or value != value:  # value != value: NaN
                best = value
                best_idx = ih * W + iw
    if best_idx < 0:  # a dilated window that sees only padding
        best = -math.inf
    out[n, c, oh, ow] = best
    argmax[n, c, oh, ow] = best_idx


@cuda.jit
def _backward_kernel(dout, argmax, dx, KH, KW, SH, SW, pad_h, pad_w, DH, DW):
    i = cuda.grid(1)
    N, C, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
    if i >= N * C * H * W:
        return
    n, c, ih, iw = unravel_4d(i, C, H, W)  # i = ((n*C + c)*H + ih)*W + iw
    acc = dx[n, c, ih, iw]  # 0 (the wrapper allocates zeros), in dx's dtype
    for kh in range(KH):
        oh = tap_output(ih, kh, SH, pad_h, DH, OH)  # the output row whose tap kh reads row ih (-1: none)
        if oh < 0:
            continue
        for kw in range(KW):
            ow = tap_output(iw, kw, SW, pad_w, DW, OW)
            if ow < 0:
                continue
            if argmax[n, c, oh, ow] == ih * W + iw:
                acc += dout[n, c, oh, ow]
    dx[n, c, ih, iw] = acc


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> tuple:
    """The maximum of every window and the flat index of its pixel (see reference.max_pool2d_forward).

    Args:
        x: (N, C, H, W) float32 or float64, CuPy (GPU) or NumPy (simulator).
        kernel_size, stride, padding, dilation, ceil_mode: as torch.nn.functional.max_pool2d.

    Returns:
        out: (N, C, OH, OW), x's dtype; argmax: (N, C, OH, OW) int64, ``ih*W + iw``; x's array module.
    """
    check_float(x, "x")
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out = xp.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = xp.empty((N, C, OH, OW), dtype=xp.int64)
    launch(_forward_kernel, out.size, x, out, argmax, KH, KW, SH, SW, pad_h, pad_w, DH, DW)
    return out, argmax


def max_pool2d_backward(dout, argmax, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Send each output gradient to the pixel that won its window (see reference). Deterministic (a gather).

    Args:
        dout: (N, C, OH, OW) float32 or float64; argmax: (N, C, OH, OW) int64, both CuPy (GPU) or
            NumPy (simulator).
        x_shape: (N, C, H, W) of the pooled input.
        kernel_size, stride, padding, dilation, ceil_mode: as given to ``max_pool2d_forward``.

    Returns:
        dx: (N, C, H, W), dout's dtype and array module.
    """
    check_float(dout, "dout")
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x_shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    check_pooled_shape(dout.shape, argmax.shape, (N, C, OH, OW))
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    launch(_backward_kernel, dx.size, xp.ascontiguousarray(dout), xp.ascontiguousarray(argmax), dx, KH, KW, SH, SW,
           pad_h, pad_w, DH, DW)
    return dx
