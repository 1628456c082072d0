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
# `minimaskrcnn train` run by a test stays one process unless the test asks for more (--processes):
# its default, one process per core (local_parallel.default_processes), is tested where it matters.
os.environ.setdefault("MINIMASKRCNN_PROCESSES", "1")

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


def _perturbed(state, seed):
    """Every float tensor changed by a seeded amount, so that no weight equals a fresh initialisation."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue  # torchvision's COCO file has frozen batch norms, which keep no such counter
        if v.is_floating_point():
            if k.endswith("running_var"):
                v = torch.rand(v.shape, generator=g) + 0.5
            elif k.endswith("bn3.weight"):  # each bottleneck's last norm small (as zero_init_residual), so
                v = 0.1 * torch.rand(v.shape, generator=g)  # that 16 blocks of frozen norms do not overflow
            else:
                v = v * (1 + 0.1 * torch.randn(v.shape, generator=g)) + 0.01 * torch.randn(v.shape, generator=g)
        out[k] = v.contiguous()
    return out


@pytest.fixture(scope="session")
def torchvision_maskrcnn_file(tmp_path_factory):
    """A stand-in for torchvision's COCO_V1 file (which cannot be downloaded here): a
    maskrcnn_resnet50_fpn state_dict with 91 classes and random weights, saved with torch.save."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path_factory.mktemp("torchvision") / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(_perturbed(model.state_dict(), 1), path)
    return path


@pytest.fixture(scope="session")
def torchvision_resnet50_file(tmp_path_factory):
    """A stand-in for torchvision's ImageNet ResNet-50 file: resnet50's state_dict, random weights."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("torchvision") / "resnet50.pth"
    torch.save({k: v for k, v in _perturbed(state, 2).items()} | {
        k: v for k, v in state.items() if k.endswith("num_batches_tracked")}, path)
    return path
