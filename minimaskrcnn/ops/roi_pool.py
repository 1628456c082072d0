"""RoIPool: the maximum of each integer-pixel bin of each box (Fast R-CNN, sec. 2.1).

``roi_pool`` is torchvision.ops.roi_pool: same arguments, same numbers, a gradient for the feature
map through the saved argmax. Mask R-CNN replaced it by RoIAlign (``minimaskrcnn.ops.roi_align``),
whose lesson compares the two. The hot loops are in kernels/roi_pool/.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module, kernel, unwrap
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import pair
from minimaskrcnn.ops.roi_align import BoxesLike, as_rois
from minimaskrcnn.tensor import Tensor


class RoIPoolFunction(Function):
    """Fused op: RoIPool forward; the backward sends each dout to the saved argmax pixel."""

    @staticmethod
    def forward(ctx, input, rois, pooled_height: int, pooled_width: int, spatial_scale: float):
        output, argmax = kernel("roi_pool").roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width)
        ctx.save_for_backward(rois, argmax)  # the winners are kept, never recomputed
        ctx.input_shape = tuple(input.shape)
        return output

    @staticmethod
    def backward(ctx, dout):
        rois, argmax = ctx.saved_tensors
        dout = get_array_module(dout).ascontiguousarray(dout)
        return kernel("roi_pool").roi_pool_backward(dout, rois, argmax, ctx.input_shape), None


def roi_pool(input, boxes: BoxesLike, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (max pooling over integer-pixel bins), as torchvision.ops.roi_pool.

    Args:
        input: (N, C, H, W) float32 or float64 Tensor (or array) of features.
        boxes: (K, 5) Tensor/array [batch_idx, x1, y1, x2, y2], or a list of N (Ki, 4) Tensors/arrays
            [x1, y1, x2, y2] (one per image), in input-image pixels; converted to input's dtype.
            No gradient flows to the boxes.
        output_size: (PH, PW) or an int for both, the bins per RoI.
        spatial_scale: feature-map pixels per input-image pixel, e.g. 1/16 for a stride-16 map.

    Returns:
        (K, C, PH, PW) Tensor, input's dtype: each bin's maximum, 0 for a bin outside the map;
        differentiable w.r.t. ``input`` (the gradient goes to the first maximal pixel of each bin).

    Note: box corners are rounded to whole pixels (halves away from zero), the misalignment that
    RoIAlign removes.
    """
    PH, PW = pair(output_size, "output_size")
    rois = as_rois(boxes, unwrap(input))
    return RoIPoolFunction.apply(input, rois, PH, PW, float(spatial_scale))

