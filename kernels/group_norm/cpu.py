"""Group normalisation compiled with Numba for the CPU (same arguments and results as reference.py).

One parallel task per (image, group): the forward reads the group twice for its mean and variance
(float64 sums) and once more to write xhat and out; the backward reads dout and xhat once for the
group's two sums (and each channel's dweight and dbias parts) and once more to write dx. The
per-channel parts of dweight and dbias are summed over the images afterwards, in image order.
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.group_norm import check_group_norm


@numba.njit(cache=True, parallel=True)
def _forward_kernel(x, weight, bias, G, eps, out, xhat, invstd):
    N, C, L = x.shape
    Cg = C // G
    count = Cg * L
    for task in numba.prange(N * G):
        n, g = task // G, task % G
        total = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            for i in range(L):
                total += x[n, c, i]
        mean = total / count
        squares = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            for i in range(L):
                d = x[n, c, i] - mean
                squares += d * d
        inv = 1.0 / np.sqrt(squares / count + eps)
        invstd[n, g] = inv
        for c in range(g * Cg, (g + 1) * Cg):
            w, b = weight[c], bias[c]
            for i in range(L):
                h = (x[n, c, i] - mean) * inv
                xhat[n, c, i] = h
                out[n, c, i] = h * w + b


@numba.njit(cache=True, parallel=True)
def _backward_kernel(dout, xhat, invstd, weight, dx, dweight_parts, dbias_parts):
    N, C, L = dout.shape
    G = invstd.shape[1]
    Cg = C // G
    count = Cg * L
    for task in numba.prange(N * G):
        n, g = task // G, task % G
        sum_dxhat = 0.0
        sum_dxhat_xhat = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            dout_xhat = 0.0
            dout_sum = 0.0
            for i in range(L):
                d = dout[n, c, i]
                dout_xhat += d * xhat[n, c, i]
                dout_sum += d
            dweight_parts[n, c] = dout_xhat
            dbias_parts[n, c] = dout_sum
            sum_dxhat += weight[c] * dout_sum
            sum_dxhat_xhat += weight[c] * dout_xhat
        mean_dxhat = sum_dxhat / count
        mean_dxhat_xhat = sum_dxhat_xhat / count
        inv = invstd[n, g]
        for c in range(g * Cg, (g + 1) * Cg):
            w = weight[c]
            for i in range(L):
                dx[n, c, i] = inv * (dout[n, c, i] * w - mean_dxhat - xhat[n, c, i] * mean_dxhat_xhat)


def group_norm_forward(x: np.ndarray, weight, bias, num_groups: int, eps: float) -> tuple:
    """out, xhat and invstd of group normalisation; arguments and results as reference.py."""
    check_float(x, "x")
    check_group_norm(x.shape, num_groups)
    N, C, L = x.shape
    x = np.ascontiguousarray(x)
    weight = np.ones(C, dtype=x.dtype) if weight is None else np.ascontiguousarray(weight)
    bias = np.zeros(C, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    out, xhat = np.empty_like(x), np.empty_like(x)
    invstd = np.empty((N, num_groups), dtype=x.dtype)
    _forward_kernel(x, weight, bias, int(num_groups), float(eps), out, xhat, invstd)
    return out, xhat, invstd


def group_norm_backward(dout: np.ndarray, xhat, invstd, weight, need_weight: bool = True,
                        need_bias: bool = True) -> tuple:
    """dx, dweight and dbias of group normalisation; arguments and results as reference.py."""
    N, C, L = dout.shape
    dout = np.ascontiguousarray(dout)
    scale = np.ones(C, dtype=dout.dtype) if weight is None else np.ascontiguousarray(weight)
    dx = np.empty_like(dout)
    dweight_parts, dbias_parts = np.empty((N, C)), np.empty((N, C))
    _backward_kernel(dout, xhat, invstd, scale, dx, dweight_parts, dbias_parts)
    dweight = dweight_parts.sum(axis=0).astype(dout.dtype) if need_weight and weight is not None else None
    dbias = dbias_parts.sum(axis=0).astype(dout.dtype) if need_bias else None
    return dx, dweight, dbias
