"""Test set-up: run CUDA kernels through Numba's simulator when no GPU is present.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, hence here.
"""
import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# One thread per pool: the tests' arrays are small, and OpenBLAS's and Numba's thread pools
# spinning against each other on a 2-core machine made small-model steps up to 25x slower.
# (Must be set before NumPy and Numba start their pools, hence before the imports below.)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import minimaskrcnn  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=["numpy", "numba", "cuda"])
def backend(request):
    """Run a test once per backend ("cuda" uses the simulator without a GPU)."""
    with minimaskrcnn.use_backend(request.param):
        yield request.param
