"""Activation layers: ReLU and Sigmoid as modules."""
from __future__ import annotations

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.module import Module


class ReLU(Module):
    """``max(x, 0)`` elementwise, as ``torch.nn.ReLU``.

    Args:
        inplace: accepted for PyTorch's signature; the result is always a new Tensor.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise, as ``torch.nn.Sigmoid``."""

    def forward(self, x):
        return F.sigmoid(x)
