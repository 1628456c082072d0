"""The keypoint branch: heatmap targets, the 3136-way loss, decoding, the head and predictor, each by hand,
by gradcheck and against torchvision's functions and modules given the same inputs and weights."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck
from minimaskrcnn.models.keypoint_head import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    heatmaps_to_keypoints,
    keypointrcnn_inference,
    keypointrcnn_loss,
    keypoints_to_heatmap,
)

S = 56


def _rois(rng, k, lo=4.0, hi=150.0):
    xy = rng.uniform(0, 100, (k, 2))
    wh = rng.uniform(lo, hi, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _keypoints_for(rng, rois, num_keypoints=17):
    """Keypoints around each RoI (some outside it), random visibility, a few exactly on the far edges."""
    k = len(rois)
    w, h = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    x = rois[:, :1] + rng.uniform(-0.2, 1.2, (k, num_keypoints)) * w[:, None]
    y = rois[:, 1:2] + rng.uniform(-0.2, 1.2, (k, num_keypoints)) * h[:, None]
    x[:, 0], y[:, 1] = rois[:, 2], rois[:, 3]  # on the right / bottom edge: the last cell
    x[:, 2], y[:, 2] = rois[:, 0], rois[:, 1]  # on the top-left corner: the first cell
    v = rng.choice([0, 1, 2], size=(k, num_keypoints), p=[0.2, 0.2, 0.6]).astype(np.float32)
    return np.stack([x, y, v], axis=2).astype(np.float32)


# --------------------------------------------------------------------------------- targets
def test_keypoints_to_heatmap_by_hand():
    rois = np.array([[0, 0, 56, 56], [10, 20, 38, 48]], np.float32)  # a 56-px RoI; a 28-px one (2 cells per px)
    keypoints = np.array([
        [[10.5, 20.2, 2], [56, 56, 2], [3, 4, 0], [-0.5, 3, 2]],  # inside; far corner; unlabelled; left of it
        [[11, 21, 1], [37.9, 47.9, 2], [38, 30, 2], [24, 48.5, 2]],  # occluded counts; last cell; edge; below
    ], np.float32)
    heatmaps, valid = keypoints_to_heatmap(keypoints, rois, S)
    np.testing.assert_array_equal(valid, [[True, True, False, False], [True, True, True, False]])
    np.testing.assert_array_equal(heatmaps, [[20 * 56 + 10, 55 * 56 + 55, 0, 0],
                                             [2 * 56 + 2, 55 * 56 + 55, 20 * 56 + 55, 0]])
    assert heatmaps.dtype == np.int64


def test_keypoints_to_heatmap_matches_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import keypoints_to_heatmap as tv_keypoints_to_heatmap

    rois = _rois(rng, 200, lo=0.5)
    keypoints = _keypoints_for(rng, rois)
    heatmaps, valid = keypoints_to_heatmap(keypoints, rois, S)
    tv_heatmaps, tv_valid = tv_keypoints_to_heatmap(torch.from_numpy(keypoints), torch.from_numpy(rois), S)
    np.testing.assert_array_equal(valid, tv_valid.numpy().astype(bool))
    np.testing.assert_array_equal(heatmaps, tv_heatmaps.numpy())
    assert 0.3 < valid.mean() < 0.8  # the case mixes valid and invalid keypoints


def test_keypoints_to_heatmap_zero_width_roi():
    # x - x1 = 0 times S / 0 is nan: no cell, except on the right edge, which goes to the last column
    rois = np.array([[5, 5, 5, 9]], np.float32)
    heatmaps, valid = keypoints_to_heatmap(np.array([[[5, 6, 2], [7, 6, 2], [4, 6, 2]]], np.float32), rois, S)
    np.testing.assert_array_equal(valid, [[True, False, False]])
    np.testing.assert_array_equal(heatmaps, [[14 * 56 + 55, 0, 0]])


# ------------------------------------------------------------------------------------ loss
def _loss_case(rng, num_keypoints=5, size=S, dtype=np.float32):
    proposals = [_rois(rng, 3), _rois(rng, 2)]
    gt = [_keypoints_for(rng, _rois(rng, 2), num_keypoints), _keypoints_for(rng, _rois(rng, 3), num_keypoints)]
    matched = [np.array([0, 1, 1]), np.array([2, 0])]
    # put each matched gt's keypoints inside its RoI, so that most are valid
    for p, g, m in zip(proposals, gt, matched):
        g[m] = _keypoints_for(rng, p, num_keypoints)
    logits = rng.standard_normal((5, num_keypoints, size, size)).astype(dtype)
    return logits, proposals, gt, matched


def test_keypoint_loss_by_hand(rng):
    # one RoI, one visible keypoint at cell (3, 2) of a 4 x 4 heatmap: -log softmax at index 2 * 4 + 3
    logits = rng.standard_normal((1, 1, 4, 4))
    proposals = [np.array([[0, 0, 4, 4]], np.float64)]
    gt = [np.array([[[3.5, 2.5, 2]]], np.float64)]
    loss = keypointrcnn_loss(Tensor(logits), proposals, gt, [np.array([0])])
    flat = logits.reshape(-1)
    expected = -(flat[11] - np.log(np.exp(flat).sum()))
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keypoint_loss_and_gradient_match_torchvision(rng, dtype):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import keypointrcnn_loss as tv_keypointrcnn_loss

    logits, proposals, gt, matched = _loss_case(rng, dtype=dtype)
    ours = Tensor(logits.copy(), requires_grad=True)
    loss = keypointrcnn_loss(ours, proposals, gt, matched)
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    tv_loss = tv_keypointrcnn_loss(theirs, [torch.from_numpy(p) for p in proposals], [torch.from_numpy(g) for g in gt],
                                   [torch.from_numpy(m) for m in matched])
    tv_loss.backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss.item(), tv_loss.item(), rtol=tol)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=0, atol=tol * np.abs(theirs.grad.numpy()).max())
    assert ours.grad.dtype == dtype


def test_keypoint_loss_without_visible_keypoints_is_zero_with_a_gradient(rng):
    logits, proposals, gt, matched = _loss_case(rng)
    for g in gt:
        g[..., 2] = 0  # nothing labelled
    ours = Tensor(logits, requires_grad=True)
    loss = keypointrcnn_loss(ours, proposals, gt, matched)
    assert loss.item() == 0.0
    loss.backward()
    assert ours.grad is not None and (ours.grad == 0).all()
    # no positive RoI at all
    empty = Tensor(np.zeros((0, 5, S, S), np.float32), requires_grad=True)
    loss = keypointrcnn_loss(empty, [np.zeros((0, 4), np.float32)], [gt[0]], [np.zeros(0, np.int64)])
    assert loss.item() == 0.0


def test_keypoint_loss_rejects_non_square_heatmaps():
    with pytest.raises(ValueError, match="should be equal"):
        keypointrcnn_loss(Tensor(np.zeros((1, 1, 4, 5))), [np.zeros((1, 4))], [np.zeros((1, 1, 3))], [np.zeros(1, int)])


def test_keypoint_loss_gradcheck(rng):
    logits, proposals, gt, matched = _loss_case(rng, num_keypoints=3, size=6, dtype=np.float64)
    proposals = [p.astype(np.float64) for p in proposals]
    x = Tensor(logits, requires_grad=True)
    result = gradcheck(lambda t: keypointrcnn_loss(t, proposals, gt, matched), [x])
    assert result.passed, result.report()


# -------------------------------------------------------------------------------- decoding
def test_heatmaps_to_keypoints_by_hand():
    # a 4 x 4 map peaked at cell (x=1, y=2) in a RoI of exactly 4 x 4 px: no resizing, x = x1 + 1.5
    maps = np.zeros((1, 1, 4, 4), np.float32)
    maps[0, 0, 2, 1] = 5.0
    xy, scores = heatmaps_to_keypoints(maps, np.array([[10, 20, 14, 24]], np.float32))
    np.testing.assert_allclose(xy[0, 0], [11.5, 22.5, 1.0])
    np.testing.assert_allclose(scores[0, 0], 5.0)
    # a RoI 8 px wide and 6.5 px high: the map is resized to 8 x 7, cells of 1 x 6.5/7 px
    xy, scores = heatmaps_to_keypoints(maps, np.array([[0, 0, 8, 6.5]], np.float32))
    j, i = 2, 4  # where the bicubic peak of cell (1, 2) lands in the 7 x 8 map (centres 1.5*2 - 0.5, 2.5*7/4 - 0.5)
    np.testing.assert_allclose(xy[0, 0, :2], [(j + 0.5) * 1.0, (i + 0.5) * 6.5 / 7], rtol=1e-6)


def test_heatmaps_to_keypoints_matches_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints

    rois = np.concatenate([_rois(rng, 12), np.array([[3, 4, 3.4, 4.2], [0, 0, 1.5, 250.7]], np.float32)])
    # smooth maps (as a trained head gives): far from ties, so the argmax cannot flip on rounding
    maps = np.zeros((len(rois), 4, S, S), np.float32)
    yy, xx = np.mgrid[0:S, 0:S]
    centres = rng.uniform(0, S, (len(rois), 4, 2))
    maps -= ((xx - centres[..., :1, None]) ** 2 + (yy - centres[..., 1:, None]) ** 2) / 40.0
    maps += rng.standard_normal(maps.shape).astype(np.float32) * 0.01
    xy, scores = heatmaps_to_keypoints(maps, rois)
    tv_xy, tv_scores = tv_heatmaps_to_keypoints(torch.from_numpy(maps), torch.from_numpy(rois))
    assert xy.shape == (len(rois), 4, 3) and xy.dtype == np.float32
    np.testing.assert_allclose(xy, tv_xy.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, tv_scores.numpy(), rtol=0, atol=1e-5)


def test_keypointrcnn_inference_splits_per_image(rng):
    maps = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    boxes = [_rois(rng, 2), _rois(rng, 0), _rois(rng, 3)]
    keypoints, scores = keypointrcnn_inference(maps, boxes)
    assert [k.shape for k in keypoints] == [(2, 3, 3), (0, 3, 3), (3, 3, 3)]
    assert [s.shape for s in scores] == [(2, 3), (0, 3), (3, 3)]
    np.testing.assert_array_equal(keypoints[2], heatmaps_to_keypoints(maps[2:], boxes[2])[0])


# --------------------------------------------------------------------------------- modules
def test_module_parameter_names_are_torchvisions():
    head = KeypointRCNNHeads(8, (16,) * 8)
    assert [n for n, _ in head.named_parameters()] == [f"{i}.{p}" for i in range(0, 16, 2) for p in ("weight", "bias")]
    predictor = KeypointRCNNPredictor(16, 17)
    assert dict(predictor.named_parameters()).keys() == {"kps_score_lowres.weight", "kps_score_lowres.bias"}
    assert predictor.kps_score_lowres.weight.shape == (16, 17, 4, 4)


def test_head_and_predictor_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads as TVHeads
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor as TVPredictor

    torch.manual_seed(0)
    tv_head, tv_predictor = TVHeads(8, (16, 16, 16)), TVPredictor(16, 5)
    head, predictor = KeypointRCNNHeads(8, (16, 16, 16)), KeypointRCNNPredictor(16, 5)
    head.load_state_dict({k: v.numpy() for k, v in tv_head.state_dict().items()})
    # torchvision initialises the bias to 0: give it one, so that it is compared too
    predictor.load_state_dict({k: v.numpy() + (0.1 if k.endswith("bias") else 0.0)
                               for k, v in tv_predictor.state_dict().items()})
    with torch.no_grad():
        tv_predictor.kps_score_lowres.bias += 0.1
    x = rng.standard_normal((3, 8, 14, 14)).astype(np.float32)
    out = predictor(head(Tensor(x)))
    with torch.no_grad():
        ref = tv_predictor(tv_head(torch.from_numpy(x))).numpy()
    assert out.shape == ref.shape == (3, 5, 56, 56)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_head_and_predictor_gradcheck(rng):
    head, predictor = KeypointRCNNHeads(2, (3, 3)), KeypointRCNNPredictor(3, 2)
    head.double()
    predictor.double()
    params = [p for m in (head, predictor) for p in m.parameters()]
    x = Tensor(rng.standard_normal((2, 2, 3, 3)), requires_grad=True)
    result = gradcheck(lambda x_, *ps: predictor(head(x_)), [x, *params], atol=1e-8)
    assert result.passed, result.report()
