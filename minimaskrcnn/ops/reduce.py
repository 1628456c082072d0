"""Reductions: sum, mean and max over axes, with their backward (broadcast the gradient back).

The Functions take NumPy's ``axis``/``keepdims`` (they run on arrays); the functional wrappers and
Tensor's methods take PyTorch's ``dim``/``keepdim`` and accept NumPy's names as aliases.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import dim_or_axis


def _axes(axis, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand(dout, x_shape: tuple, axes: tuple, keepdims: bool):
    """Reshape a reduced gradient so that it broadcasts against the input shape."""
    if not keepdims:
        shape = [1 if i in axes else n for i, n in enumerate(x_shape)]
        dout = dout.reshape(shape)
    return dout


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.x_shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        return xp.broadcast_to(_expand(dout, ctx.x_shape, ctx.axes, ctx.keepdims), ctx.x_shape).copy()


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.x_shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        ctx.count = 1
        for a in ctx.axes:
            ctx.count *= x.shape[a]
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        g = _expand(dout, ctx.x_shape, ctx.axes, ctx.keepdims) / ctx.count
        return xp.broadcast_to(g, ctx.x_shape).astype(dout.dtype)


class Max(Function):
    """Maximum over axes; the gradient goes to the maximal elements (split evenly between ties)."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = _axes(axis, x.ndim)
        out = x.max(axis=axes, keepdims=True)
        is_max = x == out
        ctx.save_for_backward(is_max)
        ctx.axes, ctx.keepdims = axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    @staticmethod
    def backward(ctx, dout):
        (is_max,) = ctx.saved_tensors
        g = _expand(dout, is_max.shape, ctx.axes, ctx.keepdims)
        count = is_max.sum(axis=ctx.axes, keepdims=True)
        return (g * is_max / count).astype(dout.dtype)


# ------------------------------------------------------------------------- functional wrappers
# PyTorch's dim/keepdim, with NumPy's axis/keepdims accepted as aliases (as on Tensor's methods)
def sum(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):  # noqa: A001
    dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "sum")
    return Sum.apply(x, axis=dim, keepdims=keepdim)


def mean(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
    dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "mean")
    return Mean.apply(x, axis=dim, keepdims=keepdim)


def max(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):  # noqa: A001
    dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "max")
    return Max.apply(x, axis=dim, keepdims=keepdim)
