"""Region proposal network: objectness and box deltas for every anchor, then the best boxes (Faster R-CNN, sec. 3.1).

The head (3x3 conv, then two 1x1 convs) is differentiable; choosing proposals (top-n per level,
clipping, NMS) and the training targets (matching anchors to gt boxes, sampling) are plain array
code with no gradient, as in the paper. torchvision's ``RegionProposalNetwork`` step for step.
Lesson 08 (RPN) draws anchors by label and proposals before and after NMS.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import as_array, get_array_module
from minimaskrcnn.global_batch import STREAM_RPN_SAMPLER, image_generators, note_loss_count
from minimaskrcnn.intermediates import is_recording, record
from minimaskrcnn.kernels.nms import argsort_descending
from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.models.configs import MaskRCNNConfig
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops._utils import sigmoid_array
from minimaskrcnn.ops.box_coder import BoxCoder
from minimaskrcnn.ops.boxes import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.ops.matcher import BACKGROUND, IGNORE, POSITIVE, BalancedPositiveNegativeSampler, Matcher
from minimaskrcnn.ops.shape import cat


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas (torchvision's ``RPNHead``).

    Args:
        in_channels: C, channels of every feature level.
        num_anchors: A, anchors per location.
        conv_depth: number of 3x3 conv + ReLU layers (torchvision: 1).

    Parameters are named as torchvision's: ``conv.0.0``, ``cls_logits``, ``bbox_pred``.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1), nn.ReLU())
            for _ in range(conv_depth)
        ])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)

    def forward(self, x: Sequence) -> tuple[list, list]:
        """Run the head on every level.

        Args:
            x: list of (N, C, H_l, W_l) Tensors, one per level.

        Returns:
            (logits, bbox_reg): lists over levels of (N, A, H_l, W_l) objectness logits and
            (N, A * 4, H_l, W_l) deltas (dx, dy, dw, dh) of anchor a at channels 4a..4a+3.
        """
        logits, bbox_reg = [], []
        for feature in x:
            t = feature
            for conv, _relu in self.conv:  # each conv and its ReLU as one op
                t = F.conv2d_relu(t, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


def permute_and_flatten(layer, N: int, A: int, C: int, H: int, W: int):
    """(N, A * C, H, W) -> (N, H * W * A, C): the order of ``AnchorGenerator``'s anchors."""
    layer = layer.reshape(N, A, C, H, W)
    layer = layer.permute(0, 3, 4, 1, 2)
    return layer.reshape(N, H * W * A, C)


def concat_box_prediction_layers(box_cls: Sequence, box_regression: Sequence) -> tuple:
    """Flatten and concatenate the per-level head outputs in anchor order (torchvision's).

    Args:
        box_cls: list over levels of (N, A * C, H_l, W_l) Tensors (C = 1 for the RPN).
        box_regression: list over levels of (N, A * 4, H_l, W_l) Tensors.

    Returns:
        (box_cls, box_regression): (N * R, C) and (N * R, 4) Tensors, image-major, R anchors per image.
    """
    box_cls_flattened, box_regression_flattened = [], []
    for box_cls_per_level, box_regression_per_level in zip(box_cls, box_regression):
        N, AxC, H, W = box_cls_per_level.shape
        A = box_regression_per_level.shape[1] // 4
        C = AxC // A
        box_cls_flattened.append(permute_and_flatten(box_cls_per_level, N, A, C, H, W))
        box_regression_flattened.append(permute_and_flatten(box_regression_per_level, N, A, 4, H, W))
    box_cls = cat(box_cls_flattened, dim=1)
    box_regression = cat(box_regression_flattened, dim=1)
    N, R, C = box_cls.shape
    return box_cls.reshape(N * R, C), box_regression.reshape(N * R, 4)


def top_n_idx_per_level(objectness: np.ndarray, num_anchors_per_level: Sequence[int], top_n: int) -> np.ndarray:
    """Indices of the top_n highest scores of each level, best first within a level. No gradient.

    Args:
        objectness: (N, R) float scores.
        num_anchors_per_level: anchors of each level, summing to R.
        top_n: kept per level (all of a level's anchors when it has fewer).

    Returns:
        (N, T) int64 indices into R, T = sum over levels of min(top_n, level size), levels in order.
    """
    xp = get_array_module(objectness)
    result, offset = [], 0
    for n in num_anchors_per_level:
        ob = objectness[:, offset : offset + n]
        k = min(top_n, n)
        if k < n:
            part = xp.argpartition(-ob, k - 1, axis=1)[:, :k]
        else:
            part = xp.broadcast_to(xp.arange(n), ob.shape).copy()
        order = argsort_descending(xp.take_along_axis(ob, part, axis=1))  # stable, along axis 1
        result.append(xp.take_along_axis(part, order, axis=1) + offset)
        offset += n
    return xp.concatenate(result, axis=1)


class RegionProposalNetwork(nn.Module):
    """The RPN: head, anchors, proposal selection and, in training, its two losses (torchvision's).

    Args:
        anchor_generator: the anchors of every level.
        head: an ``RPNHead``.
        fg_iou_thresh, bg_iou_thresh: anchors with IoU >= fg are positive, < bg negative (0.7, 0.3).
        batch_size_per_image, positive_fraction: anchors sampled per image for the losses (256, 0.5).
        pre_nms_top_n, post_nms_top_n: {"training": n, "testing": n} proposals kept per level before
            NMS and per image after it.
        nms_thresh: IoU of the per-level NMS (0.7).
        score_thresh: proposals with a lower objectness probability are dropped (0.0).
        min_size: proposals with a side below this (pixels) are dropped (1e-3).
        seed: seed of the anchor sampler's generator.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, pre_nms_top_n: dict, post_nms_top_n: dict,
                 nms_thresh: float, score_thresh: float = 0.0, min_size: float = 1e-3, seed: int | None = None):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction, generator=seed)
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    @classmethod
    def from_config(cls, config: MaskRCNNConfig, in_channels: int, *, anchor_generator: AnchorGenerator | None = None,
                    head: nn.Module | None = None) -> RegionProposalNetwork:
        """The RPN that ``config.anchors`` and ``config.rpn`` describe, its sampler seeded with ``config.seed``.

        Args:
            config: the whole model's configuration.
            in_channels: C, the channels of every feature level (the backbone's ``out_channels``).
            anchor_generator, head: parts to use instead of the configured ones (the head must give
                as many anchors per location as the generator).
        """
        if anchor_generator is None:
            anchor_generator = AnchorGenerator(config.anchors.sizes, config.anchors.aspect_ratios)
        r = config.rpn
        if head is None:
            head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=r.head_conv_depth)
        return cls(
            anchor_generator, head, r.fg_iou_thresh, r.bg_iou_thresh, r.batch_size_per_image, r.positive_fraction,
            dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
            dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test),
            r.nms_thresh, score_thresh=r.score_thresh, min_size=r.min_size, seed=config.seed,
        )

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # ------------------------------------------------------------------ training targets
    def assign_targets_to_anchors(self, anchors: Sequence[np.ndarray], targets: Sequence[dict]) -> tuple[list, list]:
        """Label every anchor positive / negative / ignored by its IoU with the gt boxes. No gradient.

        Args:
            anchors: list of N (R, 4) arrays, (x1, y1, x2, y2) in input pixels.
            targets: list of N dicts with "boxes" (M_i, 4) in input pixels.

        Returns:
            (labels, matched_gt_boxes): lists of N (R,) float32 arrays of POSITIVE (1), BACKGROUND (0)
            or IGNORE (-1), and (R, 4) arrays, the gt box each anchor is matched to (gt 0 for
            unmatched anchors: their regression target is never used).
        """
        labels, matched_gt_boxes = [], []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            gt_boxes = as_array(targets_per_image["boxes"])
            xp = get_array_module(gt_boxes, anchors_per_image)
            if gt_boxes.size == 0:
                matched_gt_boxes.append(xp.zeros(anchors_per_image.shape, dtype=np.float32))
                labels.append(xp.zeros(anchors_per_image.shape[0], dtype=np.float32))
                continue
            match_quality_matrix = box_iou(gt_boxes, anchors_per_image)
            matched_idxs = self.proposal_matcher(match_quality_matrix)
            matched_gt_boxes.append(gt_boxes[xp.maximum(matched_idxs, 0)])
            labels_per_image = xp.where(matched_idxs >= 0, POSITIVE, BACKGROUND).astype(np.float32)
            labels_per_image[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = IGNORE
            labels.append(labels_per_image)
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels: Sequence[np.ndarray],
                     regression_targets: Sequence[np.ndarray]) -> tuple:
        """Objectness (BCE) and box (smooth L1, beta 1/9) losses on a balanced sample of anchors.

        Args:
            objectness: (N * R, 1) Tensor of logits.
            pred_bbox_deltas: (N * R, 4) Tensor of deltas.
            labels: list of N (R,) float arrays (1, 0, -1).
            regression_targets: list of N (R, 4) arrays, the encoded matched gt boxes.

        Returns:
            (loss_objectness, loss_rpn_box_reg): scalar Tensors; the box loss is summed over the
            positives and divided by the number of sampled anchors, as torchvision. Both counts are
            noted for data-parallel training (``global_batch.note_loss_count``), and inside a
            ``global_batch`` block each image's anchors are sampled with that image's generator.
        """
        xp = get_array_module(*labels)
        generators = image_generators(len(labels), STREAM_RPN_SAMPLER)
        sampled_pos_masks, sampled_neg_masks = self.fg_bg_sampler(labels, generators=generators)
        sampled_pos_inds = xp.nonzero(xp.concatenate(sampled_pos_masks))[0]
        sampled_neg_inds = xp.nonzero(xp.concatenate(sampled_neg_masks))[0]
        sampled_inds = xp.concatenate([sampled_pos_inds, sampled_neg_inds])
        labels = xp.concatenate(labels)
        regression_targets = xp.concatenate(regression_targets, axis=0)
        record("rpn_sampled_pos_idx", sampled_pos_inds)
        record("rpn_sampled_neg_idx", sampled_neg_inds)
        dtype = pred_bbox_deltas.dtype
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds],
            regression_targets[sampled_pos_inds].astype(dtype),
            beta=1 / 9,
            reduction="sum",
        ) / max(sampled_inds.size, 1)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.reshape(-1)[sampled_inds], labels[sampled_inds].astype(dtype)
        )
        # both are means over the sampled anchors: data-parallel training rescales them to the count
        # of the whole batch
        note_loss_count("loss_objectness", sampled_inds.size)
        note_loss_count("loss_rpn_box_reg", sampled_inds.size)
        return objectness_loss, box_loss

    # -------------------------------------------------------------------- proposals
    def filter_proposals(self, proposals: np.ndarray, objectness: np.ndarray, image_shapes: Sequence[tuple[int, int]],
                         num_anchors_per_level: Sequence[int]) -> tuple[list, list]:
        """Select proposals: top-n per level, clip, drop tiny and low-score boxes, NMS per level, top-n. No gradient.

        Args:
            proposals: (N, R, 4) decoded boxes (x1, y1, x2, y2) in input pixels.
            objectness: (N, R) logits.
            image_shapes: (h, w) of each image (resized, before padding): boxes are clipped to it.
            num_anchors_per_level: anchors of each level, summing to R.

        Returns:
            (boxes, scores): lists of N (P_i, 4) arrays and (P_i,) objectness probabilities,
            best first, P_i <= post_nms_top_n.
        """
        xp = get_array_module(proposals, objectness)
        num_images = proposals.shape[0]
        levels = xp.concatenate([xp.full(n, idx, dtype=np.int64) for idx, n in enumerate(num_anchors_per_level)])
        top_n_idx = top_n_idx_per_level(objectness, num_anchors_per_level, self.pre_nms_top_n())
        batch_idx = xp.arange(num_images)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        levels = levels[top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        objectness_prob = sigmoid_array(objectness)

        recording = is_recording()
        final_boxes, final_scores, before_nms = [], [], []
        for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, img_shape)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = xp.nonzero(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            if recording:
                before_nms.append({"boxes": boxes, "scores": scores, "levels": lvl})
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)
            keep = keep[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        if recording:
            record("proposals_before_nms", before_nms)
        return final_boxes, final_scores

    def forward(self, images, features: dict, targets: Sequence[dict] | None = None) -> tuple[list, dict]:
        """Propose boxes (and, in training, compute the RPN losses).

        Args:
            images: the ``ImageList`` (its padded size gives the anchors' strides, its image sizes
                the clipping).
            features: name -> (N, C, H_l, W_l) Tensor, every FPN level including "pool".
            targets: in training, list of N dicts with "boxes" (M_i, 4) in input pixels.

        Records (see ``minimaskrcnn.intermediates``): "anchors", "anchors_per_level",
        "num_anchors_per_level", "objectness", "pred_bbox_deltas", "proposals_before_nms",
        "proposals", "proposal_scores"; in training "rpn_labels", "rpn_matched_gt_boxes",
        "rpn_regression_targets", "rpn_sampled_pos_idx", "rpn_sampled_neg_idx".

        Returns:
            (boxes, losses): N (P_i, 4) proposal arrays and {"loss_objectness", "loss_rpn_box_reg"}
            (empty in eval mode).
        """
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        image_size = tuple(images.tensors.shape[-2:])
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        num_images = len(images.image_sizes)
        dtype = features[0].dtype
        anchors = self.anchor_generator(image_size, grid_sizes, num_images, dtype=dtype)
        xp = get_array_module(objectness[0])
        if xp is not np:  # the anchors are made (and cached) on the host: one copy to the device
            anchors = [xp.asarray(anchors[0])] * num_images
        num_anchors_per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
        record("anchors", anchors)
        if is_recording():
            record("anchors_per_level", self.anchor_generator.anchors_per_level(image_size, grid_sizes, dtype))
        record("num_anchors_per_level", num_anchors_per_level)
        record("objectness", objectness)
        record("pred_bbox_deltas", pred_bbox_deltas)
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.data, anchors).reshape(num_images, -1, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness.data.reshape(num_images, -1), images.image_sizes, num_anchors_per_level
        )
        record("proposals", boxes)
        record("proposal_scores", scores)

        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            with np.errstate(divide="ignore", invalid="ignore"):  # zero boxes of gt-less images: unused
                regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            record("rpn_labels", labels)
            record("rpn_matched_gt_boxes", matched_gt_boxes)
            record("rpn_regression_targets", list(regression_targets))
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses

