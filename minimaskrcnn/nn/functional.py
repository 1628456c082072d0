"""Every differentiable function under one roof: ``import minimaskrcnn.nn.functional as F``, as in PyTorch.

Nothing is defined here: each name is re-exported from the ``minimaskrcnn.ops`` module that
implements it (convolutions in ops/conv.py, pooling in ops/pool.py, norms in ops/norm.py, losses in
ops/loss.py, resizing in ops/upsample.py, elementwise ops in ops/elementwise.py, an op and its ReLU as one
in ops/fused.py).
"""
from minimaskrcnn.ops.conv import conv2d, conv_transpose2d, linear
from minimaskrcnn.ops.elementwise import relu, sigmoid
from minimaskrcnn.ops.fused import add_relu, conv2d_relu, conv_transpose2d_relu, group_norm_relu, linear_relu
from minimaskrcnn.ops.loss import binary_cross_entropy_with_logits, cross_entropy, log_softmax, smooth_l1_loss, softmax
from minimaskrcnn.ops.norm import batch_norm, frozen_batch_norm, group_norm
from minimaskrcnn.ops.pool import max_pool2d
from minimaskrcnn.ops.upsample import interpolate

__all__ = [
    "conv2d", "conv_transpose2d", "linear", "relu", "sigmoid", "max_pool2d", "interpolate",
    "batch_norm", "frozen_batch_norm", "group_norm",
    "cross_entropy", "smooth_l1_loss", "binary_cross_entropy_with_logits", "log_softmax", "softmax",
    "conv2d_relu", "conv_transpose2d_relu", "linear_relu", "group_norm_relu", "add_relu",
]
