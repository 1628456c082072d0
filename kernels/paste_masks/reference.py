"""Paste masks, the readable version: resize each mask to its box, then copy its visible part (NumPy)."""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels.paste_masks import check_paste_args


def _source_index(size: int, out: int):
    """For each of ``out`` output samples: the two input indices and the weight of the second.

    Args:
        size: number of input samples along the axis.
        out: number of output samples.

    Returns:
        ``(i0, i1, l1)``: (out,) int64, (out,) int64, (out,) float64.
    """
    src = np.maximum((size / out) * (np.arange(out) + 0.5) - 0.5, 0.0)  # half-pixel centres
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.where(i0 < size - 1, i0 + 1, i0)
    l1 = np.minimum(src - i0, 1.0)
    return i0, i1, l1


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize a 2-D array as ``F.interpolate(mode="bilinear", align_corners=False)``.

    Args:
        image: (H, W) float.
        out_h, out_w: output size.

    Returns:
        (out_h, out_w), the dtype of ``image``.
    """
    r0, r1, lr = _source_index(image.shape[0], out_h)
    c0, c1, lc = _source_index(image.shape[1], out_w)
    lr, lc = lr[:, None], lc[None, :]
    top = (1 - lc) * image[r0][:, c0] + lc * image[r0][:, c1]  # interpolate along x on rows r0
    bottom = (1 - lc) * image[r1][:, c0] + lc * image[r1][:, c1]  # ... and on rows r1
    return ((1 - lr) * top + lr * bottom).astype(image.dtype)


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
    for k in range(masks.shape[0]):
        bx1, by1, bx2, by2 = (int(v) for v in boxes[k])
        # 1. resize the mask to the box size (at least one pixel)
        w, h = max(bx2 - bx1 + 1, 1), max(by2 - by1 + 1, 1)
        resized = resize_bilinear(masks[k], h, w)
        # 2. the part of the box inside the image
        x_0, x_1 = max(bx1, 0), min(bx2 + 1, im_w)
        y_0, y_1 = max(by1, 0), min(by2 + 1, im_h)
        if x_0 >= x_1 or y_0 >= y_1:
            continue  # the box is outside the image
        # 3. copy it, shifting from image to box coordinates
        out[k, y_0:y_1, x_0:x_1] = resized[y_0 - by1:y_1 - by1, x_0 - bx1:x_1 - bx1]
    return out
