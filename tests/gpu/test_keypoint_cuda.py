"""The keypoint branch's array code on device arrays (CuPy on a GPU, fake_cupy in CI): the loss and its
gradient make no copy to the host and equal the host's; decoding reads each RoI's size on the host (the
size of its bicubic resize, as torchvision's ``.item()``), and nothing else."""
import numpy as np
import pytest
from test_cuda_backend import assert_same, run_both

import minimaskrcnn
from minimaskrcnn.backend import to_numpy
from minimaskrcnn.models.keypoint_head import heatmaps_to_keypoints, keypointrcnn_loss

pytestmark = pytest.mark.cuda

ROIS = [np.array([[0, 0, 12, 12], [2, 2, 8, 14]], np.float32), np.array([[1, 1, 9, 6]], np.float32)]
GT = [np.array([[[1, 1, 2], [7, 11.5, 2], [5, 5, 0]], [[3, 3, 1], [7.9, 13.9, 2], [2, 2, 2]]], np.float32),
      np.array([[[2, 2, 2], [8, 5, 2], [4, 3, 1]]], np.float32)]
MATCHED = [np.array([0, 1]), np.array([0])]


def test_keypoint_loss_on_the_device(device):
    logits = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)

    def loss(x):
        move = device.to_device if device.is_device_array(x.data) else np.asarray
        return keypointrcnn_loss(x, [move(r) for r in ROIS], [move(g) for g in GT], [move(m) for m in MATCHED])

    assert_same(*run_both(loss, [logits], device))


def test_keypoint_decoding_on_the_device(device):
    maps = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    rois = np.array([[0.5, 1, 12.2, 9], [3, 4, 5.5, 30.1]], np.float32)
    with minimaskrcnn.use_backend("numpy"):
        expected = heatmaps_to_keypoints(maps, rois)
    if device.transfers is not None:
        device.transfers.clear()
    got = heatmaps_to_keypoints(device.to_device(maps), device.to_device(rois))
    if device.transfers is not None:  # two ints per RoI: the width and height of its resized map
        assert {t.where for t in device.transfers} == {"minimaskrcnn/models/keypoint_head.py:heatmaps_to_keypoints"}
        assert len(device.transfers) == 2 * len(rois)
    assert all(device.is_device_array(a) for a in got)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(to_numpy(g), e, rtol=1e-6, atol=1e-5)
