"""MaxPool2d: the max pooling layer (ResNet's stem)."""
from __future__ import annotations

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.module import Module


class MaxPool2d(Module):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (see ``minimaskrcnn.ops.pool.max_pool2d``).

    Args:
        kernel_size: int or (KH, KW).
        stride: int or pair; None means ``kernel_size``.
        padding, dilation: int or pair.
        return_indices: must be False.
        ceil_mode: round the output size up.

    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2P - D(K - 1) - 1) / S) + 1.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
