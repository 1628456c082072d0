"""Max pooling as a differentiable op: ResNet's 3x3 stride-2 stem pool and FPN's extra level.

The loops live in ``kernels/max_pool`` (NumPy reference, Numba CPU, Numba-CUDA); this file wraps
them in a ``Function``. The layers lesson builds both.
"""
from __future__ import annotations

from minimaskrcnn.backend import kernel
from minimaskrcnn.function import Function
from minimaskrcnn.tensor import Tensor


class MaxPool2d(Function):
    """Max pooling (fused: its own backward, which routes each gradient to the window's maximum)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        out, argmax = kernel("max_pool").max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(argmax)
        ctx.x_shape = x.shape
        ctx.geometry = (kernel_size, stride, padding, dilation, ceil_mode)
        return out

    @staticmethod
    def backward(ctx, dout):
        (argmax,) = ctx.saved_tensors
        dx = kernel("max_pool").max_pool2d_backward(dout, argmax, ctx.x_shape, *ctx.geometry)
        return dx


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor:
    """2-D max pooling over an (N, C, H, W) Tensor, as ``torch.nn.functional.max_pool2d``.

    Args:
        input: (N, C, H, W) float32 or float64 Tensor.
        kernel_size: int or (KH, KW), the window size.
        stride: int or (SH, SW); None (the default) means ``kernel_size``.
        padding: int or (pad_h, pad_w), implicit -inf padding on both sides, at most half the kernel.
        dilation: int or (DH, DW), the spacing between window taps.
        ceil_mode: round the output size up instead of down.
        return_indices: must be False (kept for PyTorch's signature).

    Returns:
        (N, C, OH, OW) Tensor, input's dtype, with
        ``OH = floor((H + 2*pad_h - DH*(KH - 1) - 1) / SH) + 1`` (ceil with ``ceil_mode``), likewise OW.
        The gradient of each output goes to the pixel that won its window (the first maximum in
        row-major order, as PyTorch), and adds up where windows overlap.

    Examples: ResNet's stem ``max_pool2d(x, 3, 2, 1)`` halves H and W;
    FPN's extra level ``max_pool2d(p5, 1, 2, 0)`` keeps every other pixel.
    """
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True is not supported")
    return MaxPool2d.apply(
        input, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
