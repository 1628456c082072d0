"""RoIPool in NumPy, written like the equations: the spec of every backend and the lesson's code.

Loops over RoIs k, bins (ph, pw) and the pixels (h, w) of each bin; each line handles all C
channels at once (``input[b, :, h, w]``). The scalar helpers (rounding, geometry, bin ranges) are
``_scalar.py``'s, as plain Python. See ``minimaskrcnn.kernels.roi_pool`` for the equations.
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST
from minimaskrcnn.kernels.roi_pool._scalar import bin_range, pool_geometry, round_half_away


def roi_pool_forward(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """Max-pool every RoI to a fixed PH x PW grid of integer-pixel bins.

    Args:
        input: (N, C, H, W) float32 or float64 feature map.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale: feature-map pixels per input-image pixel (1/16 for stride 16).
        pooled_height, pooled_width: PH, PW, the output bins per RoI.

    Returns:
        output: (K, C, PH, PW), input's dtype: the maximum of each bin, 0 for an empty bin.
        argmax: (K, C, PH, PW) int32: ``h * W + w`` of the first maximum in row-major order, -1
            (EMPTY_BIN) for an empty bin. NaN never wins (as torchvision's CPU kernel).
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_pool")
    N, C, H, W = input.shape
    K = rois.shape[0]
    T = input.dtype.type
    output = np.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = np.full((K, C, PH, PW), EMPTY_BIN, dtype=np.int32)
    for k in range(K):
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w = pool_geometry(rois, k, spatial_scale, PH, PW)
        for ph in range(PH):
            hstart, hend = bin_range(ph, bin_size_h, roi_start_h, H, T)
            for pw in range(PW):
                wstart, wend = bin_range(pw, bin_size_w, roi_start_w, W, T)
                if hend <= hstart or wend <= wstart:
                    continue  # empty bin: 0, and no argmax (EMPTY_BIN)
                maxval = np.full(C, LOWEST, dtype=input.dtype)  # one running maximum per channel
                maxidx = np.full(C, EMPTY_BIN, dtype=np.int32)
                for h in range(hstart, hend):
                    for w in range(wstart, wend):
                        value = input[b, :, h, w]
                        better = value > maxval  # strict: ties keep the first pixel
                        maxval = np.where(better, value, maxval)
                        maxidx[better] = h * W + w
                output[k, :, ph, pw] = maxval
                argmax[k, :, ph, pw] = maxidx
    return output, argmax


def roi_pool_backward(dout, rois, argmax, input_shape):
    """Gradient of ``roi_pool_forward`` w.r.t. its input: dout[k, c, ph, pw] goes to the pixel that
    won bin (ph, pw), ``argmax[k, c, ph, pw]``; empty bins (-1) send nothing.

    Args:
        dout: (K, C, PH, PW) float32 or float64, the gradient of the output.
        rois: (K, 5) dout's dtype, as given to the forward.
        argmax: (K, C, PH, PW) int32 (or any int), as the forward returned it.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    K, _, PH, PW = argmax.shape
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, PH, PW, "roi_pool")
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for k in range(K):
        b = int(rois[k, 0])
        for ph in range(PH):
            for pw in range(PW):
                idx = argmax[k, :, ph, pw]  # (C,) flat pixel index per channel
                channels = np.nonzero(idx != EMPTY_BIN)[0]
                # += (not =): one pixel can win several bins and RoIs
                dx[b, channels, idx[channels] // W, idx[channels] % W] += dout[k, channels, ph, pw]
    return dx
