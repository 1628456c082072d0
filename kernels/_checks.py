"""The argument checks every kernel wrapper runs before it allocates and launches (kernels never check).

The RoI checks are shared by every RoI op (roi_align, roi_pool, and any op that takes (K, 5) RoIs
and returns (K, C, PH, PW)): ``check_roi_forward_args`` and ``check_roi_backward_args`` are what a
forward and a backward wrapper call; the smaller checks they are made of are here too.
All work on NumPy and CuPy arrays.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import get_array_module

FLOAT_DTYPES = ("float32", "float64")
_FLOAT_DTYPES = frozenset(np.dtype(name) for name in FLOAT_DTYPES)  # CuPy arrays have NumPy dtypes


def check_float(a, name: str) -> None:
    """Raise TypeError unless ``a`` is a float32 or float64 array (``name`` is the argument's name)."""
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")


# ------------------------------------------------------------------------------------- RoI ops
def check_roi_forward_args(input, rois, pooled_height, pooled_width, op: str) -> tuple[int, int]:
    """The checks of a RoI op's forward: ``check_roi_inputs`` and ``check_pooled_size``.

    Args:
        input: (N, C, H, W) float32/float64 feature map.
        rois: (K, 5) input's dtype, [batch_idx, x1, y1, x2, y2].
        pooled_height, pooled_width: PH, PW, the output bins per RoI.
        op: the op's name, for the error messages.

    Returns:
        ``(PH, PW)`` as ints.

    Raises:
        ValueError, TypeError: as ``check_roi_inputs`` and ``check_pooled_size``.
    """
    check_roi_inputs(input, rois, op)
    return check_pooled_size(pooled_height, pooled_width, op)


def check_roi_backward_args(dout, rois, input_shape, pooled_height, pooled_width, op: str) -> tuple:
    """The checks of a RoI op's backward: ``check_rois``, ``check_pooled_size`` and ``check_dout_shape``.

    Args:
        dout: (K, C, PH, PW) float32/float64, the gradient of the output.
        rois: (K, 5) dout's dtype, as given to the forward.
        input_shape: (N, C, H, W) of the forward's input.
        pooled_height, pooled_width: PH, PW, as given to the forward.
        op: the op's name, for the error messages.

    Returns:
        ``(N, C, H, W, PH, PW)`` as ints.

    Raises:
        ValueError, TypeError: as the three checks.
    """
    N, C, H, W = (int(s) for s in input_shape)
    check_rois(rois, dout.dtype, N, op)
    PH, PW = check_pooled_size(pooled_height, pooled_width, op)
    check_dout_shape(dout.shape, rois.shape, input_shape, PH, PW, op)
    return N, C, H, W, PH, PW


def check_roi_inputs(input, rois, op: str = "roi_align") -> None:
    """Raise unless ``input`` is (N, C, H, W) float32/float64 and ``rois`` suits it (``check_rois``).

    Works on NumPy and CuPy arrays.

    Raises:
        ValueError: wrong shapes or a batch index outside [0, N).
        TypeError: a dtype other than float32/float64, or rois of another dtype than input.
    """
    if input.ndim != 4:
        raise ValueError(f"{op}: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    if input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"{op}: input must have H, W >= 1, got shape {tuple(input.shape)}")
    check_rois(rois, input.dtype, input.shape[0], op)


def check_rois(rois, dtype, batch_size: int, op: str = "roi_align") -> None:
    """Raise unless ``rois`` is (K, 5) of ``dtype`` (float32/float64) with batch indices in [0, N).

    The kernels index the feature map with ``int(rois[k, 0])`` unchecked, hence the range check.

    Raises:
        ValueError: wrong shape or a batch index outside [0, batch_size).
        TypeError: a dtype other than float32/float64, or rois of another dtype than ``dtype``.
    """
    if str(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{op}: input must be float32 or float64, got {dtype}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"{op}: rois must be (K, 5) [batch_idx, x1, y1, x2, y2], got shape {tuple(rois.shape)}")
    if rois.dtype != dtype:
        raise TypeError(f"{op}: rois ({rois.dtype}) must have the dtype of input ({dtype})")
    # on the GPU this check would copy to the host (a sync) at every call: there the kernels trust
    # the batch indices, as torchvision's CUDA kernels do
    if rois.shape[0] and get_array_module(rois).__name__ == "numpy":
        lowest, highest = float(rois[:, 0].min()), float(rois[:, 0].max())
        if not (lowest >= 0 and highest < batch_size):  # written so that NaN fails too
            raise ValueError(
                f"{op}: batch indices rois[:, 0] must lie in [0, {batch_size}), got [{lowest}, {highest}]"
            )


def check_pooled_size(pooled_height, pooled_width, op: str = "roi_align") -> tuple[int, int]:
    """``(PH, PW)`` as ints, both >= 1.

    Raises:
        ValueError: a size below 1.
    """
    PH, PW = int(pooled_height), int(pooled_width)
    if PH < 1 or PW < 1:
        raise ValueError(f"{op}: output size must be >= 1, got ({PH}, {PW})")
    return PH, PW


def check_dout_shape(dout_shape, rois_shape, input_shape, PH: int, PW: int, op: str = "roi_align") -> None:
    """Raise ValueError unless ``dout_shape`` is (K, C, PH, PW) for these rois and input."""
    if len(input_shape) != 4 or input_shape[2] < 1 or input_shape[3] < 1:
        raise ValueError(f"{op}: input_shape must be (N, C, H, W) with H, W >= 1, got {tuple(input_shape)}")
    expected = (int(rois_shape[0]), int(input_shape[1]), PH, PW)
    if tuple(int(s) for s in dout_shape) != expected:
        raise ValueError(f"{op}: dout has shape {tuple(dout_shape)}, expected (K, C, PH, PW) = {expected}")


def check_argmax_shape(argmax, dout_shape, op: str) -> None:
    """Raise ValueError unless ``argmax`` (a max-pooling forward's winners) has dout's shape (K, C, PH, PW)."""
    if tuple(argmax.shape) != tuple(dout_shape):
        raise ValueError(f"{op}: argmax has shape {tuple(argmax.shape)}, expected dout's (K, C, PH, PW) = "
                         f"{tuple(dout_shape)}")
