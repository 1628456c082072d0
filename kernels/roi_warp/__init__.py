"""RoIWarp: RoIPool's rounded box, then RoIAlign's bilinear samples (MNC, Dai et al. 2016; Mask R-CNN sec. 3).

Mask R-CNN (Table 2c) compares RoIAlign with RoIWarp, which "overlooked the alignment issue": it
quantises the RoI as RoIPool does and only then samples bilinearly. Every backend computes, for RoI
k = [b, x1, y1, x2, y2] (input-image pixels) and bin (ph, pw):

    q_x1 = round(x1 * spatial_scale), ...      (C's round, halves away from zero, in rois' dtype:
                                                RoIPool's rounding of the corners onto the feature grid)
    out[k, c, ph, pw] = roi_align(input, [b, q_x1, q_y1, q_x2, q_y2], spatial_scale=1,
                                  sampling_ratio, aligned=False)[c, ph, pw]

with average ("avg", ``roi_warp_forward``) or max ("max", ``roi_warp_max_forward``) over the bin's
samples. So a box already on the feature grid gives exactly RoIAlign's numbers, and any other box is
pooled from the grid-aligned box nearest to it: up to half a stride away on each side.

``reference.py``, ``cpu.py`` and ``cuda.py`` each round the corners (``quantize_rois``, array code
that runs on NumPy and CuPy) and run their own backend's RoIAlign kernels on the rounded RoIs; the
backward is RoIAlign's on the same RoIs (no gradient for the boxes). Lesson 17 (the ablations).
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module


def quantize_rois(rois, spatial_scale: float):
    """RoIPool's rounding of each RoI's corners onto the feature grid, in feature-map pixels. No gradient.

    Args:
        rois: (K, 5) float32/float64 [batch_idx, x1, y1, x2, y2] in input-image pixels (NumPy or CuPy).
        spatial_scale: feature-map pixels per input-image pixel (1/32 for stride 32).

    Returns:
        (K, 5) rois' dtype and array module: [batch_idx, round(x1 * s), round(y1 * s), round(x2 * s),
        round(y2 * s)], rounding halves away from zero (C's ``round``, as torchvision's RoIPool), the
        product computed in rois' dtype.
    """
    xp = get_array_module(rois)
    scaled = rois[:, 1:] * rois.dtype.type(spatial_scale)
    magnitude = xp.abs(scaled)
    whole = xp.floor(magnitude)
    whole = whole + (magnitude - whole >= 0.5)  # exact: a - floor(a) loses no bits (floor(a + 0.5) can)
    out = rois.copy()
    out[:, 1:] = xp.where(scaled < 0, -whole, whole)
    return out
