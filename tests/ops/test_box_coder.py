"""BoxCoder: hand cases, round trips, the dw/dh clamp, shapes, and parity with torchvision's."""
import math

import numpy as np
import pytest

from minimaskrcnn import Tensor
from minimaskrcnn.ops.box_coder import BoxCoder

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]  # RPN, box head


def random_boxes(rng, n, dtype):
    xy = rng.uniform(0, 200, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 80, (n, 2))], axis=1).astype(dtype)


def test_encode_hand_case():
    proposals = np.array([[0, 0, 10, 20], [5, 5, 15, 15]], np.float64)
    gt = np.array([[5, 0, 15, 20], [0, 0, 20, 40]], np.float64)
    # box 0: same size, centre 5 px right of a 10 px wide box -> dx = 0.5
    # box 1: centres (10, 10) -> (10, 20), size 10 -> 20 x 40: dy = 1, dw = log 2, dh = log 4
    deltas = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt, proposals)
    np.testing.assert_allclose(deltas, [[0.5, 0, 0, 0], [0, 1, math.log(2), math.log(4)]], atol=1e-15)
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, proposals)
    np.testing.assert_allclose(weighted, deltas * [10, 10, 5, 5], atol=1e-14)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_inverts_encode(weights, dtype):
    rng = np.random.default_rng(0)
    proposals, gt = random_boxes(rng, 30, dtype), random_boxes(rng, 30, dtype)
    coder = BoxCoder(weights)
    deltas = coder.encode_single(gt, proposals)
    assert deltas.dtype == dtype
    decoded = coder.decode_single(deltas, proposals)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(decoded, gt, rtol=tol, atol=tol)


def test_decode_clamps_dw_dh_before_exp():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchor = np.array([[0, 0, 16, 16]], np.float32)
    huge = coder.decode_single(np.array([[0, 0, 50, 50]], np.float32), anchor)  # exp(50) would overflow
    np.testing.assert_allclose(huge, [[8 - 500, 8 - 500, 8 + 500, 8 + 500]], rtol=1e-5)  # 16 * 1000/16
    tiny = coder.decode_single(np.array([[0, 0, -50, -50]], np.float32), anchor)  # no lower clamp
    np.testing.assert_allclose(tiny, [[8, 8, 8, 8]], atol=1e-5)


def test_decode_shapes_and_lists():
    rng = np.random.default_rng(1)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = [random_boxes(rng, 3, np.float32), random_boxes(rng, 4, np.float32)]
    codes = rng.normal(size=(7, 5 * 4)).astype(np.float32)  # 5 classes per RoI
    assert coder.decode_single(codes, np.concatenate(boxes)).shape == (7, 20)
    decoded = coder.decode(codes, boxes)
    assert decoded.shape == (7, 5, 4) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded.reshape(7, 20), coder.decode_single(codes, np.concatenate(boxes)))
    np.testing.assert_array_equal(coder.decode(Tensor(codes), [Tensor(b) for b in boxes]), decoded)
    with pytest.raises(TypeError):
        coder.decode(codes, np.concatenate(boxes))  # a list per image, as torchvision
    # no boxes: rel_codes' shape comes back, as torchvision
    assert coder.decode(np.zeros((0, 8), np.float32), [np.zeros((0, 4), np.float32)]).shape == (0, 8)
    targets = coder.encode(boxes, [b + 1 for b in boxes])
    assert [t.shape for t in targets] == [(3, 4), (4, 4)]


@pytest.mark.reference
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_coder_matches_torchvision(weights, dtype):
    torch = pytest.importorskip("torch")
    det_utils = pytest.importorskip("torchvision.models.detection._utils")
    rng = np.random.default_rng(2)
    proposals, gt = random_boxes(rng, 50, dtype), random_boxes(rng, 50, dtype)
    ours, theirs = BoxCoder(weights), det_utils.BoxCoder(weights)
    split = [proposals[:20], proposals[20:]]
    targets = ours.encode([gt[:20], gt[20:]], split)
    expected = theirs.encode([torch.from_numpy(b) for b in (gt[:20], gt[20:])], [torch.from_numpy(b) for b in split])
    for t, e in zip(targets, expected):
        assert t.dtype == dtype
        np.testing.assert_allclose(t, e.numpy(), rtol=1e-6, atol=1e-6 * np.abs(e.numpy()).max())
    codes = rng.normal(0, 3, (50, 3 * 4)).astype(dtype)
    codes[0, 2] = 40.0  # clamped
    decoded = ours.decode(codes, split)
    expected = theirs.decode(torch.from_numpy(codes), [torch.from_numpy(b) for b in split]).numpy()
    assert decoded.shape == expected.shape and decoded.dtype == dtype
    np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
