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

RoIAlign "max" (``roi_align_max_forward``, the paper's Table 2c) keeps the largest of the same
samples instead of their mean, and ``argmax[k, c, ph, pw] = iy * grid_w + ix`` of the first largest
one (-1 for a bin without samples, whose output is 0); its backward sends dout to that sample's 4
pixels with their bilinear weights.

``reference.py`` is NumPy (the spec), ``cpu.py`` Numba (parallel over RoIs, over channels in the
backward), ``cuda.py`` Numba-CUDA (one thread per output element); the scalar helpers they share
(``roi_geometry``, ``sample_coord``, ``interp_1d``) are written once in ``_scalar.py``, the argument
checks in ``kernels/_checks.py``. Lesson: RoIAlign.
"""
from __future__ import annotations

