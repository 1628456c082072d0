"""Test set-up: run CUDA kernels through Numba's simulator when no GPU is present.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, hence here.
"""
import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

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
