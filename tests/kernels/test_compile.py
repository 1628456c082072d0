"""kernels/_compile.py and the plain-Python scalar helpers (_scalar.py) it compiles: a compiled helper
calls the compiled versions of the others, and each compiled helper gives the plain one's numbers."""
import itertools

import numba
import numpy as np
import pytest
from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels.im2col._scalar import tap_output
from minimaskrcnn.kernels.paste_masks import cpu as paste_cpu
from minimaskrcnn.kernels.paste_masks import reference as paste_ref
from minimaskrcnn.kernels.paste_masks._scalar import source_index
from minimaskrcnn.kernels.roi_align import _scalar as align_scalar
from minimaskrcnn.kernels.roi_align import cpu as align_cpu
from minimaskrcnn.kernels.roi_pool import _scalar as pool_scalar
from minimaskrcnn.kernels.roi_pool import cpu as pool_cpu


def _double(v):
    return 2 * v


def _quadruple(v):
    return _double(_double(v))  # a helper calling a helper, as pool_geometry calls round_half_away


def test_compile_helpers_binds_the_calls_between_helpers():
    double, quadruple = compile_helpers(numba.njit, _double, _quadruple)
    assert quadruple(3) == 12 and double(5) == 10
    assert isinstance(quadruple, numba.core.registry.CPUDispatcher)
    # decorated alone, the inner call would reach the plain Python function, which Numba cannot type
    with pytest.raises(numba.core.errors.TypingError):
        numba.njit(_quadruple)(3)
    assert _quadruple.__globals__["_double"] is _double  # the plain helpers stay plain (reference.py)


def test_compile_helpers_refuses_helpers_of_two_modules():
    with pytest.raises(ValueError, match="not in"):
        compile_helpers(numba.njit, _double, pool_scalar.bin_range)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_roi_helpers_equal_the_plain_ones(dtype):
    rng = np.random.default_rng(3)
    boxes = rng.uniform(-20, 60, (40, 4))
    boxes[::5, 2:] = boxes[::5, :2]  # zero-size RoIs
    rois = np.concatenate([np.zeros((40, 1)), boxes], axis=1).astype(dtype)
    for k, (sampling_ratio, aligned) in itertools.product(range(len(rois)), [(0, False), (2, True), (-1, True)]):
        args = (rois, k, 0.25, 3, 2, sampling_ratio, aligned)
        assert align_cpu.roi_geometry(*args) == align_scalar.roi_geometry(*args)
        assert pool_cpu.pool_geometry(*args[:5]) == pool_scalar.pool_geometry(*args[:5])
    T = dtype
    for coord in [-1.5, -1.0, -0.2, 0.0, 0.7, 3.2, 4.0, 4.5, np.nan]:
        assert align_cpu.interp_1d(T(coord), 4, T) == align_scalar.interp_1d(T(coord), 4, T)
    for p, i, grid in itertools.product(range(3), range(3), [1, 3]):
        assert align_cpu.sample_coord(T(-0.5), p, T(1.75), i, grid, T) == align_scalar.sample_coord(
            T(-0.5), p, T(1.75), i, grid, T
        )


def test_source_index_equals_the_references_resize_rule():
    for size, out in itertools.product([1, 2, 5, 28], [1, 3, 7, 28, 61]):
        i0, i1, l1 = paste_ref._source_index(size, out)  # the whole axis at once, in NumPy
        for d in range(out):
            expected = (int(i0[d]), int(i1[d]), float(l1[d]))
            assert source_index(d, size, out) == expected
            assert paste_cpu.source_index(d, size, out) == expected


def test_tap_output_inverts_the_window_rule():
    # tap k of output o reads pixel o*S - pad + k*D: tap_output finds that o, or -1 when no output's tap k reads i
    for S, pad, D, out_size, k, i in itertools.product([1, 2, 3], [0, 1, 2], [1, 2], [1, 4], range(3), range(-2, 9)):
        readers = [o for o in range(out_size) if o * S - pad + k * D == i]
        assert tap_output(i, k, S, pad, D, out_size) == (readers[0] if readers else -1)
