"""Mask R-CNN: transform -> backbone + FPN -> RPN -> RoI heads -> back to image size (He et al. 2017).

``maskrcnn_resnet50_fpn`` builds torchvision's v1 model (same parameter names, so its state_dict
loads); ``build_model`` builds any ``MaskRCNNConfig`` (e.g. "r18-shapes"). Call conventions are
torchvision's: eval mode returns detections, training mode a dict of losses. Lesson 13 runs it
stage by stage with ``return_intermediates=True``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.function import no_grad
from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.models.configs import MaskRCNNConfig, get_config
from minimaskrcnn.models.fpn import resnet_fpn_backbone
from minimaskrcnn.models.poolers import MultiScaleRoIAlign
from minimaskrcnn.models.roi_heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead
from minimaskrcnn.models.transform import GeneralizedRCNNTransform
from minimaskrcnn.tensor import Tensor

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


class MaskRCNN(nn.Module):
    """Mask R-CNN built from a ``MaskRCNNConfig`` (torchvision's ``MaskRCNN`` with its default heads).

    Args:
        config: the configuration (see ``configs.py``).

    Attributes (torchvision's names): ``transform``, ``backbone`` (``body`` + ``fpn``), ``rpn``
    (``head``, ``anchor_generator``), ``roi_heads`` (``box_head``, ``box_predictor``, ``mask_head``,
    ``mask_predictor``); ``config``; ``record_intermediates`` (False) and ``intermediates``.

    Calling:
        ``model.eval(); model([image, ...])`` with float (3, H, W) arrays or Tensors in [0, 1]
        returns one dict per image of arrays: "boxes" (D, 4) float (x1, y1, x2, y2) in the
        image's pixels, "labels" (D,) int64, "scores" (D,) and "masks" (D, 1, H, W) probabilities.
        Eval mode runs without recording a graph. The arrays are NumPy, or CuPy (left on the GPU,
        as torchvision leaves CUDA tensors) after ``model.to_device("cuda")``: ``backend.to_numpy``.

        ``model.train(); model(images, targets)`` with targets = dicts of "boxes" (M, 4) float,
        "labels" (M,) int64 and "masks" (M, H, W) uint8 returns {"loss_classifier", "loss_box_reg",
        "loss_mask", "loss_objectness", "loss_rpn_box_reg"}: scalar Tensors whose sum
        backpropagates into every trainable parameter.

    Intermediate results:
        ``model(images, targets, return_intermediates=True)`` returns ``(output, intermediates)``;
        with ``model.record_intermediates = True`` every call stores them in ``model.intermediates``.
        The dict holds NumPy arrays (coordinates in the resized input's pixels):

        - "images" (N, 3, H, W) the padded normalised batch; "image_sizes"; "original_image_sizes";
          "targets" (training) resized to the batch;
        - "body_features" (C2-C5) and "features" (P2-P6) name -> (N, C, H_l, W_l);
        - "anchors" (per image, (R, 4)), "anchors_per_level", "num_anchors_per_level";
          "objectness" / "pred_bbox_deltas" per level (N, A, H_l, W_l) / (N, 4A, H_l, W_l);
        - "proposals_before_nms" (per image: "boxes", "scores", "levels" after top-n, clipping and
          small-box removal), "proposals" and "proposal_scores" (after NMS);
        - training, RPN: "rpn_labels" (R,) 1/0/-1, "rpn_matched_gt_boxes", "rpn_regression_targets",
          "rpn_sampled_pos_idx", "rpn_sampled_neg_idx" (into the N * R concatenated anchors);
        - training, RoI heads: "roi_proposals" (sampled RoIs, gt boxes included), "roi_labels",
          "roi_matched_idxs", "roi_regression_targets", "mask_targets" (K, S, S), "mask_labels";
        - "class_logits" (K, L), "box_regression" (K, 4L), "mask_proposals", "mask_logits" (K, L, S, S);
        - eval: "detections" before rescaling to the original images (masks still S x S).
    """

    def __init__(self, config: MaskRCNNConfig | None = None):
        super().__init__()
        config = config or MaskRCNNConfig()
        self.config = config
        seed = config.seed
        t = config.transform
        self.transform = GeneralizedRCNNTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                                  size_divisible=t.size_divisible, seed=seed)
        self.backbone = resnet_fpn_backbone(config.backbone)
        out_channels = self.backbone.out_channels
        featmap_names = [str(i) for i in range(len(config.backbone.returned_layers))]

        anchor_generator = AnchorGenerator(config.anchors.sizes, config.anchors.aspect_ratios)
        r = config.rpn
        rpn_head = RPNHead(out_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=r.head_conv_depth)
        self.rpn = RegionProposalNetwork(
            anchor_generator, rpn_head, r.fg_iou_thresh, r.bg_iou_thresh, r.batch_size_per_image, r.positive_fraction,
            dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
            dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test),
            r.nms_thresh, score_thresh=r.score_thresh, min_size=r.min_size, seed=seed,
        )

        b, m = config.box, config.mask
        box_roi_pool = MultiScaleRoIAlign(featmap_names, b.roi_output_size, b.sampling_ratio)
        box_head = TwoMLPHead(out_channels * b.roi_output_size ** 2, b.representation_size)
        box_predictor = FastRCNNPredictor(b.representation_size, config.num_classes)
        mask_roi_pool = MultiScaleRoIAlign(featmap_names, m.roi_output_size, m.sampling_ratio)
        mask_head = MaskRCNNHeads(out_channels, m.layers, m.dilation)
        mask_predictor = MaskRCNNPredictor(m.layers[-1], m.dim_reduced, config.num_classes)
        self.roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, b.fg_iou_thresh, b.bg_iou_thresh, b.batch_size_per_image,
            b.positive_fraction, b.bbox_reg_weights, b.score_thresh, b.nms_thresh, b.detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
            min_size=b.min_size, seed=None if seed is None else seed + 1,
        )
        self.record_intermediates = False
        self.intermediates: dict | None = None

    @property
    def dtype(self):
        """The float dtype of the parameters (images are cast to it)."""
        return next(iter(self.backbone.fpn.parameters())).dtype

    def forward(self, images: Sequence, targets: Sequence[dict] | None = None, return_intermediates: bool = False):
        """Detect (eval mode) or compute the losses (training mode); see the class docstring."""
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            for target in targets:
                boxes = np.asarray(to_numpy(target["boxes"]))
                if boxes.ndim != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"Expected target boxes of shape (M, 4), got {boxes.shape}")
            return self._forward(images, targets, return_intermediates)
        with no_grad():
            return self._forward(images, None, return_intermediates)

    def _forward(self, images: Sequence, targets: Sequence[dict] | None, return_intermediates: bool):
        debug = {} if (return_intermediates or self.record_intermediates) else None
        dtype = self.dtype
        images = [np.asarray(to_numpy(img)).astype(dtype, copy=False) for img in images]
        original_image_sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]

        # 1. normalise, resize, pad into a batch
        image_list, targets = self.transform(images, targets)
        if targets is not None:
            for target_idx, target in enumerate(targets):
                boxes = target["boxes"]
                degenerate = boxes[:, 2:] <= boxes[:, :2]
                if degenerate.any():
                    bad = boxes[np.nonzero(degenerate.any(axis=1))[0][0]].tolist()
                    raise ValueError("All bounding boxes should have positive height and width. "
                                     f"Found invalid box {bad} for target at index {target_idx}.")
        # one host-to-device copy of the batch and its targets, to the parameters' array module
        # (CuPy after ``model.to_device("cuda")``; a no-op on NumPy); the rest of the step stays there
        xp = get_array_module(next(iter(self.backbone.fpn.parameters())))
        image_list.tensors = xp.asarray(image_list.tensors)
        if targets is not None:
            targets = [{k: (xp.asarray(v) if k in ("boxes", "labels", "masks") else v) for k, v in t.items()}
                       for t in targets]
        if debug is not None:
            debug["images"] = image_list.tensors
            debug["image_sizes"] = image_list.image_sizes
            debug["original_image_sizes"] = original_image_sizes
            if targets is not None:
                debug["targets"] = targets

        # 2. backbone + FPN
        features = self.backbone(Tensor(image_list.tensors), debug)
        if debug is not None:
            debug["features"] = {k: v.numpy() for k, v in features.items()}

        # 3. proposals, 4. box and mask heads
        proposals, proposal_losses = self.rpn(image_list, features, targets, debug)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets, debug)

        if self.training:
            losses = {}
            losses.update(detector_losses)
            losses.update(proposal_losses)
            output = losses
        else:
            if debug is not None:
                debug["detections"] = [{k: v.copy() for k, v in d.items()} for d in detections]
            # 5. back to the original image sizes, masks pasted into the images
            output = self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)
        if debug is not None:
            self.intermediates = debug
        if return_intermediates:
            return output, debug
        return output


def build_model(name_or_config: str | MaskRCNNConfig = "maskrcnn_resnet50_fpn", **overrides: Any) -> MaskRCNN:
    """A Mask R-CNN from a named configuration ("maskrcnn_resnet50_fpn", "r18-shapes",
    "r18-coco-tiny") or a ``MaskRCNNConfig``, with torchvision-style keyword overrides
    (``num_classes=4``, ``min_size=256``, ``box_score_thresh=0.0``, ...)."""
    return MaskRCNN(get_config(name_or_config, **overrides))


def maskrcnn_resnet50_fpn(*, weights=None, num_classes: int = 91, weights_backbone=None, progress: bool = True,
                          **kwargs: Any) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1): ResNet-50 with frozen batch norm, FPN, default heads.

    Args:
        weights: None, or the path of a .pth/.pt state_dict saved from torchvision
            (``torch.save(model.state_dict(), path)``, or the file torchvision downloads), read
            without torch by ``minimaskrcnn.io.load_torch_state_dict`` and loaded strictly.
        num_classes: L, including background (91 for COCO's category ids).
        weights_backbone: must be None (nothing is downloaded); load a full state_dict instead.
        progress: ignored (torchvision's download progress bar).
        **kwargs: torchvision's keyword arguments: min_size, max_size, image_mean, image_std,
            rpn_anchor_generator, rpn_pre_nms_top_n_train/test, rpn_post_nms_top_n_train/test,
            rpn_nms_thresh, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction, rpn_score_thresh, box_score_thresh, box_nms_thresh,
            box_detections_per_img, box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, bbox_reg_weights, trainable_backbone_layers; also ``seed``.

    Note:
        torchvision's COCO_V1 weights were trained with frozen batch norm eps = 0 (torchvision sets
        it after loading them): call ``set_frozen_bn_eps(model, 0.0)`` after loading that file
        to get torchvision's outputs.
    """
    if weights_backbone is not None:
        raise ValueError("weights_backbone: nothing is downloaded; pass a full state_dict file as weights=")
    model = build_model("maskrcnn_resnet50_fpn", num_classes=num_classes, **kwargs)
    if weights is not None:
        from minimaskrcnn.io import load_torch_state_dict

        model.load_state_dict(load_torch_state_dict(weights))
    return model


def set_frozen_bn_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set the eps of every ``FrozenBatchNorm2d`` (torchvision's ``overwrite_eps``)."""
    for module in model.modules():
        if isinstance(module, nn.FrozenBatchNorm2d):
            module.eps = eps
    return model
