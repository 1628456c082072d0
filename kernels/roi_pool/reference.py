"""RoIPool in NumPy, written like the equations: the spec of every backend and the lesson's code.

Loops over RoIs k, bins (ph, pw) and the pixels (h, w) of each bin; each line handles all C
channels at once (``input[b, :, h, w]``). See ``minimaskrcnn.kernels.roi_pool`` for the equations.
"""
from __future__ import annotations

import math

import numpy as np
from minimaskrcnn.kernels.roi_align import check_dout_shape, check_pooled_size, check_roi_inputs, check_rois
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST


def round_half_away(v) -> int:
    """C's ``round``: the nearest integer, halves away from zero (np.round sends halves to even)."""
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:  # exact: a - floor(a) loses no bits
        r += 1
    return int(r) if v >= 0 else -int(r)


def pool_geometry(rois, k: int, spatial_scale: float, pooled_height: int, pooled_width: int):
    """Where RoI k lies on the feature map, in whole pixels.

    Args:
        rois: (K, 5) float32/float64, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        k: which RoI.
        spatial_scale, pooled_height, pooled_width: as ``roi_pool_forward``.

    Returns:
        ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w)``: the image index, the rounded
        top-left pixel (ints) and the bin size in pixels (rois' dtype).
    """
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    roi_start_w = round_half_away(rois[k, 1] * scale)
    roi_start_h = round_half_away(rois[k, 2] * scale)
    roi_end_w = round_half_away(rois[k, 3] * scale)
    roi_end_h = round_half_away(rois[k, 4] * scale)
    roi_width = max(roi_end_w - roi_start_w + 1, 1)  # pixels x1..x2 inclusive; malformed RoIs are 1x1
    roi_height = max(roi_end_h - roi_start_h + 1, 1)
    bin_size_h = T(roi_height) / T(pooled_height)
    bin_size_w = T(roi_width) / T(pooled_width)
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w


def bin_range(p: int, bin_size, roi_start: int, size: int, T) -> tuple[int, int]:
    """Pixels [start, end) of bin p along one axis: floor/ceil of the bin's edges, clipped to [0, size].

    T is the scalar type (np.float32 or np.float64) of the arithmetic. Neighbouring bins can share
    a pixel; a bin wholly outside the map is empty (end <= start).
    """
    start = int(math.floor(T(p) * bin_size)) + roi_start
    end = int(math.ceil(T(p + 1) * bin_size)) + roi_start
    return min(max(start, 0), size), min(max(end, 0), size)


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
    check_roi_inputs(input, rois, "roi_pool")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_pool")
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
    N, C, H, W = (int(s) for s in input_shape)
    check_rois(rois, dout.dtype, N, "roi_pool")
    K, _, PH, PW = argmax.shape
    check_dout_shape(dout.shape, rois.shape, input_shape, PH, PW, "roi_pool")
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
