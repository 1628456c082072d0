"""RoIPool compiled with Numba for the CPU (same arguments and results as reference.py).

The loops and names are the reference's, with the bins of every RoI computed once (``bin_tables``)
and shared by all channels. The forward runs one parallel task per
(group of 4 channels, RoI), channel-major, so the planes it scans stay in cache across RoIs, and
keeps 4 independent running maxima; the backward runs one task per image channel (b, c), which
alone adds into dx[b, c]: no races, and a fixed summation order (deterministic).
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST, _scalar

CHANNELS_PER_TASK = 4  # channels one forward task scans together (the kernel names 4 maxima)


# _scalar.py's helpers (which reference.py calls as plain Python), compiled for the CPU
round_half_away, pool_geometry, bin_range = compile_helpers(
    numba.njit(cache=True), _scalar.round_half_away, _scalar.pool_geometry, _scalar.bin_range
)


@numba.njit(cache=True)
def bin_tables(rois, spatial_scale, pooled_height, pooled_width, H, W):
    """The bins of every RoI, shared by all channels.

    Returns:
        batch_idx (K,) int64; hstart, hend (K, PH) int64 and wstart, wend (K, PW) int64: the pixel
        ranges [start, end) of each bin row and column, clipped to the map.
    """
    T = rois.dtype.type
    K = rois.shape[0]
    batch_idx = np.empty(K, np.int64)
    hstart = np.empty((K, pooled_height), np.int64)
    hend = np.empty((K, pooled_height), np.int64)
    wstart = np.empty((K, pooled_width), np.int64)
    wend = np.empty((K, pooled_width), np.int64)
    for k in range(K):  # serial: a few numbers per RoI, cheaper than starting threads
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w = pool_geometry(
            rois, k, spatial_scale, pooled_height, pooled_width
        )
        batch_idx[k] = b
        for ph in range(pooled_height):
            hstart[k, ph], hend[k, ph] = bin_range(ph, bin_size_h, roi_start_h, H, T)
        for pw in range(pooled_width):
            wstart[k, pw], wend[k, pw] = bin_range(pw, bin_size_w, roi_start_w, W, T)
    return batch_idx, hstart, hend, wstart, wend


@numba.njit(cache=True, inline="always")
def running_max(value, idx, maxval, maxidx):
    """One step of a bin's scan: ``(value, idx)`` wins if strictly larger (ties keep the first, NaN never wins)."""
    if value > maxval:
        return value, idx
    return maxval, maxidx


@numba.njit(cache=True, parallel=True)
def _forward_kernel(input, batch_idx, hstart, hend, wstart, wend, output, argmax):
    T = input.dtype.type
    K, C, PH, PW = output.shape
    N, _, H, W = input.shape
    planes = input.reshape(N * C, H * W)  # flat planes: pixel (h, w) is h*W + w, the argmax itself
    num_groups = (C + CHANNELS_PER_TASK - 1) // CHANNELS_PER_TASK
    for task in numba.prange(num_groups * K):
        group, k = task // K, task % K  # channel-major: the planes stay in cache across RoIs
        b = batch_idx[k]
        # 4 channels at once: 4 independent running maxima keep the pipeline busy (one is a chain
        # of dependent max instructions) and the bin loops are paid once for 4; past the last
        # channel, c3 etc. repeat channel C - 1 (the same result written twice)
        c0 = group * CHANNELS_PER_TASK
        c1, c2, c3 = min(c0 + 1, C - 1), min(c0 + 2, C - 1), min(c0 + 3, C - 1)
        plane0, plane1, plane2, plane3 = planes[b * C + c0], planes[b * C + c1], planes[b * C + c2], planes[b * C + c3]
        for ph in range(PH):
            h0, h1 = hstart[k, ph], hend[k, ph]
            for pw in range(PW):
                w0, w1 = wstart[k, pw], wend[k, pw]
                empty = h1 <= h0 or w1 <= w0
                start = T(0.0) if empty else T(LOWEST)  # an empty bin gives 0 and EMPTY_BIN
                max0, max1, max2, max3 = start, start, start, start
                idx0, idx1, idx2, idx3 = EMPTY_BIN, EMPTY_BIN, EMPTY_BIN, EMPTY_BIN
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        i = h * W + w
                        at = numba.uintp(i)  # an unsigned index skips the negative-index check
                        max0, idx0 = running_max(plane0[at], i, max0, idx0)
                        max1, idx1 = running_max(plane1[at], i, max1, idx1)
                        max2, idx2 = running_max(plane2[at], i, max2, idx2)
                        max3, idx3 = running_max(plane3[at], i, max3, idx3)
                output[k, c0, ph, pw], argmax[k, c0, ph, pw] = max0, idx0
                output[k, c1, ph, pw], argmax[k, c1, ph, pw] = max1, idx1
                output[k, c2, ph, pw], argmax[k, c2, ph, pw] = max2, idx2
                output[k, c3, ph, pw], argmax[k, c3, ph, pw] = max3, idx3


@numba.njit(cache=True, parallel=True)
def _backward_kernel(dout, batch_idx, argmax, dx):
    K, C, PH, PW = dout.shape
    N, W = dx.shape[0], dx.shape[3]
    for task in numba.prange(N * C):
        b, c = task // C, task % C
        plane = dx[b, c]  # this task alone writes dx[b, c]: no races
        for k in range(K):
            if batch_idx[k] != b:
                continue
            for ph in range(PH):
                for pw in range(PW):
                    idx = argmax[k, c, ph, pw]
                    if idx != EMPTY_BIN:
                        plane[idx // W, idx % W] += dout[k, c, ph, pw]


def roi_pool_forward(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """Max-pool every RoI to PH x PW integer-pixel bins (see reference.roi_pool_forward).

    Args:
        input: (N, C, H, W) float32 or float64 NumPy array.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width: as the reference.

    Returns:
        output: (K, C, PH, PW) input's dtype; argmax: (K, C, PH, PW) int32, ``h*W + w`` or -1.
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_pool")
    N, C, H, W = input.shape
    K = rois.shape[0]
    output = np.empty((K, C, PH, PW), dtype=input.dtype)  # every element is written
    argmax = np.empty((K, C, PH, PW), dtype=np.int32)
    if K * C == 0:
        return output, argmax
    batch_idx, hstart, hend, wstart, wend = bin_tables(np.ascontiguousarray(rois), float(spatial_scale), PH, PW, H, W)
    _forward_kernel(np.ascontiguousarray(input), batch_idx, hstart, hend, wstart, wend, output, argmax)
    return output, argmax


def roi_pool_backward(dout, rois, argmax, input_shape):
    """Gradient of ``roi_pool_forward`` w.r.t. its input (see reference.roi_pool_backward). Deterministic.

    Args:
        dout: (K, C, PH, PW) float32 or float64 NumPy array.
        rois: (K, 5) dout's dtype, as given to the forward.
        argmax: (K, C, PH, PW) int, as the forward returned it.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    K, _, PH, PW = argmax.shape
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, PH, PW, "roi_pool")
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    if K * C == 0:
        return dx
    batch_idx = rois[:, 0].astype(np.int64)
    _backward_kernel(np.ascontiguousarray(dout), batch_idx, np.ascontiguousarray(argmax), dx)
    return dx
