"""Mask targets and mask pasting: from image masks to S x S RoI targets, and back.

Training (Mask R-CNN Sec. 3): the target of RoI k is its matched gt mask cropped by the RoI and
resampled to S x S with RoIAlign. Inference: each S x S probability map is resized to its box and
pasted into the image (torchvision's ``paste_masks_in_image``). No gradient: targets are constants
and pasting is post-processing. Lesson 10 (mask head) teaches both.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import as_array, get_array_module, kernel
from minimaskrcnn.function import no_grad
from minimaskrcnn.ops.roi_align import roi_align


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M: int):
    """Mask targets: each RoI's matched gt mask, cropped by the RoI and resampled to M x M. No gradient.

    Runs ``roi_align(gt_masks[:, None], rois, (M, M), spatial_scale=1.0)`` with the default
    ``sampling_ratio=-1`` and ``aligned=False``, as torchvision's ``project_masks_on_boxes``.

    Args:
        gt_masks: (G, H, W) the image's gt masks (0/1, any numeric dtype).
        boxes: (K, 4) float, the positive RoIs (x1, y1, x2, y2) in image pixels.
        matched_idxs: (K,) int, the gt index in [0, G - 1] of each RoI.
        M: output size (the mask head's S, 28 in Mask R-CNN).

    Returns:
        (K, M, M) targets in [0, 1], the dtype of ``boxes``.
    """
    gt_masks, boxes, matched_idxs = as_array(gt_masks), as_array(boxes), as_array(matched_idxs)
    xp = get_array_module(gt_masks, boxes, matched_idxs)
    # RoIs (K, 5): the "batch index" of each RoI is its gt mask, one mask per "image"
    rois = xp.concatenate([matched_idxs.astype(boxes.dtype)[:, None], boxes], axis=1)
    masks = gt_masks[:, None].astype(rois.dtype)  # (G, 1, H, W)
    with no_grad():
        targets = roi_align(masks, rois, (M, M), 1.0)
    return as_array(targets)[:, 0]


def expand_boxes(boxes, scale: float):
    """Scale boxes about their centres (torchvision's ``expand_boxes``).

    Args:
        boxes: (K, 4) float (x1, y1, x2, y2).
        scale: factor applied to the width and the height.

    Returns:
        (K, 4), the dtype of ``boxes``.
    """
    boxes = as_array(boxes)
    xp = get_array_module(boxes)
    scale = boxes.dtype.type(scale) if boxes.dtype.kind == "f" else scale  # scaled in the boxes' dtype
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return xp.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), axis=1).astype(boxes.dtype)


def expand_masks(mask, padding: int):
    """Pad masks with ``padding`` zeros on each side (torchvision's ``expand_masks``).

    Args:
        mask: (..., S, S) float.
        padding: pixels of zeros added on every side.

    Returns:
        ``(padded_mask, scale)``: (..., S + 2 padding, S + 2 padding), and ``(S + 2 padding) / S``,
        the factor by which the boxes must grow so that the mask keeps its size in the image.
    """
    mask = as_array(mask)
    xp = get_array_module(mask)
    M = mask.shape[-1]
    scale = float(M + 2 * padding) / M
    pad_width = [(0, 0)] * (mask.ndim - 2) + [(padding, padding), (padding, padding)]
    return xp.pad(mask, pad_width), scale


def paste_masks_in_image(masks, boxes, img_shape: tuple[int, int], padding: int = 1):
    """Paste each S x S mask into an image-sized canvas at its box. No gradient.

    As torchvision: pad the masks by ``padding`` (so that the borders blend to 0), grow the boxes
    by the same factor, truncate them to integers, then resize each mask bilinearly
    (``align_corners=False``) to its integer box size (x2 - x1 + 1 columns) and place it, clipped
    to the image. The resize and the placement run in one pass in the kernel of the current
    backend (kernels/paste_masks).

    Args:
        masks: (K, 1, S, S) float32/float64, mask probabilities.
        boxes: (K, 4) float, (x1, y1, x2, y2) detections in image pixels.
        img_shape: (H, W) of the image.
        padding: pixels of zero padding around each mask (torchvision uses 1).

    Returns:
        (K, 1, H, W) probabilities, the dtype of ``masks``; 0 outside each box.

    Note:
        Where torchvision's slicing breaks (a box entirely left of or above the image raises a
        shape error there), we paste the visible part of the box, i.e. nothing.
    """
    masks, boxes = as_array(masks), as_array(boxes)
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    padded, scale = expand_masks(masks, padding=padding)
    int_boxes = expand_boxes(boxes, scale).astype(np.int64)  # truncation toward 0, as .to(int64)
    pasted = kernel("paste_masks").paste_masks(padded[:, 0], int_boxes, im_h, im_w)
    return pasted[:, None]


def paste_mask_in_image(mask, box, im_h: int, im_w: int):
    """Paste one mask at one integer box (torchvision's ``paste_mask_in_image``). No gradient.

    Args:
        mask: (SH, SW) float.
        box: (4,) int (x1, y1, x2, y2), x2 and y2 inclusive.
        im_h, im_w: image size.

    Returns:
        (im_h, im_w), the dtype of ``mask``.
    """
    mask, box = as_array(mask), as_array(box)
    return kernel("paste_masks").paste_masks(mask[None], box[None], int(im_h), int(im_w))[0]
