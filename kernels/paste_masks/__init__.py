"""Paste masks into the image: resize each S x S mask to its box and place it, in one pass.

Mask R-CNN inference (Sec. 3, "the m x m floating-number mask output is resized to the RoI size"):
mask k, predicted on an S x S grid, covers the integer box ``(bx1, by1, bx2, by2) = boxes[k]``,
i.e. ``h = max(by2 - by1 + 1, 1)`` rows and ``w = max(bx2 - bx1 + 1, 1)`` columns starting at
``(by1, bx1)``. Image pixel ``(y, x)`` inside both the box and the image takes the value of the
mask resized to (h, w) at ``(y - by1, x - bx1)``; every other pixel is 0. The resize is
PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``: for output index ``d`` of
``out`` along an axis of ``size`` input samples,

    src = max((size / out) * (d + 0.5) - 0.5, 0)    (half-pixel centres, clamped at 0)
    i0 = min(floor(src), size - 1),  i1 = i0 + 1 if i0 < size - 1 else i0,  l1 = min(src - i0, 1)
    value = (1 - l1) * sample[i0] + l1 * sample[i1]  (rows, then columns: bilinear)

This is torchvision's ``paste_mask_in_image`` for every mask at once; ``reference.py`` does it as
"resize, then copy the visible part", ``cpu.py`` and ``cuda.py`` compute each pixel directly.
Every module defines ``paste_masks(masks, boxes, im_h, im_w)``. Lesson 10 (mask head) uses it.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module


def check_paste_args(masks, boxes, im_h: int, im_w: int):
    """Check the inputs of ``paste_masks`` and return them as contiguous arrays.

    Args:
        masks: (K, SH, SW) float32/float64 masks (already padded if wanted).
        boxes: (K, 4) integer boxes (x1, y1, x2, y2), inclusive pixel corners.
        im_h, im_w: image size in pixels.

    Returns:
        ``(masks, boxes)`` with ``boxes`` as int64.
    """
    xp = get_array_module(masks, boxes)
    masks, boxes = xp.asarray(masks), xp.asarray(boxes)
    if masks.ndim != 3 or masks.dtype.kind != "f":
        raise ValueError(f"masks must be a (K, SH, SW) float array, got shape {tuple(masks.shape)}, {masks.dtype}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be (K, 4) with K = {masks.shape[0]}, got shape {tuple(boxes.shape)}")
    if im_h < 0 or im_w < 0:
        raise ValueError(f"image size must be >= 0, got {(im_h, im_w)}")
    return xp.ascontiguousarray(masks), xp.ascontiguousarray(boxes, dtype=xp.int64)
