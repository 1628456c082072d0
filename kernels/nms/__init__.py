"""Non-maximum suppression (NMS): keep the best-scoring box of every cluster of overlapping boxes.

Greedy NMS (Faster R-CNN, Sec. 3.3; Mask R-CNN inference): visit the boxes in decreasing score
order; keep a box unless a box kept before it overlaps it with IoU > ``iou_threshold``. The result
is exactly torchvision's ``nms`` on the CPU:

- the score order is a *stable* descending sort, so equal scores are visited by increasing index;
- IoU is computed in the boxes' dtype as ``inter / (area_i + area_j - inter)`` with
  ``area = (x2 - x1) * (y2 - y1)`` (no +1), and compared with the threshold in float64;
- suppression needs IoU strictly greater than the threshold.

``reference.py`` is the readable loop (NumPy), ``cpu.py`` the same loop compiled with Numba and
``cuda.py`` the bitmask method on the GPU. Every module defines ``nms(boxes, scores, iou_threshold)``.
Lesson 09 (post-processing) builds it step by step.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module


def check_nms_args(boxes, scores):
    """Check the shapes and dtypes of NMS inputs and return them as arrays of one float dtype.

    Args:
        boxes: (N, 4) float32 or float64, (x1, y1, x2, y2).
        scores: (N,) float, same dtype as ``boxes`` (converted to it if not).

    Returns:
        ``(boxes, scores)``: C-contiguous arrays of the same float dtype.

    Raises:
        ValueError: for a wrong shape or a non-float dtype.
    """
    xp = get_array_module(boxes, scores)
    boxes = xp.asarray(boxes)
    scores = xp.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {tuple(boxes.shape)}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must be (N,) with N = {boxes.shape[0]}, got shape {tuple(scores.shape)}")
    if boxes.dtype.kind != "f":
        raise ValueError(f"boxes must be float32 or float64, got {boxes.dtype}")
    scores = xp.ascontiguousarray(scores, dtype=boxes.dtype)
    return xp.ascontiguousarray(boxes), scores


def argsort_descending(scores):
    """Indices that sort ``scores`` in decreasing order, equal scores by increasing index (stable).

    This is torchvision's ``scores.sort(stable=True, descending=True)``. Negating is exact for
    floats, so a stable ascending sort of ``-scores`` gives that order.
    """
    xp = get_array_module(scores)
    if xp.__name__ == "numpy":
        return xp.argsort(-scores, kind="stable")
    return xp.argsort(-scores)  # CuPy's sort is always stable
