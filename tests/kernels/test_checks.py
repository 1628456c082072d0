"""kernels/_checks.py: the argument checks every kernel wrapper (and every RoI op) runs."""
import numpy as np
import pytest
from minimaskrcnn.kernels._checks import check_float, check_roi_backward_args, check_roi_forward_args


def test_check_float():
    check_float(np.zeros(2, np.float32), "x")
    check_float(np.zeros(2, np.float64), "x")
    for dtype in (np.float16, np.int64, np.complex64):
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            check_float(np.zeros(2, dtype), "x")


def test_roi_checks_return_the_sizes_and_name_the_op():
    x = np.zeros((2, 3, 5, 6), np.float32)
    rois = np.array([[1, 0, 0, 2, 2]], np.float32)
    assert check_roi_forward_args(x, rois, 7.0, 4, "roi_warp") == (7, 4)
    dout = np.zeros((1, 3, 7, 4), np.float32)
    assert check_roi_backward_args(dout, rois, x.shape, 7, 4, "roi_warp") == (2, 3, 5, 6, 7, 4)
    with pytest.raises(ValueError, match="roi_warp: dout has shape"):
        check_roi_backward_args(dout, rois, x.shape, 7, 5, "roi_warp")
    with pytest.raises(ValueError, match="roi_warp: output size must be >= 1"):
        check_roi_forward_args(x, rois, 0, 4, "roi_warp")
    with pytest.raises(ValueError, match=r"roi_warp: batch indices rois\[:, 0\] must lie in \[0, 2\)"):
        check_roi_forward_args(x, rois + np.float32([1, 0, 0, 0, 0]), 7, 4, "roi_warp")
    with pytest.raises(TypeError, match="roi_warp: rois"):
        check_roi_backward_args(dout, rois.astype(np.float64), x.shape, 7, 4, "roi_warp")
    with pytest.raises(ValueError, match=r"roi_warp: input must be \(N, C, H, W\)"):
        check_roi_forward_args(x[0], rois, 7, 4, "roi_warp")
