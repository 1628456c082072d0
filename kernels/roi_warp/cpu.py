"""RoIWarp, Numba, CPU: RoIPool's rounding of the corners, then this backend's RoIAlign kernels.

See ``minimaskrcnn.kernels.roi_warp`` for the equations. The same functions and arguments in
reference.py, cpu.py and cuda.py; outputs are allocated by the RoIAlign kernels they call.
"""
from __future__ import annotations

from minimaskrcnn.kernels._checks import check_argmax_shape, check_roi_backward_args, check_roi_forward_args
from minimaskrcnn.kernels.roi_align import cpu as roi_align_backend
from minimaskrcnn.kernels.roi_warp import quantize_rois


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
