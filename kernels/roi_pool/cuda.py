"""RoIPool as Numba-CUDA kernels (same arguments and results as reference.py).

Thread mapping (1-D grid, up to 256 threads a block):
  forward: one thread per output element (K, C, PH, PW), i = ((k*C + c)*PH + ph)*PW + pw; it
      rounds RoI k itself and scans bin (ph, pw) in row-major order (ties keep the first pixel,
      NaN never wins), writing the maximum and its pixel ``h*W + w`` (-1 for an empty bin).
  backward: one thread per dout element, same mapping; it adds dout into the saved argmax pixel
      with cuda.atomic.add (a pixel can win several bins and RoIs). The order of those additions is
      not deterministic, so float sums can differ in the last bits from run to run.
Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

import math

from minimaskrcnn.kernels.roi_align import check_dout_shape, check_pooled_size, check_roi_inputs, check_rois
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST
from numba import cuda

from minimaskrcnn.backend import get_array_module

_THREADS_PER_BLOCK = 256


@cuda.jit(device=True)
def round_half_away(v):
    """As reference.round_half_away: C's round, halves away from zero."""
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


@cuda.jit(device=True)
def pool_geometry(rois, k, spatial_scale, pooled_height, pooled_width):
    """As reference.pool_geometry: ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w)``."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    roi_start_w = round_half_away(rois[k, 1] * scale)
    roi_start_h = round_half_away(rois[k, 2] * scale)
    roi_end_w = round_half_away(rois[k, 3] * scale)
    roi_end_h = round_half_away(rois[k, 4] * scale)
    roi_width = max(roi_end_w - roi_start_w + 1, 1)
    roi_height = max(roi_end_h - roi_start_h + 1, 1)
    bin_size_h = T(roi_height) / T(pooled_height)
    bin_size_w = T(roi_width) / T(pooled_width)
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w


@cuda.jit(device=True)
def bin_range(p, bin_size, roi_start, size, T):
    """As reference.bin_range: pixels [start, end) of bin p, clipped to [0, size]."""
    start = int(math.floor(T(p) * bin_size)) + roi_start
    end = int(math.ceil(T(p + 1) * bin_size)) + roi_start
    return min(max(start, 0), size), min(max(end, 0), size)


@cuda.jit
def _forward_kernel(input, rois, spatial_scale, output, argmax):
    i = cuda.grid(1)
    K, C, PH, PW = output.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    T = input.dtype.type
    H, W = input.shape[2], input.shape[3]
    b, roi_start_h, roi_start_w, bin_size_h, bin_size_w = pool_geometry(rois, k, spatial_scale, PH, PW)
    hstart, hend = bin_range(ph, bin_size_h, roi_start_h, H, T)
    wstart, wend = bin_range(pw, bin_size_w, roi_start_w, W, T)
    maxval = T(0.0) if (hend <= hstart or wend <= wstart) else T(LOWEST)  # empty bin: 0
    maxidx = EMPTY_BIN
    for h in range(hstart, hend):
        for w in range(wstart, wend):
            value = input[b, c, h, w]
            if value > maxval:  # strict: ties keep the first pixel; NaN never wins
                maxval = value
                maxidx = h * W + w
    output[k, c, ph, pw] = maxval
    argmax[k, c, ph, pw] = maxidx


@cuda.jit
def _backward_kernel(dout, rois, argmax, dx):
    i = cuda.grid(1)
    K, C, PH, PW = dout.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    idx = argmax[k, c, ph, pw]
    if idx != EMPTY_BIN:
        W = dx.shape[3]
        b = int(rois[k, 0])
        cuda.atomic.add(dx, (b, c, idx // W, idx % W), dout[k, c, ph, pw])  # atomic: shared winners


def _launch_shape(count: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``count`` threads; small launches get one small block."""
    threads = min(_THREADS_PER_BLOCK, max(count, 1))
    return (count + threads - 1) // threads, threads


def roi_pool_forward(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """Max-pool every RoI to PH x PW integer-pixel bins (see reference.roi_pool_forward).

    Args:
        input: (N, C, H, W) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) input's dtype and array module, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width: as the reference.

    Returns:
        output: (K, C, PH, PW) input's dtype; argmax: (K, C, PH, PW) int32, ``h*W + w`` or -1;
        input's array module.
    """
    check_roi_inputs(input, rois, "roi_pool")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_pool")
    xp = get_array_module(input)
    K, C = rois.shape[0], input.shape[1]
    output = xp.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = xp.full((K, C, PH, PW), EMPTY_BIN, dtype=xp.int32)
    if output.size:
        blocks, threads = _launch_shape(output.size)
        _forward_kernel[blocks, threads](
            xp.ascontiguousarray(input), xp.ascontiguousarray(rois), float(spatial_scale), output, argmax
        )
    return output, argmax


def roi_pool_backward(dout, rois, argmax, input_shape):
    """Gradient of ``roi_pool_forward`` w.r.t. its input (see reference.roi_pool_backward).

    Not deterministic: atomic additions land in any order (differences in the last bits).

    Args:
        dout: (K, C, PH, PW) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) dout's dtype and array module, as given to the forward.
        argmax: (K, C, PH, PW) int, as the forward returned it.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype and array module.
    """
    N, C, H, W = (int(s) for s in input_shape)
    check_rois(rois, dout.dtype, N, "roi_pool")
    K, _, PH, PW = argmax.shape
    check_dout_shape(dout.shape, rois.shape, input_shape, PH, PW, "roi_pool")
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    if dout.size:
        blocks, threads = _launch_shape(dout.size)
        _backward_kernel[blocks, threads](
            xp.ascontiguousarray(dout), xp.ascontiguousarray(rois), xp.ascontiguousarray(argmax), dx
        )
    return dx
