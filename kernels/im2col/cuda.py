"""im2col / col2im as Numba-CUDA kernels (same layout and arguments as reference.py).

Thread mapping (1-D grid, up to 256 threads a block, kernels/_cuda.py):
  im2col: one thread per element of cols (N, C*KH*KW, OH*OW). Thread i is
      i = (n*(C*KH*KW) + row)*(OH*OW) + col,  row = (c*KH + kh)*KW + kw,  col = oh*OW + ow,
      so neighbouring threads take neighbouring ow: coalesced writes.
  col2im: one thread per pixel of dx (N, C, H, W), i = ((n*C + c)*H + ih)*W + iw. It GATHERS the
      cols entries that im2col copied from its pixel (taps with ih = oh*SH - pad_h + kh*DH for an
      integer oh in [0, OH), likewise for w): no atomics, a fixed summation order, deterministic.
Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels._cuda import launch, unravel_4d
from minimaskrcnn.kernels.im2col import _scalar, check_cols_shape, check_out, im2col_geometry
from numba import cuda

from minimaskrcnn.backend import get_array_module

# _scalar.py's window rule, compiled as a CUDA device function
(tap_output,) = compile_helpers(cuda.jit(device=True), _scalar.tap_output)


@cuda.jit
def _im2col_kernel(x, cols, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW):
    i = cuda.grid(1)
    N, C, H, W = x.shape
    if i >= N * C * KH * KW * OH * OW:
        return
    col = i % (OH * OW)  # oh*OW + ow
    n_row = i // (OH * OW)
    row = n_row % (C * KH * KW)  # (c*KH + kh)*KW + kw
    n = n_row // (C * KH * KW)
    c, kh, kw = row // (KH * KW), (row // KW) % KH, row % KW
    oh, ow = col // OW, col % OW
    ih = oh * SH - pad_h + kh * DH  # the pixel tap (kh, kw) of output (oh, ow) reads
    iw = ow * SW - pad_w + kw * DW
    if 0 <= ih < H and 0 <= iw < W:
        cols[n, row, col] = x[n, c, ih, iw]
    else:
        cols[n, row, col] = 0  # zero padding


@cuda.jit
def _col2im_kernel(cols, dx, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW):
    i = cuda.grid(1)
    N, C, H, W = dx.shape
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
            acc += cols[n, (c * KH + kh) * KW + kw, oh * OW + ow]
    dx[n, c, ih, iw] = acc


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out=None):
    """Unfold every (KH, KW) patch of ``x`` into a column (see reference.im2col).

    Args:
        x: (N, C, H, W) float32 or float64 images, CuPy (GPU) or NumPy (simulator).
        kernel_size, stride, padding, dilation: ints or (height, width) pairs.
        out: optional C-contiguous (N, C*KH*KW, OH*OW) array of x's dtype and array module to
            write cols into.

    Returns:
        cols: (N, C*KH*KW, OH*OW), x's dtype and array module (``out`` when given).
    """
    check_float(x, "x")
    geometry = im2col_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    if out is None:
        out = xp.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)
    check_out(out, (N, C * KH * KW, OH * OW), x.dtype)
    launch(_im2col_kernel, out.size, x, out, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)
    return out


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1, out=None):
    """Fold columns back into images, adding overlaps (see reference.col2im). Deterministic (a gather).

    Args:
        cols: (N, C*KH*KW, OH*OW) float32 or float64, CuPy (GPU) or NumPy (simulator).
        x_shape: (N, C, H, W) of the images.
        kernel_size, stride, padding, dilation: as given to ``im2col``.
        out: optional C-contiguous (N, C, H, W) array of cols' dtype and array module to write dx
            into (overwritten).

    Returns:
        dx: (N, C, H, W), cols' dtype and array module (``out`` when given).
    """
    check_float(cols, "cols")
    geometry = im2col_geometry(x_shape, kernel_size, stride, padding, dilation)
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    check_cols_shape(cols.shape, geometry)
    xp = get_array_module(cols)
    cols = xp.ascontiguousarray(cols)
    if out is None:
        dx = xp.zeros((N, C, H, W), dtype=cols.dtype)
    else:
        check_out(out, (N, C, H, W), cols.dtype)
        dx = out
        dx[...] = 0  # the kernel adds to what is there
    launch(_col2im_kernel, dx.size, cols, dx, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)
    return dx
