"""Paste masks with Numba: each pixel of a box's visible part interpolated directly (no resized copy).

Parallel over the masks; per mask, the column indices and weights are computed once.
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels.paste_masks import _scalar, check_paste_args

# _scalar.py's resize rule, compiled for the CPU
(source_index,) = compile_helpers(numba.njit(cache=True), _scalar.source_index)


@numba.njit(cache=True, parallel=True)
def _paste_masks(masks, boxes, out):
    num_masks, in_h, in_w = masks.shape
    im_h, im_w = out.shape[1], out.shape[2]
    for k in numba.prange(num_masks):
        bx1, by1, bx2, by2 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        w, h = max(bx2 - bx1 + 1, 1), max(by2 - by1 + 1, 1)  # box size = resized mask size
        x_0, x_1 = max(bx1, 0), min(bx2 + 1, im_w)  # visible columns [x_0, x_1)
        y_0, y_1 = max(by1, 0), min(by2 + 1, im_h)  # visible rows [y_0, y_1)
        if x_0 >= x_1 or y_0 >= y_1:
            continue
        # source columns of the visible columns (box column x - bx1), computed once per mask
        c0 = np.empty(x_1 - x_0, dtype=np.int64)
        c1 = np.empty(x_1 - x_0, dtype=np.int64)
        lc = np.empty(x_1 - x_0, dtype=np.float64)
        for x in range(x_0, x_1):
            c0[x - x_0], c1[x - x_0], lc[x - x_0] = source_index(x - bx1, in_w, w)
        for y in range(y_0, y_1):
            r0, r1, lr = source_index(y - by1, in_h, h)  # source rows of box row y - by1
            for x in range(x_0, x_1):
                j = x - x_0
                top = (1.0 - lc[j]) * masks[k, r0, c0[j]] + lc[j] * masks[k, r0, c1[j]]
                bottom = (1.0 - lc[j]) * masks[k, r1, c0[j]] + lc[j] * masks[k, r1, c1[j]]
                out[k, y, x] = (1.0 - lr) * top + lr * bottom


def paste_masks(masks: np.ndarray, boxes: np.ndarray, im_h: int, im_w: int) -> np.ndarray:
    """Paste each mask into an empty image at its box (see ``kernels/paste_masks/__init__.py``).

    Args:
        masks: (K, SH, SW) float32/float64, e.g. mask probabilities.
        boxes: (K, 4) int, (x1, y1, x2, y2) with x2, y2 inclusive: the box spans x2 - x1 + 1 columns.
        im_h, im_w: image size in pixels.

    Returns:
        (K, im_h, im_w), the dtype of ``masks``: 0 outside the boxes.
    """
    masks, boxes = check_paste_args(np.asarray(masks), np.asarray(boxes), im_h, im_w)
    out = np.zeros((masks.shape[0], im_h, im_w), dtype=masks.dtype)
    if masks.shape[0] > 0 and masks.shape[1] > 0 and masks.shape[2] > 0:
        _paste_masks(masks, boxes, out)
    return out
