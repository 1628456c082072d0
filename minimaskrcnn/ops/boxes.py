"""Box operations: area, IoU, clipping, small-box removal, format conversion and NMS.

Boxes are (x1, y1, x2, y2) in pixels, width = x2 - x1 (no +1), as in torchvision.ops.boxes. None of
these functions is differentiable (the paper does not backpropagate through them): they take NumPy
or CuPy arrays (or Tensors, whose ``.data`` is used) and return arrays of the same array module.
Lesson 06 (anchors and IoU) and lesson 09 (post-processing, NMS) teach them.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import as_array, get_array_module, kernel
from minimaskrcnn.kernels.nms import argsort_descending

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _upcast(a):
    """float16 -> float32 and small integers -> int32, so that products do not overflow (torchvision)."""
    if a.dtype.kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    return a if a.dtype in (np.int32, np.int64) else a.astype(np.int32)


# ------------------------------------------------------------------------------------ converters
def box_xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> (x1, y1, w, h). Args: boxes (..., 4). Returns: (..., 4), same dtype."""
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    x1, y1, x2, y2 = (boxes[..., c] for c in range(4))
    return xp.stack((x1, y1, x2 - x1, y2 - y1), axis=-1)


def box_xywh_to_xyxy(boxes):
    """(x1, y1, w, h) -> (x1, y1, x2, y2). Args: boxes (..., 4). Returns: (..., 4), same dtype."""
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    x, y, w, h = (boxes[..., c] for c in range(4))
    return xp.stack((x, y, x + w, y + h), axis=-1)


def box_xyxy_to_cxcywh(boxes):
    """(x1, y1, x2, y2) -> (cx, cy, w, h), the centre and size. Args: boxes (..., 4). Returns: (..., 4)."""
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    x1, y1, x2, y2 = (boxes[..., c] for c in range(4))
    return xp.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), axis=-1)


def box_cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x1, y1, x2, y2). Args: boxes (..., 4). Returns: (..., 4), same dtype."""
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    cx, cy, w, h = (boxes[..., c] for c in range(4))
    return xp.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), axis=-1)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Convert boxes between "xyxy", "xywh" and "cxcywh" (torchvision.ops.box_convert).

    Args:
        boxes: (..., 4) float.
        in_fmt, out_fmt: one of ``BOX_FORMATS``.

    Returns:
        (..., 4) boxes in ``out_fmt`` (a copy when the formats are equal).
    """
    if in_fmt not in BOX_FORMATS or out_fmt not in BOX_FORMATS:
        raise ValueError(f"Unsupported box conversion {in_fmt!r} -> {out_fmt!r}: formats are {BOX_FORMATS}")
    boxes = as_array(boxes)
    if in_fmt == out_fmt:
        return boxes.copy()
    to_xyxy = {"xyxy": lambda b: b, "xywh": box_xywh_to_xyxy, "cxcywh": box_cxcywh_to_xyxy}
    from_xyxy = {"xyxy": lambda b: b, "xywh": box_xyxy_to_xywh, "cxcywh": box_xyxy_to_cxcywh}
    return from_xyxy[out_fmt](to_xyxy[in_fmt](boxes))


# ------------------------------------------------------------------------------------ area, IoU
def box_area(boxes, fmt: str = "xyxy"):
    """Area of each box.

    Args:
        boxes: (..., 4), in format ``fmt`` ("xyxy", "xywh" or "cxcywh").

    Returns:
        (...,) area in pixels^2; float16 is computed in float32, small integers in int32.
    """
    if fmt not in BOX_FORMATS:
        raise ValueError(f"Unsupported box format {fmt!r} for box_area: formats are {BOX_FORMATS}")
    boxes = _upcast(as_array(boxes))
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]  # width * height


def _box_inter_union(boxes1, boxes2, fmt: str):
    """Pairwise intersection and union areas, each (..., N, M)."""
    xp = get_array_module(boxes1, boxes2)
    area1, area2 = box_area(boxes1, fmt), box_area(boxes2, fmt)
    if fmt == "xyxy":
        lo1, hi1, lo2, hi2 = boxes1[..., :2], boxes1[..., 2:], boxes2[..., :2], boxes2[..., 2:]
    elif fmt == "xywh":
        lo1, lo2 = boxes1[..., :2], boxes2[..., :2]
        hi1, hi2 = lo1 + boxes1[..., 2:], lo2 + boxes2[..., 2:]
    else:  # cxcywh
        lo1, hi1 = boxes1[..., :2] - boxes1[..., 2:] / 2, boxes1[..., :2] + boxes1[..., 2:] / 2
        lo2, hi2 = boxes2[..., :2] - boxes2[..., 2:] / 2, boxes2[..., :2] + boxes2[..., 2:] / 2
    top_left = xp.maximum(lo1[..., :, None, :], lo2[..., None, :, :])  # (..., N, M, 2)
    bottom_right = xp.minimum(hi1[..., :, None, :], hi2[..., None, :, :])
    wh = xp.maximum(_upcast(bottom_right - top_left), 0)  # no overlap: 0
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def box_iou(boxes1, boxes2, fmt: str = "xyxy"):
    """Pairwise intersection over union (Jaccard index) of two sets of boxes.

    Args:
        boxes1: (..., N, 4) float, in format ``fmt``.
        boxes2: (..., M, 4) float, in format ``fmt``.
        fmt: "xyxy" (default), "xywh" or "cxcywh".

    Returns:
        iou: (..., N, M), ``iou[n, m] = area(b1[n] & b2[m]) / area(b1[n] | b2[m])``; float dtype of
        the boxes (float32 for integer boxes, as torch's true division). Boxes [0, 0, 2, 2] and
        [1, 1, 3, 3] have IoU 1/7. Two zero-area boxes give 0/0 = NaN, as in torchvision.
    """
    if fmt not in BOX_FORMATS:
        raise ValueError(f"Unsupported box format {fmt!r} for box_iou: formats are {BOX_FORMATS}")
    boxes1, boxes2 = as_array(boxes1), as_array(boxes2)
    inter, union = _box_inter_union(boxes1, boxes2, fmt)
    if inter.dtype.kind != "f":
        inter, union = inter.astype(np.float32), union.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


# ------------------------------------------------------------------------------ clip and filter
def clip_boxes_to_image(boxes, size: tuple[int, int]):
    """Clip boxes so that they lie inside an image of ``size = (height, width)``.

    Args:
        boxes: (..., 4) (x1, y1, x2, y2).
        size: (height, width) of the image in pixels.

    Returns:
        (..., 4), same dtype: x clamped to [0, width], y to [0, height].
    """
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    height, width = size
    clipped = boxes.copy()
    clipped[..., 0::2] = xp.clip(boxes[..., 0::2], 0, width)
    clipped[..., 1::2] = xp.clip(boxes[..., 1::2], 0, height)
    return clipped


def remove_small_boxes(boxes, min_size: float):
    """Indices of the boxes whose width and height are both >= ``min_size``.

    Args:
        boxes: (..., 4) (x1, y1, x2, y2).
        min_size: minimum side length in pixels.

    Returns:
        keep: (K,) int64 indices (along the first axis for (N, 4) boxes), increasing.
    """
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    keep_mask = (widths >= min_size) & (heights >= min_size)
    return xp.nonzero(keep_mask)[0].astype(xp.int64)


# ------------------------------------------------------------------------------------------ NMS
def nms(boxes, scores, iou_threshold: float):
    """Non-maximum suppression (torchvision.ops.nms). No gradient.

    Visits the boxes by decreasing score (equal scores by increasing index) and drops every box
    whose IoU with an already kept box is strictly greater than ``iou_threshold``. Runs the
    kernel of the current backend (kernels/nms: "numpy", "numba" or "cuda").

    Args:
        boxes: (N, 4) float32/float64, (x1, y1, x2, y2) in pixels.
        scores: (N,) float, one score per box.
        iou_threshold: IoU above which the lower-scored box of a pair is discarded.

    Returns:
        keep: (K,) int64 indices of the kept boxes, sorted by decreasing score.
    """
    return kernel("nms").nms(as_array(boxes), as_array(scores), float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within each category: boxes with different ``idxs`` never suppress each other. No gradient.

    Follows torchvision exactly: up to 4,000 box coordinates (100,000 for CuPy arrays), it shifts
    every category by ``idx * (max coordinate + 1)`` so that categories cannot overlap, and runs
    one NMS ("coordinate trick"); above, it runs NMS per category and sorts the kept boxes by
    score.

    Args:
        boxes: (N, 4) float32/float64, (x1, y1, x2, y2).
        scores: (N,) float.
        idxs: (N,) int, the category of each box.
        iou_threshold: IoU above which the lower-scored box of a pair is discarded.

    Returns:
        keep: (K,) int64 indices of the kept boxes, sorted by decreasing score.

    Note:
        Above the size threshold torchvision sorts the kept boxes with an unstable sort, so the
        order of kept boxes with *equal* scores may differ from ours (we use a stable sort: equal
        scores by increasing index, which is what the coordinate trick gives). The kept set and
        every other position are the same.
    """
    boxes, scores, idxs = as_array(boxes), as_array(scores), as_array(idxs)
    xp = get_array_module(boxes, scores, idxs)
    if boxes.size > (4000 if xp is np else 100_000):
        return _batched_nms_per_category(boxes, scores, idxs, iou_threshold)
    return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)


def _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold: float):
    xp = get_array_module(boxes)
    if boxes.size == 0:
        return xp.zeros(0, dtype=xp.int64)
    # offsets computed in the boxes' dtype, as torchvision (this rounding is part of the result)
    max_coordinate = boxes.max()
    offsets = idxs.astype(boxes.dtype) * (max_coordinate + boxes.dtype.type(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_per_category(boxes, scores, idxs, iou_threshold: float):
    xp = get_array_module(boxes)
    keep_mask = xp.zeros(scores.shape, dtype=bool)
    for category in xp.unique(idxs).tolist():
        category_idx = xp.nonzero(idxs == category)[0]
        kept = nms(boxes[category_idx], scores[category_idx], iou_threshold)
        keep_mask[category_idx[kept]] = True
    keep = xp.nonzero(keep_mask)[0].astype(xp.int64)
    return keep[argsort_descending(scores[keep])]
