"""NMS, the readable version: one loop over the boxes in score order (NumPy).

See ``kernels/nms/__init__.py`` for the exact rules (torchvision's CPU semantics).
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels.nms import argsort_descending, check_nms_args


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. No gradient.

    Args:
        boxes: (N, 4) float32/float64, (x1, y1, x2, y2) in pixels.
        scores: (N,) float, one score per box.
        iou_threshold: a box is dropped when its IoU with a kept, higher-ranked box is > this.

    Returns:
        keep: (K,) int64, indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    boxes, scores = check_nms_args(np.asarray(boxes), np.asarray(scores))
    n = boxes.shape[0]
    # 1. visit the boxes by decreasing score: gather them in that order
    order = argsort_descending(scores)
    x1, y1, x2, y2 = (boxes[order, c] for c in range(4))
    areas = (x2 - x1) * (y2 - y1)  # in the boxes' dtype, as torchvision
    threshold = np.float64(iou_threshold)  # compare in float64, as torchvision's C++ does

    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):  # i: rank in score order
        if suppressed[i]:
            continue
        keep.append(order[i])
        # 2. IoU of box i with every box ranked after it; overlap clamped at 0
        later = slice(i + 1, n)
        w = np.maximum(np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]), 0)
        h = np.maximum(np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]), 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 for zero-area boxes: NaN, kept
            iou = inter / (areas[i] + areas[later] - inter)
        # 3. suppress those that overlap box i too much (strictly greater)
        suppressed[later] |= iou > threshold
    return np.asarray(keep, dtype=np.int64)
