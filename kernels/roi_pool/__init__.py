"""RoIPool: the maximum of each bin of a box, on integer pixels (Fast R-CNN, Girshick 2015, sec. 2.1).

For RoI k = [b, x1, y1, x2, y2] every backend computes what torchvision.ops.roi_pool computes:

    roi_start_w = round(x1 * spatial_scale)    (C's round: halves away from zero; same for h and ends)
    roi_width   = max(roi_end_w - roi_start_w + 1, 1)       (inclusive pixel count)
    bin_size_w  = roi_width / PW                            (in the input's dtype)
    wstart = floor(pw * bin_size_w) + roi_start_w,  wend = ceil((pw + 1) * bin_size_w) + roi_start_w,
             both clipped to [0, W]                          (same for h)
    out[k, c, ph, pw]    = max of input[b, c, hstart:hend, wstart:wend], 0 for an empty bin
    argmax[k, c, ph, pw] = h * W + w of the first (row-major) maximum, -1 for an empty bin

The backward sends dout[k, c, ph, pw] to input[b, c] at the saved argmax (nothing for -1). RoIAlign
(kernels/roi_align) replaced it in Mask R-CNN because the rounding misaligns the bins.
``reference.py`` is NumPy (the spec), ``cpu.py`` Numba, ``cuda.py`` Numba-CUDA; the scalar helpers
they share (``round_half_away``, ``pool_geometry``, ``bin_range``) are written once in ``_scalar.py``,
the argument checks in ``kernels/_checks.py``. Lesson: RoIAlign.
"""
from __future__ import annotations

# the initial maximum of a non-empty bin: C's -FLT_MAX, as torchvision (for float64 too)
LOWEST = -3.4028234663852886e38
# the argmax of an empty bin: nothing to send the gradient to
EMPTY_BIN = -1
