"""The "cuda" backend end to end: every op with a CUDA kernel, and the whole Mask R-CNN, on device
arrays give the numbers of the "numpy" backend (the readable reference kernels on host arrays).

Device arrays are CuPy's on a GPU and ``fake_cupy``'s in CI, where Numba's simulator runs the CUDA
kernels (see conftest.py); the outputs and gradients must stay device arrays.
"""
import numpy as np
import pytest

import minimaskrcnn
from minimaskrcnn import Tensor
from minimaskrcnn.backend import to_numpy
from minimaskrcnn.models import LOSS_NAMES
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops.boxes import batched_nms, nms
from minimaskrcnn.ops.masks import paste_masks_in_image, project_masks_on_boxes
from minimaskrcnn.ops.roi_align import roi_align
from minimaskrcnn.ops.roi_pool import roi_pool

pytestmark = pytest.mark.cuda


def run_both(fn, inputs, device, needs_grad=None, seed=0):
    """``fn(*Tensors)`` and its backward under "numpy" on host arrays and under "cuda" on device arrays.

    Args:
        fn: Tensors -> Tensor.
        inputs: host arrays; ``needs_grad[i]`` says whether input i gets a gradient (default: floats).
        device: the ``device`` fixture.

    Returns:
        ``((out, grads) numpy, (out, grads) cuda)`` as host arrays; asserts that the cuda output and
        gradients were device arrays and that no copy to the host was made.
    """
    if needs_grad is None:
        needs_grad = [np.asarray(x).dtype.kind == "f" for x in inputs]
    results = []
    for backend, move in (("numpy", lambda a: a), ("cuda", device.to_device)):
        with minimaskrcnn.use_backend(backend):
            tensors = [Tensor(move(x), requires_grad=g) for x, g in zip(inputs, needs_grad)]
            if device.transfers is not None:
                device.transfers.clear()
            out = fn(*tensors)
            dout = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
            out.backward(Tensor(move(dout)))
            if backend == "cuda":
                assert device.is_device_array(out.data)
                assert all(device.is_device_array(t.grad) for t, g in zip(tensors, needs_grad) if g)
                if device.transfers is not None:
                    assert device.transfers == [], f"copies to the host: {device.transfers}"
            results.append((out.numpy(), [to_numpy(t.grad) if g else None for t, g in zip(tensors, needs_grad)]))
    return results


def assert_same(reference, cuda, rtol=1e-5, atol=1e-6):
    (out_ref, grads_ref), (out_cuda, grads_cuda) = reference, cuda
    np.testing.assert_allclose(out_cuda, out_ref, rtol=rtol, atol=atol)
    for g_ref, g_cuda in zip(grads_ref, grads_cuda):
        if g_ref is not None:
            np.testing.assert_allclose(g_cuda, g_ref, rtol=rtol, atol=atol)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------ kernel ops
@pytest.mark.parametrize("stride,padding,dilation,groups", [(2, 1, 1, 1), (1, 2, 2, 2)])
def test_conv2d(device, stride, padding, dilation, groups):
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 1, 4, 5, 5), rand(rng, 4, 4 // groups, 3, 3), rand(rng, 4)
    assert_same(*run_both(lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups), [x, w, b], device))


def test_conv_transpose2d(device):
    rng = np.random.default_rng(2)
    x, w, b = rand(rng, 1, 3, 3, 3), rand(rng, 3, 2, 2, 2), rand(rng, 2)
    assert_same(*run_both(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2), [x, w, b], device))


def test_linear(device):
    rng = np.random.default_rng(3)
    x, w, b = rand(rng, 3, 5), rand(rng, 4, 5), rand(rng, 4)
    assert_same(*run_both(F.linear, [x, w, b], device))


def test_max_pool2d(device):
    x = np.random.default_rng(4).permutation(72).reshape(1, 2, 6, 6).astype(np.float32)  # no ties
    assert_same(*run_both(lambda x: F.max_pool2d(x, 3, 2, 1), [x], device))


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_interpolate(device, mode):
    x = rand(np.random.default_rng(5), 1, 2, 3, 4)
    assert_same(*run_both(lambda x: F.interpolate(x, size=(6, 8), mode=mode), [x], device))


ROIS = np.array([[0, 1.0, 1.5, 6.0, 7.0], [1, 0.0, 0.0, 3.2, 2.1], [1, 2.5, 3.0, 2.7, 3.1]], dtype=np.float32)


@pytest.mark.parametrize("sampling_ratio,aligned", [(-1, False), (2, True)])
def test_roi_align(device, sampling_ratio, aligned):
    x = rand(np.random.default_rng(6), 2, 2, 8, 8)
    fn = lambda x, rois: roi_align(x, rois, (2, 3), 0.5, sampling_ratio, aligned)  # noqa: E731
    assert_same(*run_both(fn, [x, ROIS], device, needs_grad=[True, False]))


def test_roi_pool(device):
    x = np.random.default_rng(7).permutation(256).reshape(2, 2, 8, 8).astype(np.float32)  # no ties
    fn = lambda x, rois: roi_pool(x, rois, (2, 2), 1.0)  # noqa: E731
    assert_same(*run_both(fn, [x, ROIS], device, needs_grad=[True, False]))


def random_boxes(rng, n, size=20.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_nms_and_batched_nms(device):
    rng = np.random.default_rng(8)
    boxes, scores = random_boxes(rng, 40), rng.random(40).astype(np.float32)
    idxs = rng.integers(0, 3, 40)
    with minimaskrcnn.use_backend("numpy"):
        expected = nms(boxes, scores, 0.5), batched_nms(boxes, scores, idxs, 0.5)
    got = nms(device.to_device(boxes), device.to_device(scores), 0.5), batched_nms(
        device.to_device(boxes), device.to_device(scores), device.to_device(idxs), 0.5)
    for e, g in zip(expected, got):
        assert device.is_device_array(g)
        np.testing.assert_array_equal(to_numpy(g), e)
        assert 0 < len(e) < 40


def test_mask_targets_and_pasting(device):
    rng = np.random.default_rng(9)
    gt_masks = (rng.random((2, 12, 10)) > 0.5).astype(np.uint8)
    boxes = random_boxes(rng, 3, size=9.0)
    matched_idxs = np.array([0, 1, 1])
    masks = rng.random((3, 1, 4, 4)).astype(np.float32)
    with minimaskrcnn.use_backend("numpy"):
        targets = project_masks_on_boxes(gt_masks, boxes, matched_idxs, 5)
        pasted = paste_masks_in_image(masks, boxes, (12, 10))
    dev_targets = project_masks_on_boxes(device.to_device(gt_masks), device.to_device(boxes),
                                         device.to_device(matched_idxs), 5)
    dev_pasted = paste_masks_in_image(device.to_device(masks), device.to_device(boxes), (12, 10))
    assert device.is_device_array(dev_targets) and device.is_device_array(dev_pasted)
    if device.transfers is not None:
        assert device.transfers == []
    np.testing.assert_allclose(to_numpy(dev_targets), targets, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dev_pasted), pasted, rtol=1e-5, atol=1e-6)
    assert pasted.max() > 0


# ------------------------------------------------------------------------- moving a module
def test_module_to_device_and_back(device):
    from minimaskrcnn import nn

    layer = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.BatchNorm2d(3))
    before = layer.state_dict()
    layer.to_device("cuda")
    tensors = list(layer.parameters()) + list(layer.buffers())
    assert tensors and all(device.is_device_array(t.data) for t in tensors)
    # state_dict gives host copies; load_state_dict copies host values into the device arrays
    after = layer.state_dict()
    assert all(isinstance(v, np.ndarray) and not device.is_device_array(v) for v in after.values())
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    changed = {k: v + 1 for k, v in before.items()}
    layer.load_state_dict(changed)
    assert all(device.is_device_array(t.data) for t in tensors)
    np.testing.assert_array_equal(to_numpy(layer[0].weight.data), changed["0.weight"])
    layer.to_device("cpu")
    assert all(type(t.data) is np.ndarray for t in tensors)


# ------------------------------------------------------------------------ the whole model
def test_training_step_matches_numpy_backend(numpy_run, cuda_run):
    """One SGD step of the tiny Mask R-CNN: same five losses, gradients and updated weights."""
    assert set(cuda_run.losses) == set(numpy_run.losses) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert np.isfinite(numpy_run.losses[name])
        assert cuda_run.losses[name] == pytest.approx(numpy_run.losses[name], rel=1e-4, abs=1e-6), name
    assert set(cuda_run.grads) == set(numpy_run.grads)
    assert len(numpy_run.grads) > 20  # backbone layers 2-4, FPN, RPN, box and mask heads
    for name, g in numpy_run.grads.items():
        scale = max(float(np.abs(g).max()), 1e-6)
        np.testing.assert_allclose(cuda_run.grads[name], g, rtol=1e-3, atol=1e-4 * scale, err_msg=name)
    for name, p in numpy_run.params.items():
        np.testing.assert_allclose(cuda_run.params[name], p, rtol=1e-5, atol=1e-6, err_msg=name)


def test_inference_matches_numpy_backend(numpy_run, cuda_run):
    """Detections of the updated model: same boxes, labels, scores and pasted masks."""
    expected, got = numpy_run.detections, cuda_run.detections
    assert set(got) == set(expected) == {"boxes", "labels", "scores", "masks"}
    assert len(expected["boxes"]) > 0
    assert got["masks"].shape == expected["masks"].shape == (len(expected["boxes"]), 1, 32, 32)
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    for key in ("boxes", "scores", "masks"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_the_whole_step_stays_on_the_device(cuda_run):
    """Losses, gradients, updated parameters and detections are all device arrays."""
    assert len(cuda_run.on_device) > 50
    assert [k for k, on in cuda_run.on_device.items() if not on] == []


def test_training_builds_the_model_on_the_device(device):
    """``minimaskrcnn train --backend cuda``: the Trainer's model has its parameters on the GPU
    before the optimizer is made (with the simulator and no CuPy, the model stays on NumPy)."""
    from minimaskrcnn.checkpoint import build_model_from_config
    from minimaskrcnn.config import TrainConfig

    model = build_model_from_config(TrainConfig(model="r18-shapes", backend="cuda"), num_classes=4)
    tensors = list(model.parameters()) + list(model.buffers())
    assert len(tensors) > 50 and all(device.is_device_array(t.data) for t in tensors)
