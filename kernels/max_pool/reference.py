"""Max pooling in plain NumPy: the spec the Numba and CUDA versions are tested against.

One pass per window tap (kh, kw): gather, for every output (oh, ow), the pixel the tap sees,
x[n, c, oh*SH - pad_h + kh*DH, ow*SW - pad_w + kw*DW], and keep it where it beats the running maximum.
Taps that fall in the padding never win (the padding is -inf in effect).
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels.max_pool import check_pooled_shape, max_pool_geometry


def max_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> tuple:
    """The maximum of every (KH, KW) window of ``x`` and the flat index of the pixel that holds it.

    Args:
        x: (N, C, H, W) float32 or float64.
        kernel_size, stride, padding, dilation, ceil_mode: as torch.nn.functional.max_pool2d
            (``stride=None`` means ``kernel_size``).

    Returns:
        out: (N, C, OH, OW), x's dtype, ``out[n, c, oh, ow] = max over (kh, kw) of
            x[n, c, oh*SH - pad_h + kh*DH, ow*SW - pad_w + kw*DW]`` (taps inside the image only).
        argmax: (N, C, OH, OW) int64, ``ih*W + iw`` of the winning pixel (the first maximum in
            row-major tap order; a NaN wins); -1 (and out = -inf) for a dilated window that sees
            only padding.
    """
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    out = np.full((N, C, OH, OW), -np.inf, dtype=x.dtype)
    argmax = np.full((N, C, OH, OW), -1, dtype=np.int64)  # -1: no pixel seen yet
    ih0 = np.arange(OH) * SH - pad_h  # the image row tap kh=0 of output row oh reads
    iw0 = np.arange(OW) * SW - pad_w
    for kh in range(KH):
        ih = ih0 + kh * DH
        for kw in range(KW):
            iw = iw0 + kw * DW
            inside = ((ih >= 0) & (ih < H))[:, None] & ((iw >= 0) & (iw < W))[None, :]  # (OH, OW)
            value = x[:, :, np.clip(ih, 0, H - 1)[:, None], np.clip(iw, 0, W - 1)[None, :]]  # (N, C, OH, OW)
            # the first pixel of a window is taken whatever its value (even -inf); later ones must be
            # strictly larger (ties keep the first) or NaN (NaN propagates)
            take = inside & ((argmax < 0) | (value > out) | np.isnan(value))
            out = np.where(take, value, out)
            argmax = np.where(take, ih[:, None] * W + iw[None, :], argmax)
    return out, argmax


def max_pool2d_backward(dout: np.ndarray, argmax: np.ndarray, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False) -> np.ndarray:
    """Send each output gradient to the pixel that won its window (overlapping windows add up).

    Args:
        dout: (N, C, OH, OW) float32 or float64, the gradient of the pooled output.
        argmax: (N, C, OH, OW) int64 from ``max_pool2d_forward``.
        x_shape: (N, C, H, W) of the pooled input.
        kernel_size, stride, padding, dilation, ceil_mode: as given to ``max_pool2d_forward``.

    Returns:
        dx: (N, C, H, W), dout's dtype: ``dx[n, c].flat[argmax[n, c, oh, ow]] += dout[n, c, oh, ow]``.
    """
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = max_pool_geometry(
        x_shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    check_pooled_shape(dout.shape, argmax.shape, (N, C, OH, OW))
    dx = np.zeros((N * C, H * W), dtype=dout.dtype)
    plane = np.broadcast_to(np.arange(N * C)[:, None], (N * C, OH * OW))  # the row of dx of plane (n, c)
    argmax, dout = argmax.reshape(N * C, -1), dout.reshape(N * C, -1)
    won = argmax >= 0  # -1: a window that saw only padding sends nothing
    np.add.at(dx, (plane[won], argmax[won]), dout[won])
    return dx.reshape(N, C, H, W)
