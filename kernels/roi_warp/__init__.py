"""RoIWarp: RoIPool's rounded box, then RoIAlign's bilinear samples (MNC, Dai et al. 2016; Mask R-CNN sec. 3).

Mask R-CNN (Table 2c) compares RoIAlign with RoIWarp, which "overlooked the alignment issue": it
quantises the RoI as RoIPool does and only then samples bilinearly. Every backend computes, for RoI
k = [b, x1, y1, x2, y2] (input-image pixels) and bin (ph, pw):

    q_x1 = round(x1 * spatial_scale), ...      (C's round, halves away from zero, in rois' dtype:
                                                RoIPool's rounding of the corners onto the feature grid)
    out[k, c, ph, pw] = roi_align(input, [b, q_x1, q_y1, q_x2, q_y2], spatial_scale=1,
                                  sampling_ratio, aligned=False)[c, ph, pw]

with average ("avg", ``roi_warp_forward``) or max ("max", ``roi_warp_max_forward``) over the bin's
samples. So a box already on the feature grid gives exactly RoIAlign's numbers, and any other box is
pooled from the grid-aligned box nearest to it: up to half a stride away on each side.

``reference.py``, ``cpu.py`` and ``cuda.py`` each round the corners (``quantize_rois``, array code
that runs on NumPy and CuPy) and run their own backend's RoIAlign kernels on the rounded RoIs
(``backend_functions``); the backward is RoIAlign's on the same RoIs (no gradient for the boxes).
Lesson 17 (the ablations).
"""
from __future__ import annotations

from minimaskrcnn.kernels._checks import check_argmax_shape, check_roi_backward_args, check_roi_forward_args

from minimaskrcnn.backend import get_array_module


def quantize_rois(rois, spatial_scale: float):
    """RoIPool's rounding of each RoI's corners onto the feature grid, in feature-map pixels. No gradient.

    Args:
        rois: (K, 5) float32/float64 [batch_idx, x1, y1, x2, y2] in input-image pixels (NumPy or CuPy).
        spatial_scale: feature-map pixels per input-image pixel (1/32 for stride 32).

    Returns:
        (K, 5) rois' dtype and array module: [batch_idx, round(x1 * s), round(y1 * s), round(x2 * s),
        round(y2 * s)], rounding halves away from zero (C's ``round``, as torchvision's RoIPool), the
        product computed in rois' dtype.
    """
    xp = get_array_module(rois)
    scaled = rois[:, 1:] * rois.dtype.type(spatial_scale)
    magnitude = xp.abs(scaled)
    whole = xp.floor(magnitude)
    whole = whole + (magnitude - whole >= 0.5)  # exact: a - floor(a) loses no bits (floor(a + 0.5) can)
    out = rois.copy()
    out[:, 1:] = xp.where(scaled < 0, -whole, whole)
    return out


def backend_functions(roi_align_backend):
    """RoIWarp's four functions on one backend's RoIAlign kernels (``roi_align.reference/cpu/cuda``).

    Each backend module of this package is this call on its own RoIAlign module, so the argument
    checks, the rounding and the calls are written once.

    Returns:
        (roi_warp_forward, roi_warp_backward, roi_warp_max_forward, roi_warp_max_backward).
    """
    def roi_warp_forward(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int):
        """Average of the bilinear samples of each bin of the rounded RoI.

        Args:
            input: (N, C, H, W) float32 or float64 feature map.
            rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2] in input-image pixels.
            spatial_scale: feature-map pixels per input-image pixel (1/16 for stride 16).
            pooled_height, pooled_width: PH, PW, the output bins per RoI.
            sampling_ratio: samples per bin along each axis; <= 0 for ceil(rounded roi size / bins).

        Returns:
            output: (K, C, PH, PW), input's dtype.
        """
        PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_warp")
        return roi_align_backend.roi_align_forward(input, quantize_rois(rois, spatial_scale), 1.0, PH, PW,
                                                   sampling_ratio, False)


    def roi_warp_backward(dout, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
                          input_shape):
        """Gradient of ``roi_warp_forward`` w.r.t. its input (RoIAlign's backward on the rounded RoIs).

        Args:
            dout: (K, C, PH, PW) float32 or float64, the gradient of the output.
            rois: (K, 5) dout's dtype, as given to the forward.
            spatial_scale, pooled_height, pooled_width, sampling_ratio: as given to the forward.
            input_shape: (N, C, H, W) of the forward's input.

        Returns:
            dx: (N, C, H, W), dout's dtype.
        """
        check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_warp")
        return roi_align_backend.roi_align_backward(dout, quantize_rois(rois, spatial_scale), 1.0, pooled_height,
                                                    pooled_width, sampling_ratio, False, input_shape)


    def roi_warp_max_forward(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                             sampling_ratio: int):
        """The largest bilinear sample of each bin of the rounded RoI, and which one.

        Args:
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio: as ``roi_warp_forward``.

        Returns:
            output: (K, C, PH, PW), input's dtype (0 for a bin without samples); argmax: (K, C, PH, PW)
            int32, ``iy * grid_w + ix`` of the winning sample, -1 for a bin without samples.
        """
        PH, PW = check_roi_forward_args(input, rois, pooled_height, pooled_width, "roi_warp")
        return roi_align_backend.roi_align_max_forward(input, quantize_rois(rois, spatial_scale), 1.0, PH, PW,
                                                       sampling_ratio, False)


    def roi_warp_max_backward(dout, rois, argmax, spatial_scale: float, pooled_height: int, pooled_width: int,
                              sampling_ratio: int, input_shape):
        """Gradient of ``roi_warp_max_forward`` w.r.t. its input: dout goes to the winning sample's 4 pixels.

        Args:
            dout: (K, C, PH, PW) float32 or float64, the gradient of the output.
            rois: (K, 5) dout's dtype, as given to the forward.
            argmax: (K, C, PH, PW) int32, as the forward returned it.
            spatial_scale, pooled_height, pooled_width, sampling_ratio: as given to the forward.
            input_shape: (N, C, H, W) of the forward's input.

        Returns:
            dx: (N, C, H, W), dout's dtype.
        """
        check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, "roi_warp")
        check_argmax_shape(argmax, dout.shape, "roi_warp")
        return roi_align_backend.roi_align_max_backward(dout, quantize_rois(rois, spatial_scale), argmax, 1.0,
                                                        pooled_height, pooled_width, sampling_ratio, False, input_shape)

    return roi_warp_forward, roi_warp_backward, roi_warp_max_forward, roi_warp_max_backward
