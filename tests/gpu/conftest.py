"""Fixtures of the GPU-path tests: device arrays (CuPy on a GPU, ``fake_cupy`` in the simulator) and
one tiny Mask R-CNN run once per session under the "numpy" and the "cuda" backends.

Without a GPU, Numba's CUDA simulator runs the kernels (tests/conftest.py sets it up) and
``fake_cupy`` stands in for CuPy, so that host and device arrays are told apart and every copy to
the host is recorded. The simulator runs one Python thread per CUDA thread, so the model is as
small as it gets: one 32x32 image (the batch is padded to a multiple of 32 anyway), a ResNet-18 of
width 1/16, 8 FPN channels, 4x4 mask RoIs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_cupy  # noqa: E402
from fake_cupy import simulated  # noqa: E402

import minimaskrcnn  # noqa: E402
from minimaskrcnn import optim  # noqa: E402
from minimaskrcnn.backend import to_numpy  # noqa: E402


@dataclass
class Device:
    """Where the "cuda" backend's arrays live in this run.

    Attributes:
        xp: ``cupy`` on a GPU, ``fake_cupy.FakeCuPy`` in the simulator.
        to_device: host array -> device array (a copy).
        transfers: the fake's record of device-to-host copies (None on a GPU, where CuPy itself
            raises on implicit conversions but cannot count explicit ones).
    """

    xp: Any
    to_device: Callable
    transfers: list | None = field(default=None)

    def is_device_array(self, a) -> bool:
        return type(a).__module__.startswith("cupy")


@contextlib.contextmanager
def device_context():
    """Device arrays for the duration of the block (see ``Device``)."""
    if not simulated():
        import cupy

        yield Device(cupy, cupy.asarray)
        return
    with pytest.MonkeyPatch.context() as mp:
        fake = fake_cupy.install(mp)
        yield Device(fake, fake_cupy.to_device, fake.transfers)


@pytest.fixture
def device():
    """Device arrays and the "cuda" backend for one test."""
    with device_context() as dev, minimaskrcnn.use_backend("cuda"):
        yield dev


# ------------------------------------------------------------------------------ a tiny model
def tiny_config():
    """The smallest Mask R-CNN that still has every stage (for the CUDA simulator)."""
    from minimaskrcnn.models.configs import get_config

    c = get_config("r18-shapes")  # ResNet-18 with GroupNorm, 5 FPN levels, 4 classes
    return dataclasses.replace(
        c,
        # layers 2-4 train: the backward reaches the backbone without the 7x7 stem's col2im
        backbone=dataclasses.replace(c.backbone, width_multiplier=1 / 16, fpn_channels=8, gn_groups=2,
                                     trainable_layers=3),
        transform=dataclasses.replace(c.transform, min_size=32, max_size=32),
        rpn=dataclasses.replace(c.rpn, pre_nms_top_n_train=50, post_nms_top_n_train=20, pre_nms_top_n_test=50,
                                post_nms_top_n_test=10, batch_size_per_image=32),
        box=dataclasses.replace(c.box, representation_size=16, batch_size_per_image=8, detections_per_img=4,
                                score_thresh=0.0),
        mask=dataclasses.replace(c.mask, roi_output_size=4, layers=(8,), dim_reduced=8),
        seed=0,
    )


def tiny_batch():
    """One 32x32 image with two overlapping objects (host NumPy arrays, as the data loader gives)."""
    rng = np.random.default_rng(0)
    image = rng.random((3, 32, 32)).astype(np.float32)
    boxes = np.array([[4, 5, 20, 22], [12, 10, 30, 28]], dtype=np.float32)
    masks = np.zeros((2, 32, 32), dtype=np.uint8)
    masks[0, 6:20, 5:18] = 1
    masks[1, 11:27, 13:29] = 1
    return [image], [{"boxes": boxes, "labels": np.array([1, 2], dtype=np.int64), "masks": masks}]


@dataclass
class ModelRun:
    """What one backend gave for a training step and an inference on the tiny batch (host copies).

    Attributes:
        losses: name -> float, the five losses.
        grads: parameter name -> gradient (before the optimizer step).
        params: parameter name -> value after the step.
        detections: eval output of the updated model, key -> array.
        on_device: description -> bool, whether that array was a device array.
        train_transfers, eval_transfers: device-to-host copies made inside ``model(images, targets)``
            + backward + ``optimizer.step()``, and inside ``model(images)`` (fake CuPy only, else None).
    """

    losses: dict
    grads: dict
    params: dict
    detections: dict
    on_device: dict = field(default_factory=dict)
    train_transfers: list | None = None
    eval_transfers: list | None = None


def run_tiny_model(backend: str, dev: Device | None = None) -> ModelRun:
    """Build the tiny model, take one SGD step and run inference, under ``backend``."""
    from minimaskrcnn.models import build_model
    from minimaskrcnn.nn import init

    images, targets = tiny_batch()
    with minimaskrcnn.use_backend(backend):
        init.manual_seed(0)
        model = build_model(tiny_config())
        if dev is not None:
            model.to_device("cuda")
        params = dict(model.named_parameters())
        optimizer = optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
        model.train()

        # 1. one training step: the part that must not copy to the host
        transfers = dev.transfers if dev is not None else None
        if transfers is not None:
            transfers.clear()
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        grads = {name: p.grad for name, p in params.items() if p.grad is not None}
        optimizer.step()
        train_transfers = list(transfers) if transfers is not None else None

        # 2. inference with the updated weights
        model.eval()
        if transfers is not None:
            transfers.clear()
        detections = model(images)[0]
        eval_transfers = list(transfers) if transfers is not None else None

        # 3. host copies of everything, outside the measured parts
        on_device = {}
        if dev is not None:
            on_device.update({f"loss {k}": dev.is_device_array(v.data) for k, v in losses.items()})
            on_device.update({f"grad {k}": dev.is_device_array(g) for k, g in grads.items()})
            on_device.update({f"param {k}": dev.is_device_array(p.data) for k, p in params.items()})
            on_device.update({f"detection {k}": dev.is_device_array(v) for k, v in detections.items()})
        return ModelRun(
            losses={k: float(to_numpy(v.data)) for k, v in losses.items()},
            grads={k: to_numpy(g).copy() for k, g in grads.items()},
            params={k: to_numpy(p.data).copy() for k, p in params.items()},
            detections={k: to_numpy(v).copy() for k, v in detections.items()},
            on_device=on_device,
            train_transfers=train_transfers,
            eval_transfers=eval_transfers,
        )


@pytest.fixture(scope="session")
def numpy_run() -> ModelRun:
    return run_tiny_model("numpy")


@pytest.fixture(scope="session")
def cuda_run() -> ModelRun:
    """The tiny model under the "cuda" backend on device arrays (about 40 s in the simulator)."""
    with device_context() as dev:
        return run_tiny_model("cuda", dev)
