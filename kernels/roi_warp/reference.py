"""RoIWarp, NumPy (the spec): RoIPool's rounding of the corners, then this backend's RoIAlign kernels.

See ``minimaskrcnn.kernels.roi_warp`` for the equations and the four functions' arguments
(``backend_functions``); outputs are allocated by the RoIAlign kernels they call.
"""
from __future__ import annotations

from minimaskrcnn.kernels.roi_align import reference as roi_align_backend
from minimaskrcnn.kernels.roi_warp import backend_functions

roi_warp_forward, roi_warp_backward, roi_warp_max_forward, roi_warp_max_backward = backend_functions(
    roi_align_backend)
