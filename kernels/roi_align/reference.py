"""RoIAlign in NumPy, written like the equations: the spec of every backend and the lesson's code.

Loops over RoIs k, bins (ph, pw) and the sample grid (iy, ix); the channels are the one axis the
sampling does not depend on, so each line handles all C of them at once (``input[b, :, y, x]``).
All coordinate arithmetic is done in the input's dtype, in torchvision's order, so that float32
results match torchvision's to rounding. The scalar helpers (geometry, sample coordinate, 1-D
interpolation) are ``_scalar.py``'s, called as plain Python. See ``minimaskrcnn.kernels.roi_align``
for the equations.
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_argmax_shape, check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels.roi_align._scalar import interp_1d, roi_geometry, sample_coord
from minimaskrcnn.kernels.roi_pool import EMPTY_BIN, LOWEST


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
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
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
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
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


# ----------------------------------------------------------------------------------- max pooling
def roi_align_max_forward(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """Pool every RoI to a fixed PH x PW grid by keeping the largest bilinear sample of each bin
    (RoIAlign "max", Mask R-CNN Table 2c). The samples are those of ``roi_align_forward``.

    Args:
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as
            ``roi_align_forward``.

    Returns:
        output: (K, C, PH, PW), input's dtype: the bin's largest sample (a sample outside the map
            counts as 0, as in the average); 0 for a bin without samples.
        argmax: (K, C, PH, PW) int32: ``iy * grid_w + ix`` of the first largest sample in row-major
            order, -1 (EMPTY_BIN) for a bin without samples. NaN never wins.
    """
    PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_align")
    N, C, H, W = input.shape
    K = rois.shape[0]
    T = input.dtype.type
    output = np.zeros((K, C, PH, PW), dtype=input.dtype)
    argmax = np.full((K, C, PH, PW), EMPTY_BIN, dtype=np.int32)
    for k in range(K):
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, _ = roi_geometry(
            rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
        )
        for ph in range(PH):
            for pw in range(PW):
                maxval = np.full(C, LOWEST, dtype=input.dtype)  # one running maximum per channel
                maxidx = np.full(C, EMPTY_BIN, dtype=np.int32)
                for iy in range(grid_h):
                    y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
                    inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
                    for ix in range(grid_w):
                        x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
                        inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
                        value = np.zeros(C, dtype=input.dtype)  # outside the map: the sample is 0
                        if inside_y and inside_x:
                            value = (
                                hy * hx * input[b, :, y_low, x_low]
                                + hy * lx * input[b, :, y_low, x_high]
                                + ly * hx * input[b, :, y_high, x_low]
                                + ly * lx * input[b, :, y_high, x_high]
                            )
                        better = value > maxval  # strict: ties keep the first sample
                        maxval = np.where(better, value, maxval)
                        maxidx[better] = iy * grid_w + ix
                output[k, :, ph, pw] = np.where(maxidx != EMPTY_BIN, maxval, 0)
                argmax[k, :, ph, pw] = maxidx
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
    """Gradient of ``roi_align_max_forward`` w.r.t. its input: dout[k, c, ph, pw] goes to the 4 pixels
    of the bin's winning sample ``argmax[k, c, ph, pw]``, times their bilinear weights (nothing for
    -1, or for a winner outside the map).

    Args:
        dout: (K, C, PH, PW) float32 or float64, the gradient of the output.
        rois: (K, 5) dout's dtype, as given to the forward.
        argmax: (K, C, PH, PW) int32, as the forward returned it.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.

    Returns:
        dx: (N, C, H, W), dout's dtype.
    """
    N, C, H, W, PH, PW = check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_align")
    check_argmax_shape(argmax, dout.shape, "roi_align")
    T = dout.dtype.type
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for k in range(rois.shape[0]):
        b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, _ = roi_geometry(
            rois, k, spatial_scale, PH, PW, sampling_ratio, aligned
        )
        for ph in range(PH):
            for pw in range(PW):
                for iy in range(grid_h):
                    y = sample_coord(roi_start_h, ph, bin_size_h, iy, grid_h, T)
                    inside_y, y_low, y_high, ly, hy = interp_1d(y, H, T)
                    for ix in range(grid_w):
                        x = sample_coord(roi_start_w, pw, bin_size_w, ix, grid_w, T)
                        inside_x, x_low, x_high, lx, hx = interp_1d(x, W, T)
                        if not (inside_y and inside_x):
                            continue  # a constant 0: no gradient
                        channels = np.nonzero(argmax[k, :, ph, pw] == iy * grid_w + ix)[0]  # where it won
                        g = dout[k, channels, ph, pw]
                        # += (not =): samples of overlapping RoIs and bins read the same pixels
                        dx[b, channels, y_low, x_low] += hy * hx * g
                        dx[b, channels, y_low, x_high] += hy * lx * g
                        dx[b, channels, y_high, x_low] += ly * hx * g
                        dx[b, channels, y_high, x_high] += ly * lx * g
    return dx
