"""The keypoint branch of Keypoint R-CNN: one one-hot "mask" per keypoint (Mask R-CNN, sec. 5).

For each positive RoI and each of its K keypoints the branch predicts a 56 x 56 map of logits; the
training target is the single pixel holding the keypoint, and the loss a softmax cross-entropy over
the 56 * 56 = 3136 positions. Modules (torchvision's names): ``KeypointRCNNHeads`` (eight 3x3 conv
512 + ReLU on 14 x 14 RoIAlign features) and ``KeypointRCNNPredictor`` (4x4 stride-2 transposed
conv to 28 x 28, then 2x bilinear to 56 x 56). Targets (``keypoints_to_heatmap``) and decoding
(``heatmaps_to_keypoints``: bicubic resize to the RoI, argmax) are array code with no gradient.
torchvision's ``roi_heads.py`` keypoint functions step for step. Lesson 15 builds each piece.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import as_array, get_array_module
from minimaskrcnn.global_batch import note_loss_count
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops.upsample import resize_bicubic

__all__ = [
    "KeypointRCNNHeads",
    "KeypointRCNNPredictor",
    "heatmaps_to_keypoints",
    "keypointrcnn_inference",
    "keypointrcnn_loss",
    "keypoints_to_heatmap",
]


# ------------------------------------------------------------------------------- modules
class KeypointRCNNHeads(nn.Sequential):
    """3x3 conv + ReLU layers on the pooled RoI features (torchvision's ``KeypointRCNNHeads``).

    The paper's keypoint head (sec. 5, "Implementation Details"): eight 3x3 512-d convs, stride 1,
    padding 1, so the 14 x 14 RoI features keep their size.

    Args:
        in_channels: C of the FPN.
        layers: output channels of each conv ((512,) * 8 in the paper and torchvision).

    Parameters are named ``0.weight``, ``0.bias``, ``2.weight``, ... (ReLUs at the odd positions),
    as torchvision's; weights are Kaiming-normal (fan out), biases zero.
    """

    def __init__(self, in_channels: int, layers: Sequence[int]):
        blocks = []
        next_feature = in_channels
        for out_channels in layers:
            blocks.append(nn.Conv2d(next_feature, out_channels, 3, stride=1, padding=1))
            blocks.append(nn.ReLU())
            next_feature = out_channels
        super().__init__(*blocks)
        for module in self.children():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


class KeypointRCNNPredictor(nn.Module):
    """Keypoint logits: a 4x4 stride-2 transposed conv, then 2x bilinear upsampling (torchvision's).

    (K, C, 14, 14) -> (K, num_keypoints, 28, 28) -> (K, num_keypoints, 56, 56): the paper's "deconv
    layer and 2x bilinear upscaling, producing an output resolution of 56 x 56", which it found
    necessary for keypoint-level localisation accuracy.

    Args:
        in_channels: channels of the keypoint head's output (512).
        num_keypoints: K keypoints per instance (17 for COCO persons).

    Parameters are ``kps_score_lowres.weight`` (C, K, 4, 4) and ``kps_score_lowres.bias`` (K,).
    """

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        deconv_kernel = 4
        self.kps_score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, deconv_kernel, stride=2,
                                                   padding=deconv_kernel // 2 - 1)
        nn.init.kaiming_normal_(self.kps_score_lowres.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.kps_score_lowres.bias)
        self.up_scale = 2
        self.out_channels = num_keypoints

    def forward(self, x):
        """(K, C, PH, PW) Tensor -> (K, num_keypoints, 4 PH, 4 PW) logits Tensor."""
        x = self.kps_score_lowres(x)
        return F.interpolate(x, scale_factor=float(self.up_scale), mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)


# ------------------------------------------------------------------------------- targets
def keypoints_to_heatmap(keypoints, rois, heatmap_size: int) -> tuple:
    """The training target of each keypoint: the index of the heatmap pixel it falls in. No gradient.

    A keypoint at (x, y) in the RoI (x1, y1, x2, y2) lands in the heatmap cell
    ``(floor((x - x1) * S / (x2 - x1)), floor((y - y1) * S / (y2 - y1)))``; a keypoint exactly on the
    right (bottom) edge goes to the last column (row). Its target is the flat index ``y * S + x``.
    It counts (``valid``) only if it is labelled (visibility > 0) and inside the RoI. As torchvision's
    ``keypoints_to_heatmap``, in the dtype of the inputs (float32 in the model).

    Args:
        keypoints: (K, NK, 3) float array, (x, y, visibility) of the NK keypoints of the gt matched to
            each of K RoIs, in input pixels; visibility 0 = not labelled, 1 = occluded, 2 = visible.
        rois: (K, 4) float array, (x1, y1, x2, y2) in input pixels.
        heatmap_size: S (56).

    Returns:
        (heatmaps, valid): (K, NK) int64 flat indices in [0, S * S) (0 where not valid) and (K, NK)
        bool.
    """
    keypoints, rois = as_array(keypoints), as_array(rois)
    xp = get_array_module(keypoints, rois)
    size = rois.dtype.type(heatmap_size)
    offset_x, offset_y = rois[:, 0][:, None], rois[:, 1][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-width RoI gives inf / nan: not valid below
        scale_x = (size / (rois[:, 2] - rois[:, 0]))[:, None]
        scale_y = (size / (rois[:, 3] - rois[:, 1]))[:, None]
        x = xp.floor((keypoints[..., 0] - offset_x) * scale_x)
        y = xp.floor((keypoints[..., 1] - offset_y) * scale_y)
    # a keypoint on the far edge would land one past the last cell: put it in the last one
    x = xp.where(keypoints[..., 0] == rois[:, 2][:, None], heatmap_size - 1, x)
    y = xp.where(keypoints[..., 1] == rois[:, 3][:, None], heatmap_size - 1, y)
    inside = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size)  # False for nan
    valid = inside & (keypoints[..., 2] > 0)
    x = xp.where(valid, x, 0).astype(np.int64)
    y = xp.where(valid, y, 0).astype(np.int64)
    return y * heatmap_size + x, valid


# -------------------------------------------------------------------------------- loss
def keypointrcnn_loss(keypoint_logits, proposals: Sequence, gt_keypoints: Sequence, keypoint_matched_idxs: Sequence):
    """The keypoint loss: a softmax cross-entropy over the S * S positions, one term per valid keypoint.

    Each (RoI, keypoint) pair is an S * S-way classification whose label is the pixel holding the
    keypoint (``keypoints_to_heatmap``); the loss is the mean over the valid pairs of all positive
    RoIs of the batch (Mask R-CNN sec. 5; torchvision's ``keypointrcnn_loss``). Rather than a
    per-pixel sigmoid (the mask loss) the softmax makes the positions compete: one keypoint is at
    exactly one place.

    Args:
        keypoint_logits: (K, NK, S, S) Tensor for the K positive RoIs (S = 56).
        proposals: list of (K_i, 4) positive RoIs per image, (x1, y1, x2, y2) in input pixels.
        gt_keypoints: list of (M_i, NK, 3) float32 gt keypoints (x, y, visibility) per image.
        keypoint_matched_idxs: list of (K_i,) int64, the gt index of each positive RoI.

    Returns:
        a 0-d Tensor. When no keypoint is valid (none labelled inside any RoI, or no RoI), it is
        ``keypoint_logits.sum() * 0``: zero, with a zero gradient that still reaches the logits. The
        number of valid pairs it averages over is noted for data-parallel training
        (``global_batch.note_loss_count("loss_keypoint", count)``; 0 when none is valid).

    Raises:
        ValueError: if the heatmaps are not square.
    """
    num_rois, num_keypoints, height, width = keypoint_logits.shape
    if height != width:
        raise ValueError(f"keypoint_logits height and width should be equal, got H = {height} and W = {width}")
    xp = get_array_module(keypoint_logits.data)
    heatmaps, valid = [], []
    for proposals_per_image, gt_kp_in_image, midx in zip(proposals, gt_keypoints, keypoint_matched_idxs):
        kp = as_array(gt_kp_in_image)[as_array(midx)]
        heatmaps_per_image, valid_per_image = keypoints_to_heatmap(kp, as_array(proposals_per_image), height)
        heatmaps.append(heatmaps_per_image.reshape(-1))
        valid.append(valid_per_image.reshape(-1))
    keypoint_targets = xp.concatenate(heatmaps) if heatmaps else xp.zeros(0, dtype=np.int64)
    valid_idx = xp.nonzero(xp.concatenate(valid))[0] if valid else xp.zeros(0, dtype=np.int64)
    if keypoint_targets.size == 0 or len(valid_idx) == 0:
        note_loss_count("loss_keypoint", 0)
        return keypoint_logits.sum() * 0
    note_loss_count("loss_keypoint", len(valid_idx))  # the valid (RoI, keypoint) pairs the mean runs over
    flat_logits = keypoint_logits.reshape(num_rois * num_keypoints, height * width)
    return F.cross_entropy(flat_logits[valid_idx], keypoint_targets[valid_idx])


# ------------------------------------------------------------------------------ decoding
def heatmaps_to_keypoints(maps, rois) -> tuple:
    """Keypoint positions and scores from the heatmaps of each RoI. No gradient.

    Per RoI (torchvision's ``heatmaps_to_keypoints``, after Detectron): 1. resize the S x S logits
    bicubically to the RoI's size in pixels, ``ceil(max(w, 1))`` x ``ceil(max(h, 1))``; 2. take each
    keypoint's argmax there; 3. map the pixel (i, j) back through the pixel-centre convention
    (Heckbert's c = d + 0.5): ``x = x1 + (j + 0.5) * w / ceil(w)``, likewise y. The score is the
    resized logit at the argmax.

    Args:
        maps: (K, NK, S, S) float array of keypoint logits.
        rois: (K, 4) float array, the RoIs (detected boxes), (x1, y1, x2, y2) in input pixels.

    Returns:
        (xy_preds, scores): (K, NK, 3) of maps' dtype, (x, y, 1) in input pixels (the third column is
        torchvision's visibility flag, always 1), and (K, NK) logit scores.
    """
    maps, rois = as_array(maps), as_array(rois)
    xp = get_array_module(maps, rois)
    dtype = maps.dtype
    rois = rois.astype(dtype, copy=False)
    num_rois, num_keypoints = maps.shape[:2]
    offset_x, offset_y = rois[:, 0], rois[:, 1]
    widths = xp.maximum(rois[:, 2] - rois[:, 0], dtype.type(1))
    heights = xp.maximum(rois[:, 3] - rois[:, 1], dtype.type(1))
    widths_ceil, heights_ceil = xp.ceil(widths), xp.ceil(heights)
    xy_preds = xp.zeros((num_rois, num_keypoints, 3), dtype=dtype)
    end_scores = xp.zeros((num_rois, num_keypoints), dtype=dtype)
    keypoint_idx = xp.arange(num_keypoints)
    for i in range(num_rois):
        roi_map_width, roi_map_height = int(widths_ceil[i]), int(heights_ceil[i])
        width_correction = widths[i] / dtype.type(roi_map_width)
        height_correction = heights[i] / dtype.type(roi_map_height)
        roi_map = resize_bicubic(maps[i], roi_map_height, roi_map_width)  # (NK, h, w)
        pos = roi_map.reshape(num_keypoints, -1).argmax(axis=1)  # the first maximum, as torch
        x_int = pos % roi_map_width
        y_int = pos // roi_map_width
        xy_preds[i, :, 0] = (x_int.astype(dtype) + dtype.type(0.5)) * width_correction + offset_x[i]
        xy_preds[i, :, 1] = (y_int.astype(dtype) + dtype.type(0.5)) * height_correction + offset_y[i]
        xy_preds[i, :, 2] = 1
        end_scores[i] = roi_map[keypoint_idx, y_int, x_int]
    return xy_preds, end_scores


def keypointrcnn_inference(keypoint_logits, boxes: Sequence) -> tuple[list, list]:
    """Decode the keypoint logits of all detections, image by image. No gradient.

    Args:
        keypoint_logits: (D, NK, S, S) float array, D = sum D_i.
        boxes: list of (D_i, 4) detected boxes per image, in input pixels.

    Returns:
        (keypoints, scores): lists of (D_i, NK, 3) (x, y, 1) and (D_i, NK), per image.
    """
    keypoint_logits = as_array(keypoint_logits)
    keypoints, scores = [], []
    start = 0
    for boxes_in_image in boxes:
        count = len(boxes_in_image)
        kp, score = heatmaps_to_keypoints(keypoint_logits[start:start + count], boxes_in_image)
        keypoints.append(kp)
        scores.append(score)
        start += count
    return keypoints, scores
