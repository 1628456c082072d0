"""RoI heads: classify and refine each proposal, and predict its mask (Fast R-CNN; Mask R-CNN, sec. 3).

Box branch: multi-scale RoIAlign 7x7, two fully connected layers (fc6, fc7), a classifier and
per-class box deltas. Mask branch: RoIAlign 14x14, four 3x3 convs, a 2x transposed conv and a
1x1 conv with one 28x28 mask per class. Optional keypoint branch (sec. 5, ``keypoint_head.py``): RoIAlign
14x14, eight 3x3 convs, a transposed conv and 2x upsampling to one 56x56 map per keypoint. Matching,
sampling, targets and post-processing are array code with no gradient. torchvision's ``RoIHeads`` step
for step. Lessons 11 (box head), 12 (mask head) and 15 (keypoints).
The alternatives the paper's Table 2 measures are configuration choices here (lesson 17): an MLP
mask head (``MaskRCNNMLPHead`` + ``MLPMaskPredictor``), a per-pixel softmax over the classes
(``mask_loss="softmax"``), one class-agnostic mask (a predictor with one output channel), other RoI
layers (``MaskHeadConfig.pooler_type``); the C4 heads are ``res5_roi_heads.Res5ROIHeads``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import as_array, get_array_module, to_numpy
from minimaskrcnn.global_batch import STREAM_MASK_ROI_SAMPLER, STREAM_ROI_SAMPLER, image_generators, note_loss_count
from minimaskrcnn.intermediates import record
from minimaskrcnn.models.configs import MaskRCNNConfig
from minimaskrcnn.models.keypoint_head import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    keypointrcnn_inference,
    keypointrcnn_loss,
)
from minimaskrcnn.models.mask_heads import MASK_HEADS, build_mask_head
from minimaskrcnn.models.poolers import MultiScaleRoIAlign
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops._utils import log_softmax_array, sigmoid_array, softmax_array
from minimaskrcnn.ops.box_coder import BoxCoder
from minimaskrcnn.ops.boxes import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.ops.masks import project_masks_on_boxes
from minimaskrcnn.ops.matcher import BACKGROUND, IGNORE, BalancedPositiveNegativeSampler, Matcher


# ------------------------------------------------------------------------------- modules
class TwoMLPHead(nn.Module):
    """Flatten the pooled features, then fc6 + ReLU, fc7 + ReLU (torchvision's ``TwoMLPHead``).

    Args:
        in_channels: C * PH * PW of the pooled features.
        representation_size: width of fc6 and fc7 (1024).
    """

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x):
        """(K, C, PH, PW) Tensor -> (K, representation_size) Tensor (each linear and its ReLU as one op)."""
        x = x.flatten(1)
        x = F.linear_relu(x, self.fc6.weight, self.fc6.bias)
        return F.linear_relu(x, self.fc7.weight, self.fc7.bias)


class FastRCNNPredictor(nn.Module):
    """Class logits and per-class box deltas (torchvision's ``FastRCNNPredictor``).

    Args:
        in_channels: width of the box head's output.
        num_classes: L, including background.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x):
        """(K, D) Tensor -> ((K, L) class logits, (K, L * 4) deltas (dx, dy, dw, dh) per class)."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """Four 3x3 conv + ReLU layers on the 14x14 pooled features (torchvision's ``MaskRCNNHeads``).

    Args:
        in_channels: C of the FPN.
        layers: output channels of each conv ((256, 256, 256, 256)).
        dilation: dilation and padding of the convs (1).

    Parameters are named ``0.0.weight``, ``1.0.weight``, ... as torchvision's.
    """

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1):
        blocks = []
        next_feature = in_channels
        for layer_features in layers:
            blocks.append(nn.Sequential(
                nn.Conv2d(next_feature, layer_features, kernel_size=3, stride=1, padding=dilation, dilation=dilation),
                nn.ReLU(),
            ))
            next_feature = layer_features
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        """(K, C, S/2, S/2) Tensor -> (K, layers[-1], S/2, S/2): each conv and its ReLU as one op."""
        for conv, _relu in self:
            x = F.conv2d_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return x


class MaskRCNNPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU, then a 1x1 conv to one mask logit map per class.

    Args:
        in_channels: channels of the mask head's output.
        dim_reduced: channels of the transposed conv (256).
        num_classes: L, including background.

    Parameters are named ``conv5_mask`` and ``mask_fcn_logits`` as torchvision's.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)
        self.relu = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        """(K, C, S/2, S/2) Tensor -> (K, L, S, S) mask logits (conv5_mask and its ReLU as one op)."""
        up = self.conv5_mask
        x = F.conv_transpose2d_relu(x, up.weight, up.bias, up.stride, up.padding, up.output_padding, up.groups,
                                    up.dilation)
        return self.mask_fcn_logits(x)


class MaskRCNNMLPHead(nn.Module):
    """Flatten the pooled mask features, then fully connected layers + ReLU (the paper's "MLP" mask
    head, Table 2e: fc 1024, 1024, then ``MLPMaskPredictor``). Its fc layers see the whole RoI at once
    and keep no spatial layout, which the paper's FCN head keeps.

    Args:
        in_channels: C * P * P of the pooled features (P = the mask pooler's output size).
        dims: widths of the fc layers ((1024, 1024)).

    Parameters are named ``mask_fc1``, ``mask_fc2``, ...
    """

    def __init__(self, in_channels: int, dims: Sequence[int] = (1024, 1024)):
        super().__init__()
        if not dims:
            raise ValueError("MaskRCNNMLPHead needs at least one fc layer")
        self.num_layers = len(dims)
        for i, (fan_in, width) in enumerate(zip((in_channels, *dims[:-1]), dims), start=1):
            setattr(self, f"mask_fc{i}", nn.Linear(fan_in, width))
        self.out_features = dims[-1]

    def forward(self, x):
        """(K, C, P, P) Tensor -> (K, dims[-1]) Tensor."""
        x = x.flatten(1)
        for i in range(1, self.num_layers + 1):
            x = F.relu(getattr(self, f"mask_fc{i}")(x))
        return x


class MLPMaskPredictor(nn.Module):
    """An fc layer to every class's S x S mask logits at once (the MLP head's last layer, Table 2e).

    Args:
        in_features: width of the MLP head's output.
        num_classes: L, including background (1: class-agnostic).
        mask_size: S, the side of the predicted masks (28, as the FCN head's).

    The parameter is named ``mask_fc_logits``.
    """

    def __init__(self, in_features: int, num_classes: int, mask_size: int = 28):
        super().__init__()
        self.num_classes, self.mask_size = num_classes, mask_size
        self.mask_fc_logits = nn.Linear(in_features, num_classes * mask_size * mask_size)

    def forward(self, x):
        """(K, in_features) Tensor -> (K, L, S, S) mask logits."""
        return self.mask_fc_logits(x).reshape(x.shape[0], self.num_classes, self.mask_size, self.mask_size)


MASK_LOSSES = ("sigmoid", "softmax")  # per-pixel binary loss on one class's mask, or softmax over the classes


# --------------------------------------------------------------------------------- losses
def fastrcnn_loss(class_logits, box_regression, labels: Sequence[np.ndarray], regression_targets: Sequence[np.ndarray]):
    """Box head losses: cross entropy over L classes, smooth L1 (beta 1/9) on the gt class's deltas.

    Args:
        class_logits: (K, L) Tensor.
        box_regression: (K, L * 4) Tensor.
        labels: list of (K_i,) int64 arrays, sum K_i = K, 0 = background.
        regression_targets: list of (K_i, 4) arrays, the encoded matched gt boxes.

    Returns:
        (loss_classifier, loss_box_reg): scalar Tensors; the box loss is summed over the
        foreground RoIs and divided by K (all sampled RoIs), as torchvision. Both are means over
        the K RoIs, the count noted for data-parallel training (``global_batch.note_loss_count``).
    """
    xp = get_array_module(*labels)
    labels = xp.concatenate(labels)
    regression_targets = xp.concatenate(regression_targets, axis=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos_idx = xp.nonzero(labels > 0)[0]
    labels_pos = labels[pos_idx]
    num_rois = class_logits.shape[0]
    box_regression = box_regression.reshape(num_rois, box_regression.shape[-1] // 4, 4)
    box_loss = F.smooth_l1_loss(
        box_regression[pos_idx, labels_pos],
        regression_targets[pos_idx].astype(box_regression.dtype),
        beta=1 / 9,
        reduction="sum",
    )
    note_loss_count("loss_classifier", labels.size)
    note_loss_count("loss_box_reg", labels.size)
    return classification_loss, box_loss / max(labels.size, 1)


def maskrcnn_loss(mask_logits, proposals: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray],
                  gt_labels: Sequence[np.ndarray], mask_matched_idxs: Sequence[np.ndarray], loss: str = "sigmoid",
                  gt_has_mask: Sequence[np.ndarray] | None = None):
    """Mask loss: per-pixel BCE on the gt class's channel only, against the gt mask cropped by the RoI.

    Args:
        mask_logits: (K, L, S, S) Tensor for the K positive RoIs; (K, 1, S, S) for class-agnostic
            masks (every RoI reads channel 0, as detectron2).
        proposals: list of (K_i, 4) positive RoIs per image.
        gt_masks: list of (M_i, H, W) uint8 gt masks in input pixels.
        gt_labels: list of (M_i,) int64 gt classes.
        mask_matched_idxs: list of (K_i,) gt index of each positive RoI.
        loss: "sigmoid" (the paper's), or "softmax": cross entropy over the L channels at every pixel,
            the target being the gt class inside the mask and 0 (background) outside (Table 2b, "as
            commonly used in FCN"), which makes the classes compete for every pixel.
        gt_has_mask: optional list of (M_i,) bool, False for box-only gt instances: RoIs matched to
            them are left out of the loss (no target, no gradient), not trained towards an empty mask.

    Returns:
        scalar Tensor, the mean BCE (or cross entropy) over K' * S * S pixels, K' the RoIs whose gt has
        a mask (the count noted for data-parallel training, ``global_batch.note_loss_count``).

    Raises:
        ValueError: an unknown loss, or "softmax" with class-agnostic logits.

    Records (see ``minimaskrcnn.intermediates``): "mask_targets" (K', S, S), "mask_labels" (K',).
    """
    if loss not in MASK_LOSSES:
        raise ValueError(f"unknown mask loss {loss!r}: choose one of {MASK_LOSSES}")
    discretization_size = mask_logits.shape[-1]
    xp = get_array_module(mask_logits)
    if gt_has_mask is not None:  # partially supervised: drop the RoIs of box-only instances
        keep = [as_array(h).astype(bool)[idxs] for h, idxs in zip(gt_has_mask, mask_matched_idxs)]
        rows = xp.nonzero(xp.concatenate(keep))[0] if keep else xp.zeros(0, dtype=np.int64)
        proposals = [p[k] for p, k in zip(proposals, keep)]
        mask_matched_idxs = [idxs[k] for idxs, k in zip(mask_matched_idxs, keep)]
        if len(rows) < mask_logits.shape[0]:
            mask_logits = mask_logits[rows]
    labels = [as_array(gl)[idxs] for gl, idxs in zip(gt_labels, mask_matched_idxs)]
    mask_targets = [
        project_masks_on_boxes(m, p, i, discretization_size)
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs)
    ]
    labels = xp.concatenate(labels).astype(np.int64)
    mask_targets = xp.concatenate(mask_targets, axis=0)
    record("mask_targets", mask_targets)
    record("mask_labels", labels)
    note_loss_count("loss_mask", mask_targets.size)  # the pixels the mean below runs over
    if mask_targets.size == 0:
        return mask_logits.sum() * 0
    if loss == "softmax":
        if mask_logits.shape[1] == 1:
            raise ValueError("a softmax over classes needs one mask logit per class, got class-agnostic logits")
        pixel_labels = xp.where(mask_targets >= 0.5, labels[:, None, None], 0)  # (K, S, S) in [0, L)
        return F.cross_entropy(mask_logits, pixel_labels)
    if mask_logits.shape[1] == 1:
        labels = xp.zeros_like(labels)  # class-agnostic: the one mask of every RoI
    picked = mask_logits[xp.arange(labels.shape[0]), labels]
    return F.binary_cross_entropy_with_logits(picked, mask_targets.astype(picked.dtype))


def maskrcnn_inference(mask_logits: np.ndarray, labels: Sequence[np.ndarray],
                       loss: str = "sigmoid") -> list[np.ndarray]:
    """Mask probabilities of each detection's class. No gradient.

    Args:
        mask_logits: (D, L, S, S) array, D = sum D_i; (D, 1, S, S) for class-agnostic masks.
        labels: list of (D_i,) predicted classes per image.
        loss: the loss the logits were trained with. "sigmoid": the sigmoid of the class's channel.
            "softmax": a pixel belongs to class k's mask where k wins the softmax over the L
            channels (FCN's decision); the returned map is sigmoid(log p_k - max_{j != k} log p_j),
            which is above 0.5 exactly there and keeps a soft edge for pasting.

    Returns:
        list of (D_i, 1, S, S) probabilities in [0, 1].
    """
    xp = get_array_module(mask_logits)
    boxes_per_image = [len(lbl) for lbl in labels]
    labels = xp.concatenate(labels) if labels else xp.zeros(0, dtype=np.int64)
    if mask_logits.shape[1] == 1:
        labels = xp.zeros_like(labels)  # class-agnostic: the one mask of every detection
    rows = xp.arange(mask_logits.shape[0])
    if loss == "softmax":
        log_p = log_softmax_array(mask_logits, axis=1)
        own = log_p[rows, labels]  # (D, S, S)
        log_p[rows, labels] = -np.inf  # the best of the other classes
        mask_prob = sigmoid_array((own - log_p.max(axis=1))[:, None])
    else:
        mask_prob = sigmoid_array(mask_logits[rows, labels][:, None])
    return xp.split(mask_prob, np.cumsum(boxes_per_image)[:-1].tolist(), axis=0)


MASK_TRAIN_ROIS = ("proposals", "gt_boxes")  # what the mask head is trained on (see select_mask_training_rois)


def select_mask_training_rois(proposals: Sequence[np.ndarray], matched_idxs: Sequence[np.ndarray],
                              labels: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                              gt_has_mask: Sequence[np.ndarray | None] | None = None, source: str = "proposals",
                              rois_per_object: int | None = None,
                              generator: np.random.Generator | Sequence[np.random.Generator] | None = None,
                              ) -> tuple[list, list]:
    """The RoIs the mask head trains on, and the gt instance of each. No gradient.

    ``source="proposals"`` (Mask R-CNN sec. 3, torchvision): the positive sampled RoIs (label > 0),
    which include the gt boxes themselves since those are added to the proposals in training; with
    ``rois_per_object=k``, at most k of them per gt instance, drawn from ``generator`` (so that the
    head sees as many examples per step as with gt boxes; one generator per image in data-parallel
    training, ``global_batch.image_generators``, so that an image draws the same on any process).
    ``source="gt_boxes"`` (Deep-MAC sec. 3.1, the model garden's ``use_gt_boxes_for_masks``): every
    gt box once, the exact crop. Either way the RoIs of box-only instances (``gt_has_mask`` False)
    are left out: they have no mask target.

    Args:
        proposals: per image, the (K_i, 4) sampled RoIs (x1, y1, x2, y2) in input pixels.
        matched_idxs: per image, (K_i,) int64 gt index of each RoI.
        labels: per image, (K_i,) int64 class of each RoI (0 background).
        gt_boxes: per image, (M_i, 4) gt boxes.
        gt_has_mask: per image, (M_i,) bool or None (every instance has a mask).
        source: "proposals" or "gt_boxes".
        rois_per_object: with "proposals", the most RoIs per gt instance (None: all positives).
        generator: draws those RoIs (required with ``rois_per_object``): one for all images, or a
            sequence of one per image.

    Returns:
        (rois, matched): per image, the (K'_i, 4) mask RoIs and their (K'_i,) int64 gt indices.

    Raises:
        ValueError: an unknown source, or ``rois_per_object`` without a generator.
    """
    if source not in MASK_TRAIN_ROIS:
        raise ValueError(f"unknown mask training RoIs {source!r}: choose one of {MASK_TRAIN_ROIS}")
    if rois_per_object is not None and generator is None:
        raise ValueError("rois_per_object needs a generator")
    if isinstance(generator, np.random.Generator) or generator is None:
        generators = [generator] * len(proposals)
    else:
        generators = list(generator)
        if len(generators) != len(proposals):
            raise ValueError(f"{len(generators)} generators for {len(proposals)} images")
    gt_has_mask = gt_has_mask if gt_has_mask is not None else [None] * len(proposals)
    rois, matched = [], []
    for props, idxs, lbl, boxes, has, gen in zip(proposals, matched_idxs, labels, gt_boxes, gt_has_mask, generators):
        xp = get_array_module(props)
        has = xp.ones(len(boxes), dtype=bool) if has is None else as_array(has).astype(bool)
        if source == "gt_boxes":
            keep = xp.nonzero(has)[0]
            rois.append(as_array(boxes)[keep].astype(props.dtype))
            matched.append(keep.astype(np.int64))
            continue
        positive = xp.nonzero((lbl > 0) & has[idxs] if len(has) else lbl > 0)[0]
        if rois_per_object is not None and len(positive):
            # group the positives by gt instance; keep k random ones of each (host arrays: a few indices)
            pos, gt_of = to_numpy(positive), to_numpy(idxs)[to_numpy(positive)]
            chosen = []
            for g in np.unique(gt_of):
                candidates = pos[gt_of == g]
                take = min(rois_per_object, len(candidates))
                chosen.append(np.sort(gen.choice(candidates, size=take, replace=False)))
            positive = xp.asarray(np.concatenate(chosen))
        rois.append(props[positive])
        matched.append(idxs[positive])
    return rois, matched


# ------------------------------------------------------------------------------- the heads
class RoIHeads(nn.Module):
    """Box and mask branches with their training targets and inference post-processing (torchvision's).

    Args:
        box_roi_pool, box_head, box_predictor: RoIAlign 7x7, ``TwoMLPHead``, ``FastRCNNPredictor``.
        fg_iou_thresh, bg_iou_thresh: proposal/gt IoU from which a RoI is foreground / below which
            background (0.5, 0.5).
        batch_size_per_image, positive_fraction: RoIs sampled per image (512, 0.25).
        bbox_reg_weights: (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_img: post-processing (0.05, 0.5, 100).
        mask_roi_pool, mask_head, mask_predictor: RoIAlign 14x14, ``MaskRCNNHeads``, ``MaskRCNNPredictor``
            (all None: no mask branch).
        min_size: detections with a side below this (pixels) are dropped (1e-2).
        seed: seed of the RoI sampler's generator.
        keypoint_roi_pool, keypoint_head, keypoint_predictor: RoIAlign 14x14, ``KeypointRCNNHeads``,
            ``KeypointRCNNPredictor`` (all None, the default: no keypoint branch).
        mask_loss: "sigmoid" (the paper's) or "softmax" over the classes (see ``maskrcnn_loss``).
        mask_train_rois: what the mask head trains on, "proposals" (positive RoIs, Mask R-CNN) or
            "gt_boxes" (Deep-MAC); see ``select_mask_training_rois``.
        mask_rois_per_object: with "proposals", at most this many random positive RoIs per gt
            instance (None: all, as torchvision).

    A mask predictor with one output channel makes the masks class-agnostic. Box-only gt instances
    (``target["has_mask"]`` False) take part in the box losses like any other and are left out of the
    mask targets and the mask loss.
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, bbox_reg_weights, score_thresh: float,
                 nms_thresh: float, detections_per_img: int, mask_roi_pool=None, mask_head=None,
                 mask_predictor=None, min_size: float = 1e-2, seed: int | None = None, mask_loss: str = "sigmoid",
                 keypoint_roi_pool=None, keypoint_head=None, keypoint_predictor=None,
                 mask_train_rois: str = "proposals", mask_rois_per_object: int | None = None):
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"unknown mask loss {mask_loss!r}: choose one of {MASK_LOSSES}")
        if mask_train_rois not in MASK_TRAIN_ROIS:
            raise ValueError(f"unknown mask_train_rois {mask_train_rois!r}: choose one of {MASK_TRAIN_ROIS}")
        if mask_rois_per_object is not None and mask_rois_per_object < 1:
            raise ValueError(f"mask_rois_per_object must be >= 1 or None, got {mask_rois_per_object}")
        self.mask_loss = mask_loss
        self.mask_train_rois = mask_train_rois
        self.mask_rois_per_object = mask_rois_per_object
        # a generator only when it draws: models without it keep the same generators (and checkpoints)
        self.mask_roi_generator = None
        if mask_rois_per_object is not None and mask_train_rois == "proposals":
            self.mask_roi_generator = np.random.default_rng(None if seed is None else [seed, 2])
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction, generator=seed)
        self.box_coder = BoxCoder(tuple(bbox_reg_weights) if bbox_reg_weights is not None else (10.0, 10.0, 5.0, 5.0))
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.keypoint_roi_pool = keypoint_roi_pool
        self.keypoint_head = keypoint_head
        self.keypoint_predictor = keypoint_predictor

    @classmethod
    def from_config(cls, config: MaskRCNNConfig, in_channels: int, *, box_roi_pool: nn.Module | None = None,
                    box_head: nn.Module | None = None, box_predictor: nn.Module | None = None,
                    mask_roi_pool: nn.Module | None = None, mask_head: nn.Module | None = None,
                    mask_predictor: nn.Module | None = None, keypoint_roi_pool: nn.Module | None = None,
                    keypoint_head: nn.Module | None = None, keypoint_predictor: nn.Module | None = None,
                    **kwargs) -> RoIHeads:
        """The heads that ``config.box``, ``config.mask`` and ``config.keypoint`` describe, with any part
        given replacing its default.

        Args:
            config: the whole model's configuration (``num_classes``, the FPN levels to pool from,
                the box, mask and keypoint heads, Deep-MAC's switches of ``config.mask`` included;
                ``config.mask_on`` False: no mask branch, ``config.keypoint`` None: no keypoint branch;
                the sampler is seeded with ``config.seed + 1``).
            in_channels: C, the channels of the pooled feature maps (the backbone's ``out_channels``).
            box_roi_pool, box_head, box_predictor, mask_roi_pool, mask_head, mask_predictor: parts
                to use instead of the configured ``MultiScaleRoIAlign``, ``TwoMLPHead``,
                ``FastRCNNPredictor``, ``MaskRCNNHeads`` and ``MaskRCNNPredictor`` (the defaults are
                built in this order, so their initial weights do not depend on which are given).
                ``config.mask.head == "mlp"`` configures ``MaskRCNNMLPHead`` and ``MLPMaskPredictor``
                instead, ``class_agnostic`` a predictor with one channel, ``pooler_type`` the RoI layers;
                ``config.mask_on = False`` leaves the mask parts out (a Faster R-CNN).
            keypoint_roi_pool, keypoint_head, keypoint_predictor: likewise for the keypoint branch
                (``MultiScaleRoIAlign`` with ``config.keypoint.pooler_type``, ``KeypointRCNNHeads``,
                ``KeypointRCNNPredictor``), built when ``config.keypoint`` is given.
            **kwargs: further constructor arguments, for a subclass that takes more.

        Raises:
            ValueError: an unknown mask head, mask loss or pooler type.
        """
        b, m, k = config.box, config.mask, config.keypoint
        if m.head not in ("mlp", *MASK_HEADS):
            raise ValueError(f"unknown mask head {m.head!r}: choose one of {('mlp', *MASK_HEADS)}")
        featmap_names = [str(i) for i in range(len(config.backbone.returned_layers))]
        mask_classes = 1 if m.class_agnostic else config.num_classes
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(featmap_names, b.roi_output_size, b.sampling_ratio,
                                              pooler_type=b.pooler_type)
        if box_head is None:
            box_head = TwoMLPHead(in_channels * b.roi_output_size ** 2, b.representation_size)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(b.representation_size, config.num_classes)
        if config.mask_on and mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(featmap_names, m.roi_output_size, m.sampling_ratio,
                                               pooler_type=m.pooler_type)
        if config.mask_on and mask_head is None:
            if m.head == "mlp":
                mask_head = MaskRCNNMLPHead(in_channels * m.roi_output_size ** 2, m.mlp_dims)
            else:  # MaskRCNNHeads for "fcn"; Deep-MAC's deeper heads (mask_heads.py)
                mask_head = build_mask_head(m.head, in_channels, layers=m.layers, dilation=m.dilation,
                                            width=m.head_width, depth=m.head_depth, norm=m.head_norm)
        if config.mask_on and mask_predictor is None:
            if m.head == "mlp":
                mask_predictor = MLPMaskPredictor(m.mlp_dims[-1], mask_classes, 2 * m.roi_output_size)
            else:
                head_channels = m.layers[-1] if m.head == "fcn" else mask_head.out_channels
                mask_predictor = MaskRCNNPredictor(head_channels, m.dim_reduced, mask_classes)
        if k is not None:
            if keypoint_roi_pool is None:
                keypoint_roi_pool = MultiScaleRoIAlign(featmap_names, k.roi_output_size, k.sampling_ratio,
                                                       pooler_type=k.pooler_type)
            if keypoint_head is None:
                keypoint_head = KeypointRCNNHeads(in_channels, k.layers)
            if keypoint_predictor is None:
                keypoint_predictor = KeypointRCNNPredictor(k.layers[-1], k.num_keypoints)
        kwargs = {"mask_train_rois": m.train_rois, "mask_rois_per_object": m.train_rois_per_object, **kwargs}
        return cls(
            box_roi_pool, box_head, box_predictor, b.fg_iou_thresh, b.bg_iou_thresh, b.batch_size_per_image,
            b.positive_fraction, b.bbox_reg_weights, b.score_thresh, b.nms_thresh, b.detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
            min_size=b.min_size, seed=None if config.seed is None else config.seed + 1, mask_loss=m.loss,
            keypoint_roi_pool=keypoint_roi_pool, keypoint_head=keypoint_head, keypoint_predictor=keypoint_predictor,
            **kwargs,
        )

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def has_keypoint(self) -> bool:
        return (self.keypoint_roi_pool is not None and self.keypoint_head is not None
                and self.keypoint_predictor is not None)

    # ------------------------------------------------------------------ training targets
    def assign_targets_to_proposals(self, proposals: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                                    gt_labels: Sequence[np.ndarray]) -> tuple[list, list]:
        """Match each proposal to a gt box and give it that box's class, 0 or IGNORE. No gradient.

        Returns:
            (matched_idxs, labels): lists of (P_i,) int64 gt indices (clamped at 0) and labels.
        """
        matched_idxs, labels = [], []
        for proposals_in_image, gt_boxes_in_image, gt_labels_in_image in zip(proposals, gt_boxes, gt_labels):
            xp = get_array_module(proposals_in_image)
            if gt_boxes_in_image.size == 0:
                clamped = xp.zeros(proposals_in_image.shape[0], dtype=np.int64)
                labels_in_image = xp.zeros(proposals_in_image.shape[0], dtype=np.int64)
            else:
                matched = self.proposal_matcher(box_iou(gt_boxes_in_image, proposals_in_image))
                clamped = xp.maximum(matched, 0)
                labels_in_image = as_array(gt_labels_in_image)[clamped].astype(np.int64)
                labels_in_image[matched == Matcher.BELOW_LOW_THRESHOLD] = BACKGROUND
                labels_in_image[matched == Matcher.BETWEEN_THRESHOLDS] = IGNORE
            matched_idxs.append(clamped)
            labels.append(labels_in_image)
        return matched_idxs, labels

    def check_targets(self, targets: Sequence[dict] | None) -> None:
        """Raise ValueError unless every target has "boxes", "labels" (and "masks" with a mask branch,
        "keypoints" with a keypoint branch)."""
        if targets is None:
            raise ValueError("targets should not be None in training mode")
        keys = ("boxes", "labels") + ("masks",) * self.has_mask() + ("keypoints",) * self.has_keypoint()
        for key in keys:
            if not all(key in t for t in targets):
                raise ValueError(f"Every element of targets should have a {key} key")

    def select_training_samples(self, proposals: Sequence[np.ndarray], targets: Sequence[dict]) -> tuple:
        """Add the gt boxes to the proposals, match, sample and encode the box targets. No gradient.

        Returns:
            (proposals, matched_idxs, labels, regression_targets): per-image lists of the sampled
            RoIs (K_i, 4), their gt index (K_i,), label (K_i,) and encoded target (K_i, 4).
        """
        self.check_targets(targets)
        dtype = proposals[0].dtype
        xp = get_array_module(*proposals)
        gt_boxes = [as_array(t["boxes"]).astype(dtype) for t in targets]
        gt_labels = [as_array(t["labels"]) for t in targets]
        proposals = [xp.concatenate([p, g], axis=0) for p, g in zip(proposals, gt_boxes)]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        # inside a global_batch block, each image's RoIs are sampled with that image's generator
        generators = image_generators(len(labels), STREAM_ROI_SAMPLER)
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels, generators=generators)
        matched_gt_boxes = []
        for i in range(len(proposals)):
            sampled = xp.nonzero(sampled_pos[i] | sampled_neg[i])[0]
            proposals[i] = proposals[i][sampled]
            labels[i] = labels[i][sampled]
            matched_idxs[i] = matched_idxs[i][sampled]
            gt = gt_boxes[i] if gt_boxes[i].size else xp.zeros((1, 4), dtype=dtype)
            matched_gt_boxes.append(gt[matched_idxs[i]])
        # images without gt encode against a zero box (-inf deltas), as torchvision: never used,
        # since such images have no foreground RoI
        with np.errstate(divide="ignore", invalid="ignore"):
            regression_targets = list(self.box_coder.encode(matched_gt_boxes, proposals))
        return proposals, matched_idxs, labels, regression_targets

    # ---------------------------------------------------------------- post-processing
    def postprocess_detections(self, class_logits: np.ndarray, box_regression: np.ndarray,
                               proposals: Sequence[np.ndarray], image_shapes: Sequence[tuple[int, int]]) -> tuple:
        """Per-class boxes and scores, then threshold, small-box removal, per-class NMS, top-k. No gradient.

        Args:
            class_logits: (K, L) array; box_regression: (K, L * 4) array.
            proposals: list of (K_i, 4) RoIs; image_shapes: (h, w) of each image.

        Returns:
            (boxes, scores, labels): lists of (D_i, 4), (D_i,) and (D_i,) int64, best first,
            D_i <= detections_per_img, background never returned.
        """
        xp = get_array_module(class_logits)
        num_classes = class_logits.shape[-1]
        boxes_per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, list(proposals))
        pred_scores = softmax_array(class_logits)
        split_at = np.cumsum(boxes_per_image)[:-1].tolist()
        all_boxes, all_scores, all_labels = [], [], []
        per_image = zip(xp.split(pred_boxes, split_at), xp.split(pred_scores, split_at), image_shapes)
        for boxes, scores, image_shape in per_image:
            boxes = clip_boxes_to_image(boxes, image_shape)
            labels = xp.broadcast_to(xp.arange(num_classes), scores.shape)
            # drop the background column, then one candidate per (RoI, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            inds = xp.nonzero(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = remove_small_boxes(boxes, min_size=self.min_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep].astype(np.int64))
        return all_boxes, all_scores, all_labels

    def _mask_roi_generators(self, num_images: int):
        """What draws the per-object mask RoIs: inside a ``global_batch`` block one keyed generator per
        image (the same draws on any process), else the model's own generator (None if it draws none)."""
        if self.mask_roi_generator is None:
            return None
        return image_generators(num_images, STREAM_MASK_ROI_SAMPLER) or self.mask_roi_generator

    # ------------------------------------------------------------------------- forward
    def forward(self, features: dict, proposals: Sequence[np.ndarray], image_shapes: Sequence[tuple[int, int]],
                targets: Sequence[dict] | None = None) -> tuple[list, dict]:
        """Box and mask branches (and the keypoint branch when there is one).

        Args:
            features: name -> (N, C, H_l, W_l) Tensor.
            proposals: list of N (P_i, 4) arrays from the RPN, in input pixels.
            image_shapes: (h, w) of each image (resized, before padding).
            targets: in training, dicts with "boxes" (M_i, 4), "labels" (M_i,) int64 and "masks"
                (M_i, H, W) uint8 (and "keypoints" (M_i, NK, 3) float32), in input pixels; optionally
                "has_mask" (M_i,) bool (box-only instances False).

        Returns:
            (result, losses): in eval mode, one dict per image with "boxes" (D_i, 4), "labels",
            "scores" and "masks" (D_i, 1, S, S) probabilities in each box (and "keypoints"
            (D_i, NK, 3), "keypoints_scores" (D_i, NK)) (NumPy arrays, input pixels); in training,
            [] and {"loss_classifier", "loss_box_reg", "loss_mask"} (and "loss_keypoint"); a
            branch the heads do not have adds nothing.

        Records (see ``minimaskrcnn.intermediates``): "class_logits", "box_regression",
        "mask_proposals", "mask_logits", "keypoint_proposals", "keypoint_logits"; in training
        "roi_proposals", "roi_matched_idxs", "roi_labels", "roi_regression_targets", "mask_targets",
        "mask_labels".
        """
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            record("roi_proposals", proposals)
            record("roi_matched_idxs", matched_idxs)
            record("roi_labels", labels)
            record("roi_regression_targets", regression_targets)
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = self.box_head(box_features)
        class_logits, box_regression = self.box_predictor(box_features)
        record("class_logits", class_logits)
        record("box_regression", box_regression)

        result: list[dict] = []
        losses = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, labels = self.postprocess_detections(
                class_logits.data, box_regression.data, proposals, image_shapes
            )
            result = [{"boxes": b, "labels": lbl, "scores": s} for b, s, lbl in zip(boxes, scores, labels)]

        if self.has_mask():
            if self.training:
                mask_proposals, pos_matched_idxs = select_mask_training_rois(
                    proposals, matched_idxs, labels, [as_array(t["boxes"]) for t in targets],
                    [t.get("has_mask") for t in targets], self.mask_train_rois, self.mask_rois_per_object,
                    self._mask_roi_generators(len(proposals)))
            else:
                mask_proposals = [r["boxes"] for r in result]
            record("mask_proposals", mask_proposals)
            num_masks = sum(len(p) for p in mask_proposals)
            mask_logits = None
            if num_masks > 0:
                mask_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
                mask_features = self.mask_head(mask_features)
                mask_logits = self.mask_predictor(mask_features)
                record("mask_logits", mask_logits)
            if self.training:
                if mask_logits is None:
                    # no positive RoI in the batch: a zero loss that still reaches the predictor
                    losses["loss_mask"] = sum(p.sum() for p in self.mask_predictor.parameters()) * 0
                    note_loss_count("loss_mask", 0)
                else:
                    gt_masks = [as_array(t["masks"]) for t in targets]
                    gt_labels = [as_array(t["labels"]) for t in targets]
                    losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels,
                                                        pos_matched_idxs, loss=self.mask_loss)
            else:
                size = 2 * self.mask_roi_pool.output_size[0]
                if mask_logits is None:
                    dtype = features[next(iter(features))].dtype
                    xp = get_array_module(features[next(iter(features))])
                    masks_probs = [xp.zeros((0, 1, size, size), dtype=dtype) for _ in result]
                else:
                    masks_probs = maskrcnn_inference(mask_logits.data, [r["labels"] for r in result], self.mask_loss)
                for mask_prob, r in zip(masks_probs, result):
                    r["masks"] = mask_prob

        if self.has_keypoint():
            if self.training:
                losses.update(self.keypoint_forward(features, proposals, image_shapes, targets, labels, matched_idxs))
            else:
                self.keypoint_forward(features, [r["boxes"] for r in result], image_shapes, result=result)
        return result, losses

    def keypoint_forward(self, features: dict, proposals: Sequence[np.ndarray], image_shapes: Sequence[tuple[int, int]],
                         targets: Sequence[dict] | None = None, labels: Sequence[np.ndarray] | None = None,
                         matched_idxs: Sequence[np.ndarray] | None = None, result: list[dict] | None = None) -> dict:
        """The keypoint branch (Keypoint R-CNN, Mask R-CNN sec. 5; torchvision's ``RoIHeads`` keypoint part).

        Training: the positive RoIs among the sampled ``proposals`` (``labels`` > 0) are pooled
        (14 x 14), run through the keypoint head and predictor, and scored by ``keypointrcnn_loss``
        against the keypoints of their matched gt. Inference: ``proposals`` are the detected boxes,
        and each ``result`` dict gains "keypoints" (D_i, NK, 3) (x, y, 1) and "keypoints_scores"
        (D_i, NK), in input pixels.

        Returns:
            {"loss_keypoint": 0-d Tensor} in training (zero, still reaching the predictor, when no RoI
            is positive), else {}.

        Records: "keypoint_proposals", "keypoint_logits" (K, NK, S, S).
        """
        if self.training:
            positive = [get_array_module(lbl).nonzero(lbl > 0)[0] for lbl in labels]
            keypoint_proposals = [p[pos] for p, pos in zip(proposals, positive)]
            pos_matched_idxs = [m[pos] for m, pos in zip(matched_idxs, positive)]
        else:
            keypoint_proposals = list(proposals)
        record("keypoint_proposals", keypoint_proposals)
        keypoint_logits = None
        if sum(len(p) for p in keypoint_proposals) > 0:
            keypoint_features = self.keypoint_roi_pool(features, keypoint_proposals, image_shapes)
            keypoint_logits = self.keypoint_predictor(self.keypoint_head(keypoint_features))
            record("keypoint_logits", keypoint_logits)
        if self.training:
            if keypoint_logits is None:
                # no positive RoI in the batch: a zero loss that still reaches the predictor
                note_loss_count("loss_keypoint", 0)
                return {"loss_keypoint": self.keypoint_predictor.kps_score_lowres.weight.sum() * 0}
            gt_keypoints = [as_array(t["keypoints"]) for t in targets]
            return {"loss_keypoint": keypointrcnn_loss(keypoint_logits, keypoint_proposals, gt_keypoints,
                                                       pos_matched_idxs)}
        num_keypoints = self.keypoint_predictor.out_channels
        if keypoint_logits is None:
            first = features[next(iter(features))]
            xp = get_array_module(first)
            keypoints = [xp.zeros((0, num_keypoints, 3), dtype=first.dtype) for _ in result]
            scores = [xp.zeros((0, num_keypoints), dtype=first.dtype) for _ in result]
        else:
            keypoints, scores = keypointrcnn_inference(keypoint_logits.data, keypoint_proposals)
        for kp, sc, r in zip(keypoints, scores, result):
            r["keypoints"] = kp
            r["keypoints_scores"] = sc
        return {}
