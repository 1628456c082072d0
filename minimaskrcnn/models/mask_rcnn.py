"""Mask R-CNN: transform -> backbone + FPN -> RPN -> RoI heads -> back to image size (He et al. 2017).

``MaskRCNN`` takes its parts (backbone, rpn, roi_heads, transform) as torchvision's GeneralizedRCNN;
``MaskRCNN.from_config`` builds them from a ``MaskRCNNConfig`` (with a keypoint branch, Keypoint R-CNN, when
the configuration has one). ``maskrcnn_resnet50_fpn`` and ``keypointrcnn_resnet50_fpn`` build torchvision's
models (same parameter names, so their state_dicts load); ``build_model`` builds any named configuration
(e.g. "r18-shapes", "r18-figures-kp"). Call conventions are torchvision's: eval mode returns
detections, training mode a dict of losses. Lesson 13 looks inside it with ``record_intermediates``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.function import no_grad
from minimaskrcnn.intermediates import record
from minimaskrcnn.models.configs import MaskRCNNConfig, get_config
from minimaskrcnn.models.fpn import build_backbone
from minimaskrcnn.models.res5_roi_heads import Res5ROIHeads
from minimaskrcnn.models.roi_heads import RoIHeads
from minimaskrcnn.models.rpn import RegionProposalNetwork
from minimaskrcnn.models.transform import GeneralizedRCNNTransform
from minimaskrcnn.tensor import Tensor

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
ROI_HEADS = {"standard": RoIHeads, "res5": Res5ROIHeads}  # MaskRCNNConfig.roi_heads -> the class built


class MaskRCNN(nn.Module):
    """Mask R-CNN from its parts, as torchvision's ``GeneralizedRCNN`` (which its ``MaskRCNN`` subclasses).

    Args:
        backbone: images -> OrderedDict of feature maps; must have ``out_channels`` (e.g.
            ``BackboneWithFPN``, from ``resnet_fpn_backbone``).
        rpn: features -> proposals (``RegionProposalNetwork``).
        roi_heads: features + proposals -> detections with masks (``RoIHeads``).
        transform: images -> normalised, resized, padded batch, and detections back to the images'
            sizes (``GeneralizedRCNNTransform``).
        config: the ``MaskRCNNConfig`` the parts were built from, kept for reference (``from_config``
            sets it; None when the parts were built by hand).

    ``MaskRCNN.from_config(config)`` builds every part from a ``MaskRCNNConfig`` (what
    ``build_model`` and ``maskrcnn_resnet50_fpn`` do); to build a variant, build the parts yourself
    (``RegionProposalNetwork.from_config``, ``RoIHeads.from_config(config, C, mask_predictor=...)``,
    ...) and pass them here.

    Attributes (torchvision's names): ``transform``, ``backbone`` (``body`` + ``fpn``), ``rpn``
    (``head``, ``anchor_generator``), ``roi_heads`` (``box_head``, ``box_predictor``, ``mask_head``,
    ``mask_predictor``); ``config``.

    Calling:
        ``model.eval(); model([image, ...])`` with float (3, H, W) arrays or Tensors in [0, 1]
        returns one dict per image of arrays: "boxes" (D, 4) float (x1, y1, x2, y2) in the
        image's pixels, "labels" (D,) int64, "scores" (D,) and "masks" (D, 1, H, W) probabilities;
        with a keypoint branch also "keypoints" (D, NK, 3) (x, y, 1) in the image's pixels and
        "keypoints_scores" (D, NK) (heatmap logits at the keypoints).
        Eval mode runs without recording a graph. The arrays are NumPy, or CuPy (left on the GPU,
        as torchvision leaves CUDA tensors) after ``model.to_device("cuda")``: ``backend.to_numpy``.

        ``model.train(); model(images, targets)`` with targets = dicts of "boxes" (M, 4) float,
        "labels" (M,) int64 and "masks" (M, H, W) uint8 (with a keypoint branch also "keypoints"
        (M, NK, 3) float32) returns {"loss_classifier", "loss_box_reg", "loss_mask",
        "loss_objectness", "loss_rpn_box_reg"} (and "loss_keypoint"; no "loss_mask" without a mask
        branch): scalar Tensors whose sum backpropagates into every trainable parameter.

    Intermediate results:
        ``with minimaskrcnn.record_intermediates() as rec: model(images)`` fills ``rec`` with every
        stage's results as NumPy arrays (coordinates in the resized input's pixels): "images",
        "features", "anchors", "objectness", "proposals_before_nms", "proposals", "class_logits",
        "mask_logits", "detections" (eval), the RPN's and the heads' training targets
        ("rpn_labels", "roi_proposals", "mask_targets", ...) in training. docs/INTERMEDIATES.md
        lists every key with its shape, dtype and stage; lesson 13 draws them.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 transform: GeneralizedRCNNTransform, *, config: MaskRCNNConfig | None = None):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.config = config

    @classmethod
    def from_config(cls, config: MaskRCNNConfig | None = None) -> MaskRCNN:
        """Every part as ``config`` describes it (torchvision's model with ``MaskRCNNConfig()``).

        The parts are built in the order of the pipeline, so their initial weights follow from
        ``nn.init.manual_seed`` in a fixed order; the samplers are seeded from ``config.seed``.
        ``config.backbone.fpn = False`` builds a single-level backbone (C4 or C5) and
        ``config.roi_heads = "res5"`` the C4 heads (``Res5ROIHeads``).

        Raises:
            ValueError: an unknown ``config.roi_heads``, or parts that do not fit together.
        """
        config = config or MaskRCNNConfig()
        if config.roi_heads not in ROI_HEADS:
            raise ValueError(f"unknown roi_heads {config.roi_heads!r}: choose one of {sorted(ROI_HEADS)}")
        backbone = build_backbone(config.backbone)
        rpn = RegionProposalNetwork.from_config(config, backbone.out_channels)
        roi_heads = ROI_HEADS[config.roi_heads].from_config(config, backbone.out_channels)
        transform = GeneralizedRCNNTransform.from_config(config.transform, seed=config.seed)
        return cls(backbone, rpn, roi_heads, transform, config=config)

    @property
    def dtype(self):
        """The float dtype of the parameters (images are cast to it)."""
        return next(iter(self.backbone.parameters())).dtype

    def forward(self, images: Sequence, targets: Sequence[dict] | None = None):
        """Detect (eval mode) or compute the losses (training mode); see the class docstring."""
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            for target in targets:
                boxes = to_numpy(target["boxes"])
                if boxes.ndim != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"Expected target boxes of shape (M, 4), got {boxes.shape}")
            return self._forward(images, targets)
        with no_grad():
            return self._forward(images, None)

    def _forward(self, images: Sequence, targets: Sequence[dict] | None):
        dtype = self.dtype
        images = [to_numpy(img).astype(dtype, copy=False) for img in images]
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
        xp = get_array_module(next(iter(self.backbone.parameters())))
        image_list.tensors = xp.asarray(image_list.tensors)
        if targets is not None:
            targets = [{k: (xp.asarray(v) if k in ("boxes", "labels", "masks", "keypoints") else v)
                        for k, v in t.items()} for t in targets]
        record("images", image_list.tensors)
        record("image_sizes", image_list.image_sizes)
        record("original_image_sizes", original_image_sizes)
        if targets is not None:
            record("targets", targets)

        # 2. backbone + FPN
        features = self.backbone(Tensor(image_list.tensors))
        record("features", features)

        # 3. proposals, 4. box and mask heads
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)

        if self.training:
            losses = {}
            losses.update(detector_losses)
            losses.update(proposal_losses)
            return losses
        record("detections", detections)  # before rescaling (masks still S x S)
        # 5. back to the original image sizes, masks pasted into the images
        return self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)


def build_model(name_or_config: str | MaskRCNNConfig = "maskrcnn_resnet50_fpn", **overrides: Any) -> MaskRCNN:
    """A Mask R-CNN from a named configuration ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn",
    "r18-shapes", "r18-figures-kp", ... see ``CONFIGS``) or a ``MaskRCNNConfig``, with torchvision-style
    keyword overrides (``num_classes=4``, ``min_size=256``, ``box_score_thresh=0.0``, ...)."""
    return MaskRCNN.from_config(get_config(name_or_config, **overrides))


def maskrcnn_resnet50_fpn(*, weights=None, num_classes: int = 91, weights_backbone=None, progress: bool = True,
                          **kwargs: Any) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1): ResNet-50 with frozen batch norm, FPN, default heads.

    Args:
        weights: None, or the path of a .pth/.pt state_dict saved from torchvision
            (``torch.save(model.state_dict(), path)``, or the file torchvision downloads), read
            without torch by ``minimaskrcnn.io.load_torch_state_dict`` and loaded strictly.
        num_classes: L, including background (91 for COCO's category ids).
        weights_backbone: None, or the path of torchvision's ResNet-50 ImageNet classification
            state_dict (``resnet50-0676ba61.pth``, torchvision's ``ResNet50_Weights.IMAGENET1K_V1``;
            keys ``conv1.weight`` ... ``fc.bias``): loaded into the backbone body (``fc`` dropped),
            the rest keeps its random initialisation. Ignored when ``weights`` is given, as torchvision.
            Nothing is downloaded: see docs/FINETUNE.md for where to get the files.
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
    model = build_model("maskrcnn_resnet50_fpn", num_classes=num_classes, **kwargs)
    if weights is not None:
        from minimaskrcnn.io import load_torch_state_dict

        model.load_state_dict(load_torch_state_dict(weights))
    elif weights_backbone is not None:
        from minimaskrcnn.errors import CheckpointError
        from minimaskrcnn.pretrained import backbone_state_dict, load_matching_weights, read_weights

        backbone = read_weights(weights_backbone)
        if backbone.kind != "classification":
            raise CheckpointError(backbone.path, f"weights_backbone needs a ResNet classification state_dict, "
                                  f"this is a {backbone.kind} file (pass it as weights=)")
        load_matching_weights(model, backbone_state_dict(backbone.state_dict), path=backbone.path)
    return model


def keypointrcnn_resnet50_fpn(*, weights=None, num_classes: int = 2, num_keypoints: int = 17, weights_backbone=None,
                              progress: bool = True, **kwargs: Any) -> MaskRCNN:
    """torchvision's ``keypointrcnn_resnet50_fpn``: ResNet-50-FPN, the box head and the keypoint head
    (Mask R-CNN sec. 5; no mask head), trained at short sides 640-800 and run at 800.

    Args:
        weights: None, or the path of a .pth/.pt state_dict saved from torchvision's model
            (``torch.save(model.state_dict(), path)``, or the file torchvision downloads), read
            without torch by ``minimaskrcnn.io.load_torch_state_dict`` and loaded strictly.
        num_classes: L, including background (2: background and person).
        num_keypoints: keypoints per instance (17 for COCO persons).
        weights_backbone: must be None (nothing is downloaded); load a full state_dict instead.
        progress: ignored (torchvision's download progress bar).
        **kwargs: torchvision's keyword arguments, as for ``maskrcnn_resnet50_fpn``; also ``seed``.

    Returns:
        a ``MaskRCNN`` whose eval-mode detections also hold "keypoints" (D, 17, 3) (x, y, 1) in
        image pixels and "keypoints_scores" (D, 17); parameter names are torchvision's
        (``roi_heads.keypoint_head.0.weight`` ... ``roi_heads.keypoint_predictor.kps_score_lowres.weight``).

    Note:
        As for Mask R-CNN, torchvision's COCO_V1 keypoint weights want ``set_frozen_bn_eps(model, 0.0)``.
    """
    if weights_backbone is not None:
        raise ValueError("weights_backbone: nothing is downloaded; pass a full state_dict file as weights=")
    model = build_model("keypointrcnn_resnet50_fpn", num_classes=num_classes, num_keypoints=num_keypoints, **kwargs)
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
