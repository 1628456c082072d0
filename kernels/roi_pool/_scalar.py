"""RoIPool's scalar helpers, written once in plain Python for every backend.

``reference.py`` calls them as they are, ``cpu.py`` compiles them with ``numba.njit`` and
``cuda.py`` with ``numba.cuda.jit(device=True)`` (``kernels/_compile.py``), so the three backends
round and cut every RoI into bins with the same expressions. See ``minimaskrcnn.kernels.roi_pool``.
"""
from __future__ import annotations

import math


def round_half_away(v) -> int:
    """C's ``round``: the nearest integer, halves away from zero (np.round sends halves to even)."""
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:  # exact: a - floor(a) loses no bits
        r += 1
    return int(r) if v >= 0 else -int(r)


def pool_geometry(rois, k: int, spatial_scale: float, pooled_height: int, pooled_width: int) -> tuple:
    """Where RoI k lies on the feature map, in whole pixels.

    Args:
        rois: (K, 5) float32/float64, [batch_idx, x1, y1, x2, y2] in input-image pixels.
        k: which RoI.
        spatial_scale, pooled_height, pooled_width: as ``roi_pool_forward``.

    Returns:
        ``(b, roi_start_h, roi_start_w, bin_size_h, bin_size_w)``: the image index, the rounded
        top-left pixel (ints) and the bin size in pixels (rois' dtype).
    """
    T = rois.dtype.type
    scale = T(spatial_scale)
    b = int(rois[k, 0])
    roi_start_w = round_half_away(rois[k, 1] * scale)
    roi_start_h = round_half_away(rois[k, 2] * scale)
    roi_end_w = round_half_away(rois[k, 3] * scale)
    roi_end_h = round_half_away(rois[k, 4] * scale)
    roi_width = max(roi_end_w - roi_start_w + 1, 1)  # pixels x1..x2 inclusive; malformed RoIs are 1x1
    roi_height = max(roi_end_h - roi_start_h + 1, 1)
    bin_size_h = T(roi_height) / T(pooled_height)
    bin_size_w = T(roi_width) / T(pooled_width)
    return b, roi_start_h, roi_start_w, bin_size_h, bin_size_w


def bin_range(p: int, bin_size, roi_start: int, size: int, T) -> tuple[int, int]:
    """Pixels [start, end) of bin p along one axis: floor/ceil of the bin's edges, clipped to [0, size].

    T is the scalar type (np.float32 or np.float64) of the arithmetic. Neighbouring bins can share
    a pixel; a bin wholly outside the map is empty (end <= start).
    """
    start = int(math.floor(T(p) * bin_size)) + roi_start
    end = int(math.ceil(T(p + 1) * bin_size)) + roi_start
    return min(max(start, 0), size), min(max(end, 0), size)
