"""Box coding: boxes <-> regression deltas (dx, dy, dw, dh) relative to reference boxes.

Faster R-CNN, Eq. (2): ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``,
``dw = ww * log(gw / pw)``, ``dh = wh * log(gh / ph)``, with centres (x, y) and sizes (w, h)
(width = x2 - x1, no +1). The RPN uses weights (1, 1, 1, 1), the box head (10, 10, 5, 5).
No gradient: targets are constants and proposals are not backpropagated (the loss is on deltas).
Lesson 07 (RPN) teaches it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from minimaskrcnn.backend import as_array, get_array_module


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes, and decode deltas back (torchvision's).

    Args:
        weights: (wx, wy, ww, wh), the scale of each delta.
        bbox_xform_clip: largest dw, dh fed to exp in ``decode`` (log(1000 / 16): a box can grow
            at most 62.5 times per side).
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: Sequence, proposals: Sequence) -> tuple:
        """Encode per-image lists: one ``encode_single`` on the concatenation, split back per image.

        Args:
            reference_boxes: list of (K_i, 4) arrays, the targets (e.g. matched gt boxes).
            proposals: list of (K_i, 4) arrays, the boxes the deltas are relative to.

        Returns:
            tuple of (K_i, 4) arrays of deltas (dx, dy, dw, dh), one per image.
        """
        reference_boxes = [as_array(b) for b in reference_boxes]
        proposals = [as_array(b) for b in proposals]
        xp = get_array_module(*reference_boxes, *proposals)
        boxes_per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(xp.concatenate(reference_boxes, axis=0), xp.concatenate(proposals, axis=0))
        return tuple(xp.split(targets, np.cumsum(boxes_per_image)[:-1].tolist(), axis=0))

    def encode_single(self, reference_boxes, proposals):
        """Deltas that turn each proposal into its reference box. No gradient.

        Args:
            reference_boxes: (K, 4) float, (x1, y1, x2, y2) targets (e.g. matched gt boxes).
            proposals: (K, 4) float, (x1, y1, x2, y2), the boxes the deltas are relative to.

        Returns:
            (K, 4) deltas (dx, dy, dw, dh) in the dtype of ``reference_boxes``.
        """
        reference_boxes, proposals = as_array(reference_boxes), as_array(proposals)
        xp = get_array_module(reference_boxes, proposals)
        dtype = reference_boxes.dtype
        wx, wy, ww, wh = (xp.asarray(w, dtype=dtype) for w in self.weights)
        proposals = proposals.astype(dtype, copy=False)

        # 1. centres and sizes of the proposals (ex_) and the targets (gt_)
        ex_widths = proposals[:, 2] - proposals[:, 0]
        ex_heights = proposals[:, 3] - proposals[:, 1]
        ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights
        gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        gt_ctr_x = reference_boxes[:, 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[:, 1] + 0.5 * gt_heights

        # 2. Eq. (2) of Faster R-CNN, scaled by the weights
        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * xp.log(gt_widths / ex_widths)
        dh = wh * xp.log(gt_heights / ex_heights)
        return xp.stack((dx, dy, dw, dh), axis=1)

    def decode(self, rel_codes, boxes: Sequence):
        """Apply deltas to per-image lists of reference boxes. No gradient.

        Args:
            rel_codes: (K, L*4) deltas, L boxes (e.g. one per class) for each of the K references.
            boxes: list of (K_i, 4) reference boxes, sum K_i = K.

        Returns:
            (K, L, 4) decoded boxes (x1, y1, x2, y2) in the dtype of ``rel_codes``; when K == 0,
            ``rel_codes``' shape is kept, as torchvision does.
        """
        if not isinstance(boxes, (list, tuple)):
            raise TypeError("BoxCoder.decode expects a list or tuple of (K_i, 4) box arrays, one per image")
        boxes = [as_array(b) for b in boxes]
        rel_codes = as_array(rel_codes)
        xp = get_array_module(rel_codes, *boxes)
        box_sum = sum(int(b.shape[0]) for b in boxes)
        concat_boxes = xp.concatenate(boxes, axis=0)
        if box_sum > 0:
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred_boxes = self.decode_single(rel_codes, concat_boxes)
        if box_sum > 0:
            pred_boxes = pred_boxes.reshape(box_sum, -1, 4)
        return pred_boxes

    def decode_single(self, rel_codes, boxes):
        """Boxes obtained by applying deltas to reference boxes. No gradient.

        Args:
            rel_codes: (K, L*4) deltas (dx, dy, dw, dh) repeated for L boxes per reference.
            boxes: (K, 4) reference boxes (x1, y1, x2, y2) (anchors or proposals).

        Returns:
            (K, L*4) boxes (x1, y1, x2, y2) in the dtype of ``rel_codes``. dw and dh are clamped at
            ``bbox_xform_clip`` before the exp (nothing clamps them from below).
        """
        rel_codes, boxes = as_array(rel_codes), as_array(boxes)
        xp = get_array_module(rel_codes, boxes)
        dtype = rel_codes.dtype
        boxes = boxes.astype(dtype, copy=False)

        # 1. centre and size of each reference box, as a column to broadcast over the L boxes
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0][:, None] + 0.5 * widths
        ctr_y = boxes[:, 1][:, None] + 0.5 * heights

        # 2. undo the weights; clamp dw, dh so that exp cannot overflow
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / dtype.type(wx)
        dy = rel_codes[:, 1::4] / dtype.type(wy)
        dw = xp.minimum(rel_codes[:, 2::4] / dtype.type(ww), dtype.type(self.bbox_xform_clip))
        dh = xp.minimum(rel_codes[:, 3::4] / dtype.type(wh), dtype.type(self.bbox_xform_clip))

        # 3. predicted centre and size, then the corners
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = xp.exp(dw) * widths
        pred_h = xp.exp(dh) * heights
        half_w = dtype.type(0.5) * pred_w
        half_h = dtype.type(0.5) * pred_h
        corners = (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h)
        pred_boxes = xp.stack(corners, axis=2)  # (K, L, 4)
        return pred_boxes.reshape(pred_boxes.shape[0], pred_boxes.shape[1] * 4)
