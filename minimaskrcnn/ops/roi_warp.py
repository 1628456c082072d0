"""RoIWarp: RoIPool's rounded box, then RoIAlign's bilinear samples (MNC, Dai et al. 2016; Mask R-CNN, sec. 3).

The RoI layer Mask R-CNN's Table 2c puts between RoIPool and RoIAlign: it samples bilinearly, as
RoIAlign does, but only after rounding the box's corners onto the feature grid, as RoIPool does, so
it keeps RoIPool's misalignment. ``roi_warp`` takes RoIAlign's arguments (there is no ``aligned``:
the rounding defines the box) and pools with the mean or the max of each bin's samples; the
gradient reaches the feature map, not the boxes. Kernels: kernels/roi_warp/. Lesson 17 (ablations).
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module, kernel, unwrap
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import pair
from minimaskrcnn.ops.roi_align import BoxesLike, as_rois, check_mode
from minimaskrcnn.tensor import Tensor


class RoIWarpFunction(Function):
    """Fused op: RoIWarp with average pooling (RoIAlign's forward and backward on the rounded RoIs)."""

    @staticmethod
    def forward(ctx, input, rois, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int):
        ctx.save_for_backward(rois)
        ctx.input_shape = tuple(input.shape)
        ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
        return kernel("roi_warp").roi_warp_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                                                   sampling_ratio)

    @staticmethod
    def backward(ctx, dout):
        (rois,) = ctx.saved_tensors
        dout = get_array_module(dout).ascontiguousarray(dout)
        return kernel("roi_warp").roi_warp_backward(dout, rois, *ctx.args, ctx.input_shape), None


class RoIWarpMaxFunction(Function):
    """Fused op: RoIWarp with max pooling; the backward sends dout to the winning sample's 4 pixels."""

    @staticmethod
    def forward(ctx, input, rois, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int):
        output, argmax = kernel("roi_warp").roi_warp_max_forward(input, rois, spatial_scale, pooled_height,
                                                                 pooled_width, sampling_ratio)
        ctx.save_for_backward(rois, argmax)
        ctx.input_shape = tuple(input.shape)
        ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
        return output

    @staticmethod
    def backward(ctx, dout):
        rois, argmax = ctx.saved_tensors
        dout = get_array_module(dout).ascontiguousarray(dout)
        return kernel("roi_warp").roi_warp_max_backward(dout, rois, argmax, *ctx.args, ctx.input_shape), None


def roi_warp(input, boxes: BoxesLike, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1, *,
             mode: str = "avg") -> Tensor:
    """RoIWarp: round each box's corners onto the feature grid (as RoIPool), then RoIAlign's samples.

    Args:
        input: (N, C, H, W) float32 or float64 Tensor (or array) of features.
        boxes: (K, 5) Tensor/array [batch_idx, x1, y1, x2, y2], or a list of N (Ki, 4) Tensors/arrays
            [x1, y1, x2, y2] (one per image), in input-image pixels; converted to input's dtype.
            No gradient flows to the boxes.
        output_size: (PH, PW) or an int for both, the bins per RoI.
        spatial_scale: feature-map pixels per input-image pixel, e.g. 1/32 for a stride-32 map.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(rounded RoI size / bins).
        mode: "avg" (the mean of each bin's samples) or "max" (the largest).

    Returns:
        (K, C, PH, PW) Tensor, input's dtype: exactly ``roi_align(input, rounded boxes,
        spatial_scale=1, aligned=False)`` with the rounded boxes in feature-map pixels.

    Raises:
        ValueError: an unknown mode, or bad shapes (see kernels/roi_warp).
    """
    check_mode(mode)
    PH, PW = pair(output_size, "output_size")
    rois = as_rois(boxes, unwrap(input))
    function = RoIWarpFunction if mode == "avg" else RoIWarpMaxFunction
    return function.apply(input, rois, PH, PW, float(spatial_scale), int(sampling_ratio))
