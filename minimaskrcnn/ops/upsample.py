"""Resizing feature maps: nearest (FPN's top-down pathway), bilinear (pasting masks, the keypoint
predictor's 2x) and bicubic (decoding keypoint heatmaps) interpolation.

All three are separable: each output row/column reads one (nearest), two (bilinear) or four (bicubic)
input rows/columns chosen by PyTorch's index rules, so forward is a gather along H and W and backward
the matching scatter-add. The FPN lesson uses the nearest version, the keypoint lesson the bicubic one.
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.function import Function
from minimaskrcnn.ops._utils import pair
from minimaskrcnn.tensor import Tensor


# --------------------------------------------------------------------------------- index rules
def nearest_source_index(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
    """For each output position, the input position PyTorch's ``mode="nearest"`` copies.

    ``src = min(floor(dst * scale), in_size - 1)`` with ``scale = in_size / out_size`` (or
    ``1 / scale_factor`` when one was given), computed in float32 as PyTorch's CPU kernel does.

    Args:
        in_size, out_size: lengths of the axis before and after resizing.
        scale_factor: the factor the caller asked for, if any.

    Returns:
        (out_size,) int64 NumPy array, non-decreasing.
    """
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:  # PyTorch's shortcut, whatever the scale factor
        return dst // 2
    if scale_factor is not None and scale_factor > 0:
        scale = np.float32(1.0 / scale_factor)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def linear_source_weights(in_size: int, out_size: int, align_corners: bool, scale_factor: float | None = None,
                          dtype=np.float64) -> tuple:
    """For each output position, the two input positions ``mode="bilinear"`` blends, and their weights.

    Without ``align_corners`` pixel centres line up: ``src = max((dst + 0.5) * scale - 0.5, 0)``,
    ``scale = in_size / out_size`` (or ``1 / scale_factor``); with it, corner pixels line up:
    ``src = dst * (in_size - 1) / (out_size - 1)``. Then ``i0 = floor(src)``,
    ``i1 = min(i0 + 1, in_size - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1`` (PyTorch's rule).

    Returns:
        i0, i1: (out_size,) int64 NumPy arrays, non-decreasing; w0, w1: (out_size,) ``dtype``.
    """
    dtype = np.dtype(dtype)
    dst = np.arange(out_size).astype(dtype)
    if align_corners:
        scale = dtype.type((in_size - 1) / (out_size - 1)) if out_size > 1 else dtype.type(0)
        src = dst * scale
    else:
        if scale_factor is not None and scale_factor > 0:
            scale = dtype.type(1.0 / scale_factor)
        else:
            scale = dtype.type(in_size) / dtype.type(out_size)
        src = np.maximum(scale * (dst + dtype.type(0.5)) - dtype.type(0.5), dtype.type(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0, 0, 1).astype(dtype)
    w0 = (dtype.type(1) - w1).astype(dtype)
    return i0, i1, w0, w1


CUBIC_A = -0.75  # the "a" of Keys' cubic convolution kernel that PyTorch (and OpenCV) use


def cubic_convolution_weights(t, a: float = CUBIC_A):
    """The four weights of Keys' cubic convolution for the taps at offsets -1, 0, 1, 2 of a fraction t.

    The kernel (Keys 1981, with PyTorch's ``a = -0.75``; aten's ``get_cubic_upsample_coefficients``)::

        W(d) = (a + 2)|d|^3 - (a + 3)|d|^2 + 1        for |d| <= 1
        W(d) = a|d|^3 - 5a|d|^2 + 8a|d| - 4a          for 1 < |d| < 2,   0 beyond

    evaluated at the distances 1 + t, t, 1 - t and 2 - t of the taps from the sample point. The
    weights sum to 1; at t = 0 they are (0, 1, 0, 0), so the kernel interpolates.

    Args:
        t: float array of fractions in [0, 1] (any shape).
        a: the kernel's free parameter.

    Returns:
        a tuple of four arrays of t's shape and dtype.
    """
    t = np.asarray(t)
    one = t.dtype.type(1)
    a = t.dtype.type(a)

    def near(d):  # |d| <= 1, in aten's Horner form
        return ((a + 2) * d - (a + 3)) * d * d + one

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    s = one - t
    return far(t + one), near(t), near(s), far(s + one)


def cubic_source_weights(in_size: int, out_size: int, align_corners: bool, scale_factor: float | None = None,
                         dtype=np.float64) -> tuple:
    """For each output position, the four input positions ``mode="bicubic"`` blends, and their weights.

    PyTorch's rule (aten's ``upsample_bicubic2d``): ``src = (dst + 0.5) * scale - 0.5`` without
    ``align_corners`` (NOT clamped at 0, unlike bilinear: the taps at -1 matter), ``src = dst * (in
    - 1) / (out - 1)`` with it; ``i = floor(src)`` (at most in - 1), ``t = clamp(src - i, 0, 1)``;
    the taps are i - 1, i, i + 1, i + 2, each clamped into [0, in - 1] (the border pixel repeats).

    Args:
        in_size, out_size: lengths of the axis before and after resizing.
        align_corners: line up the corner pixels rather than the pixel centres.
        scale_factor: the factor the caller asked for, if any (used instead of out / in, as PyTorch).
        dtype: dtype the positions and weights are computed in (float32 for float32 input, as PyTorch).

    Returns:
        (idx, weights): (out_size, 4) int64 NumPy array of input positions, each column
        non-decreasing; (out_size, 4) ``dtype`` weights, each row summing to 1.
    """
    dtype = np.dtype(dtype)
    dst = np.arange(out_size).astype(dtype)
    if align_corners:
        scale = dtype.type((in_size - 1) / (out_size - 1)) if out_size > 1 else dtype.type(0)
        src = dst * scale
    else:
        if scale_factor is not None and scale_factor > 0:
            scale = dtype.type(1.0 / scale_factor)
        else:
            scale = dtype.type(in_size) / dtype.type(out_size)
        # rounded once to dtype, as PyTorch's CPU kernel (compiled to a fused multiply-add) does; exact
        # in float64 for float32 since the float32 scale times (dst + 0.5) needs fewer than 53 bits
        src = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(dtype)
    i = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i.astype(dtype), 0, 1).astype(dtype)
    idx = np.clip(i[:, None] + np.arange(-1, 3), 0, in_size - 1)
    weights = np.stack(cubic_convolution_weights(t), axis=1).astype(dtype)
    return idx, weights


def resize_bicubic(x, out_height: int, out_width: int):
    """Bicubic resize of the last two axes of an array, as ``F.interpolate(mode="bicubic", align_corners=False)``.

    A plain array function (no gradient; ``interpolate`` wraps the same computation with one): the
    columns first (four taps each), then the rows. Keypoint R-CNN decodes its heatmaps with it.

    Args:
        x: (..., H, W) float array (NumPy or CuPy).
        out_height, out_width: the output size in pixels.

    Returns:
        (..., out_height, out_width) array of x's dtype.
    """
    xp = get_array_module(x)
    rows = cubic_source_weights(x.shape[-2], out_height, False, None, x.dtype)
    cols = cubic_source_weights(x.shape[-1], out_width, False, None, x.dtype)
    return _cubic_gather(_cubic_gather(x, cols, x.ndim - 1, xp), rows, x.ndim - 2, xp)


def _cubic_gather(x, taps, axis: int, xp):
    """``out[..., j, ...] = sum_k w[j, k] * x[..., idx[j, k], ...]`` along ``axis``."""
    idx, w = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(4):
        term = _take(x, idx[:, k], axis) * xp.asarray(w[:, k]).reshape(shape)
        out = term if out is None else out + term
    return out


def _add_along_axis(values, idx, size: int, axis: int):
    """``out[..., i, ...] = sum of values[..., j, ...] over j with idx[j] == i`` (idx non-decreasing).

    The j's are split by their rank inside their run of equal idx; the j's of one rank hit distinct
    rows, so each rank is one plain indexed ``+=`` (no ``add.at``, works on NumPy and CuPy alike).
    """
    xp = get_array_module(values)
    shape = list(values.shape)
    shape[axis] = size
    out = xp.zeros(shape, dtype=values.dtype)
    idx = np.asarray(idx)
    rank = np.arange(len(idx)) - np.searchsorted(idx, idx, side="left")
    for r in range(int(rank.max()) + 1 if len(idx) else 0):
        j = np.nonzero(rank == r)[0]
        dst = [slice(None)] * values.ndim
        src = [slice(None)] * values.ndim
        dst[axis], src[axis] = xp.asarray(idx[j]), xp.asarray(j)
        out[tuple(dst)] += values[tuple(src)]
    return out


def _take(x, idx, axis: int):
    xp = get_array_module(x)
    return xp.take(x, xp.asarray(idx), axis=axis)


# ------------------------------------------------------------------------------------- ops
class UpsampleNearest(Function):
    """Nearest-neighbour resize of (N, C, H, W): a gather along H and W; backward adds back."""

    @staticmethod
    def forward(ctx, x, rows, cols):
        ctx.x_shape, ctx.rows, ctx.cols = x.shape, rows, cols
        N, C, H, W = x.shape
        fy, fx = len(rows) // max(H, 1), len(cols) // max(W, 1)
        if _is_block_repeat(rows, H, fy) and _is_block_repeat(cols, W, fx):
            # an integer factor (FPN's 2x): each pixel fills an fy x fx block, written in one pass
            out = get_array_module(x).empty((N, C, H * fy, W * fx), dtype=x.dtype)
            out.reshape(N, C, H, fy, W, fx)[...] = x[:, :, :, None, :, None]
            return out
        return _take(_take(x, rows, 2), cols, 3)

    @staticmethod
    def backward(ctx, dout):
        N, C, H, W = ctx.x_shape
        fy, fx = dout.shape[2] // H, dout.shape[3] // W
        if _is_block_repeat(ctx.rows, H, fy) and _is_block_repeat(ctx.cols, W, fx):
            # an integer factor (FPN's 2x): each input pixel was copied to an fy x fx block; add the
            # fy*fx strided views (faster than a sum over two inner axes)
            blocks = dout.reshape(N, C, H, fy, W, fx)
            dx = blocks[:, :, :, 0, :, 0].copy()
            for a in range(fy):
                for b in range(fx):
                    if a or b:
                        dx += blocks[:, :, :, a, :, b]
            return dx
        return _add_along_axis(_add_along_axis(dout, ctx.cols, W, 3), ctx.rows, H, 2)


def _is_block_repeat(idx: np.ndarray, in_size: int, factor: int) -> bool:
    """True if ``idx`` is [0]*factor + [1]*factor + ... + [in_size - 1]*factor."""
    return factor >= 1 and len(idx) == in_size * factor and bool((idx == np.arange(len(idx)) // factor).all())


class UpsampleBilinear(Function):
    """Bilinear resize of (N, C, H, W): blend two columns, then two rows; backward scatters both."""

    @staticmethod
    def forward(ctx, x, rows, cols):
        xp = get_array_module(x)
        (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = rows, cols
        ctx.x_shape, ctx.rows, ctx.cols = x.shape, rows, cols
        cw0, cw1 = xp.asarray(cw0), xp.asarray(cw1)
        rw0, rw1 = xp.asarray(rw0)[:, None], xp.asarray(rw1)[:, None]
        blended = _take(x, c0, 3) * cw0 + _take(x, c1, 3) * cw1  # (N, C, H, OW)
        return _take(blended, r0, 2) * rw0 + _take(blended, r1, 2) * rw1  # (N, C, OH, OW)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = ctx.rows, ctx.cols
        H, W = ctx.x_shape[2], ctx.x_shape[3]
        rw0, rw1 = xp.asarray(rw0)[:, None], xp.asarray(rw1)[:, None]
        dblended = _add_along_axis(dout * rw0, r0, H, 2) + _add_along_axis(dout * rw1, r1, H, 2)
        return (_add_along_axis(dblended * xp.asarray(cw0), c0, W, 3)
                + _add_along_axis(dblended * xp.asarray(cw1), c1, W, 3))


class UpsampleBicubic(Function):
    """Bicubic resize of (N, C, H, W): blend four columns, then four rows; backward scatters both."""

    @staticmethod
    def forward(ctx, x, rows, cols):
        xp = get_array_module(x)
        ctx.x_shape, ctx.rows, ctx.cols = x.shape, rows, cols
        return _cubic_gather(_cubic_gather(x, cols, 3, xp), rows, 2, xp)

    @staticmethod
    def backward(ctx, dout):
        xp = get_array_module(dout)
        (r_idx, r_w), (c_idx, c_w) = ctx.rows, ctx.cols
        H, W = ctx.x_shape[2], ctx.x_shape[3]
        # the transpose of each gather: every tap sends its weighted gradient back to its source row
        dcols = sum(_add_along_axis(dout * xp.asarray(r_w[:, k])[:, None], r_idx[:, k], H, 2) for k in range(4))
        return sum(_add_along_axis(dcols * xp.asarray(c_w[:, k]), c_idx[:, k], W, 3) for k in range(4))


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resize an (N, C, H, W) Tensor, as ``torch.nn.functional.interpolate``.

    Args:
        input: (N, C, H, W) float Tensor.
        size: int or (OH, OW), the output size; or give ``scale_factor`` instead (exactly one).
        scale_factor: float or pair; the output size is ``floor(H * scale_factor)`` (likewise W).
        mode: "nearest" (PyTorch's legacy rule ``src = floor(dst * H / OH)``, what FPN uses),
            "bilinear" or "bicubic" (Keys' kernel with a = -0.75, see ``cubic_source_weights``).
        align_corners: bilinear and bicubic only (False when None): whether corner pixels, rather
            than pixel centres, line up.
        recompute_scale_factor: with ``scale_factor``, index with the output size's ratio instead of
            the factor (PyTorch's option).
        antialias: must be False.

    Returns:
        (N, C, OH, OW) Tensor of input's dtype. Gradients flow back to input (each output's
        gradient to the input pixels it read, weighted as in the forward).
    """
    if input.ndim != 4:
        raise ValueError(f"interpolate supports (N, C, H, W) input only, got shape {input.shape}")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    H, W = input.shape[2], input.shape[3]
    if size is not None:
        out_h, out_w = pair(size, "interpolate: size")
        scales = (None, None)
    else:
        scales = pair(scale_factor, "interpolate: scale_factor", float)
        out_h, out_w = math.floor(H * scales[0]), math.floor(W * scales[1])
        if recompute_scale_factor:
            scales = (None, None)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"interpolate: output size {(out_h, out_w)} must be positive")
    if mode == "nearest":
        if align_corners is not None:
            raise ValueError("interpolate: align_corners only applies to mode='bilinear' or 'bicubic'")
        rows = nearest_source_index(H, out_h, scales[0])
        cols = nearest_source_index(W, out_w, scales[1])
        return UpsampleNearest.apply(input, rows, cols)
    if mode == "bilinear":
        align = bool(align_corners)
        rows = linear_source_weights(H, out_h, align, scales[0], input.dtype)
        cols = linear_source_weights(W, out_w, align, scales[1], input.dtype)
        return UpsampleBilinear.apply(input, rows, cols)
    if mode == "bicubic":
        align = bool(align_corners)
        rows = cubic_source_weights(H, out_h, align, scales[0], input.dtype)
        cols = cubic_source_weights(W, out_w, align, scales[1], input.dtype)
        return UpsampleBicubic.apply(input, rows, cols)
    raise ValueError(f"interpolate: mode must be 'nearest', 'bilinear' or 'bicubic', got {mode!r}")
