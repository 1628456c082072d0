"""Model configurations: one frozen dataclass per stage, grouped in ``MaskRCNNConfig``, and named presets.

"maskrcnn_resnet50_fpn" is torchvision's v1 model with its defaults; the "r18-*" presets are small
models that train from scratch on a CPU through the very same code. ``replace_torchvision_kwargs``
maps torchvision's keyword arguments (``rpn_pre_nms_top_n_test=...``) onto the stages.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet (or ResNeXt) body and FPN; without the FPN, the body's one returned stage (C4 or C5)."""

    depth: int = 50  # ResNet depth: 18/34 basic blocks, 26/50/101/152 bottlenecks; deeper = more capacity, slower
    # scales every ResNet width (64 in conv1); raising it adds capacity at ~quadratic cost
    width_multiplier: float = 1.0
    groups: int = 1  # ResNeXt cardinality (groups of every 3x3 conv; 32 in resnext50_32x4d); 1 is ResNet
    width_per_group: int = 64  # ResNeXt channels per group at full width (4 in resnext50_32x4d); 64 is ResNet
    # "frozen_bn" (fixed statistics, for pretrained weights), "bn" (batch statistics) or "gn" (GroupNorm)
    norm: str = "frozen_bn"
    norm_eps: float = 1e-5  # eps added to the variance; torchvision's COCO_V1 weights want 0.0 with "frozen_bn"
    gn_groups: int = 32  # GroupNorm groups (capped at the channel count); more groups = more local statistics
    trainable_layers: int = 3  # stages trained from the top (layer4 first); 5 also trains conv1/bn1, 0 freezes the body
    # ResNet stages fed to the FPN; dropping 1 removes the stride-4 level
    returned_layers: tuple[int, ...] = (1, 2, 3, 4)
    fpn_channels: int = 256  # channels of every FPN level; more = richer features for RPN and heads, slower
    fpn: bool = True  # False: no FPN, the single returned stage is the feature map (C4: returned_layers=(3,), C5: (4,))


@dataclass(frozen=True)
class TransformConfig:
    """Input normalisation, resizing and batching."""

    # short side after resizing (a tuple: random choice in training); larger = small objects visible, slower
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333  # cap on the long side; larger allows bigger inputs for elongated images
    image_mean: tuple[float, ...] = IMAGENET_MEAN  # subtracted per channel
    image_std: tuple[float, ...] = IMAGENET_STD  # divided per channel
    size_divisible: int = 32  # the batch is padded to a multiple of this (the coarsest stride)


@dataclass(frozen=True)
class AnchorConfig:
    """The anchors tiled over each FPN level."""

    # anchor side per level; raise for larger objects
    sizes: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    # height / width per level; more ratios = more anchors per cell
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network: training targets and proposal selection."""

    pre_nms_top_n_train: int = 2000  # best anchors kept per level before NMS in training; more = better recall, slower
    pre_nms_top_n_test: int = 1000  # the same at inference
    post_nms_top_n_train: int = 2000  # proposals kept per image after NMS in training; more = more RoIs to sample from
    post_nms_top_n_test: int = 1000  # proposals handed to the box head at inference; more = better recall, slower heads
    # IoU above which a lower-scored proposal is dropped; higher keeps more overlapping proposals
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7  # IoU with a gt box from which an anchor is positive; higher = fewer, better positives
    bg_iou_thresh: float = 0.3  # IoU below which an anchor is negative; higher = more negatives
    batch_size_per_image: int = 256  # anchors sampled per image for the RPN losses
    positive_fraction: float = 0.5  # largest share of positives in that sample
    score_thresh: float = 0.0  # proposals with a lower objectness probability are dropped
    min_size: float = 1e-3  # proposals narrower or shorter than this (pixels) are dropped
    head_conv_depth: int = 1  # 3x3 conv + ReLU layers of the RPN head before the two 1x1 predictors


@dataclass(frozen=True)
class BoxHeadConfig:
    """RoI pooling, the two-MLP box head, its training targets and post-processing."""

    roi_output_size: int = 7  # RoIAlign output side (PH = PW) for the box head; larger = finer, bigger fc6
    sampling_ratio: int = 2  # RoIAlign samples per bin side
    pooler_type: str = "roi_align"  # the RoI layer (poolers.POOLER_TYPES): roi_align(_max), roi_warp(_max), roi_pool
    representation_size: int = 1024  # width of fc6 and fc7; larger = more capacity
    fg_iou_thresh: float = 0.5  # IoU with a gt box from which a proposal is foreground
    bg_iou_thresh: float = 0.5  # IoU below which a proposal is background
    batch_size_per_image: int = 512  # RoIs sampled per image for the box and mask losses; more = slower steps
    positive_fraction: float = 0.25  # largest share of foreground RoIs in that sample
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # scales (dx, dy, dw, dh) targets
    score_thresh: float = 0.05  # detections with a lower class probability are dropped (0 keeps all)
    nms_thresh: float = 0.5  # per-class NMS IoU; higher keeps more overlapping detections
    detections_per_img: int = 100  # most detections returned per image
    min_size: float = 1e-2  # detections narrower or shorter than this (pixels) are dropped


@dataclass(frozen=True)
class MaskHeadConfig:
    """RoI pooling for masks, the mask head (four convs by default, an MLP, or Deep-MAC's deeper heads) and
    the predictor; the mask loss; what the head trains on."""

    roi_output_size: int = 14  # crop (RoIAlign output) side for the mask head; the mask is twice this (Deep-MAC: 32)
    sampling_ratio: int = 2  # RoIAlign samples per bin side
    layers: tuple[int, ...] = (256, 256, 256, 256)  # channels of the 3x3 convs; more/wider = better masks, slower
    dilation: int = 1  # dilation (and padding) of those convs
    dim_reduced: int = 256  # channels of the 2x2 transposed conv before the per-class 1x1 conv
    pooler_type: str = "roi_align"  # the RoI layer, as BoxHeadConfig.pooler_type
    # "fcn": the convs above (the paper's); "mlp": fully connected layers (Table 2e); "resnet" or
    # "hourglass": Deep-MAC's deeper heads (mask_heads.py, lesson 18)
    head: str = "fcn"
    mlp_dims: tuple[int, ...] = (1024, 1024)  # widths of the MLP head's hidden fc layers (head="mlp")
    loss: str = "sigmoid"  # "sigmoid": binary per pixel, on the class's mask; "softmax": over the L classes (Table 2b)
    # True: one mask for every class (the paper: nearly as good; needed to segment classes without mask labels)
    class_agnostic: bool = False
    # Deep-MAC (partially supervised masks, lesson 18); the defaults are Mask R-CNN's
    head_width: int = 32  # resnet: channels of its blocks; hourglass: stem channels (stages 2-4x); more = more capacity
    head_depth: int = 20  # resnet: residual blocks; hourglass: Deep-MAC's size 10, 20, 32, 52 or 100 (conv layers)
    head_norm: str = "gn"  # normalisation in the resnet/hourglass heads: "gn", "bn" or "none"
    train_rois: str = "proposals"  # the head trains on "proposals" (positive RoIs) or "gt_boxes" (Deep-MAC)
    train_rois_per_object: int | None = None  # proposals: at most this many random positives per object (None: all)


@dataclass(frozen=True)
class KeypointHeadConfig:
    """RoI pooling for keypoints, the keypoint head and its predictor (Mask R-CNN sec. 5)."""

    num_keypoints: int = 17  # keypoints per instance (COCO persons: 17)
    roi_output_size: int = 14  # RoI pooling output side; the heatmaps are four times this (56)
    sampling_ratio: int = 2  # RoIAlign samples per bin side
    layers: tuple[int, ...] = (512,) * 8  # channels of the 3x3 convs; the paper's eight 512-d convs
    pooler_type: str = "roi_align"  # the RoI layer, as BoxHeadConfig.pooler_type; "roi_pool": Table 6's baseline

    def __post_init__(self) -> None:
        if self.num_keypoints < 1 or not self.layers:
            raise ValueError(f"a keypoint head needs num_keypoints >= 1 and at least one conv layer, got "
                             f"{self.num_keypoints} and {self.layers}")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """A whole Mask R-CNN, stage by stage. ``dataclasses.replace`` or ``with_overrides`` to change it."""

    num_classes: int = 91  # L, classes including background (COCO: 91 category ids)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    keypoint: KeypointHeadConfig | None = None  # a KeypointHeadConfig adds the keypoint branch (Keypoint R-CNN)
    seed: int | None = None  # seeds the samplers and the training min_size choice (None: fresh entropy)
    roi_heads: str = "standard"  # "standard" (torchvision's) or "res5": the C4 heads, res5 shared by box and mask
    mask_on: bool = True  # False: no mask branch (a Faster R-CNN; detectron2's MODEL.MASK_ON)

    def with_overrides(self, **kwargs: Any) -> MaskRCNNConfig:
        """A copy with torchvision-style keyword arguments applied (see ``TORCHVISION_KWARGS``).

        Also accepts ``num_classes``, ``seed`` and whole stages (``backbone=BackboneConfig(...)``).
        """
        return replace_torchvision_kwargs(self, **kwargs)


# torchvision keyword argument -> (stage, field)
TORCHVISION_KWARGS: dict[str, tuple[str, str]] = {
    "min_size": ("transform", "min_size"),
    "max_size": ("transform", "max_size"),
    "image_mean": ("transform", "image_mean"),
    "image_std": ("transform", "image_std"),
    "size_divisible": ("transform", "size_divisible"),
    "rpn_pre_nms_top_n_train": ("rpn", "pre_nms_top_n_train"),
    "rpn_pre_nms_top_n_test": ("rpn", "pre_nms_top_n_test"),
    "rpn_post_nms_top_n_train": ("rpn", "post_nms_top_n_train"),
    "rpn_post_nms_top_n_test": ("rpn", "post_nms_top_n_test"),
    "rpn_nms_thresh": ("rpn", "nms_thresh"),
    "rpn_fg_iou_thresh": ("rpn", "fg_iou_thresh"),
    "rpn_bg_iou_thresh": ("rpn", "bg_iou_thresh"),
    "rpn_batch_size_per_image": ("rpn", "batch_size_per_image"),
    "rpn_positive_fraction": ("rpn", "positive_fraction"),
    "rpn_score_thresh": ("rpn", "score_thresh"),
    "box_score_thresh": ("box", "score_thresh"),
    "box_nms_thresh": ("box", "nms_thresh"),
    "box_detections_per_img": ("box", "detections_per_img"),
    "box_fg_iou_thresh": ("box", "fg_iou_thresh"),
    "box_bg_iou_thresh": ("box", "bg_iou_thresh"),
    "box_batch_size_per_image": ("box", "batch_size_per_image"),
    "box_positive_fraction": ("box", "positive_fraction"),
    "bbox_reg_weights": ("box", "bbox_reg_weights"),
    "trainable_backbone_layers": ("backbone", "trainable_layers"),
}
_STAGES = ("backbone", "transform", "anchors", "rpn", "box", "mask", "keypoint")


def replace_torchvision_kwargs(config: MaskRCNNConfig, **kwargs: Any) -> MaskRCNNConfig:
    """``config`` with torchvision's keyword arguments applied.

    Args:
        config: the configuration to start from.
        **kwargs: any of ``TORCHVISION_KWARGS``; ``rpn_anchor_generator`` (an ``AnchorGenerator``,
            whose sizes and aspect ratios are taken); ``num_classes``; ``seed``; a whole stage by
            name; or one field of a stage as ``"stage.field"`` (``**{"mask.head": "hourglass"}``,
            what ``minimaskrcnn train --model-arg mask.head=hourglass`` gives). ``None`` values mean
            "keep the default", as in torchvision (``bbox_reg_weights=None``).

    Raises:
        TypeError: for an argument we do not know (torchvision's module arguments such as
            ``rpn_head`` are not supported: change the configuration instead).
    """
    stages: dict[str, dict[str, Any]] = {name: {} for name in _STAGES}
    top: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in TORCHVISION_KWARGS:
            if value is None:
                continue
            stage, name = TORCHVISION_KWARGS[key]
            if isinstance(value, list):
                value = tuple(value)
            stages[stage][name] = value
        elif key == "rpn_anchor_generator":
            if value is not None:
                stages["anchors"]["sizes"] = tuple(tuple(s) for s in value.sizes)
                stages["anchors"]["aspect_ratios"] = tuple(tuple(a) for a in value.aspect_ratios)
        elif key == "num_keypoints":
            if value is not None:
                stages["keypoint"]["num_keypoints"] = int(value)
        elif key in ("num_classes", "seed") or key in _STAGES:
            if value is not None or key == "seed":
                top[key] = value
        elif "." in key and key.split(".", 1)[0] in _STAGES:
            stage, name = key.split(".", 1)
            if name not in {f.name for f in dataclasses.fields(getattr(config, stage))}:
                raise TypeError(f"unknown model argument {key!r}: the {stage} stage has no field {name!r}")
            stages[stage][name] = tuple(value) if isinstance(value, list) else value
        else:
            raise TypeError(f"unknown model argument {key!r}")
    for name, changes in stages.items():
        if changes:
            base = top.get(name, getattr(config, name))
            if base is None:
                raise TypeError(f"the configuration has no {name} branch to change ({sorted(changes)})")
            top[name] = dataclasses.replace(base, **changes)
    return dataclasses.replace(config, **top)


def _small(num_classes: int, min_size: int, max_size: int, width: float, fpn_channels: int) -> MaskRCNNConfig:
    """A small from-scratch configuration: ResNet-18 with GroupNorm, small anchors, few proposals."""
    return MaskRCNNConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(depth=18, width_multiplier=width, norm="gn", gn_groups=8, trainable_layers=5,
                                fpn_channels=fpn_channels),
        transform=TransformConfig(min_size=min_size, max_size=max_size),
        anchors=AnchorConfig(sizes=((16,), (32,), (64,), (128,), (256,))),
        rpn=RPNConfig(pre_nms_top_n_train=300, pre_nms_top_n_test=200, post_nms_top_n_train=100,
                      post_nms_top_n_test=50, batch_size_per_image=128),
        box=BoxHeadConfig(representation_size=256, batch_size_per_image=64, detections_per_img=50),
        mask=MaskHeadConfig(layers=(fpn_channels,) * 4, dim_reduced=fpn_channels),
    )


CONFIGS: dict[str, MaskRCNNConfig] = {
    # torchvision's maskrcnn_resnet50_fpn (v1) with its defaults
    "maskrcnn_resnet50_fpn": MaskRCNNConfig(),
    # the synthetic shapes data set: 128-px images, background + 3 shapes
    "r18-shapes": _small(num_classes=4, min_size=128, max_size=128, width=0.25, fpn_channels=64),
    # a handful of COCO images (80 categories, COCO ids up to 90), overfitting on a CPU
    "r18-coco-tiny": _small(num_classes=91, min_size=256, max_size=384, width=0.5, fpn_channels=128),
    # torchvision's keypointrcnn_resnet50_fpn: persons (2 classes), 17 keypoints, no mask branch,
    # training sizes 640-800 (the paper's scale augmentation for keypoints)
    "keypointrcnn_resnet50_fpn": MaskRCNNConfig(
        num_classes=2, transform=TransformConfig(min_size=(640, 672, 704, 736, 768, 800)),
        mask_on=False, keypoint=KeypointHeadConfig()),
}
# the synthetic stick figures (128-px images, 13 keypoints): the paper's keypoint head, 8 convs, but 64
# channels wide; "-mask" adds the mask branch (the paper's "keypoint & mask" model)
CONFIGS["r18-figures-kp"] = dataclasses.replace(
    _small(num_classes=2, min_size=128, max_size=128, width=0.25, fpn_channels=64),
    mask_on=False, keypoint=KeypointHeadConfig(num_keypoints=13, layers=(64,) * 8))
CONFIGS["r18-figures-kp-mask"] = dataclasses.replace(CONFIGS["r18-shapes"], num_classes=2,
                                                     keypoint=CONFIGS["r18-figures-kp"].keypoint)
# the same with RoIPool in the keypoint branch: the baseline of the paper's Table 6 (lesson 15)
CONFIGS["r18-figures-kp-roipool"] = dataclasses.replace(
    CONFIGS["r18-figures-kp"], keypoint=dataclasses.replace(CONFIGS["r18-figures-kp"].keypoint, pooler_type="roi_pool"))


def get_config(name_or_config: str | MaskRCNNConfig, **overrides: Any) -> MaskRCNNConfig:
    """A named configuration (see ``CONFIGS``) or a given one, with torchvision-style overrides."""
    if isinstance(name_or_config, MaskRCNNConfig):
        config = name_or_config
    else:
        if name_or_config not in CONFIGS:
            raise KeyError(f"unknown configuration {name_or_config!r}: choose one of {sorted(CONFIGS)}")
        config = CONFIGS[name_or_config]
    return replace_torchvision_kwargs(config, **overrides) if overrides else config
