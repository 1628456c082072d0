"""The C4 heads: res5 as the RoI head, shared by the box and mask branches (Mask R-CNN Fig. 4 left).

The "C4" Faster/Mask R-CNN of the ResNet paper (appendix A) pools each RoI 14x14 from C4 (stride
16) and runs the ResNet's fifth stage (res5, stride 2: 7x7) on it; the box branch average-pools
that to one vector per RoI for the class and box predictors, and the mask branch upsamples it with
a 2x2 stride-2 transposed conv to 14x14 and predicts one mask per class with a 1x1 conv. Both
branches read the same res5 features, so the mask loss trains res5 too. detectron2's
``Res5ROIHeads`` step for step, with torchvision's blocks (stride in the 3x3 conv), so torchvision's
``layer4`` weights load into ``res5``. Lesson 17 (the ablations).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import as_array, get_array_module
from minimaskrcnn.intermediates import record
from minimaskrcnn.models.configs import BackboneConfig, MaskRCNNConfig
from minimaskrcnn.models.poolers import MultiScaleRoIAlign
from minimaskrcnn.models.resnet import RESNET_LAYERS, make_norm_layer, make_stage, stage_widths
from minimaskrcnn.models.roi_heads import (
    FastRCNNPredictor,
    MaskRCNNPredictor,
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)


def res5_head(config: BackboneConfig) -> tuple[nn.Sequential, int, int]:
    """The ResNet's fifth stage (``layer4``, first block with stride 2) as a stand-alone RoI head.

    Args:
        config: the backbone's configuration (depth, width, norm, ResNeXt groups), so that res5 is
            the stage the body would have had above C4.

    Returns:
        (res5, in_channels, out_channels): the stage, (K, C4, P, P) -> (K, C5, ceil(P / 2), ceil(P / 2)),
        with He-normal (fan_out) conv weights as ``ResNetBody``; C4 and C5 channels (1024 and 2048
        for ResNet-50).
    """
    block, widths = stage_widths(config.depth, config.width_multiplier)
    norm_layer = make_norm_layer(config.norm, eps=config.norm_eps, gn_groups=config.gn_groups)
    in_channels = widths[2] * block.expansion
    res5 = make_stage(block, in_channels, widths[3], RESNET_LAYERS[config.depth][3], 2, norm_layer,
                      config.groups, config.width_per_group)
    for module in res5.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return res5, in_channels, widths[3] * block.expansion


class Res5ROIHeads(RoIHeads):
    """RoI heads of the C4 model: pool 14x14 from C4, res5, then the box predictor on the mean over
    the 7x7 map and the mask predictor on the map itself (detectron2's ``Res5ROIHeads``).

    Args:
        box_roi_pool: the pooler (a ``MultiScaleRoIAlign`` on the one C4 map, 14x14; any pooler_type).
        res5: the fifth ResNet stage (``res5_head``).
        box_predictor: ``FastRCNNPredictor`` on res5's C5 channels.
        fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction, bbox_reg_weights,
            score_thresh, nms_thresh, detections_per_img, min_size, seed, mask_loss: as ``RoIHeads``.
        mask_predictor: ``MaskRCNNPredictor(C5, dim_reduced, L)`` (2x2 deconv to 14x14, 1x1 conv;
            one output channel for class-agnostic masks), or None for no mask branch.

    Attributes: ``box_roi_pool``, ``res5``, ``box_predictor``, ``mask_predictor`` (parameters
    ``res5.0.conv1.weight``, ... as torchvision's ``layer4.0.conv1.weight``).
    """

    def __init__(self, box_roi_pool, res5, box_predictor, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, bbox_reg_weights, score_thresh: float,
                 nms_thresh: float, detections_per_img: int, mask_predictor=None, min_size: float = 1e-2,
                 seed: int | None = None, mask_loss: str = "sigmoid"):
        super().__init__(box_roi_pool, None, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                         mask_predictor=mask_predictor, min_size=min_size, seed=seed, mask_loss=mask_loss)
        self.res5 = res5

    @classmethod
    def from_config(cls, config: MaskRCNNConfig, in_channels: int, **kwargs) -> Res5ROIHeads:
        """The C4 heads ``config`` describes: ``box.roi_output_size`` (14) and ``box.pooler_type`` for
        the pooler, res5 from ``config.backbone``, ``mask.dim_reduced`` and ``mask.class_agnostic``
        for the mask predictor (none with ``config.mask_on`` False), ``mask.loss``.

        Args:
            config: the whole model's configuration (a backbone without FPN returning C4).
            in_channels: C4's channels (the backbone's ``out_channels``).
            **kwargs: further constructor arguments.

        Raises:
            ValueError: a backbone that does not end at C4, an MLP mask head, or a mask pooler type
                other than the box's (the two branches share one pooler here).
        """
        b, m = config.box, config.mask
        res5, res5_in, out_channels = res5_head(config.backbone)
        if config.backbone.fpn or tuple(config.backbone.returned_layers) != (3,) or in_channels != res5_in:
            raise ValueError("the res5 heads need a backbone without FPN returning C4 "
                             "(fpn=False, returned_layers=(3,))")
        if m.head != "fcn":
            raise ValueError(f"the res5 heads predict masks with a deconv on res5 features, not a {m.head!r} head")
        if m.pooler_type != b.pooler_type:
            raise ValueError(f"the res5 heads pool once for both branches: mask.pooler_type ({m.pooler_type!r}) "
                             f"must equal box.pooler_type ({b.pooler_type!r})")
        pooler = MultiScaleRoIAlign(["0"], b.roi_output_size, b.sampling_ratio, pooler_type=b.pooler_type)
        box_predictor = FastRCNNPredictor(out_channels, config.num_classes)
        mask_predictor = None
        if config.mask_on:
            mask_classes = 1 if m.class_agnostic else config.num_classes
            mask_predictor = MaskRCNNPredictor(out_channels, m.dim_reduced, mask_classes)
        return cls(
            pooler, res5, box_predictor, b.fg_iou_thresh, b.bg_iou_thresh, b.batch_size_per_image,
            b.positive_fraction, b.bbox_reg_weights, b.score_thresh, b.nms_thresh, b.detections_per_img,
            mask_predictor=mask_predictor, min_size=b.min_size, seed=None if config.seed is None else config.seed + 1,
            mask_loss=m.loss, **kwargs,
        )

    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    @property
    def mask_size(self) -> int:
        """S, the side of the predicted masks: res5 halves the pooled size (rounding up), the deconv doubles it."""
        return 2 * math.ceil(self.box_roi_pool.output_size[0] / 2)

    def shared_features(self, features: dict, boxes: Sequence[np.ndarray], image_shapes):
        """res5 on the RoIs pooled from C4: (K, C5, S/2, S/2) Tensor, what both branches read."""
        return self.res5(self.box_roi_pool(features, boxes, image_shapes))

    def forward(self, features: dict, proposals: Sequence[np.ndarray], image_shapes: Sequence[tuple[int, int]],
                targets: Sequence[dict] | None = None) -> tuple[list, dict]:
        """Box and mask branches on shared res5 features (see ``RoIHeads.forward`` for the arguments,
        the results and the records). In training the mask branch reads the res5 features of the
        positive sampled RoIs (computed once for both losses); at inference res5 runs again on the
        detected boxes, as detectron2's ``forward_with_given_boxes``."""
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            record("roi_proposals", proposals)
            record("roi_matched_idxs", matched_idxs)
            record("roi_labels", labels)
            record("roi_regression_targets", regression_targets)
        box_features = self.shared_features(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(box_features.mean(dim=(2, 3)))
        record("class_logits", class_logits)
        record("box_regression", box_regression)

        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            if self.has_mask():
                xp = get_array_module(*labels)
                positive = [xp.nonzero(lbl > 0)[0] for lbl in labels]
                mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
                pos_matched_idxs = [m[pos] for m, pos in zip(matched_idxs, positive)]
                record("mask_proposals", mask_proposals)
                offsets = np.cumsum([0] + [len(p) for p in proposals[:-1]]).tolist()
                rows = xp.concatenate([pos + offset for pos, offset in zip(positive, offsets)])
                if len(rows) == 0:
                    # no positive RoI in the batch: a zero loss that still reaches the predictor
                    losses["loss_mask"] = sum(p.sum() for p in self.mask_predictor.parameters()) * 0
                else:
                    mask_logits = self.mask_predictor(box_features[rows])
                    record("mask_logits", mask_logits)
                    gt_masks = [as_array(t["masks"]) for t in targets]
                    gt_labels = [as_array(t["labels"]) for t in targets]
                    losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels,
                                                        pos_matched_idxs, loss=self.mask_loss)
            return [], losses

        boxes, scores, labels = self.postprocess_detections(class_logits.data, box_regression.data, proposals,
                                                            image_shapes)
        result = [{"boxes": b, "labels": lbl, "scores": s} for b, s, lbl in zip(boxes, scores, labels)]
        if self.has_mask():
            mask_proposals = [r["boxes"] for r in result]
            record("mask_proposals", mask_proposals)
            if sum(len(p) for p in mask_proposals) == 0:
                first = features[next(iter(features))]
                xp = get_array_module(first)
                masks_probs = [xp.zeros((0, 1, self.mask_size, self.mask_size), dtype=first.dtype) for _ in result]
            else:
                mask_logits = self.mask_predictor(self.shared_features(features, mask_proposals, image_shapes))
                record("mask_logits", mask_logits)
                masks_probs = maskrcnn_inference(mask_logits.data, [r["labels"] for r in result], self.mask_loss)
            for mask_prob, r in zip(masks_probs, result):
                r["masks"] = mask_prob
        return result, {}
