"""The Mask R-CNN model, one stage per file in the order of the paper's figure:
transform -> resnet (body) -> fpn -> anchors -> rpn -> poolers -> roi_heads, assembled in mask_rcnn;
configs holds the named configurations."""
from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.models.configs import (
    CONFIGS,
    AnchorConfig,
    BackboneConfig,
    BoxHeadConfig,
    KeypointHeadConfig,
    MaskHeadConfig,
    MaskRCNNConfig,
    RPNConfig,
    TransformConfig,
    get_config,
)
from minimaskrcnn.models.fpn import BackboneWithFPN, FeaturePyramidNetwork, LastLevelMaxPool, resnet_fpn_backbone
from minimaskrcnn.models.keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor
from minimaskrcnn.models.mask_rcnn import (
    LOSS_NAMES,
    MaskRCNN,
    build_model,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
    set_frozen_bn_eps,
)
from minimaskrcnn.models.poolers import LevelMapper, MultiScaleRoIAlign
from minimaskrcnn.models.resnet import BasicBlock, Bottleneck, ResNetBody
from minimaskrcnn.models.roi_heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead
from minimaskrcnn.models.transform import GeneralizedRCNNTransform, ImageList

__all__ = [
    "AnchorGenerator", "CONFIGS", "AnchorConfig", "BackboneConfig", "BoxHeadConfig", "MaskHeadConfig",
    "KeypointHeadConfig", "MaskRCNNConfig", "RPNConfig", "TransformConfig", "get_config", "BackboneWithFPN",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool", "resnet_fpn_backbone", "LOSS_NAMES", "MaskRCNN", "build_model", "maskrcnn_resnet50_fpn",
    "keypointrcnn_resnet50_fpn", "KeypointRCNNHeads", "KeypointRCNNPredictor",
    "set_frozen_bn_eps", "LevelMapper", "MultiScaleRoIAlign", "BasicBlock", "Bottleneck", "ResNetBody",
    "FastRCNNPredictor", "MaskRCNNHeads", "MaskRCNNPredictor", "RoIHeads", "TwoMLPHead", "RegionProposalNetwork",
    "RPNHead", "GeneralizedRCNNTransform", "ImageList",
]
