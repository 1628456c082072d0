"""Conv2d and ConvTranspose2d layers: weights, PyTorch's default init, and a call to the functional op."""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Parameter
from minimaskrcnn.ops._utils import pair


def _empty(shape: tuple, dtype) -> Parameter:
    return Parameter(np.zeros(shape, dtype=np.float32 if dtype is None else dtype))


def _move(module: Module, device: str | None) -> None:
    if device is not None and device != "cpu":
        module.to_device(device)


def _reset_bias(bias: Parameter | None, fan_in: int) -> None:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if bias is not None and fan_in > 0:
        bound = 1 / math.sqrt(fan_in)
        init.uniform_(bias, -bound, bound)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: argument checks, the weight and bias, their init, repr.

    ``transposed`` lays the weight out as (C_in, C_out/groups, KH, KW) instead of
    (C_out, C_in/groups, KH, KW); PyTorch's init then takes fan_in from that layout either way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 bias: bool, padding_mode: str, device, dtype, transposed: bool, output_padding=0):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={padding_mode!r}: only 'zeros' is supported")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.output_padding = pair(output_padding, "output_padding")
        self.dilation = pair(dilation, "dilation")
        self.padding_mode = padding_mode
        if transposed:
            self.weight = _empty((in_channels, out_channels // groups, *self.kernel_size), dtype)
        else:
            self.weight = _empty((out_channels, in_channels // groups, *self.kernel_size), dtype)
        if bias:
            self.bias = _empty((out_channels,), dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        _move(self, device)

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
        _reset_bias(self.bias, fan_in)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution layer, as ``torch.nn.Conv2d``.

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size, stride, padding, dilation: int or (height, width) pair.
        groups: C_in and C_out are split into this many independent groups.
        bias: learn a (C_out,) bias.
        padding_mode: only "zeros".
        device: None/"cpu" (NumPy) or "cuda" (CuPy).
        dtype: of the weights (float32 by default).

    Attributes:
        weight: (C_out, C_in/groups, KH, KW) Parameter, init ``kaiming_uniform_(a=sqrt(5))``
            (i.e. U(+-1/sqrt(fan_in))), as PyTorch.
        bias: (C_out,) Parameter, U(+-1/sqrt(fan_in)), or None.

    Shape: (N, C_in, H, W) -> (N, C_out, OH, OW), OH = floor((H + 2P - D(K - 1) - 1) / S) + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, transposed=False)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution layer, as ``torch.nn.ConvTranspose2d`` (the mask head's 2x upsampler).

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size, stride, padding, output_padding, dilation: int or (height, width) pair.
        groups, bias, padding_mode, device, dtype: as ``Conv2d``.

    Attributes:
        weight: (C_in, C_out/groups, KH, KW) Parameter (C_in first), init as PyTorch:
            ``kaiming_uniform_(a=sqrt(5))`` with fan_in = C_out/groups*KH*KW.
        bias: (C_out,) Parameter or None.

    Shape: (N, C_in, H, W) -> (N, C_out, OH, OW), OH = (H - 1)S - 2P + D(K - 1) + output_padding + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, transposed=True, output_padding=output_padding)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)
