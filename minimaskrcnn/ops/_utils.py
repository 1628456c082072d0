"""Small helpers the ops and the model share (as torchvision's ops/_utils.py): argument pairs, and the
numerically safe sigmoid and softmax on plain arrays (NumPy or CuPy, no gradient) that inference uses.

The differentiable versions are the ops ``sigmoid`` (ops/elementwise.py) and ``softmax`` /
``log_softmax`` (ops/loss.py), whose forwards call these.
"""
from __future__ import annotations

from collections.abc import Callable

from minimaskrcnn.backend import get_array_module


def pair(value, name: str = "value", convert: Callable = int) -> tuple:
    """``(v, v)`` for a single value, the two entries of a pair (``torch.nn.modules.utils._pair``).

    Args:
        value: a number, or a tuple/list of two.
        name: the argument's name, for the error message.
        convert: applied to both entries (``int`` for sizes and strides, ``float`` for scale factors).

    Raises:
        ValueError: for a sequence that is not of length 2, or a string.
    """
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return convert(value[0]), convert(value[1])
    if isinstance(value, (tuple, list, str)):
        kind = "an int or a pair of ints" if convert is int else "a number or a pair of numbers"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return convert(value), convert(value)


def sigmoid_array(x):
    """``1 / (1 + exp(-x))`` elementwise on an array, without overflow for any x, in x's dtype. No gradient.

    ``exp(-|x|)`` is in (0, 1], so neither branch overflows: ``1 / (1 + e)`` for x >= 0 and
    ``e / (1 + e)`` for x < 0.

    Args:
        x: float NumPy or CuPy array, any shape.

    Returns:
        an array of x's shape, dtype and array module, values in [0, 1].
    """
    xp = get_array_module(x)
    e = xp.exp(-abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def softmax_array(x, axis: int = -1):
    """``exp(x) / sum(exp(x))`` along ``axis`` on an array, shifted by the maximum so that exp never
    overflows (as ``torch.softmax``). No gradient.

    Args:
        x: float NumPy or CuPy array, e.g. (K, L) class logits.
        axis: the class axis.

    Returns:
        an array of x's shape, dtype and array module; each slice along ``axis`` sums to 1.
    """
    e = get_array_module(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_array(x, axis: int = -1):
    """``log(softmax(x))`` along ``axis`` on an array, as ``(x - max) - log(sum(exp(x - max)))``: no
    overflow and no log(0) for any x. No gradient.

    Args:
        x: float NumPy or CuPy array.
        axis: the class axis.

    Returns:
        an array of x's shape, dtype and array module, all entries <= 0.
    """
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def dim_or_axis(dim, axis, keepdim: bool = False, keepdims: bool | None = None, where: str = "reduction") -> tuple:
    """Resolve PyTorch's ``dim``/``keepdim`` and NumPy's ``axis``/``keepdims``, accepted as aliases.

    Args:
        dim, axis: None (every axis), an int or a tuple of ints; give at most one of the two.
        keepdim, keepdims: keep the reduced axes with length 1; give at most one of the two.
        where: the function's name, for the error message.

    Returns:
        (dim, keepdim).

    Raises:
        TypeError: when both names of one argument are given.
    """
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{where}: give dim or its alias axis, not both")
        dim = axis
    if keepdims is not None:
        if keepdim:
            raise TypeError(f"{where}: give keepdim or its alias keepdims, not both")
        keepdim = bool(keepdims)
    return dim, keepdim
