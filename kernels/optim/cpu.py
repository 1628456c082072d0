"""SGD's update and the sum of squares compiled with Numba for the CPU (same arguments and results as reference.py).

The update is one pass over the parameter: each element's gradient, weight decay, momentum and step
in registers, with the float operations of reference.py in the same order and in the parameter's
dtype (the hyper-parameters are cast to it first, as NumPy does with a Python float and a float32
array), so both give the same bits. The parameter's arrays are seen flat (they are contiguous).
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.optim import check_sgd_arrays, reference


@numba.njit(cache=True)
def _sgd_kernel(p, grad, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, maximize, first,
                use_momentum, use_decay):
    for i in range(p.size):
        g = -grad[i] if maximize else grad[i]
        if use_decay:
            g = g + weight_decay * p[i]
        if use_momentum:
            if first:
                b = g
            else:
                b = buf[i] * momentum
                b = b + one_minus_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] + lr * g


@numba.njit(cache=True)
def _sum_of_squares_kernel(g):
    # eight running sums (element i goes to sum i % 8), added together at the end: independent
    # additions that the CPU overlaps, in an order fixed by the code (one running sum waits for
    # each addition to finish, about 4x slower here)
    sums = np.zeros(8, dtype=np.float64)
    n8 = g.size - g.size % 8
    for i in range(0, n8, 8):
        for j in range(8):
            v = np.float64(g[i + j])
            sums[j] += v * v
    for i in range(n8, g.size):
        v = np.float64(g[i])
        sums[i - n8] += v * v
    return ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]))


def sgd_update_(param, grad, momentum_buffer, lr: float, momentum: float, dampening: float, weight_decay: float,
                nesterov: bool, maximize: bool):
    """One SGD step of one parameter, in place; as reference.sgd_update_ (same arguments, returns, errors)."""
    check_float(param, "param")
    check_sgd_arrays(param, grad, momentum_buffer)
    if not all(a.flags.c_contiguous for a in (param, grad, momentum_buffer) if a is not None):  # read flat
        return reference.sgd_update_(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay,
                                     nesterov, maximize)
    use_momentum = momentum != 0
    first = use_momentum and momentum_buffer is None
    if first:
        momentum_buffer = np.empty_like(param)
    # the scalars in param's dtype, as NumPy rounds a Python float before multiplying a float32 array
    cast = param.dtype.type
    buf = momentum_buffer if use_momentum else param  # (unused without momentum)
    _sgd_kernel(param.reshape(-1), grad.reshape(-1), buf.reshape(-1), cast(-lr), cast(momentum), cast(1 - dampening),
                cast(weight_decay), bool(nesterov), bool(maximize), first, use_momentum, weight_decay != 0)
    return momentum_buffer if use_momentum else None


def sum_of_squares(grad) -> float:
    """The sum of grad's squared elements in float64, as a Python float; as reference.sum_of_squares.

    Summed in eight interleaved running sums (reference.py's NumPy sum is pairwise): equal up to
    float64 rounding.
    """
    check_float(grad, "grad")
    if not grad.flags.c_contiguous:
        grad = np.ascontiguousarray(grad)
    return float(_sum_of_squares_kernel(grad.reshape(-1)))
