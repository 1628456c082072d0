"""NMS compiled with Numba: the loop of reference.py, one box pair at a time.

The boxes are gathered in score order first, so the inner loop reads the coordinates of the
later-ranked boxes contiguously (torchvision's kernel reads them through ``order[j]``).
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels.nms import argsort_descending, check_nms_args


@numba.njit(cache=True, error_model="numpy")  # numpy: 0/0 of zero-area boxes is NaN, not an error
def _nms_sorted(x1, y1, x2, y2, iou_threshold):
    """Greedy NMS on boxes already sorted by decreasing score; returns the kept ranks."""
    n = x1.shape[0]
    areas = (x2 - x1) * (y2 - y1)
    zero = np.zeros(1, dtype=x1.dtype)[0]  # keeps every product in the boxes' dtype
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    num_kept = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[num_kept] = i
        num_kept += 1
        ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], areas[i]
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            w = max(min(ix2, x2[j]) - max(ix1, x1[j]), zero)
            h = max(min(iy2, y2[j]) - max(iy1, y1[j]), zero)
            inter = w * h
            iou = inter / (iarea + areas[j] - inter)
            if iou > iou_threshold:  # float32 IoU vs float64 threshold, as torchvision
                suppressed[j] = True
    return keep[:num_kept]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (Numba). No gradient.

    Args:
        boxes: (N, 4) float32/float64, (x1, y1, x2, y2) in pixels.
        scores: (N,) float, one score per box.
        iou_threshold: a box is dropped when its IoU with a kept, higher-ranked box is > this.

    Returns:
        keep: (K,) int64, indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    boxes, scores = check_nms_args(np.asarray(boxes), np.asarray(scores))
    order = argsort_descending(scores)
    sorted_boxes = boxes[order].T.copy()  # (4, N): one contiguous row per coordinate
    kept_ranks = _nms_sorted(sorted_boxes[0], sorted_boxes[1], sorted_boxes[2], sorted_boxes[3],
                             float(iou_threshold))
    return order[kept_ranks]
