"""Function: one differentiable op as an explicit forward/backward pair, and the switches around it.

An op subclasses ``Function`` and writes ``forward(ctx, *inputs)`` on raw arrays and
``backward(ctx, dout)`` returning one gradient per forward input. ``Function.apply`` wraps the
arrays, records the graph for ``Tensor.backward`` and, in anomaly mode, checks for NaN/Inf.
Lesson 04 builds this engine step by step.
"""
from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from minimaskrcnn.backend import get_array_module

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _State(threading.local):
    grad_enabled = True
    detect_anomaly = False


_state = _State()


# ------------------------------------------------------------------------------------------ modes
def is_grad_enabled() -> bool:
    return _state.grad_enabled


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager: ops inside it record no graph (inference, optimizer steps)."""
    previous = _state.grad_enabled
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    """Context manager: record the graph again inside a ``no_grad`` block."""
    previous = _state.grad_enabled
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = previous


def set_detect_anomaly(mode: bool) -> None:
    """Turn anomaly mode on or off for the rest of the program (see ``detect_anomaly``)."""
    _state.detect_anomaly = bool(mode)


def is_anomaly_enabled() -> bool:
    return _state.detect_anomaly


@contextlib.contextmanager
def detect_anomaly() -> Iterator[None]:
    """Context manager: raise ``AnomalyError`` at the first op whose forward or backward gives NaN/Inf.

    Each op then remembers where in the user's code it was created, and the error names the op
    and that place, which answers "where did the NaN start?". It costs a stack walk per op, so it
    is for debugging, as in torch.autograd.detect_anomaly.
    """
    previous = _state.detect_anomaly
    _state.detect_anomaly = True
    try:
        yield
    finally:
        _state.detect_anomaly = previous


class AnomalyError(FloatingPointError):
    """An op produced NaN or Inf while anomaly mode was on. ``op`` and ``where`` say which and where."""

    def __init__(self, message: str, op: str, where: str):
        super().__init__(message)
        self.op = op
        self.where = where


def _user_frame() -> str:
    """'file:line in function' of the innermost stack frame outside this package."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR):
            return f"{frame.filename}:{frame.lineno} in {frame.name}\n    {frame.line or ''}".rstrip()
    return "<inside minimaskrcnn>"


def _nonfinite(a) -> bool:
    if a is None or not hasattr(a, "dtype") or a.dtype.kind not in "fc":
        return False
    xp = get_array_module(a)
    return not bool(xp.isfinite(a).all())


# ------------------------------------------------------------------------------------- Function
class Context:
    """What one op's forward keeps for its backward.

    ``ctx.save_for_backward(a, b)`` keeps arrays (read back as ``ctx.saved_tensors``); small facts
    are plain attributes (``ctx.x_shape = x.shape``). ``ctx.needs_input_grad[i]`` says whether
    positional input i wants a gradient, so backward can skip work for the others.
    """

    def __init__(self) -> None:
        self.saved_tensors: tuple = ()
        self.needs_input_grad: tuple = ()

    def save_for_backward(self, *arrays: Any) -> None:
        self.saved_tensors = arrays


class Node:
    """One recorded op in the graph: the Function, its context and the Tensors it read."""

    __slots__ = ("fn", "ctx", "parents", "where")

    def __init__(self, fn: type[Function], ctx: Context, parents: tuple, where: str | None):
        self.fn = fn
        self.ctx = ctx
        self.parents = parents  # one entry per positional forward argument: a Tensor or None
        self.where = where


class Function:
    """Base class of every differentiable op.

    Subclasses define two static methods:

    - ``forward(ctx, *args, **kwargs) -> array``: positional arguments that were Tensors arrive as
      their arrays; everything else (ints, tuples, constant arrays) as given.
    - ``backward(ctx, dout) -> grad or tuple of grads``: one entry per positional argument of
      forward, ``None`` where there is no gradient; each gradient has its input's shape.

    Call an op with ``MyOp.apply(*args, **kwargs)``; it returns a Tensor.
    """

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, dout):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any):
        arrays = tuple(a.data if isinstance(a, Tensor) else a for a in args)
        needs_grad = _state.grad_enabled and any(
            isinstance(a, Tensor) and a.requires_grad for a in args
        )
        ctx = Context()
        # which positional inputs want a gradient: backward may skip the others (e.g. dx of the stem conv)
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        out = cls.forward(ctx, *arrays, **kwargs)
        where = None
        if _state.detect_anomaly:
            where = _user_frame()
            if _nonfinite(out):
                inputs_bad = any(_nonfinite(a) for a in arrays)
                cause = (
                    "its inputs already held NaN/Inf (they came from outside the graph)"
                    if inputs_bad
                    else "its inputs were finite"
                )
                raise AnomalyError(
                    f"{cls.__name__}.forward produced NaN/Inf ({cause}); the op was created at\n  {where}",
                    op=cls.__name__,
                    where=where,
                )
        result = Tensor(out, requires_grad=needs_grad)
        if needs_grad:
            parents = tuple(a if isinstance(a, Tensor) else None for a in args)
            result._node = Node(cls, ctx, parents, where)
        return result


def run_backward(node: Node, dout) -> tuple:
    """Call ``node``'s backward, normalise its result to a tuple and check it (shapes, anomalies)."""
    grads = node.fn.backward(node.ctx, dout)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) < len(node.parents):
        grads = grads + (None,) * (len(node.parents) - len(grads))
    for i, (parent, g) in enumerate(zip(node.parents, grads)):
        if parent is None or g is None:
            continue
        if tuple(g.shape) != tuple(parent.shape):
            raise RuntimeError(
                f"{node.fn.__name__}.backward returned a gradient of shape {tuple(g.shape)} "
                f"for input {i} of shape {tuple(parent.shape)}"
            )
        if _state.detect_anomaly and _nonfinite(g):
            where = node.where or "<recorded before anomaly mode was on>"
            raise AnomalyError(
                f"{node.fn.__name__}.backward produced NaN/Inf in the gradient of input {i}; "
                f"the op was created at\n  {where}",
                op=node.fn.__name__,
                where=where,
            )
    return grads


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` down to ``shape``: undoes NumPy broadcasting in the backward of elementwise ops."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def as_array_like(value, like):
    """``value`` (a Python number or array) as an array of ``like``'s dtype and array module."""
    xp = get_array_module(like)
    if isinstance(value, (int, float, bool, np.number)):
        return xp.asarray(value, dtype=like.dtype)
    return value


# Tensor's module imports this one (a Tensor records its op as a Node), so Tensor is bound here, at the end.
from minimaskrcnn.tensor import Tensor  # noqa: E402
