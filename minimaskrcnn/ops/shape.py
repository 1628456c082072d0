"""Shape and indexing ops: reshape, permute, indexing, gather, scatter-add, concatenate, stack.

None of them computes anything; their backward puts each gradient element back where its
forward took it from (index ops accumulate with ``add.at`` so repeated indices add up).
"""
from __future__ import annotations

from collections.abc import Sequence

from minimaskrcnn.backend import get_array_module, unwrap
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import dim_or_axis
from minimaskrcnn.tensor import as_tensor


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.x_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, dout):
        return dout.reshape(ctx.x_shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, dout):
        inverse = sorted(range(len(ctx.axes)), key=ctx.axes.__getitem__)
        return dout.transpose(inverse)


def _fast_path(index) -> bool:
    """True for basic indexing (ints, slices, None, Ellipsis): each element is read at most once."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    """``x[index]`` with NumPy semantics (basic and advanced indexing, boolean masks)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.x_shape, ctx.x_dtype, ctx.index = x.shape, x.dtype, index
        return x[index]

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        dx = xp.zeros(ctx.x_shape, dtype=dout.dtype)
        if _fast_path(ctx.index):
            dx[ctx.index] = dout
        else:  # advanced indexing may repeat an element: accumulate
            xp.add.at(dx, ctx.index, dout)
        return dx


class Gather(Function):
    """``take_along_axis(x, idx, axis)``, like ``torch.gather``: out[..., j, ...] = x[..., idx[..., j, ...], ...]."""

    @staticmethod
    def forward(ctx, x, idx, axis: int):
        xp = get_array_module(x)
        ctx.x_shape, ctx.axis = x.shape, axis
        ctx.save_for_backward(idx)
        return xp.take_along_axis(x, idx, axis=axis)

    @staticmethod
    def backward(ctx, dout):
        (idx,) = ctx.saved_tensors
        xp = get_array_module(dout)
        dx = xp.zeros(ctx.x_shape, dtype=dout.dtype)
        # positions along every other axis, and idx along ``axis``
        grids = list(xp.indices(idx.shape, sparse=True))
        grids[ctx.axis] = idx
        xp.add.at(dx, tuple(grids), dout)
        return dx, None


class IndexAdd(Function):
    """``out = base.copy(); out[idx] += src`` (torch's ``index_add`` / ``scatter_add`` along axis 0).

    Repeated indices add up. The gradient to ``base`` is ``dout``; to ``src`` it is ``dout[idx]``.
    """

    @staticmethod
    def forward(ctx, base, idx, src):
        xp = get_array_module(base)
        ctx.save_for_backward(idx)
        out = base.copy()
        xp.add.at(out, idx, src)
        return out

    @staticmethod
    def backward(ctx, dout):
        (idx,) = ctx.saved_tensors
        return dout, None, dout[idx]


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *xs, axis: int = 0):
        xp = get_array_module(*xs)
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in xs]
        return xp.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        offsets = [0]
        for s in ctx.sizes:
            offsets.append(offsets[-1] + s)
        return tuple(
            xp.take(dout, xp.arange(offsets[i], offsets[i + 1]), axis=ctx.axis) for i in range(len(ctx.sizes))
        )


class Stack(Function):
    @staticmethod
    def forward(ctx, *xs, axis: int = 0):
        xp = get_array_module(*xs)
        ctx.axis, ctx.count = axis, len(xs)
        return xp.stack(xs, axis=axis)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        return tuple(xp.take(dout, i, axis=ctx.axis) for i in range(ctx.count))


# ------------------------------------------------------------------------- functional wrappers
def reshape(x, shape): return Reshape.apply(x, shape=tuple(shape))
def permute(x, axes): return Permute.apply(x, axes=tuple(axes))
def gather(x, dim: int | None = None, idx=None, *, axis: int | None = None):
    """``out[..., i, ...] = x[..., idx[..., i, ...], ...]`` along ``dim`` (``torch.gather``; ``axis`` is an alias)."""
    dim, _ = dim_or_axis(dim, axis, where="gather")
    if dim is None or idx is None:
        raise TypeError("gather: dim and idx are required")
    return Gather.apply(x, unwrap(idx), axis=dim)


def index_add(base, idx, src):
    """``base`` with ``src[i]`` added at row ``idx[i]`` (repeats accumulate)."""
    return IndexAdd.apply(base, unwrap(idx), src)


def scatter_add(base, idx, src):
    """Alias of ``index_add`` along axis 0."""
    return index_add(base, idx, src)


def cat(xs: Sequence, dim: int | None = None, *, axis: int | None = None):
    """Concatenate Tensors along ``dim`` (``torch.cat``; default 0, ``axis`` is an alias)."""
    dim, _ = dim_or_axis(dim, axis, where="cat")
    xs = list(xs)
    if len(xs) == 1:
        return as_tensor(xs[0])
    return Concatenate.apply(*xs, axis=0 if dim is None else dim)


concatenate = cat


def stack(xs: Sequence, dim: int | None = None, *, axis: int | None = None):
    """Stack Tensors along a new ``dim`` (``torch.stack``; default 0, ``axis`` is an alias)."""
    dim, _ = dim_or_axis(dim, axis, where="stack")
    return Stack.apply(*list(xs), axis=0 if dim is None else dim)

