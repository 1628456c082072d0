"""SGD's update and the sum of squares as array code (NumPy or CuPy): the spec the Numba version is tested against."""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.optim import check_sgd_arrays


def sgd_update_(param, grad, momentum_buffer, lr: float, momentum: float, dampening: float, weight_decay: float,
                nesterov: bool, maximize: bool):
    """One SGD step of one parameter, in place (see the package docstring).

    Args:
        param: the parameter's array (any shape), float32 or float64; updated in place.
        grad: its gradient, param's shape and dtype (read only).
        momentum_buffer: param's shape and dtype, updated in place; None on the first step (a new
            buffer is returned) or when momentum is 0.
        lr, momentum, dampening, weight_decay: floats (NumPy scalars act as Python floats: cast to
            param's dtype, never promoting a float32 parameter's arithmetic to float64); nesterov,
            maximize: bools.

    Returns:
        the momentum buffer (a new array on the first step), or None when momentum is 0.

    Raises:
        TypeError, ValueError: a non-float param, or grad/buffer of another shape or dtype.
    """
    check_float(param, "param")
    check_sgd_arrays(param, grad, momentum_buffer)
    # Python floats: NumPy casts them to param's dtype (a np.float64 would make float64 temporaries,
    # a float64 momentum buffer, and other bits than cpu.py's)
    lr, momentum, dampening, weight_decay = float(lr), float(momentum), float(dampening), float(weight_decay)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = g.copy()
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    else:
        momentum_buffer = None
    param += (-lr) * g
    return momentum_buffer


def sum_of_squares(grad):
    """The sum of grad's squared elements, computed in float64 (NaN/Inf pass through).

    Args:
        grad: any shape, float32 or float64 (NumPy or CuPy).

    Returns:
        a 0-d float64 array on grad's device (no sync with a GPU; ``float()`` it when needed).

    Raises:
        TypeError: a non-float array.
    """
    check_float(grad, "grad")
    g = grad.astype(np.float64)
    return (g * g).sum()
