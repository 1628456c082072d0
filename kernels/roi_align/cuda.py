"""RoIAlign as Numba-CUDA kernels (same arguments and results as reference.py).

Thread mapping (1-D grid, up to 256 threads a block):
  forward: one thread per output element (K, C, PH, PW), i = ((k*C + c)*PH + ph)*PW + pw; it
      computes RoI k's geometry itself and averages the grid_h x grid_w samples of bin (ph, pw).
  backward: one thread per dout element, same mapping; it adds dout/count times each bilinear
      weight into the 4 pixels of every sample with cuda.atomic.add, because samples of other
      bins and RoIs hit the same pixels. The order of those additions is not deterministic, so
      float sums can differ in the last bits from run to run.
Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

import math

from minimaskrcnn.kernels.roi_align import check_dout_shape, check_pooled_size, check_roi_inputs, check_rois
from numba import cuda

from minimaskrcnn.backend import get_array_module

_THREADS_PER_BLOCK = 256


@cuda.jit(device=True)
def roi_geometry(rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """As reference.roi_geometry: ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count)``."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    offset = T(0.5) if aligned else T(0.0)
    roi_start_w = rois[k, 1] * scale - offset
    roi_start_h = rois[k, 2] * scale - offset
    roi_end_w = rois[k, 3] * scale - offset
    roi_end_h = rois[k, 4] * scale - offset
    roi_width = roi_end_w - roi_start_w
    roi_height = roi_end_h - roi_start_h
    if not aligned:
        roi_width = max(roi_width, T(1.0))
        roi_height = max(roi_height, T(1.0))
    bin_size_h = roi_height / T(pooled_height)
    bin_size_w = roi_width / T(pooled_width)
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_height / T(pooled_height)))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_width / T(pooled_width)))
    count = T(max(grid_h * grid_w, 1))
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count


@cuda.jit(device=True)
def sample_coord(roi_start, p, bin_size, i, grid, T):
    """As reference.sample_coord."""
    return roi_start + T(p) * bin_size + T(i + 0.5) * bin_size / T(grid)


@cuda.jit(device=True)
def interp_1d(coord, size, T):
    """As reference.interp_1d: ``(inside, low, high, l, h)``."""
    if not (coord >= -1.0 and coord <= size):
        return False, 0, 0, T(0.0), T(0.0)
    if coord <= 0:
        coord = T(0.0)
    low = int(coord)
    if low >= size - 1:
        low = size - 1
        high = size - 1
        coord = T(low)
    else:
        high = low + 1
    l = coord - T(low)
    h = T(1.0) - l
    return True, low, high, l, h


@cuda.jit
def _forward_kernel(input, rois, spatial_scale, sampling_ratio, aligned, output):
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
    b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count = roi_geometry(
        rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
    )
    total = T(0.0)
    for iy in range(grid_h):
        y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
        inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
        for ix in range(grid_w):
            x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
            inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
            if inside_y and inside_x:
                total += (
                    hy * hx * input[b, c, y_low, x_low]
                    + hy * lx * input[b, c, y_low, x_high]
                    + ly * hx * input[b, c, y_high, x_low]
                    + ly * lx * input[b, c, y_high, x_high]
                )
    output[k, c, ph, pw] = total / count


@cuda.jit
def _backward_kernel(dout, rois, spatial_scale, sampling_ratio, aligned, dx):
    i = cuda.grid(1)
    K, C, PH, PW = dout.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    T = dout.dtype.type
    H, W = dx.shape[2], dx.shape[3]
    b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count = roi_geometry(
        rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
    )
    g = dout[k, c, ph, pw] / count
    for iy in range(grid_h):
        y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
        inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
        for ix in range(grid_w):
            x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
            inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
            if inside_y and inside_x:
                # atomic: threads of other bins and RoIs add into the same pixels
                cuda.atomic.add(dx, (b, c, y_low, x_low), g * (hy * hx))
                cuda.atomic.add(dx, (b, c, y_low, x_high), g * (hy * lx))
                cuda.atomic.add(dx, (b, c, y_high, x_low), g * (ly * hx))
                cuda.atomic.add(dx, (b, c, y_high, x_high), g * (ly * lx))


def _launch_shape(count: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``count`` threads; small launches get one small block."""
    threads = min(_THREADS_PER_BLOCK, max(count, 1))
    return (count + threads - 1) // threads, threads


def roi_align_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """Pool every RoI to PH x PW bilinear averages (see reference.roi_align_forward).

    Args:
        input: (N, C, H, W) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) input's dtype and array module, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as the reference.

    Returns:
        output: (K, C, PH, PW), input's dtype and array module.
    """
    check_roi_inputs(input, rois, "roi_align")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_align")
    xp = get_array_module(input)
    K, C = rois.shape[0], input.shape[1]
    output = xp.zeros((K, C, PH, PW), dtype=input.dtype)
    if output.size:
        blocks, threads = _launch_shape(output.size)
        _forward_kernel[blocks, threads](
            xp.ascontiguousarray(input), xp.ascontiguousarray(rois), float(spatial_scale), int(sampling_ratio),
            bool(aligned), output,
        )
    return output


def roi_align_backward(
    dout,
    rois,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    input_shape,
):
    """Gradient of ``roi_align_forward`` w.r.t. its input (see reference.roi_align_backward).

    Not deterministic: atomic additions land in any order (differences in the last bits).

    Args:
        dout: (K, C, PH, PW) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) dout's dtype and array module, as given to the forward.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype and array module.
    """
    N, C, H, W = (int(s) for s in input_shape)
    check_rois(rois, dout.dtype, N, "roi_align")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_align")
    check_dout_shape(dout.shape, rois.shape, input_shape, PH, PW, "roi_align")
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    if dout.size:
        blocks, threads = _launch_shape(dout.size)
        _backward_kernel[blocks, threads](
            xp.ascontiguousarray(dout), xp.ascontiguousarray(rois), float(spatial_scale), int(sampling_ratio),
            bool(aligned), dx,
        )
    return dx
