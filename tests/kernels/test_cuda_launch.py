"""kernels/_cuda.py: the launch shape every cuda.py uses, and the thread -> element mapping."""
import numpy as np
import pytest
from minimaskrcnn.kernels._cuda import THREADS_PER_BLOCK, launch, launch_shape, unravel_4d
from numba import cuda


def test_launch_shape():
    assert THREADS_PER_BLOCK == 256
    assert launch_shape(1) == (1, 1)  # a small launch: one block of just the threads needed
    assert launch_shape(10) == (1, 10)
    assert launch_shape(256) == (1, 256)
    assert launch_shape(257) == (2, 256)  # the last block has 255 spare threads
    assert launch_shape(512 * 256 * 7 * 7) == (25088, 256)  # lesson 15, exercise 2


class RecordingKernel:
    """Stands in for a CUDA kernel: records ``kernel[blocks, threads](*args)``."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, shape):
        return lambda *args: self.calls.append((shape, args))


def test_launch_runs_the_kernel_with_its_shape_and_nothing_for_no_threads():
    kernel = RecordingKernel()
    launch(kernel, 0, "a")
    assert kernel.calls == []
    launch(kernel, 300, "a", 2)
    assert kernel.calls == [((2, 256), ("a", 2))]


@cuda.jit
def _unravel_kernel(out, B, C, D):
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = unravel_4d(i, B, C, D)


@pytest.mark.cuda
def test_unravel_4d_is_c_order():
    shape = (2, 3, 2, 4)
    out = np.full((int(np.prod(shape)), 4), -1, np.int64)
    launch(_unravel_kernel, out.shape[0], out, *shape[1:])
    np.testing.assert_array_equal(out, np.stack(np.unravel_index(np.arange(out.shape[0]), shape), axis=1))
