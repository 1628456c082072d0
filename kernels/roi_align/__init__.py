"""RoIAlign: average of bilinearly sampled points in each bin of a box (Mask R-CNN, He et al. 2017, sec. 3).

For RoI k = [b, x1, y1, x2, y2] (input-image pixels) and output bin (ph, pw), every backend computes
exactly what torchvision.ops.roi_align computes, in the input's dtype:

    offset      = 0.5 if aligned else 0            (aligned: pixel centres sit at integer + 0.5)
    roi_start_w = x1 * spatial_scale - offset,  roi_end_w = x2 * spatial_scale - offset  (same for h)
    roi_width   = roi_end_w - roi_start_w,       if not aligned: roi_width = max(roi_width, 1)
    bin_size_w  = roi_width / PW
    grid_w      = sampling_ratio if sampling_ratio > 0 else ceil(roi_width / PW)   (same for h)
    x(pw, ix)   = roi_start_w + pw * bin_size_w + (ix + 0.5) * bin_size_w / grid_w
    out[k, c, ph, pw] = sum over (iy, ix) of bilinear(input[b, c], y(ph, iy), x(pw, ix)) / max(grid_h * grid_w, 1)

``bilinear`` is 0 for a sample outside [-1, H] x [-1, W]; otherwise y and x below 0 are clamped to 0
and a sample at or past the last row/column reads that row/column. The weights factorise:
w = (weight along y) * (weight along x), which is what ``interp_1d`` computes per axis.

``reference.py`` is NumPy (the spec), ``cpu.py`` Numba (parallel over RoIs, over channels in the
backward), ``cuda.py`` Numba-CUDA (one thread per output element). Lesson: RoIAlign.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module

FLOAT_DTYPES = ("float32", "float64")


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
