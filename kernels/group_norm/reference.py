"""Group normalisation as array code (NumPy or CuPy): the spec the Numba version is tested against."""
from __future__ import annotations

from minimaskrcnn.kernels._checks import check_float
from minimaskrcnn.kernels.group_norm import check_group_norm

from minimaskrcnn.backend import get_array_module


def group_norm_forward(x, weight, bias, num_groups: int, eps: float) -> tuple:
    """out, xhat and invstd of group normalisation (see the package docstring).

    Args:
        x: (N, C, L) float32 or float64, each image's channels with their pixels flattened.
        weight, bias: (C,) of x's dtype, or None (no scale / no shift).
        num_groups: G, dividing C.
        eps: added to the variance.

    Returns:
        out (N, C, L) and xhat (N, C, L), x's dtype; invstd (N, G), x's dtype.

    Raises:
        TypeError: for a non-float x. ValueError: for a shape that is not (N, C, L) or C not divisible by G.
    """
    check_float(x, "x")
    check_group_norm(x.shape, num_groups)
    xp = get_array_module(x)
    N, C, L = x.shape
    xg = x.reshape(N, num_groups, C // num_groups * L)  # (N, G, C/G * L)
    mean = xg.mean(axis=2, keepdims=True)
    centred = xg - mean
    var = (centred * centred).mean(axis=2, keepdims=True)  # biased, as PyTorch
    invstd = (1 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)  # (N, G, 1)
    xhat = (centred * invstd).reshape(N, C, L)
    out = xhat * weight.reshape(1, C, 1) if weight is not None else xhat.copy()
    if bias is not None:
        out += bias.reshape(1, C, 1)
    return out, xhat, invstd.reshape(N, num_groups)


def group_norm_backward(dout, xhat, invstd, weight, need_weight: bool = True, need_bias: bool = True) -> tuple:
    """dx, dweight and dbias of group normalisation (see the package docstring).

    Args:
        dout: (N, C, L), the gradient of out. xhat (N, C, L), invstd (N, G): from the forward.
        weight: (C,) or None, as given to the forward.
        need_weight, need_bias: compute dweight / dbias (else None is returned in its place).

    Returns:
        dx (N, C, L); dweight (C,) or None; dbias (C,) or None; dout's dtype.
    """
    N, C, L = dout.shape
    G = invstd.shape[1]
    dweight = (dout * xhat).sum(axis=(0, 2)) if need_weight and weight is not None else None
    dbias = dout.sum(axis=(0, 2)) if need_bias else None
    M = C // G * L
    dxhat = (dout * weight.reshape(1, C, 1) if weight is not None else dout).reshape(N, G, M)
    xhat_g = xhat.reshape(N, G, M)
    # as batch norm, with the statistics taken per (image, group)
    mean_dxhat = dxhat.mean(axis=2, keepdims=True)
    mean_dxhat_xhat = (dxhat * xhat_g).mean(axis=2, keepdims=True)
    dx = invstd.reshape(N, G, 1) * (dxhat - mean_dxhat - xhat_g * mean_dxhat_xhat)
    return dx.reshape(N, C, L), dweight, dbias
