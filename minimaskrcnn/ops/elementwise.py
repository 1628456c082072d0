"""Elementwise ops and the matrix product, each a forward/backward pair.

Binary ops broadcast as NumPy does; their backward sums the gradient back to each input's shape
with ``unbroadcast``. Lesson 04 derives each backward.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module, unwrap
from minimaskrcnn.function import Function, unbroadcast
from minimaskrcnn.ops._utils import sigmoid_array
from minimaskrcnn.tensor import Tensor, _wrap, as_tensor


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, dout):
        return unbroadcast(dout, ctx.a_shape), unbroadcast(dout, ctx.b_shape)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, dout):
        return unbroadcast(dout, ctx.a_shape), unbroadcast(-dout, ctx.b_shape)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        return unbroadcast(dout * b, a.shape), unbroadcast(dout * a, b.shape)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = dout / b
        db = -dout * a / (b * b)
        return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


class Neg(Function):
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dout):
        return -dout


class Pow(Function):
    """x ** exponent for a constant (Python number) exponent."""

    @staticmethod
    def forward(ctx, x, exponent: float):
        ctx.save_for_backward(x)
        ctx.exponent = exponent
        return x**exponent

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        p = ctx.exponent
        return dout * p * x ** (p - 1)


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = get_array_module(x).exp(x)
        ctx.save_for_backward(out)  # d exp(x) = exp(x): keep the output, not the input
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        return dout * out


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return get_array_module(x).log(x)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        return dout / x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = get_array_module(x).sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        return dout / (2 * out)


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        return dout * get_array_module(x).sign(x)


class Sigmoid(Function):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    @staticmethod
    def forward(ctx, x):
        out = sigmoid_array(x)  # exp(-|x|) in (0, 1]: never overflows
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        return dout * out * (1 - out)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        mask = x > 0
        ctx.save_for_backward(mask)
        return get_array_module(x).maximum(x, 0)  # NaN stays NaN (and gets no gradient)

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved_tensors
        return dout * mask


class Clamp(Function):
    """min(max(x, min), max); the gradient passes where x is inside [min, max]."""

    @staticmethod
    def forward(ctx, x, min=None, max=None):
        xp = get_array_module(x)
        out = xp.clip(x, min, max) if (min is not None or max is not None) else x.copy()
        inside = xp.ones(x.shape, dtype=bool)
        if min is not None:
            inside &= x >= min
        if max is not None:
            inside &= x <= max
        ctx.save_for_backward(inside)
        return out

    @staticmethod
    def backward(ctx, dout):
        (inside,) = ctx.saved_tensors
        return dout * inside


class Where(Function):
    """``condition ? a : b`` elementwise; condition is a boolean array (no gradient)."""

    @staticmethod
    def forward(ctx, condition, a, b):
        xp = get_array_module(a, b)
        ctx.save_for_backward(condition)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return xp.where(condition, a, b)

    @staticmethod
    def backward(ctx, dout):
        (condition,) = ctx.saved_tensors
        zero = dout.dtype.type(0)
        da = unbroadcast(get_array_module(dout).where(condition, dout, zero), ctx.a_shape)
        db = unbroadcast(get_array_module(dout).where(condition, zero, dout), ctx.b_shape)
        return None, da, db


class Cast(Function):
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, dout):
        return dout.astype(ctx.in_dtype)


class MatMul(Function):
    """a @ b for 2-D (or batched, same leading shape) operands."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        xp = get_array_module(a, b)
        if a.ndim == 1 and b.ndim == 1:
            return dout * b, dout * a
        if b.ndim == 1:
            db = xp.tensordot(a, dout, axes=(tuple(range(a.ndim - 1)), tuple(range(dout.ndim))))
            return xp.multiply.outer(dout, b), db
        if a.ndim == 1:  # (K,) @ (..., K, N) -> (..., N): sum the batch axes back into a
            da = (b @ dout[..., None])[..., 0]
            return unbroadcast(da, a.shape), a[:, None] * dout[..., None, :]
        da = dout @ xp.swapaxes(b, -1, -2)
        db = xp.swapaxes(a, -1, -2) @ dout
        return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


# ------------------------------------------------------------------------- functional wrappers
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def relu(x): return Relu.apply(x)
def clamp(x, min=None, max=None): return Clamp.apply(x, min=min, max=max)
def matmul(a, b): return MatMul.apply(a, b)


def where(condition, a, b):
    """Elementwise ``condition ? a : b``; gradients flow to a and b, none to the condition."""
    condition = unwrap(condition)
    like = a if isinstance(a, Tensor) else b
    return Where.apply(condition, _wrap(a, as_tensor(like)), _wrap(b, as_tensor(like)))
