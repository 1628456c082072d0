"""Tensor: an array (NumPy, or CuPy on the GPU) with a gradient and the op that made it.

``backward()`` walks the recorded graph in reverse topological order, calls each op's backward
and accumulates gradients into the leaves' ``.grad``. Lesson 04 builds it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minimaskrcnn.backend import default_array_module, get_array_module, is_cupy, to_numpy, unwrap
from minimaskrcnn.function import Node, no_grad, run_backward


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    Args:
        data: array-like; NumPy and CuPy arrays are kept as they are (no copy), anything else is
            made into an array of the backend's array module (float lists become float32).
        requires_grad: whether ``backward`` should fill ``.grad`` for this tensor.
        dtype: optional dtype to convert to.

    Axes are named as in PyTorch: ``x.sum(dim=1, keepdim=True)``, ``x.flatten(start_dim=1)``,
    ``x.transpose(0, 1)``. NumPy's names are accepted as aliases where NumPy has the same method
    (``x.sum(axis=1, keepdims=True)``, likewise ``mean`` and ``max``); giving both raises TypeError.
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "name", "__weakref__")
    __array_priority__ = 1000  # so that ndarray * Tensor calls Tensor.__rmul__

    def __init__(self, data: Any, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, np.generic):  # a NumPy scalar (e.g. from a full reduction) keeps its dtype
            data = np.asarray(data)
        if is_cupy(data) or isinstance(data, np.ndarray):
            if dtype is not None and data.dtype != dtype:
                data = data.astype(dtype)
        else:
            # Python lists and numbers: floats default to float32, as in PyTorch
            xp = default_array_module()
            data = xp.asarray(data, dtype=dtype)
            if dtype is None and data.dtype == np.float64:
                data = data.astype(np.float32)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node: Node | None = None
        self.name: str | None = None

    # ------------------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({to_numpy(self.data)!r}{grad})"

    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (copied from the GPU if needed)."""
        return to_numpy(self.data)

    def item(self) -> float:
        return self.numpy().item()

    def detach(self) -> Tensor:
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        return _elementwise.Cast.apply(self, dtype=np.dtype(dtype))

    def zero_grad(self) -> None:
        self.grad = None

    # -------------------------------------------------------------------------------- backward
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) * grad into the ``.grad`` of every leaf that requires grad.

        Args:
            grad: the upstream gradient, the shape of self; defaults to 1 for a single-element
                tensor (a loss).

        The graph is freed afterwards (as in PyTorch without retain_graph), so call it once per
        forward pass.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() needs a gradient for a tensor of shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise RuntimeError(f"gradient of shape {tuple(grad.shape)} for a tensor of shape {self.shape}")

        order = self._topological_order()
        grads: dict[int, Any] = {id(self): grad}
        with no_grad():
            for t in order:
                g = grads.pop(id(t), None)
                if g is None:
                    continue
                if t._node is None:  # a leaf
                    if t.requires_grad:
                        t.grad = g.copy() if t.grad is None else t.grad + g
                    continue
                node = t._node
                for parent, pg in zip(node.parents, run_backward(node, g)):
                    if parent is None or pg is None or not parent.requires_grad:
                        continue
                    key = id(parent)
                    grads[key] = pg if key not in grads else grads[key] + pg
                t._node = None  # free the graph as we go

    def _topological_order(self) -> list[Tensor]:
        """Tensors reachable from self, each after every tensor that uses it (iterative DFS)."""
        order: list[Tensor] = []
        visited: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            t, children_done = stack.pop()
            if children_done:
                order.append(t)
                continue
            if id(t) in visited:
                continue
            visited.add(id(t))
            stack.append((t, True))
            if t._node is not None:
                for p in t._node.parents:
                    if p is not None and p.requires_grad and id(p) not in visited:
                        stack.append((p, False))
        order.reverse()
        return order

    # ------------------------------------------------------------------------------- operators
    # (the ops modules are bound at the end of this file, once: they import Tensor themselves)
    def __add__(self, other): return _elementwise.Add.apply(self, _wrap(other, self))
    def __radd__(self, other): return _elementwise.Add.apply(_wrap(other, self), self)
    def __sub__(self, other): return _elementwise.Sub.apply(self, _wrap(other, self))
    def __rsub__(self, other): return _elementwise.Sub.apply(_wrap(other, self), self)
    def __mul__(self, other): return _elementwise.Mul.apply(self, _wrap(other, self))
    def __rmul__(self, other): return _elementwise.Mul.apply(_wrap(other, self), self)
    def __truediv__(self, other): return _elementwise.Div.apply(self, _wrap(other, self))
    def __rtruediv__(self, other): return _elementwise.Div.apply(_wrap(other, self), self)
    def __neg__(self): return _elementwise.Neg.apply(self)
    def __pow__(self, exponent: float): return _elementwise.Pow.apply(self, exponent=exponent)
    def __matmul__(self, other): return _elementwise.MatMul.apply(self, _wrap(other, self))
    def __rmatmul__(self, other): return _elementwise.MatMul.apply(_wrap(other, self), self)
    def __getitem__(self, index): return _shape_ops.GetItem.apply(self, index=_plain_index(index))

    # comparisons give plain boolean arrays: no gradient flows through them
    def __lt__(self, other): return self.data < unwrap(other)
    def __le__(self, other): return self.data <= unwrap(other)
    def __gt__(self, other): return self.data > unwrap(other)
    def __ge__(self, other): return self.data >= unwrap(other)

    # --------------------------------------------------------------------------------- methods
    def exp(self): return _elementwise.Exp.apply(self)
    def log(self): return _elementwise.Log.apply(self)
    def sqrt(self): return _elementwise.Sqrt.apply(self)
    def abs(self): return _elementwise.Abs.apply(self)
    def sigmoid(self): return _elementwise.Sigmoid.apply(self)
    def relu(self): return _elementwise.Relu.apply(self)
    def clamp(self, min=None, max=None): return _elementwise.Clamp.apply(self, min=min, max=max)

    def sum(self, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
        """Sum over ``dim`` (an int, a tuple, or None for all); ``axis``/``keepdims`` are aliases."""
        dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "sum")
        return _reduce.Sum.apply(self, axis=dim, keepdims=keepdim)

    def mean(self, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
        """Mean over ``dim`` (an int, a tuple, or None for all); ``axis``/``keepdims`` are aliases."""
        dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "mean")
        return _reduce.Mean.apply(self, axis=dim, keepdims=keepdim)

    def max(self, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
        """Maximum over ``dim`` (values only, as NumPy; ties share the gradient); ``axis``/``keepdims``
        are aliases."""
        dim, keepdim = dim_or_axis(dim, axis, keepdim, keepdims, "max")
        return _reduce.Max.apply(self, axis=dim, keepdims=keepdim)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _shape_ops.Reshape.apply(self, shape=tuple(int(s) for s in shape))

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        shape = self.shape
        end = end_dim % len(shape) if shape else 0
        new = shape[:start_dim] + (int(np.prod(shape[start_dim : end + 1])),) + shape[end + 1 :]
        return self.reshape(new)

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return _shape_ops.Permute.apply(self, axes=tuple(int(d) for d in dims))

    def transpose(self, dim0: int, dim1: int):
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(*dims)


# ------------------------------------------------------------------------------------ helpers
def _wrap(x, like: Tensor) -> Tensor:
    """A Tensor for ``x``; Python numbers take ``like``'s dtype so float32 stays float32."""
    if isinstance(x, Tensor):
        return x
    xp = get_array_module(like.data)
    if isinstance(x, (int, float, bool, np.number)):
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(xp.asarray(x))


def _plain_index(index):
    """Indices may hold Tensors (e.g. an index Tensor): use their arrays."""
    if isinstance(index, tuple):
        return tuple(unwrap(i) for i in index)
    return unwrap(index)


def tensor(data: Any, requires_grad: bool = False, dtype=None) -> Tensor:
    """Make a Tensor (like ``torch.tensor``)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(x: Any) -> Tensor:
    """``x`` if it is a Tensor, else a Tensor wrapping it without copying."""
    return x if isinstance(x, Tensor) else Tensor(x)


def zeros(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    xp = default_array_module()
    return Tensor(xp.zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    xp = default_array_module()
    return Tensor(xp.ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def _shape(shape: Sequence) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


# The ops are Functions on arrays that return Tensors, so their modules import this one: they are
# imported here, at the end, once every name above exists (the operators above look them up at call time).
from minimaskrcnn.ops import elementwise as _elementwise  # noqa: E402
from minimaskrcnn.ops import reduce as _reduce  # noqa: E402
from minimaskrcnn.ops import shape as _shape_ops  # noqa: E402
from minimaskrcnn.ops._utils import dim_or_axis  # noqa: E402
