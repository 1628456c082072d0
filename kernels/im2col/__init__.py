"""im2col / col2im: unfold image patches into the columns of a matrix, and fold them back.

A convolution is then one matrix product per image (``weight (C_out, C*KH*KW) @ cols``), which
runs at BLAS speed. The column layout, the same in every backend, is

    cols: (N, C*KH*KW, OH*OW), row = (c*KH + kh)*KW + kw, column = oh*OW + ow,
    cols[n, row, column] = x[n, c, oh*SH - pad_h + kh*DH, ow*SW - pad_w + kw*DW]  (0 outside the image)

so that ``weight.reshape(C_out, -1) @ cols[n]`` is already the (C_out, OH*OW) output of image n in
NCHW order: neither the forward nor the backward of a convolution needs a transpose copy.

``reference.py`` is NumPy (the spec), ``cpu.py`` Numba (parallel over (n, c)), ``cuda.py`` Numba-CUDA.
Lesson 05 (convolution) builds im2col step by step.
"""
from __future__ import annotations


def as_pair(value, name: str = "value") -> tuple[int, int]:
    """``(v, v)`` for an int ``v``; a pair as a tuple of two ints.

    Raises:
        ValueError: for anything that is not an int or a pair of ints.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return int(value[0]), int(value[1])
    if isinstance(value, str):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value), int(value)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The output length of a convolution along one axis (PyTorch's formula).

    ``floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1``
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def window_args(kernel_size, stride, padding, dilation) -> tuple:
    """The (height, width) pairs of a sliding window's arguments, checked (im2col's and max pooling's).

    Args:
        kernel_size, stride, padding, dilation: ints or (height, width) pairs.

    Returns:
        ``(KH, KW, SH, SW, pad_h, pad_w, DH, DW)``, all Python ints.

    Raises:
        ValueError: for a value that is not an int or a pair, non-positive kernel/stride/dilation or
            negative padding.
    """
    KH, KW = as_pair(kernel_size, "kernel_size")
    SH, SW = as_pair(stride, "stride")
    pad_h, pad_w = as_pair(padding, "padding")
    DH, DW = as_pair(dilation, "dilation")
    if min(KH, KW, SH, SW, DH, DW) < 1 or min(pad_h, pad_w) < 0:
        raise ValueError(
            f"kernel_size, stride, dilation must be >= 1 and padding >= 0, got kernel_size={(KH, KW)}, "
            f"stride={(SH, SW)}, padding={(pad_h, pad_w)}, dilation={(DH, DW)}"
        )
    return KH, KW, SH, SW, pad_h, pad_w, DH, DW


def im2col_geometry(x_shape, kernel_size, stride, padding, dilation) -> tuple:
    """Check the arguments of im2col/col2im and return the sizes the kernels need.

    Args:
        x_shape: (N, C, H, W) of the image batch.
        kernel_size, stride, padding, dilation: ints or (height, width) pairs.

    Returns:
        ``(N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)``, all Python ints.

    Raises:
        ValueError: for a non-4-D shape, non-positive kernel/stride/dilation, negative padding,
            or a kernel that does not fit in the padded image.
    """
    if len(x_shape) != 4:
        raise ValueError(f"im2col expects an (N, C, H, W) array, got shape {tuple(x_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    KH, KW, SH, SW, pad_h, pad_w, DH, DW = window_args(kernel_size, stride, padding, dilation)
    OH = conv_output_size(H, KH, SH, pad_h, DH)
    OW = conv_output_size(W, KW, SW, pad_w, DW)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"kernel {(KH, KW)} with dilation {(DH, DW)} does not fit in the padded input "
            f"{(H + 2 * pad_h, W + 2 * pad_w)}"
        )
    return N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW


def check_cols_shape(cols_shape, geometry: tuple) -> None:
    """Raise ValueError unless ``cols_shape`` is (N, C*KH*KW, OH*OW) for ``geometry``."""
    N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW = geometry
    expected = (N, C * KH * KW, OH * OW)
    if tuple(int(s) for s in cols_shape) != expected:
        raise ValueError(f"cols has shape {tuple(cols_shape)}, expected (N, C*KH*KW, OH*OW) = {expected}")


def check_out(out, shape: tuple, dtype) -> None:
    """Raise ValueError unless ``out`` (an ``out=`` argument) is a C-contiguous array of ``shape`` and ``dtype``."""
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {dtype} array of shape {tuple(shape)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
