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

from minimaskrcnn.kernels._checks import check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels._cuda import launch, unravel_4d
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST, _scalar
from numba import cuda

from minimaskrcnn.backend import get_array_module

# _scalar.py's helpers (which reference.py calls as plain Python), compiled as CUDA device functions
round_half_away, pool_geometry, bin_range = compile_helpers(
    cuda.jit(device=True), _scalar.round_half_away, _scalar.pool_geometry, _scalar.bin_range
)


@cuda.jit
def _forward_kernel(input, rois, spatial_scale, output, argmax):
    i = cuda.grid(1)
    K, C, PH, PW = output.shape
    if i >= K * C * PH * PW:
        return
    k, c, ph, pw = unravel_4d(i, C, PH, PW)  # i = ((k*C + c)*PH + ph)*PW + pw
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
    k, c, ph, pw = unravel_4d(i, C, PH, PW)  # i = ((k*C + c)*PH + ph)*PW + pw
    idx = argmax[k, c, ph, pw]
    if idx != EMPTY_BIN:
        W = dx.shape[3]
        b = int(rois[k, 0])
        cuda.atomic.add(dx, (b, c, idx // W, idx % W), dout[k, c, ph, pw])  # atomic: shared winners


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
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_pool")
    xp = get_array_module(input)
    K, C = rois.shape[0], input.shape[1]
    output = xp.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = xp.full((K, C, PH, PW), EMPTY_BIN, dtype=xp.int32)
    launch(_forward_kernel, output.size, xp.ascontiguousarray(input), xp.ascontiguousarray(rois), float(spatial_scale),
           output, argmax)
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
    K, _, PH, PW = argmax.shape
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, PH, PW, "roi_pool")
    xp = get_array_module(dout)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    launch(_backward_kernel, dout.size, xp.ascontiguousarray(dout), xp.ascontiguousarray(rois),
           xp.ascontiguousarray(argmax), dx)
    return dx
