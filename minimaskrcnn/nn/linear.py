"""Linear, Identity and Flatten: the box head's fully connected layers and the glue around them."""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Parameter


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Args:
        in_features, out_features: the sizes of each input and output row.
        bias: learn an (out_features,) bias.
        device: None/"cpu" or "cuda"; dtype: of the weights (float32 by default).

    Attributes:
        weight: (out_features, in_features) Parameter, ``kaiming_uniform_(a=sqrt(5))``
            (U(+-1/sqrt(in_features))), as PyTorch; bias: (out_features,), U(+-1/sqrt(in_features)).

    Shape: (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dtype = np.float32 if dtype is None else dtype
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.zeros((out_features,), dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if device is not None and device != "cpu":
            self.to_device(device)

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None and self.in_features > 0:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input; any constructor arguments are ignored (as ``torch.nn.Identity``)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Flatten axes ``start_dim..end_dim`` into one, as ``torch.nn.Flatten`` (default: all but the batch axis).

    Shape: (N, C, H, W) -> (N, C*H*W) with the defaults.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
