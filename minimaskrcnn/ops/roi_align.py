"""RoIAlign: crop a fixed-size feature grid for each box by bilinear sampling (Mask R-CNN, sec. 3).

``roi_align`` is torchvision.ops.roi_align: same arguments, same numbers, a gradient for the
feature map (none for the boxes); ``mode="max"`` keeps the largest sample of each bin instead of
their mean (the paper's Table 2c). The hot loops are in kernels/roi_align/ (``backend.kernel``
picks reference, Numba or CUDA). Lessons: RoIAlign, and the ablations (17).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimaskrcnn.backend import get_array_module, kernel, unwrap
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import pair
from minimaskrcnn.tensor import Tensor

BoxesLike = Tensor | np.ndarray | Sequence


def check_roi_boxes_shape(boxes: BoxesLike) -> None:
    """Raise ValueError unless ``boxes`` is a (K, 5) array/Tensor or a list of (Ki, 4) ones."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            shape = tuple(unwrap(b).shape)
            if len(shape) != 2 or shape[1] != 4:
                raise ValueError(f"boxes[{i}] must be (Ki, 4) [x1, y1, x2, y2], got shape {shape}")
    elif hasattr(boxes, "shape"):
        shape = tuple(boxes.shape)
        if len(shape) != 2 or shape[1] != 5:
            raise ValueError(f"boxes must be (K, 5) [batch_idx, x1, y1, x2, y2], got shape {shape}")
    else:
        raise ValueError("boxes must be a (K, 5) array/Tensor or a list of (Ki, 4) arrays/Tensors")


def convert_boxes_to_roi_format(boxes: Sequence) -> np.ndarray:
    """Per-image boxes to one RoI array with the image index in column 0 (as torchvision's helper).

    Args:
        boxes: a list of N arrays or Tensors, boxes[i] of shape (Ki, 4) [x1, y1, x2, y2] in
            input-image pixels, all of one dtype and array module.

    Returns:
        rois: (sum Ki, 5) [batch_idx, x1, y1, x2, y2], the boxes' dtype (float32 for an empty list),
        NumPy or CuPy as the boxes; row order: image 0's boxes, then image 1's, ...
    """
    arrays = [unwrap(b) for b in boxes]
    if not arrays:
        return np.zeros((0, 5), dtype=np.float32)
    xp = get_array_module(*arrays)
    arrays = [xp.asarray(b) for b in arrays]
    dtype = arrays[0].dtype
    ids = [xp.full((b.shape[0], 1), i, dtype=dtype) for i, b in enumerate(arrays)]
    return xp.concatenate([xp.concatenate(ids, axis=0), xp.concatenate(arrays, axis=0).astype(dtype)], axis=1)


def as_rois(boxes: BoxesLike, like) -> object:
    """``boxes`` (see ``roi_align``) as a (K, 5) array of ``like``'s dtype and array module, no gradient."""
    check_roi_boxes_shape(boxes)
    rois = unwrap(boxes) if not isinstance(boxes, (list, tuple)) else convert_boxes_to_roi_format(boxes)
    xp = get_array_module(like)
    return xp.ascontiguousarray(xp.asarray(rois, dtype=like.dtype))


class RoIAlignFunction(Function):
    """Fused op: RoIAlign forward and its own backward (the transpose of the bilinear sampling)."""

    @staticmethod
    def forward(ctx, input, rois, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int,
                aligned: bool):
        ctx.save_for_backward(rois)
        ctx.input_shape = tuple(input.shape)
        ctx.pooled_size = (pooled_height, pooled_width)
        ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned = spatial_scale, sampling_ratio, aligned
        return kernel("roi_align").roi_align_forward(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
        )

    @staticmethod
    def backward(ctx, dout):
        (rois,) = ctx.saved_tensors
        dout = get_array_module(dout).ascontiguousarray(dout)
        dx = kernel("roi_align").roi_align_backward(
            dout, rois, ctx.spatial_scale, *ctx.pooled_size, ctx.sampling_ratio, ctx.aligned, ctx.input_shape
        )
        return dx, None  # no gradient for the boxes


class RoIAlignMaxFunction(Function):
    """Fused op: RoIAlign with max pooling; the backward sends each dout to the winning sample's
    4 pixels (the saved argmax picks the sample, its bilinear weights split dout among them)."""

    @staticmethod
    def forward(ctx, input, rois, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int,
                aligned: bool):
        output, argmax = kernel("roi_align").roi_align_max_forward(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
        )
        ctx.save_for_backward(rois, argmax)  # the winners are kept, never recomputed
        ctx.input_shape = tuple(input.shape)
        ctx.pooled_size = (pooled_height, pooled_width)
        ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned = spatial_scale, sampling_ratio, aligned
        return output

    @staticmethod
    def backward(ctx, dout):
        rois, argmax = ctx.saved_tensors
        dout = get_array_module(dout).ascontiguousarray(dout)
        dx = kernel("roi_align").roi_align_max_backward(
            dout, rois, argmax, ctx.spatial_scale, *ctx.pooled_size, ctx.sampling_ratio, ctx.aligned, ctx.input_shape
        )
        return dx, None


POOL_MODES = ("avg", "max")  # how the samples of a bin are reduced (RoIAlign, RoIWarp)


def check_mode(mode: str) -> str:
    """Raise ValueError unless ``mode`` is one of POOL_MODES."""
    if mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
    return mode


def roi_align(
    input,
    boxes: BoxesLike,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    mode: str = "avg",
) -> Tensor:
    """RoIAlign with average (or max) pooling, as torchvision.ops.roi_align (Mask R-CNN, sec. 3).

    Each output bin averages ``sampling_ratio x sampling_ratio`` bilinearly interpolated samples of
    the feature map, evenly spaced in the bin; no coordinate is rounded. ``mode="max"`` keeps the
    largest of those samples instead (Table 2c's "RoIAlign (max)"; torchvision has no such mode).

    Args:
        input: (N, C, H, W) float32 or float64 Tensor (or array) of features.
        boxes: (K, 5) Tensor/array [batch_idx, x1, y1, x2, y2], or a list of N (Ki, 4) Tensors/arrays
            [x1, y1, x2, y2] (one per image), in input-image pixels; converted to input's dtype.
            No gradient flows to the boxes.
        output_size: (PH, PW) or an int for both, the bins per RoI.
        spatial_scale: feature-map pixels per input-image pixel, e.g. 1/4 for a stride-4 map.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(RoI height / PH) rows
            and ceil(RoI width / PW) columns (adaptive). Default -1.
        aligned: False: legacy (boxes smaller than 1 pixel are widened to 1). True: shift the box
            by -0.5 pixel so that samples fall between the right pixel centres (Detectron2).
        mode: "avg" (the mean of the samples, torchvision's) or "max" (the largest sample; a bin
            without samples gives 0).

    Returns:
        (K, C, PH, PW) Tensor, input's dtype; differentiable w.r.t. ``input``.

    Raises:
        ValueError: an unknown mode, or bad shapes (see kernels/roi_align).

    Note: a sample outside [-1, H] x [-1, W] counts as 0 but still counts in the average (and the max).
    """
    check_mode(mode)
    PH, PW = pair(output_size, "output_size")
    x = unwrap(input)
    rois = as_rois(boxes, x)
    function = RoIAlignFunction if mode == "avg" else RoIAlignMaxFunction
    return function.apply(input, rois, PH, PW, float(spatial_scale), int(sampling_ratio), bool(aligned))

