"""RoIAlign compiled with Numba for the CPU (same arguments and results as reference.py).

The loops and names are the reference's. What changes is where the work is done:
1. ``sample_tables`` computes, once per RoI, the two pixels and two weights of every sample row
   (ph, iy) and every sample column (pw, ix) (bilinear weights factorise: w = weight_y * weight_x);
   every channel then reuses them, as torchvision's pre_calc does.
2. The forward runs one parallel task per (group of 4 channels, RoI), channel-major: the 4 (H, W)
   planes stay in cache across the RoIs, and 4 independent running sums (instead of one chain of
   dependent additions) let the CPU overlap their work; the tables are read once for the 4.
3. The backward runs one parallel task per image channel (b, c): it alone adds into dx[b, c], so
   there are no races and the summation order is fixed (deterministic).
A sample outside the map gets weights 0 in the tables (torchvision's pre_calc does the same), so it
reads as 0, which is also what the max variant (``roi_align_max_*``) compares it as.
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_argmax_shape, check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels.roi_align import _scalar
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST

CHANNELS_PER_TASK = 4  # channels one forward task interpolates together (the kernel names 4 sums)


# _scalar.py's helpers (which reference.py calls as plain Python), compiled for the CPU
roi_geometry, sample_coord, interp_1d = compile_helpers(
    numba.njit(cache=True), _scalar.roi_geometry, _scalar.sample_coord, _scalar.interp_1d
)


@numba.njit(cache=True)
def sample_tables(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, H, W):
    """The sampling of every RoI, computed once and shared by all channels.

    Returns:
        batch_idx (K,) int64, count (K,) rois' dtype, grid_h (K,) int64, grid_w (K,) int64,
        row_start (K,) uintp, col_start (K,) uintp: where RoI k's entries begin in the tables;
        y_low, y_high (R,) int64 and ly, hy (R,) rois' dtype: for sample row r = ph*grid_h[k] + iy
        of RoI k, entry row_start[k] + r; x_low, x_high, lx, hx likewise for the sample columns
        s = pw*grid_w[k] + ix, from col_start[k]. R (and the columns' length) is the sum over RoIs
        of PH*grid_h (PW*grid_w). A row or column outside the map has weights 0: its samples add 0.
    """
    T = rois.dtype.type
    K = rois.shape[0]
    PH, PW = pooled_height, pooled_width
    batch_idx = np.empty(K, np.int64)
    count = np.empty(K, rois.dtype)
    grid_h = np.empty(K, np.int64)
    grid_w = np.empty(K, np.int64)
    row_start = np.empty(K, np.uintp)  # unsigned: indexing with them skips the negative-index check
    col_start = np.empty(K, np.uintp)
    num_rows, num_cols = 0, 0
    for k in range(K):  # serial: a few numbers per RoI, cheaper than starting threads
        b, _, _, _, _, gh, gw, n = roi_geometry(rois, k, spatial_scale, PH, PW, sampling_ratio, aligned)
        batch_idx[k], grid_h[k], grid_w[k], count[k] = b, gh, gw, n
        row_start[k], col_start[k] = num_rows, num_cols
        num_rows += PH * max(gh, 0)  # a negative grid (reversed aligned box) has no samples
        num_cols += PW * max(gw, 0)
    y_low = np.empty(num_rows, np.int64)
    y_high = np.empty(num_rows, np.int64)
    ly = np.empty(num_rows, rois.dtype)
    hy = np.empty(num_rows, rois.dtype)
    x_low = np.empty(num_cols, np.int64)
    x_high = np.empty(num_cols, np.int64)
    lx = np.empty(num_cols, rois.dtype)
    hx = np.empty(num_cols, rois.dtype)
    for k in range(K):
        _, roi_start_h, roi_start_w, bin_size_h, bin_size_w, gh, gw, _ = roi_geometry(
            rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
        )
        for ph in range(PH):
            for iy in range(gh):
                y = sample_coord(roi_start_h, ph, bin_size_h, iy, gh, T)
                _, low, high, l, h = interp_1d(y, H, T)  # noqa: E741 (outside: l = h = 0)
                r = row_start[k] + ph * gh + iy
                y_low[r], y_high[r], ly[r], hy[r] = low, high, l, h
        for pw in range(PW):
            for ix in range(gw):
                x = sample_coord(roi_start_w, pw, bin_size_w, ix, gw, T)
                _, low, high, l, h = interp_1d(x, W, T)  # noqa: E741
                s = col_start[k] + pw * gw + ix
                x_low[s], x_high[s], lx[s], hx[s] = low, high, l, h
    return batch_idx, count, grid_h, grid_w, row_start, col_start, y_low, y_high, ly, hy, x_low, x_high, lx, hx


@numba.njit(cache=True, inline="always")
def bilinear(plane, yl, yh, xl, xh, wly, why, wlx, whx):
    """hy*hx*v1 + hy*lx*v2 + ly*hx*v3 + ly*lx*v4 for the 4 pixels around a sample, common factors out."""
    return why * (whx * plane[yl, xl] + wlx * plane[yl, xh]) + wly * (whx * plane[yh, xl] + wlx * plane[yh, xh])


@numba.njit(cache=True, parallel=True)
def _forward_kernel(
    input, batch_idx, count, grid_h, grid_w, row_start, col_start, y_low, y_high, ly, hy, x_low, x_high, lx, hx, output
):
    T = input.dtype.type
    K, C, PH, PW = output.shape
    num_groups = (C + CHANNELS_PER_TASK - 1) // CHANNELS_PER_TASK
    for task in numba.prange(num_groups * K):
        # channel-major: consecutive tasks read the same planes, which stay in cache across all
        # RoIs (RoI-major order would reload them from memory for every RoI)
        group, k = task // K, task % K
        b = batch_idx[k]
        # 4 channels at once: 4 independent sums keep the pipeline busy and the table reads are
        # shared; past the last channel, c3 etc. repeat channel C - 1 (same value written twice)
        c0 = group * CHANNELS_PER_TASK
        c1, c2, c3 = min(c0 + 1, C - 1), min(c0 + 2, C - 1), min(c0 + 3, C - 1)
        plane0, plane1, plane2, plane3 = input[b, c0], input[b, c1], input[b, c2], input[b, c3]
        gh, gw = grid_h[k], grid_w[k]
        r0, s0 = row_start[k], col_start[k]  # unsigned, so r and s below index without a sign check
        for ph in range(PH):
            for pw in range(PW):
                total0, total1, total2, total3 = T(0.0), T(0.0), T(0.0), T(0.0)
                for iy in range(gh):
                    r = r0 + numba.uintp(ph * gh + iy)  # sample row (ph, iy) of RoI k in the tables
                    yl, yh, wly, why = y_low[r], y_high[r], ly[r], hy[r]
                    for ix in range(gw):
                        s = s0 + numba.uintp(pw * gw + ix)  # sample column (pw, ix)
                        xl, xh, wlx, whx = x_low[s], x_high[s], lx[s], hx[s]
                        total0 += bilinear(plane0, yl, yh, xl, xh, wly, why, wlx, whx)
                        total1 += bilinear(plane1, yl, yh, xl, xh, wly, why, wlx, whx)
                        total2 += bilinear(plane2, yl, yh, xl, xh, wly, why, wlx, whx)
                        total3 += bilinear(plane3, yl, yh, xl, xh, wly, why, wlx, whx)
                n = count[k]
                output[k, c0, ph, pw] = total0 / n
                output[k, c1, ph, pw] = total1 / n
                output[k, c2, ph, pw] = total2 / n
                output[k, c3, ph, pw] = total3 / n


@numba.njit(cache=True, parallel=True)
def _backward_kernel(
    dout, batch_idx, count, grid_h, grid_w, row_start, col_start, y_low, y_high, ly, hy, x_low, x_high, lx, hx, dx
):
    K, C, PH, PW = dout.shape
    N = dx.shape[0]
    for task in numba.prange(N * C):
        b, c = task // C, task % C
        plane = dx[b, c]  # this task alone writes dx[b, c]: no races
        for k in range(K):
            if batch_idx[k] != b:
                continue
            gh, gw = grid_h[k], grid_w[k]
            r0, s0, n = row_start[k], col_start[k], count[k]
            for ph in range(PH):
                for pw in range(PW):
                    g = dout[k, c, ph, pw] / n
                    for iy in range(gh):
                        r = r0 + numba.uintp(ph * gh + iy)
                        yl, yh, wly, why = y_low[r], y_high[r], ly[r], hy[r]
                        for ix in range(gw):
                            s = s0 + numba.uintp(pw * gw + ix)
                            xl, xh, wlx, whx = x_low[s], x_high[s], lx[s], hx[s]
                            plane[yl, xl] += g * (why * whx)
                            plane[yl, xh] += g * (why * wlx)
                            plane[yh, xl] += g * (wly * whx)
                            plane[yh, xh] += g * (wly * wlx)


def roi_align_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """Pool every RoI to PH x PW bilinear averages (see reference.roi_align_forward).

    Args:
        input: (N, C, H, W) float32 or float64 NumPy array.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as the reference.

    Returns:
        output: (K, C, PH, PW), input's dtype.
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
    N, C, H, W = input.shape
    K = rois.shape[0]
    if K * C == 0:
        return np.zeros((K, C, PH, PW), dtype=input.dtype)
    input = np.ascontiguousarray(input)
    tables = sample_tables(
        np.ascontiguousarray(rois), float(spatial_scale), PH, PW, int(sampling_ratio), bool(aligned), H, W
    )
    output = np.empty((K, C, PH, PW), dtype=input.dtype)  # every element is written
    _forward_kernel(input, *tables, output)
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
    """Gradient of ``roi_align_forward`` w.r.t. its input (see reference.roi_align_backward). Deterministic.

    Args:
        dout: (K, C, PH, PW) float32 or float64 NumPy array.
        rois: (K, 5) dout's dtype, as given to the forward.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    if rois.shape[0] * C == 0:
        return dx
    tables = sample_tables(
        np.ascontiguousarray(rois), float(spatial_scale), PH, PW, int(sampling_ratio), bool(aligned), H, W
    )
    _backward_kernel(np.ascontiguousarray(dout), *tables, dx)
    return dx


# ----------------------------------------------------------------------------------- max pooling
@numba.njit(cache=True, parallel=True)
def _max_forward_kernel(
    input, batch_idx, grid_h, grid_w, row_start, col_start, y_low, y_high, ly, hy, x_low, x_high, lx, hx, output,
    argmax,
):
    T = input.dtype.type
    K, C, PH, PW = output.shape
    for task in numba.prange(C * K):
        c, k = task // K, task % K  # channel-major, as the average's forward
        plane = input[batch_idx[k], c]
        gh, gw = grid_h[k], grid_w[k]
        r0, s0 = row_start[k], col_start[k]
        for ph in range(PH):
            for pw in range(PW):
                maxval = T(LOWEST)
                maxidx = EMPTY_BIN
                for iy in range(gh):
                    r = r0 + numba.uintp(ph * gh + iy)
                    yl, yh, wly, why = y_low[r], y_high[r], ly[r], hy[r]
                    for ix in range(gw):
                        s = s0 + numba.uintp(pw * gw + ix)
                        value = bilinear(plane, yl, yh, x_low[s], x_high[s], wly, why, lx[s], hx[s])
                        if value > maxval:  # strict: ties keep the first sample; NaN never wins
                            maxval = value
                            maxidx = iy * gw + ix
                output[k, c, ph, pw] = maxval if maxidx != EMPTY_BIN else T(0.0)
                argmax[k, c, ph, pw] = maxidx


@numba.njit(cache=True, parallel=True)
def _max_backward_kernel(
    dout, argmax, batch_idx, grid_h, grid_w, row_start, col_start, y_low, y_high, ly, hy, x_low, x_high, lx, hx, dx
):
    K, C, PH, PW = dout.shape
    N = dx.shape[0]
    for task in numba.prange(N * C):
        b, c = task // C, task % C
        plane = dx[b, c]  # this task alone writes dx[b, c]: no races
        for k in range(K):
            if batch_idx[k] != b:
                continue
            gh, gw = grid_h[k], grid_w[k]
            for ph in range(PH):
                for pw in range(PW):
                    idx = argmax[k, c, ph, pw]
                    if idx == EMPTY_BIN:
                        continue
                    iy, ix = idx // gw, idx % gw  # the winning sample
                    r = row_start[k] + numba.uintp(ph * gh + iy)
                    s = col_start[k] + numba.uintp(pw * gw + ix)
                    g = dout[k, c, ph, pw]
                    yl, yh, wly, why = y_low[r], y_high[r], ly[r], hy[r]
                    xl, xh, wlx, whx = x_low[s], x_high[s], lx[s], hx[s]
                    plane[yl, xl] += g * (why * whx)  # a winner outside the map has weights 0
                    plane[yl, xh] += g * (why * wlx)
                    plane[yh, xl] += g * (wly * whx)
                    plane[yh, xh] += g * (wly * wlx)


def roi_align_max_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """The largest bilinear sample of every bin, and which one (see reference.roi_align_max_forward).

    Args:
        input: (N, C, H, W) float32 or float64 NumPy array.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as the reference.

    Returns:
        output: (K, C, PH, PW), input's dtype; argmax: (K, C, PH, PW) int32, -1 for a bin without samples.
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
    N, C, H, W = input.shape
    K = rois.shape[0]
    output = np.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = np.full((K, C, PH, PW), EMPTY_BIN, dtype=np.int32)
    if K * C == 0:
        return output, argmax
    batch_idx, _, grid_h, grid_w, *rest = sample_tables(
        np.ascontiguousarray(rois), float(spatial_scale), PH, PW, int(sampling_ratio), bool(aligned), H, W
    )
    _max_forward_kernel(np.ascontiguousarray(input), batch_idx, grid_h, grid_w, *rest, output, argmax)
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
    Deterministic.

    Args:
        dout: (K, C, PH, PW) float32 or float64 NumPy array.
        rois: (K, 5) dout's dtype, as given to the forward.
        argmax: (K, C, PH, PW) int32, as the forward returned it.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
    check_argmax_shape(argmax, dout.shape, "roi_align")
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    if rois.shape[0] * C == 0:
        return dx
    batch_idx, _, *rest = sample_tables(
        np.ascontiguousarray(rois), float(spatial_scale), PH, PW, int(sampling_ratio), bool(aligned), H, W
    )
    _max_backward_kernel(np.ascontiguousarray(dout), np.ascontiguousarray(argmax, dtype=np.int32), batch_idx, *rest, dx)
    return dx
