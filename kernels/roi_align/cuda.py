"""RoIAlign as Numba-CUDA kernels (same arguments and results as reference.py).

Thread mapping (1-D grid, up to 256 threads a block):
  forward: one thread per output element (K, C, PH, PW), i = ((k*C + c)*PH + ph)*PW + pw; it
      computes RoI k's geometry itself and averages the grid_h x grid_w samples of bin (ph, pw).
  backward: one thread per dout element, same mapping; it adds dout/count times each bilinear
      weight into the 4 pixels of every sample with cuda.atomic.add, because samples of other
      bins and RoIs hit the same pixels. The order of those additions is not deterministic, so
      float sums can differ in the last bits from run to run.
  max forward / backward (``roi_align_max_*``): the same mapping; the forward keeps the largest
      sample and its index, the backward adds dout into the 4 pixels of that one sample (atomics).
Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

from minimaskrcnn.kernels._checks import check_argmax_shape, check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels._cuda import launch, unravel_4d
from minimaskrcnn.kernels.roi_align import _scalar
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST
from numba import cuda

from minimaskrcnn.backend import get_array_module

# _scalar.py's helpers (which reference.py calls as plain Python), compiled as CUDA device functions
roi_geometry, sample_coord, interp_1d = compile_helpers(
    cuda.jit(device=True), _scalar.roi_geometry, _scalar.sample_coord, _scalar.interp_1d
)


@cuda.jit
def _forward_kernel(input, rois, spatial_scale, sampling_ratio, aligned, output):
    i = cuda.grid(1)
    K, C, PH, PW = output.shape
    if i >= K * C * PH * PW:
        return
    k, c, ph, pw = unravel_4d(i, C, PH, PW)  # i = ((k*C + c)*PH + ph)*PW + pw
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
    k, c, ph, pw = unravel_4d(i, C, PH, PW)  # i = ((k*C + c)*PH + ph)*PW + pw
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
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
    xp = get_array_module(input)
    K, C = rois.shape[0], input.shape[1]
    output = xp.zeros((K, C, PH, PW), dtype=input.dtype)
    launch(
        _forward_kernel, output.size, xp.ascontiguousarray(input), xp.ascontiguousarray(rois), float(spatial_scale),
        int(sampling_ratio), bool(aligned), output,
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
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    launch(
        _backward_kernel, dout.size, xp.ascontiguousarray(dout), xp.ascontiguousarray(rois), float(spatial_scale),
        int(sampling_ratio), bool(aligned), dx,
    )
    return dx


# ----------------------------------------------------------------------------------- max pooling
@cuda.jit
def _max_forward_kernel(input, rois, spatial_scale, sampling_ratio, aligned, output, argmax):
    i = cuda.grid(1)
    K, C, PH, PW = output.shape
    if i >= K * C * PH * PW:
        return
    k, c, ph, pw = unravel_4d(i, C, PH, PW)  # i = ((k*C + c)*PH + ph)*PW + pw
    T = input.dtype.type
    H, W = input.shape[2], input.shape[3]
    b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, _ = roi_geometry(
        rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
    )
    maxval = T(LOWEST)
    maxidx = EMPTY_BIN
    for iy in range(grid_h):
        y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
        inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
        for ix in range(grid_w):
            x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
            inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
            value = T(0.0)  # outside the map: the sample is 0
            if inside_y and inside_x:
                value = (
                    hy * hx * input[b, c, y_low, x_low]
                    + hy * lx * input[b, c, y_low, x_high]
                    + ly * hx * input[b, c, y_high, x_low]
                    + ly * lx * input[b, c, y_high, x_high]
                )
            if value > maxval:  # strict: ties keep the first sample; NaN never wins
                maxval = value
                maxidx = iy * grid_w + ix
    output[k, c, ph, pw] = maxval if maxidx != EMPTY_BIN else T(0.0)
    argmax[k, c, ph, pw] = maxidx


@cuda.jit
def _max_backward_kernel(dout, rois, argmax, spatial_scale, sampling_ratio, aligned, dx):
    i = cuda.grid(1)
    K, C, PH, PW = dout.shape
    if i >= K * C * PH * PW:
        return
    k, c, ph, pw = unravel_4d(i, C, PH, PW)
    idx = argmax[k, c, ph, pw]
    if idx == EMPTY_BIN:
        return
    T = dout.dtype.type
    H, W = dx.shape[2], dx.shape[3]
    b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, _ = roi_geometry(
        rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
    )
    iy, ix = idx // grid_w, idx % grid_w  # the winning sample
    y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
    inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
    x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
    inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
    if inside_y and inside_x:
        g = dout[k, c, ph, pw]
        # atomic: winners of other bins and RoIs can read the same pixels
        cuda.atomic.add(dx, (b, c, y_low, x_low), g * (hy * hx))
        cuda.atomic.add(dx, (b, c, y_low, x_high), g * (hy * lx))
        cuda.atomic.add(dx, (b, c, y_high, x_low), g * (ly * hx))
        cuda.atomic.add(dx, (b, c, y_high, x_high), g * (ly * lx))


def roi_align_max_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """The largest bilinear sample of every bin, and which one (see reference.roi_align_max_forward).

    Args:
        input: (N, C, H, W) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) input's dtype and array module, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as the reference.

    Returns:
        output: (K, C, PH, PW), input's dtype; argmax: (K, C, PH, PW) int32, -1 for a bin without
        samples; both of input's array module.
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
    xp = get_array_module(input)
    K, C = rois.shape[0], input.shape[1]
    output = xp.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = xp.full((K, C, PH, PW), EMPTY_BIN, dtype=xp.int32)
    launch(
        _max_forward_kernel, output.size, xp.ascontiguousarray(input), xp.ascontiguousarray(rois),
        float(spatial_scale), int(sampling_ratio), bool(aligned), output, argmax,
    )
    return output, argmax


def roi_align_max_backward(
    dout,
    rois,
    argmax,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    input_shape,
):
    """Gradient of ``roi_align_max_forward`` w.r.t. its input (see reference.roi_align_max_backward).

    Not deterministic: atomic additions land in any order (differences in the last bits).

    Args:
        dout: (K, C, PH, PW) float32 or float64, CuPy (GPU) or NumPy (simulator).
        rois: (K, 5) dout's dtype and array module, as given to the forward.
        argmax: (K, C, PH, PW) int32, as the forward returned it.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype and array module.
    """
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
    check_argmax_shape(argmax, dout.shape, "roi_align")
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    launch(
        _max_backward_kernel, dout.size, xp.ascontiguousarray(dout), xp.ascontiguousarray(rois),
        xp.ascontiguousarray(argmax, dtype=xp.int32), float(spatial_scale), int(sampling_ratio), bool(aligned), dx,
    )
    return dx
