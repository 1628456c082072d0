"""An op followed by ReLU as one Function: ``conv2d_relu``, ``conv_transpose2d_relu``, ``linear_relu``,
``group_norm_relu`` and ``add_relu``.

Nearly every convolution, linear layer and norm in Mask R-CNN is followed by a ReLU. As two ops,
the ReLU reads the op's output and writes a second array of the same size, and its backward
reads and writes two more; fused, the ReLU clamps the op's own fresh output in place (no new
array) and its backward masks ``dout`` right before the op's backward. The numbers are those of
``relu(op(...))``: the op's forward and backward are the very same code (``Conv2d.forward``, ...),
and the gradient is passed where the output is positive, as ``Relu`` does.

Measured on the default run's step (2-core CPU): the mask head's four conv+ReLU layers and the
predictor's transposed conv+ReLU on ~55 RoIs spend about a third less time in the ReLUs.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import pair
from minimaskrcnn.ops.conv import Conv2d, ConvTranspose2d, Linear
from minimaskrcnn.ops.elementwise import Add
from minimaskrcnn.ops.norm import GroupNorm


def _with_relu(op: type[Function]) -> type[Function]:
    """The Function ``relu(op(...))``, for an ``op`` whose forward returns a fresh array it does not keep.

    forward: ``out = op.forward(...)``, then ``positive = out > 0`` and ``out`` clamped at 0 in place.
    backward: ``op.backward(ctx, dout * positive)``: one gradient per input of ``op``.
    """

    def forward(ctx, *args, **kwargs):
        out = op.forward(ctx, *args, **kwargs)
        ctx.positive = out > 0  # where the ReLU passes its gradient (NaN > 0 is False, as in Relu)
        get_array_module(out).maximum(out, 0, out=out)
        return out

    def backward(ctx, dout):
        return op.backward(ctx, dout * ctx.positive)

    doc = f"``relu({op.__name__}(...))`` fused: {op.__name__}'s forward and backward, the ReLU in place (see module)."
    return type(f"{op.__name__}ReLU", (Function,), {"forward": staticmethod(forward),
                                                     "backward": staticmethod(backward), "__doc__": doc})


Conv2dReLU = _with_relu(Conv2d)
ConvTranspose2dReLU = _with_relu(ConvTranspose2d)
LinearReLU = _with_relu(Linear)
GroupNormReLU = _with_relu(GroupNorm)
AddReLU = _with_relu(Add)


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """``relu(conv2d(input, weight, bias, ...))`` as one op; arguments, shapes and numbers as ``conv2d``
    (4-D input only)."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    return Conv2dReLU.apply(input, weight, bias, stride=stride, padding=padding, dilation=dilation,
                            groups=int(groups))


def conv_transpose2d_relu(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                          dilation=1):
    """``relu(conv_transpose2d(input, weight, bias, ...))`` as one op; as ``conv_transpose2d`` (4-D input only)."""
    return ConvTranspose2dReLU.apply(input, weight, bias, stride=pair(stride, "stride"),
                                     padding=pair(padding, "padding"),
                                     output_padding=pair(output_padding, "output_padding"), groups=int(groups),
                                     dilation=pair(dilation, "dilation"))


def linear_relu(input, weight, bias=None):
    """``relu(linear(input, weight, bias))`` as one op; as ``linear``."""
    return LinearReLU.apply(input, weight, bias)


def group_norm_relu(input, num_groups: int, weight, bias=None, eps: float = 1e-5):
    """``relu(group_norm(input, num_groups, weight, bias, eps))`` as one op; as ``group_norm``.

    ``weight`` is required (the affine output is the fresh array the ReLU clamps in place).
    """
    if weight is None:
        raise ValueError("group_norm_relu needs the affine weight; use relu(group_norm(...)) without one")
    return GroupNormReLU.apply(input, weight, bias, num_groups=num_groups, eps=eps)


def add_relu(a, b):
    """``relu(a + b)`` as one op (a residual connection's sum and ReLU); broadcasting as ``+``."""
    return AddReLU.apply(a, b)


__all__ = ["conv2d_relu", "conv_transpose2d_relu", "linear_relu", "group_norm_relu", "add_relu"]
