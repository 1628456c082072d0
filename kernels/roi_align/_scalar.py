"""RoIAlign's scalar helpers, written once in plain Python for every backend.

``reference.py`` calls them as they are, ``cpu.py`` compiles them with ``numba.njit`` and
``cuda.py`` with ``numba.cuda.jit(device=True)`` (``kernels/_compile.py``), so the three backends
compute every coordinate and weight with the same expressions, in the same order and dtype.
See ``minimaskrcnn.kernels.roi_align`` for the equations.
"""
from __future__ import annotations

import math


def roi_geometry(
    rois, k: int, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
) -> tuple:
    """Where RoI k lies on the feature map and how densely its bins are sampled.

    Args:
        rois: (K, 5) float32/float64, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        k: which RoI.
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned: as ``roi_align_forward``.

    Returns:
        ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count)``: the image
        index, the top-left corner and bin size in feature-map pixels (rois' dtype), the samples per
        bin along each axis and their number ``max(grid_h * grid_w, 1)`` (rois' dtype).
    """
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    offset = T(0.5) if aligned else T(0.0)  # aligned: sample at pixel centres (Detectron2)
    roi_start_w = rois[k, 1] * scale - offset
    roi_start_h = rois[k, 2] * scale - offset
    roi_end_w = rois[k, 3] * scale - offset
    roi_end_h = rois[k, 4] * scale - offset
    roi_width = roi_end_w - roi_start_w
    roi_height = roi_end_h - roi_start_h
    if not aligned:  # legacy: force malformed (smaller than one pixel) RoIs to 1x1
        roi_width = max(roi_width, T(1.0))
        roi_height = max(roi_height, T(1.0))
    bin_size_h = roi_height / T(pooled_height)
    bin_size_w = roi_width / T(pooled_width)
    # sampling_ratio <= 0: about one sample per feature-map pixel of the bin
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_height / T(pooled_height)))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_width / T(pooled_width)))
    count = T(max(grid_h * grid_w, 1))  # an empty grid (zero-size aligned RoI) gives 0, not 0/0
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w, count


def sample_coord(roi_start, p: int, bin_size, i: int, grid: int, T):
    """Coordinate of sample i (of ``grid``) in bin p along one axis: evenly spaced, half a step in.

    T is the scalar type (np.float32 or np.float64) all the arithmetic is done in.
    """
    return roi_start + T(p) * bin_size + T(i + 0.5) * bin_size / T(grid)


def interp_1d(coord, size: int, T) -> tuple:
    """Linear interpolation along one axis of length ``size``, with RoIAlign's border rule.

    Args:
        coord: the sample coordinate, in feature-map pixels.
        size: H for y, W for x.
        T: the scalar type (np.float32 or np.float64) all the arithmetic is done in.

    Returns:
        ``(inside, low, high, l, h)``: whether coord lies in [-1, size] (outside, the sample
        counts as 0), the two pixels read and their weights: pixel ``low`` gets ``h = 1 - l`` and
        pixel ``high`` gets ``l``. Bilinear weights are products: w1 = hy*hx, w2 = hy*lx, w3 = ly*hx,
        w4 = ly*lx for (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high).
    """
    if not (coord >= -1.0 and coord <= size):  # NaN lands here too
        return False, 0, 0, T(0.0), T(0.0)
    if coord <= 0:  # in [-1, 0]: read pixel 0
        coord = T(0.0)
    low = int(coord)
    if low >= size - 1:  # at or past the last pixel: read it
        low = size - 1
        high = size - 1
        coord = T(low)
    else:
        high = low + 1
    l = coord - T(low)  # noqa: E741 (torchvision's ly/lx along one axis)
    h = T(1.0) - l
    return True, low, high, l, h
