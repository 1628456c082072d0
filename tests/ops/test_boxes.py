"""Box ops: hand cases, edge cases and parity with torchvision.ops (area, IoU, convert, clip, NMS)."""
import numpy as np
import pytest

import minimaskrcnn
from minimaskrcnn import Tensor
from minimaskrcnn.ops.boxes import (
    batched_nms,
    box_area,
    box_convert,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)


def random_boxes(rng, n, size=100.0, max_wh=30.0, dtype=np.float32):
    """(n, 4) boxes (x1, y1, x2, y2) with top-left in [0, size) and sides in [1, max_wh)."""
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


# ------------------------------------------------------------------------------------ hand cases
def test_box_iou_hand_case():
    boxes1 = np.array([[0, 0, 2, 2]], np.float32)
    boxes2 = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 1, 2]], np.float32)
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (1, 4) and iou.dtype == np.float32
    np.testing.assert_allclose(iou[0], [1 / 7, 1.0, 0.0, 0.5], rtol=1e-7)


def test_box_area_hand_case():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [0.5, 0.5, 1.0, 1.5]], np.float64)
    np.testing.assert_array_equal(box_area(boxes), [6.0, 0.0, 0.5])
    np.testing.assert_array_equal(box_area(np.array([[1, 2, 3, 4]], np.float32), fmt="xywh"), [12.0])


def test_box_convert_hand_case():
    xyxy = np.array([[1.0, 2.0, 5.0, 8.0]])
    np.testing.assert_array_equal(box_xyxy_to_xywh(xyxy), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(box_xyxy_to_cxcywh(xyxy), [[3, 5, 4, 6]])
    np.testing.assert_array_equal(box_xywh_to_xyxy([[1.0, 2.0, 4.0, 6.0]]), xyxy)
    np.testing.assert_array_equal(box_cxcywh_to_xyxy([[3.0, 5.0, 4.0, 6.0]]), xyxy)
    for fmt in ("xyxy", "xywh", "cxcywh"):
        np.testing.assert_allclose(box_convert(box_convert(xyxy, "xyxy", fmt), fmt, "xyxy"), xyxy)
    with pytest.raises(ValueError):
        box_convert(xyxy, "xyxy", "yxyx")


def test_clip_and_remove_small_boxes_hand_case():
    boxes = np.array([[-5, 2, 30, 25], [3, -1, 4, 50], [10, 10, 12, 11]], np.float32)
    clipped = clip_boxes_to_image(boxes, (20, 25))  # (height, width)
    np.testing.assert_array_equal(clipped, [[0, 2, 25, 20], [3, 0, 4, 20], [10, 10, 12, 11]])
    assert clipped.dtype == np.float32
    np.testing.assert_array_equal(boxes[0], [-5, 2, 30, 25])  # input untouched
    keep = remove_small_boxes(boxes, 2.0)  # sides (35, 23), (1, 51), (2, 1)
    np.testing.assert_array_equal(keep, [0])
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(remove_small_boxes(boxes, 1.0), [0, 1, 2])  # >= min_size


def test_empty_and_zero_area_boxes():
    empty = np.zeros((0, 4), np.float32)
    assert box_iou(empty, random_boxes(np.random.default_rng(0), 3)).shape == (0, 3)
    assert box_area(empty).shape == (0,)
    assert remove_small_boxes(empty, 1.0).shape == (0,)
    assert nms(empty, np.zeros(0, np.float32), 0.5).shape == (0,)
    assert batched_nms(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5).shape == (0,)
    point = np.array([[1, 1, 1, 1]], np.float32)
    assert box_iou(point, np.array([[0, 0, 2, 2]], np.float32))[0, 0] == 0.0
    assert np.isnan(box_iou(point, point)[0, 0])  # 0 / 0, as torchvision


def test_tensors_are_accepted():
    boxes = Tensor(np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32))
    np.testing.assert_allclose(box_iou(boxes, boxes)[0, 1], 1 / 7, rtol=1e-7)
    np.testing.assert_array_equal(nms(boxes, Tensor(np.array([0.5, 0.9], np.float32)), 0.1), [1])


# ------------------------------------------------------------------------------------ NMS by hand
def test_nms_hand_case(backend):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # box 3 (best) suppresses box 0 (IoU 0.9); box 1 has IoU 0.62 with box 3
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7), [3, 1, 2])
    assert nms(boxes, scores, 0.5).dtype == np.int64


def test_nms_ties_keep_the_lower_index_first(backend):
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [0, 0, 1, 1], [10, 10, 11, 11]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.9], np.float32)
    # equal scores are visited by increasing index: box 1 before box 3, box 0 before box 2
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 0])
    np.testing.assert_array_equal(nms(boxes, scores, 1.0), [1, 3, 0, 2])


def test_nms_iou_exactly_at_threshold(backend):
    # IoU([0,0,2,2], [0,0,2,1]) = 0.5 exactly: not suppressed at 0.5 (strictly greater)
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8], np.float32), 0.5), [0, 1])
    # IoU 3/10 in float32 is 0.30000001 > 0.3: the comparison is in float64, as torchvision's
    boxes = np.array([[0, 0, 10, 1], [0, 0, 3, 1]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8], np.float32), 0.3), [0])
    np.testing.assert_array_equal(nms(boxes.astype(np.float64), np.array([0.9, 0.8]), 0.3), [0, 1])


def test_batched_nms_separates_categories():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.array([0, 0, 1]), 0.5), [0, 2])
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.array([0, 1, 2]), 0.5), [0, 1, 2])


def test_nms_rejects_bad_shapes():
    with pytest.raises(ValueError):
        nms(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), 0.5)
    with pytest.raises(ValueError):
        nms(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), 0.5)


# ------------------------------------------------------------------------------ torchvision parity
@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_and_area_match_torchvision(dtype, fmt):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(1)
    boxes1 = box_convert(random_boxes(rng, 40, dtype=dtype), "xyxy", fmt)
    boxes2 = box_convert(random_boxes(rng, 30, dtype=dtype), "xyxy", fmt)
    boxes2[:5] = boxes1[:5]  # identical pairs: IoU 1
    expected = tv_ops.box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2), fmt=fmt).numpy()
    iou = box_iou(boxes1, boxes2, fmt=fmt)
    assert iou.dtype == dtype and (iou > 0).sum() > 40  # many overlapping pairs
    np.testing.assert_allclose(iou, expected, rtol=1e-6, atol=1e-6)
    expected_area = tv_ops.box_area(torch.from_numpy(boxes1), fmt=fmt).numpy()
    np.testing.assert_allclose(box_area(boxes1, fmt), expected_area, rtol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("pair", [("xyxy", "xywh"), ("xyxy", "cxcywh"), ("xywh", "cxcywh"), ("cxcywh", "xywh")])
def test_box_convert_matches_torchvision(pair):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes = random_boxes(np.random.default_rng(2), 20)
    for in_fmt, out_fmt in (pair, pair[::-1]):
        expected = tv_ops.box_convert(torch.from_numpy(boxes), in_fmt, out_fmt).numpy()
        np.testing.assert_allclose(box_convert(boxes, in_fmt, out_fmt), expected, rtol=1e-6)


@pytest.mark.reference
def test_clip_and_remove_small_boxes_match_torchvision():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes = random_boxes(np.random.default_rng(3), 200, size=120.0) - 10
    expected = tv_ops.clip_boxes_to_image(torch.from_numpy(boxes), (90, 100)).numpy()
    np.testing.assert_array_equal(clip_boxes_to_image(boxes, (90, 100)), expected)
    expected = tv_ops.remove_small_boxes(torch.from_numpy(boxes), 12.5).numpy()
    np.testing.assert_array_equal(remove_small_boxes(boxes, 12.5), expected)


def _batched_case(seed, n, num_classes, tied):
    rng = np.random.default_rng(seed)
    boxes = np.round(random_boxes(rng, n, size=200.0, max_wh=60.0))  # integer corners: exact IoU ties
    scores = (rng.integers(0, 20, n) / 20 if tied else rng.random(n)).astype(np.float32)
    idxs = rng.integers(0, num_classes, n)
    return boxes, scores, idxs


@pytest.mark.reference
@pytest.mark.parametrize("n", [0, 1, 7, 300, 1000])  # 4 * n <= 4000: torchvision's coordinate trick
@pytest.mark.parametrize("tied", [False, True])
def test_batched_nms_coordinate_trick_matches_torchvision(n, tied):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes, scores, idxs = _batched_case(n, n, 5, tied)
    for threshold in (0.3, 0.5):
        expected = tv_ops.batched_nms(*map(torch.from_numpy, (boxes, scores, idxs)), threshold).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, threshold), expected)


@pytest.mark.reference
@pytest.mark.parametrize("tied", [False, True])
def test_batched_nms_per_category_matches_torchvision(tied):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes, scores, idxs = _batched_case(7, 6000, 20, tied)  # > 1000 boxes: one NMS per category
    expected = tv_ops.batched_nms(*map(torch.from_numpy, (boxes, scores, idxs)), 0.5).numpy()
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert 100 < len(keep) < len(boxes)
    if not tied:
        np.testing.assert_array_equal(keep, expected)
    else:  # torchvision orders equal scores with an unstable sort: same set, same score sequence
        np.testing.assert_array_equal(np.sort(keep), np.sort(expected))
        np.testing.assert_array_equal(scores[keep], scores[expected])
        assert all(np.all(np.diff(keep[scores[keep] == s]) > 0) for s in np.unique(scores))  # ours: stable


@pytest.mark.reference
def test_nms_on_tensors_of_each_backend_matches_torchvision(backend):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes, scores, _ = _batched_case(11, 150, 1, tied=True)
    expected = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(nms(Tensor(boxes), Tensor(scores), 0.5), expected)
    assert minimaskrcnn.get_backend() == backend


@pytest.mark.reference
def test_batched_nms_on_each_backend_matches_torchvision(backend):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    sizes = (150,) if backend == "cuda" else (150, 1500)  # both of torchvision's paths off the simulator
    for n in sizes:
        boxes, scores, idxs = _batched_case(n + 1, n, 4, tied=False)
        expected = tv_ops.batched_nms(*map(torch.from_numpy, (boxes, scores, idxs)), 0.5).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5), expected)
