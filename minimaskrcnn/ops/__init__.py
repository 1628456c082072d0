"""Differentiable functions (Tensor in, Tensor out) and the detection ops on plain arrays.

Differentiable: elementwise, reductions, shape/indexing, conv, pooling, norms, losses, resizing,
roi_align, roi_pool, roi_warp. No gradient (plain array functions): box ops, NMS, box coding, matching,
sampling, mask targets and pasting. Layers (Modules, such as RoIAlign and RoIPool) live in
``minimaskrcnn.nn``: nothing here imports it.
"""
from minimaskrcnn.ops.box_coder import BoxCoder
from minimaskrcnn.ops.boxes import (
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)
from minimaskrcnn.ops.conv import conv2d, conv_transpose2d, linear
from minimaskrcnn.ops.elementwise import clamp, exp, log, matmul, relu, sigmoid, sqrt, where
from minimaskrcnn.ops.loss import binary_cross_entropy_with_logits, cross_entropy, log_softmax, smooth_l1_loss, softmax
from minimaskrcnn.ops.masks import paste_masks_in_image, project_masks_on_boxes
from minimaskrcnn.ops.matcher import BalancedPositiveNegativeSampler, Matcher
from minimaskrcnn.ops.norm import batch_norm, frozen_batch_norm, group_norm
from minimaskrcnn.ops.pool import max_pool2d
from minimaskrcnn.ops.reduce import max, mean, sum  # noqa: A004
from minimaskrcnn.ops.roi_align import roi_align
from minimaskrcnn.ops.roi_pool import roi_pool
from minimaskrcnn.ops.roi_warp import roi_warp
from minimaskrcnn.ops.shape import cat, concatenate, gather, index_add, permute, reshape, scatter_add, stack
from minimaskrcnn.ops.upsample import interpolate
