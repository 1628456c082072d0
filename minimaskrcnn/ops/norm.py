"""Normalisation layers as fused ops: batch norm, frozen batch norm and group norm.

Each normalises over some axes, xhat = (x - mean) / sqrt(var + eps), then applies a per-channel
affine y = xhat * weight + bias. The backwards are the classic closed forms (one pass, no graph of
small ops). Mask R-CNN's ResNet uses FrozenBatchNorm (statistics fixed from ImageNet). The layers lesson derives them.
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.backend import get_array_module, get_backend, kernel
from minimaskrcnn.function import Function
from minimaskrcnn.kernels.group_norm import reference as group_norm_reference
from minimaskrcnn.tensor import Tensor


def _channel_shape(x) -> tuple:
    """(1, C, 1, ..., 1): the shape that broadcasts a per-channel (C,) array against x (N, C, ...)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(xhat, weight, bias):
    """xhat * weight + bias with per-channel (C,) weight and bias (either may be None)."""
    shape = _channel_shape(xhat)
    if weight is None:
        return xhat + bias.reshape(shape) if bias is not None else xhat
    y = xhat * weight.reshape(shape)
    if bias is not None:
        y += bias.reshape(shape)  # y is fresh: add in place
    return y


class BatchNorm(Function):
    """Batch normalisation (fused), in training (batch statistics) or eval (running statistics) mode."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, training=False, momentum=0.1, eps=1e-5):
        xp = get_array_module(x)
        shape = _channel_shape(x)
        axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channel axis
        if training:
            count = x.size // x.shape[1]  # values per channel
            if count <= 1:
                raise ValueError(
                    f"batch_norm: expected more than 1 value per channel when training, got input {x.shape}")
            mean = x.mean(axis=axes)
            centred = x - mean.reshape(shape)
            var = (centred * centred).mean(axis=axes)  # biased: what normalises the batch
            if running_mean is not None:
                # running stats use the UNBIASED variance, as PyTorch does (in place: they are buffers)
                running_mean[...] = momentum * mean + (1 - momentum) * running_mean
            if running_var is not None:
                running_var[...] = momentum * var * (count / (count - 1)) + (1 - momentum) * running_var
        else:
            if running_mean is None or running_var is None:
                raise ValueError("batch_norm: running_mean and running_var are needed when training=False")
            centred = x - running_mean.reshape(shape)
            var = running_var
        invstd = (1 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
        xhat = centred * invstd.reshape(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.training, ctx.axes, ctx.has_bias = training, axes, bias is not None
        return _affine(xhat, weight, bias)

    @staticmethod
    def backward(ctx, dout):
        xhat, invstd, weight = ctx.saved_tensors
        shape, axes = _channel_shape(dout), ctx.axes
        dweight = (dout * xhat).sum(axis=axes) if weight is not None else None
        dbias = dout.sum(axis=axes) if ctx.has_bias else None
        dxhat = dout * weight.reshape(shape) if weight is not None else dout
        if ctx.training:
            # xhat depends on x through the batch mean and variance too:
            # dx = invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            mean_dxhat = dxhat.mean(axis=axes).reshape(shape)
            mean_dxhat_xhat = (dxhat * xhat).mean(axis=axes).reshape(shape)
            dx = invstd.reshape(shape) * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
        else:
            dx = dxhat * invstd.reshape(shape)  # the statistics are constants
        return dx, None, None, dweight, dbias


def batch_norm(input: Tensor, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation, as ``torch.nn.functional.batch_norm``.

    Args:
        input: (N, C, ...) float Tensor (e.g. (N, C, H, W)).
        running_mean, running_var: (C,) Tensors (buffers) or None. In training they are updated in
            place: ``r = (1 - momentum) * r + momentum * batch_stat``, with the UNBIASED batch
            variance for ``running_var``. In eval they are the statistics used.
        weight, bias: (C,) Tensors or None, the affine scale (gamma) and shift (beta).
        training: use the batch statistics (biased variance) of every channel over (N, H, W).
        momentum: the weight of the new batch statistics in the running averages.
        eps: added to the variance before the square root.

    Returns:
        (N, C, ...) Tensor, input's dtype: ``(x - mean) / sqrt(var + eps) * weight + bias``.
        Gradients flow to input, weight and bias (fused backward), never to the running statistics.
    """
    return BatchNorm.apply(input, running_mean, running_var, weight, bias, training=training, momentum=momentum,
                           eps=eps)


class FrozenBatchNorm(Function):
    """Batch norm with every statistic and affine parameter fixed: a per-channel scale and shift."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps=1e-5):
        xp = get_array_module(x)
        shape = _channel_shape(x)
        scale = weight * (1 / xp.sqrt(running_var + eps))  # torchvision: w * (rv + eps).rsqrt()
        shift = bias - running_mean * scale
        ctx.save_for_backward(scale.reshape(shape))
        return x * scale.reshape(shape) + shift.reshape(shape)

    @staticmethod
    def backward(ctx, dout):
        (scale,) = ctx.saved_tensors
        return dout * scale, None, None, None, None


def frozen_batch_norm(input: Tensor, weight, bias, running_mean, running_var, eps: float = 1e-5) -> Tensor:
    """Frozen batch normalisation, as torchvision.ops.FrozenBatchNorm2d's forward.

    Args:
        input: (N, C, ...) float Tensor.
        weight, bias, running_mean, running_var: (C,) Tensors or arrays (buffers, not parameters).
        eps: added to the running variance (torchvision's default 1e-5).

    Returns:
        (N, C, ...) Tensor: ``x * scale + (bias - running_mean * scale)`` with
        ``scale = weight / sqrt(running_var + eps)``.

    Note: only ``input`` gets a gradient (``dx = dout * scale``); the four statistics are frozen,
    which is how Mask R-CNN fine-tunes a ResNet trained with batches far larger than its own.
    """
    return FrozenBatchNorm.apply(input, weight, bias, running_mean, running_var, eps=eps)


class GroupNorm(Function):
    """Group normalisation (fused): statistics per image over each group of C/G channels.

    The loops are kernels/group_norm: Numba on the "numba" backend, the array code of its
    reference.py on "numpy" and "cuda" (Wu and He 2018; torch.nn.functional.group_norm).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps=1e-5):
        N, C = x.shape[0], x.shape[1]
        if C % num_groups != 0:
            raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
        k = _group_norm_kernel(x)
        L = math.prod(x.shape[2:])  # (explicit: reshape cannot infer -1 for an empty batch)
        out, xhat, invstd = k.group_norm_forward(x.reshape(N, C, L), weight, bias, num_groups, eps)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.has_bias = bias is not None
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, dout):
        xhat, invstd, weight = ctx.saved_tensors  # xhat (N, C, L), invstd (N, G)
        k = _group_norm_kernel(dout)
        dx, dweight, dbias = k.group_norm_backward(dout.reshape(xhat.shape), xhat, invstd, weight,
                                                   need_weight=weight is not None, need_bias=ctx.has_bias)
        return dx.reshape(dout.shape), dweight, dbias


def _group_norm_kernel(x):
    """kernels/group_norm's Numba module on the numba backend (non-empty NumPy arrays), else its reference."""
    if get_backend() == "numba" and get_array_module(x) is np and x.size > 0:
        return kernel("group_norm")
    return group_norm_reference


def group_norm(input: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Group normalisation, as ``torch.nn.functional.group_norm``.

    Args:
        input: (N, C, ...) float Tensor.
        num_groups: G, which must divide C; each image's channels are normalised in G groups of C/G.
        weight, bias: (C,) Tensors or None, the per-channel affine.
        eps: added to the variance.

    Returns:
        (N, C, ...) Tensor, input's dtype. Gradients flow to input, weight and bias.
    """
    return GroupNorm.apply(input, weight, bias, num_groups=num_groups, eps=eps)


__all__ = ["batch_norm", "frozen_batch_norm", "group_norm", "BatchNorm", "FrozenBatchNorm", "GroupNorm"]
