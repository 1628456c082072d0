"""Mask targets (project_masks_on_boxes) and mask pasting (paste_masks_in_image, every backend)."""
import numpy as np
import pytest
from minimaskrcnn.kernels.paste_masks import reference as paste_reference

import minimaskrcnn
from minimaskrcnn.ops.masks import (
    expand_boxes,
    expand_masks,
    paste_mask_in_image,
    paste_masks_in_image,
    project_masks_on_boxes,
)


def random_detections(rng, num_masks, im_h, im_w, size=28, dtype=np.float32):
    """Mask probabilities (K, 1, S, S) and boxes (K, 4): some partly outside the image, some tiny.

    Every box keeps its centre inside the image (torchvision's slicing fails on boxes entirely
    left of or above the image).
    """
    masks = rng.random((num_masks, 1, size, size)).astype(dtype)
    centres = rng.uniform(0, 1, (num_masks, 2)) * [im_w, im_h]
    sizes = rng.uniform(0.05, 1.3, (num_masks, 2)) * [im_w, im_h]
    sizes[: num_masks // 4] = rng.uniform(0, 2.5, (num_masks // 4, 2))  # tiny, even 0-area, boxes
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(dtype)
    return masks, boxes


def torchvision_paste(masks, boxes, img_shape, padding=1):
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    return roi_heads.paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), img_shape, padding).numpy()


# ------------------------------------------------------------------------------------ hand cases
def test_paste_hand_case(backend):
    # a 2x2 mask of ones, no padding, at box [1, 1, 3, 2]: columns 1..3, rows 1..2 (inclusive)
    masks = np.ones((1, 1, 2, 2), np.float32)
    pasted = paste_masks_in_image(masks, np.array([[1, 1, 3, 2]], np.float32), (4, 5), padding=0)
    expected = np.zeros((1, 1, 4, 5), np.float32)
    expected[0, 0, 1:3, 1:4] = 1
    np.testing.assert_array_equal(pasted, expected)
    # a left/right 0/1 mask resized to 4 columns: bilinear with half-pixel centres
    half = np.array([[[0.0, 1.0]]], np.float32)  # (1, 1, 2): one row
    pasted = paste_mask_in_image(half[0], np.array([0, 0, 3, 0]), 1, 4)
    np.testing.assert_allclose(pasted, [[0.0, 0.25, 0.75, 1.0]])


def test_paste_clips_to_the_image_and_handles_empty_input(backend):
    masks = np.ones((2, 1, 3, 3), np.float32)
    boxes = np.array([[-4, -4, 2, 2], [5, 6, 20, 30]], np.float32)  # top-left / bottom-right corners
    pasted = paste_masks_in_image(masks, boxes, (8, 7), padding=0)
    assert pasted.shape == (2, 1, 8, 7)
    np.testing.assert_array_equal(pasted[0, 0] > 0, np.pad(np.ones((3, 3), bool), ((0, 5), (0, 4))))
    np.testing.assert_array_equal(pasted[1, 0] > 0, np.pad(np.ones((2, 2), bool), ((6, 0), (5, 0))))
    empty = paste_masks_in_image(np.zeros((0, 1, 28, 28), np.float32), np.zeros((0, 4), np.float32), (8, 7))
    assert empty.shape == (0, 1, 8, 7) and empty.dtype == np.float32


def test_expand_boxes_and_masks():
    padded, scale = expand_masks(np.ones((2, 1, 4, 4), np.float32), padding=1)
    assert padded.shape == (2, 1, 6, 6) and scale == 1.5
    assert padded[:, :, 0].sum() == 0 and padded[:, :, 1:5, 1:5].min() == 1
    np.testing.assert_array_equal(expand_boxes(np.array([[2.0, 4.0, 6.0, 6.0]]), 1.5), [[1.0, 3.5, 7.0, 6.5]])


# ------------------------------------------------------------------------------ torchvision parity
@pytest.mark.reference
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_expand_boxes_and_masks_match_torchvision(padding):
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    masks, boxes = random_detections(np.random.default_rng(padding), 20, 50, 60)
    padded, scale = expand_masks(masks, padding)
    expected_masks, expected_scale = roi_heads.expand_masks(torch.from_numpy(masks), padding)
    np.testing.assert_array_equal(padded, expected_masks.numpy())
    assert scale == expected_scale
    expected = roi_heads.expand_boxes(torch.from_numpy(boxes), scale).numpy()
    np.testing.assert_array_equal(expand_boxes(boxes, scale), expected)


PASTE_CASES = {  # backend: (masks, im_h, im_w); the simulator runs one Python thread per pixel
    "numpy": (40, 70, 90),
    "numba": (40, 70, 90),
    "cuda": (3, 12, 10),
}


@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paste_masks_in_image_matches_torchvision(backend, dtype):
    num_masks, im_h, im_w = PASTE_CASES[backend]
    rng = np.random.default_rng(len(backend))
    for padding, size in ((1, 28), (2, 7)):
        masks, boxes = random_detections(rng, num_masks, im_h, im_w, size=size, dtype=dtype)
        expected = torchvision_paste(masks, boxes, (im_h, im_w), padding)
        pasted = paste_masks_in_image(masks, boxes, (im_h, im_w), padding=padding)
        assert pasted.shape == expected.shape and pasted.dtype == dtype
        assert (expected > 0).any(axis=(1, 2, 3)).sum() >= num_masks // 2  # most masks are visible
        np.testing.assert_allclose(pasted, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernel_backend", ["numba", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_paste_kernels_agree_with_reference(kernel_backend):
    rng = np.random.default_rng(7)
    masks = rng.random((4, 9, 7)).astype(np.float32)  # non-square masks too
    boxes = np.array([[-3, 2, 5, 4], [0, 0, 0, 0], [4, -2, 12, 9], [3, 3, 1, 1]])  # clipped, 1 px, clipped, inverted
    with minimaskrcnn.use_backend(kernel_backend):
        pasted = minimaskrcnn.backend.kernel("paste_masks").paste_masks(masks, boxes, 8, 10)
    expected = paste_reference.paste_masks(masks, boxes, 8, 10)
    np.testing.assert_allclose(pasted, expected, atol=1e-6)
    assert pasted[1, 0, 0] > 0 and pasted[1].sum() == pasted[1, 0, 0]  # the one-pixel box
    assert pasted[3].sum() == 0  # x2 < x1: an empty box


@pytest.mark.reference
@pytest.mark.parametrize("M", [14, 28])
def test_project_masks_on_boxes_matches_torchvision(M):
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    rng = np.random.default_rng(M)
    num_gt, im_h, im_w, num_rois = 3, 40, 50, 25
    gt_masks = (rng.random((num_gt, im_h, im_w)) > 0.5).astype(np.uint8)
    centres = rng.uniform(0, 1, (num_rois, 2)) * [im_w, im_h]
    sizes = rng.uniform(0.5, 30, (num_rois, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    matched_idxs = rng.integers(0, num_gt, num_rois)
    expected = roi_heads.project_masks_on_boxes(
        torch.from_numpy(gt_masks), torch.from_numpy(boxes), torch.from_numpy(matched_idxs), M
    ).numpy()
    targets = project_masks_on_boxes(gt_masks, boxes, matched_idxs, M)
    assert targets.shape == (num_rois, M, M) and targets.dtype == np.float32
    assert 0 < targets.mean() < 1
    np.testing.assert_allclose(targets, expected, rtol=1e-5, atol=1e-6)
    empty = project_masks_on_boxes(gt_masks, boxes[:0], matched_idxs[:0], M)
    assert empty.shape == (0, M, M)
