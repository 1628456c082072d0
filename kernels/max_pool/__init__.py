"""Max pooling: the largest value of each (KH, KW) window, and where it was (for the backward).

Every backend returns the same pair: ``out`` (N, C, OH, OW) and ``argmax`` (N, C, OH, OW) int64, the
flat index ``ih*W + iw`` inside its (H, W) plane of the pixel that won (PyTorch's
``return_indices`` convention). The backward sends each ``dout`` to that pixel; windows that overlap
(ResNet's 3x3 stride-2 stem pool) can send several to one pixel, and they add up.

Ties go to the first maximum in row-major window order and NaN wins (as in PyTorch), so gradients
equal PyTorch's even on the many tied zeros that follow a ReLU.
``reference.py`` is NumPy (the spec), ``cpu.py`` Numba, ``cuda.py`` Numba-CUDA.
"""
from __future__ import annotations

from minimaskrcnn.kernels.im2col import window_args


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """The output length of max pooling along one axis (PyTorch's ``pooling_output_shape``).

    ``floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1``, rounded up instead with
    ``ceil_mode``; a last window that would start inside the right padding only is dropped.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the padding: PyTorch drops it
    return out


def max_pool_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> tuple:
    """Check the arguments of max pooling and return the sizes the kernels need.

    Args:
        x_shape: (N, C, H, W) of the input.
        kernel_size, stride, padding, dilation: ints or (height, width) pairs; ``stride=None``
            means ``stride = kernel_size`` (PyTorch's default).
        ceil_mode: round the output size up rather than down.

    Returns:
        ``(N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW)``, all Python ints.

    Raises:
        ValueError: for a non-4-D shape, non-positive kernel/stride/dilation, padding larger than
            half the kernel (PyTorch's rule) or an empty output.
    """
    if len(x_shape) != 4:
        raise ValueError(f"max_pool2d expects an (N, C, H, W) array, got shape {tuple(x_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    if stride is None or stride == ():  # PyTorch's default: the window's own size
        stride = kernel_size
    KH, KW, SH, SW, pad_h, pad_w, DH, DW = window_args(kernel_size, stride, padding, dilation)
    if pad_h > KH // 2 or pad_w > KW // 2:  # PyTorch's rule (on the undilated kernel)
        raise ValueError(f"padding {(pad_h, pad_w)} should be at most half of the kernel size {(KH, KW)}")
    OH = pool_output_size(H, KH, SH, pad_h, DH, ceil_mode)
    OW = pool_output_size(W, KW, SW, pad_w, DW, ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"max_pool2d: input {(H, W)} is too small for kernel {(KH, KW)}: output {(OH, OW)}")
    return N, C, H, W, KH, KW, SH, SW, pad_h, pad_w, DH, DW, OH, OW


def check_pooled_shape(dout_shape, argmax_shape, expected: tuple) -> None:
    """Raise ValueError unless ``dout`` and ``argmax`` are both (N, C, OH, OW) = ``expected``."""
    for name, shape in (("dout", dout_shape), ("argmax", argmax_shape)):
        if tuple(int(s) for s in shape) != tuple(expected):
            raise ValueError(f"{name} has shape {tuple(shape)}, expected (N, C, OH, OW) = {tuple(expected)}")
