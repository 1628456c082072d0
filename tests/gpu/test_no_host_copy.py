"""No silent copy from the GPU to the host inside a training step or an inference.

In CI the "device" arrays are ``fake_cupy.DeviceArray``s (see fake_cupy.py): every copy to the host
(``.get()``/``backend.to_numpy``, ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``)
is recorded with the library line that made it, ``np.asarray`` on a device array raises in library
code, and a host array meeting a device array raises, as CuPy does. The tiny Mask R-CNN of
conftest.py takes one SGD step and runs inference on such arrays; the copies it makes must all be
in ``DOCUMENTED_SYNCS`` (docs/GPU.md explains each). The last tests check that the recorder does
catch the regressions it is there for.
"""
import numpy as np
import pytest
from fake_cupy import HostDeviceMixError, simulated

import minimaskrcnn
from minimaskrcnn import Tensor
from minimaskrcnn.nn import functional as F

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not simulated(), reason="the copy recorder needs the simulator's fake CuPy arrays; "
                                              "on a GPU CuPy itself raises on implicit conversions"),
]

# "file:function" -> why the copy cannot be avoided; nothing else may copy to the host in a step
DOCUMENTED_SYNCS = {
    "kernels/nms/cuda.py:nms": (
        "the kernel's suppression bitmask ((N, ceil(N/64)) uint64) goes to the host for the greedy, "
        "sequential reduce, as in torchvision's CUDA NMS"
    ),
}


def describe(transfers) -> str:
    return "\n".join(f"  {t.kind:6s} {t.nbytes:8d} bytes at {t.site}" for t in transfers)


def test_training_step_makes_no_undocumented_copy(cuda_run):
    """model(images, targets) + backward + SGD step: only NMS's bitmask comes to the host."""
    transfers = cuda_run.train_transfers
    undocumented = [t for t in transfers if t.where not in DOCUMENTED_SYNCS]
    assert not undocumented, "copies to the host inside a training step:\n" + describe(undocumented)
    # the recorder was on: the RPN's NMS ran once for the one image
    assert [t.where for t in transfers] == ["kernels/nms/cuda.py:nms"]
    assert all(t.kind == "get" for t in transfers)


def test_inference_makes_no_undocumented_copy(cuda_run):
    """model(images) in eval mode: NMS of the proposals and of the detections, nothing else; the
    detections themselves stay on the device (see test_cuda_backend)."""
    transfers = cuda_run.eval_transfers
    undocumented = [t for t in transfers if t.where not in DOCUMENTED_SYNCS]
    assert not undocumented, "copies to the host during inference:\n" + describe(undocumented)
    assert len(transfers) >= 2  # proposals' NMS, then the detections' per-class NMS
    # each bitmask is (N, ceil(N / 64)) uint64, N <= 5 levels x 50 pre-NMS proposals: small
    assert all(t.nbytes <= 250 * 4 * 8 for t in transfers)


# ------------------------------------------------------------- the recorder has teeth
def test_explicit_copies_in_library_code_are_recorded(device):
    """A library function that syncs (clip_grad_norm_ reads each gradient's norm with float()) is
    seen, with its file and function."""
    from minimaskrcnn.optim import clip_grad_norm_

    params = [Tensor(device.to_device(np.ones((2, 3), np.float32)), requires_grad=True) for _ in range(2)]
    for p in params:
        p.grad = device.to_device(np.full((2, 3), 2.0, np.float32))
    device.transfers.clear()
    total = clip_grad_norm_(params, max_norm=1.0)
    assert total == pytest.approx(np.sqrt(12 * 4.0))
    sites = {t.where for t in device.transfers}
    assert sites == {"minimaskrcnn/optim.py:clip_grad_norm_"}
    assert len(device.transfers) == 2  # one per gradient


def test_implicit_conversion_in_library_code_raises(device):
    """np.ascontiguousarray on a device array inside the library raises, as CuPy's __array__ does:
    here the host-only mask resize of the input transform (which runs before the batch moves to the
    device) given device masks, the regression of moving targets to the GPU too early."""
    from minimaskrcnn.models.transform import resize_nearest

    masks = device.to_device(np.ones((2, 8, 8), np.float32))
    with pytest.raises(HostDeviceMixError, match=r"np\.ascontiguousarray on a device array .*transform\.py"):
        resize_nearest(masks, (16, 16))
    assert resize_nearest(np.ones((2, 8, 8), np.float32), (16, 16)).shape == (2, 16, 16)  # host arrays: fine


def test_host_array_meeting_a_device_array_raises(device):
    """A target left on the host (the regression of forgetting to move mask targets) fails in the loss,
    as it would on CuPy."""
    logits = Tensor(device.to_device(np.zeros((2, 4, 4), np.float32)), requires_grad=True)
    host_targets = np.ones((2, 4, 4), np.float32)
    with pytest.raises(HostDeviceMixError, match="host NumPy array"):
        F.binary_cross_entropy_with_logits(logits, host_targets)
    loss = F.binary_cross_entropy_with_logits(logits, device.to_device(host_targets))
    assert device.is_device_array(loss.data) and device.transfers == []


def test_proposal_selection_stays_on_the_device(device):
    """The RPN's proposal selection (top-n, clipping, NMS per level) on device arrays copies only
    NMS's bitmask; with a stray ``to_numpy`` in it (a regression) the copy is reported."""
    from minimaskrcnn.models import rpn as rpn_module
    from minimaskrcnn.models.anchors import AnchorGenerator

    rng = np.random.default_rng(0)
    head = rpn_module.RPNHead(4, 3)
    rpn = rpn_module.RegionProposalNetwork(AnchorGenerator(((8,), (16,)), ((0.5, 1.0, 2.0),) * 2), head,
                                           0.7, 0.3, 16, 0.5, dict(training=20, testing=20),
                                           dict(training=10, testing=10), 0.7)
    num_anchors_per_level = [3 * 4 * 4, 3 * 2 * 2]
    boxes = rng.uniform(0, 24, (1, 60, 2))
    proposals = device.to_device(np.concatenate([boxes, boxes + rng.uniform(2, 8, (1, 60, 2))], axis=2)
                                 .astype(np.float32))
    objectness = device.to_device(rng.standard_normal((1, 60)).astype(np.float32))

    device.transfers.clear()
    kept, scores = rpn.filter_proposals(proposals, objectness, [(32, 32)], num_anchors_per_level)
    assert device.is_device_array(kept[0]) and 0 < len(kept[0]) <= 10
    assert {t.where for t in device.transfers} == {"kernels/nms/cuda.py:nms"}

    original = rpn_module.clip_boxes_to_image

    def regressed_clip(boxes, size):  # as if someone had written to_numpy(...) in the RPN
        return device.xp.asarray(minimaskrcnn.backend.to_numpy(original(boxes, size)))

    rpn_module.clip_boxes_to_image = regressed_clip
    try:
        device.transfers.clear()
        rpn.filter_proposals(proposals, objectness, [(32, 32)], num_anchors_per_level)
    finally:
        rpn_module.clip_boxes_to_image = original
    # reported at the library function that called the regressed code
    sites = sorted(t.where for t in device.transfers)
    assert sites == ["kernels/nms/cuda.py:nms", "minimaskrcnn/models/rpn.py:filter_proposals"]
