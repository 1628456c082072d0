"""RoIAlign in NumPy, written like the equations: the spec of every backend and the lesson's code.

Loops over RoIs k, bins (ph, pw) and the sample grid (iy, ix); the channels are the one axis the
sampling does not depend on, so each line handles all C of them at once (``input[b, :, y, x]``).
All coordinate arithmetic is done in the input's dtype, in torchvision's order, so that float32
results match torchvision's to rounding. See ``minimaskrcnn.kernels.roi_align`` for the equations.
"""
from __future__ import annotations

import math

import numpy as np
from minimaskrcnn.kernels.roi_align import check_dout_shape, check_pooled_size, check_roi_inputs, check_rois


def roi_geometry(
    rois, k: int, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """Where RoI k lies on the feature map and how densely its bins are sampled.

    Args:
        rois: (K, 5) float32/float64, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        k: which RoI.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as ``roi_align_forward``.

    Returns:
        ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count)``: the image
        index, the top-left corner and bin size in feature-map pixels (rois' dtype), the samples per
        bin along each axis and their number ``max(grid_h * grid_w, 1)`` (rois' dtype).
    """
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    offset = T(0.5) if aligned else T(0.0)  # aligned: sample at pixel centres (Detectron2)
    roi_start_w = rois[k, 1] * scale - offset
    roi_start_h = rois[k, 2] * scale - offset
    roi_end_w = rois[k, 3] * scale - offset
    roi_end_h = rois[k, 4] * scale - offset
    roi_width = roi_end_w - roi_start_w
    roi_height = roi_end_h - roi_start_h
    if not aligned:  # legacy: force malformed (smaller than one pixel) RoIs to 1x1
        roi_width = max(roi_width, T(1.0))
        roi_height = max(roi_height, T(1.0))
    bin_size_h = roi_height / T(pooled_height)
    bin_size_w = roi_width / T(pooled_width)
    # sampling_ratio <= 0: about one sample per feature-map pixel of the bin
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_height / T(pooled_height)))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_width / T(pooled_width)))
    count = T(max(grid_h * grid_w, 1))  # an empty grid (zero-size aligned RoI) gives 0, not 0/0
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count


def sample_coord(roi_start, p: int, bin_size, i: int, grid: int, T):
    """Coordinate of sample i (of ``grid``) in bin p along one axis: evenly spaced, half a step in.

    T is the scalar type (np.float32 or np.float64) all the arithmetic is done in.
    """
    return roi_start + T(p) * bin_size + T(i + 0.5) * bin_size / T(grid)


def interp_1d(coord, size: int, T):
    """Linear interpolation along one axis of length ``size``, with RoIAlign's border rule.

    Args:
        coord: the sample coordinate, in feature-map pixels.
        size: H for y, W for x.
        T: the scalar type (np.float32 or np.float64) all the arithmetic is done in.

    Returns:
        ``(inside, low, high, l, h)``: whether coord lies in [-1, size] (outside, the sample
        counts as 0), the two pixels read and their weights: pixel ``low`` gets ``h = 1 - l`` and
        pixel ``high`` gets ``l``. Bilinear weights are products: w1 = hy*hx, w2 = hy*lx, w3 = ly*hx,
        w4 = ly*lx for (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high).
    """
    if not (coord >= -1.0 and coord <= size):  # NaN lands here too
        return False, 0, 0, T(0.0), T(0.0)
    if coord <= 0:  # in [-1, 0]: read pixel 0
        coord = T(0.0)
    low = int(coord)
    if low >= size - 1:  # at or past the last pixel: read it
        low = high = size - 1
        coord = T(low)
    else:
        high = low + 1
    l = coord - T(low)
    h = T(1.0) - l
    return True, low, high, l, h


def roi_align_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """Pool every RoI to a fixed PH x PW grid by averaging bilinear samples.

    Args:
        input: (N, C, H, W) float32 or float64 feature map.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        spatial_scale: feature-map pixels per input-image pixel (1/4 for stride 4).
        pooled_height, pooled_width: PH, PW, the output bins per RoI.
        sampling_ratio: samples per bin along each axis; <= 0 for ceil(roi size / bins).
        aligned: shift the box by -0.5 pixel (True in Detectron2 and Mask R-CNN heads).

    Returns:
        output: (K, C, PH, PW), input's dtype.
    """
    check_roi_inputs(input, rois, "roi_align")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_align")
    N, C, H, W = input.shape
    K = rois.shape[0]
    T = input.dtype.type  # every coordinate is computed in the input's precision, as torchvision does
    output = np.zeros((K, C, PH, PW), dtype=input.dtype)
    for k in range(K):
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count = roi_geometry(
            rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
        )
        for ph in range(PH):
            for pw in range(PW):
                total = np.zeros(C, dtype=input.dtype)  # one running sum per channel
                for iy in range(grid_h):
                    y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
                    inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
                    for ix in range(grid_w):
                        x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
                        inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
                        if not (inside_y and inside_x):
                            continue  # outside the map: the sample is 0 (but still counted)
                        w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
                        total += (
                            w1 * input[b, :, y_low, x_low]
                            + w2 * input[b, :, y_low, x_high]
                            + w3 * input[b, :, y_high, x_low]
                            + w4 * input[b, :, y_high, x_high]
                        )
                output[k, :, ph, pw] = total / count  # average pooling
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
    """Gradient of ``roi_align_forward`` w.r.t. its input: each dout[k, c, ph, pw] / count goes back
    to the 4 pixels of every sample of its bin, times that pixel's bilinear weight.

    Args:
        dout: (K, C, PH, PW) float32 or float64, the gradient of the output.
        rois: (K, 5) dout's dtype, as given to the forward.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    N, C, H, W = (int(s) for s in input_shape)
    check_rois(rois, dout.dtype, N, "roi_align")
    PH, PW = check_pooled_size(pooled_height, pooled_width, "roi_align")
    check_dout_shape(dout.shape, rois.shape, input_shape, PH, PW, "roi_align")
    T = dout.dtype.type
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for k in range(rois.shape[0]):
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count = roi_geometry(
            rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
        )
        for ph in range(PH):
            for pw in range(PW):
                g = dout[k, :, ph, pw] / count  # (C,): every sample of the bin gets 1/count of it
                for iy in range(grid_h):
                    y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
                    inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
                    for ix in range(grid_w):
                        x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
                        inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
                        if not (inside_y and inside_x):
                            continue
                        # += (not =): samples of overlapping RoIs and bins read the same pixels
                        dx[b, :, y_low, x_low] += hy * hx * g
                        dx[b, :, y_low, x_high] += hy * lx * g
                        dx[b, :, y_high, x_low] += ly * hx * g
                        dx[b, :, y_high, x_high] += ly * lx * g
    return dx
