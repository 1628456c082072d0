"""RPN: head shapes, flattening order, anchor labels by hand, and parity of proposals, losses and
gradients with torchvision's RegionProposalNetwork given the same features and weights."""
from collections import OrderedDict

import numpy as np
import pytest

from minimaskrcnn import Tensor, record_intermediates
from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers, top_n_idx_per_level
from minimaskrcnn.models.transform import ImageList
from minimaskrcnn.ops.matcher import BACKGROUND as NEGATIVE
from minimaskrcnn.ops.matcher import IGNORE, POSITIVE

SIZES = ((16,), (32,), (64,), (128,), (256,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
IMAGE_SIZES = [(128, 160), (120, 150)]
GRIDS = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]


def _rpn(**kw):
    args = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
                pre_nms_top_n=dict(training=200, testing=100), post_nms_top_n=dict(training=50, testing=30),
                nms_thresh=0.7)
    args.update(kw)
    return RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), RPNHead(8, 3), **args)


def _features(rng):
    return OrderedDict((str(i), rng.standard_normal((2, 8) + g).astype(np.float32)) for i, g in enumerate(GRIDS))


def _targets():
    return [{"boxes": np.array([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 150.0, 60.0]], np.float32)},
            {"boxes": np.array([[5.0, 5.0, 100.0, 110.0]], np.float32)}]


def test_head_shapes():
    head = RPNHead(8, 3)
    logits, deltas = head([Tensor(np.zeros((2, 8, 5, 6), np.float32)), Tensor(np.zeros((2, 8, 3, 3), np.float32))])
    assert [t.shape for t in logits] == [(2, 3, 5, 6), (2, 3, 3, 3)]
    assert [t.shape for t in deltas] == [(2, 12, 5, 6), (2, 12, 3, 3)]
    assert list(head.state_dict()) == ["conv.0.0.weight", "conv.0.0.bias", "cls_logits.weight", "cls_logits.bias",
                                       "bbox_pred.weight", "bbox_pred.bias"]


def test_flattening_follows_anchor_order(rng):
    # value of (image n, anchor a, row y, col x) must land at row n*R + (y*W + x)*A + a
    N, A, H, W = 2, 3, 2, 4
    cls = rng.standard_normal((N, A, H, W)).astype(np.float32)
    reg = rng.standard_normal((N, A * 4, H, W)).astype(np.float32)
    flat_cls, flat_reg = concat_box_prediction_layers([Tensor(cls)], [Tensor(reg)])
    assert flat_cls.shape == (N * H * W * A, 1) and flat_reg.shape == (N * H * W * A, 4)
    n, a, y, x = 1, 2, 1, 3
    row = n * H * W * A + (y * W + x) * A + a
    assert flat_cls.numpy()[row, 0] == cls[n, a, y, x]
    np.testing.assert_array_equal(flat_reg.numpy()[row], reg[n, 4 * a:4 * a + 4, y, x])


def test_top_n_per_level():
    scores = np.array([[0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7]])
    # levels of 4 and 3 anchors, 2 best of each, best first within a level
    np.testing.assert_array_equal(top_n_idx_per_level(scores, [4, 3], 2), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(top_n_idx_per_level(scores, [4, 3], 5), [[1, 2, 3, 0, 4, 6, 5]])


def test_anchor_labels_by_hand():
    rpn = _rpn()
    anchors = [np.array([[0, 0, 10, 10],      # IoU 1 with the gt: positive
                         [0, 0, 10, 20],      # IoU 0.5: ignored
                         [50, 50, 60, 60],    # IoU 0: negative
                         [0, 0, 10, 14]], np.float32)]  # IoU 0.71: positive
    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": np.array([[0, 0, 10, 10]], np.float32)}])
    np.testing.assert_array_equal(labels[0], [POSITIVE, IGNORE, NEGATIVE, POSITIVE])
    np.testing.assert_array_equal(matched[0][0], [0, 0, 10, 10])
    # no gt: everything negative
    labels, _ = rpn.assign_targets_to_anchors(anchors, [{"boxes": np.zeros((0, 4), np.float32)}])
    np.testing.assert_array_equal(labels[0], NEGATIVE)


def test_low_quality_match_makes_a_positive():
    rpn = _rpn()
    anchors = [np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)]
    # the gt's best anchor has IoU 0.25 < 0.3, yet it becomes positive (allow_low_quality_matches)
    labels, _ = rpn.assign_targets_to_anchors(anchors, [{"boxes": np.array([[0, 0, 20, 20]], np.float32)}])
    np.testing.assert_array_equal(labels[0], [POSITIVE, NEGATIVE])


def _tv_and_ours(torch, rng, **kw):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchors
    from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
    from torchvision.models.detection.rpn import RPNHead as TVHead

    torch.manual_seed(0)
    tv_head = TVHead(8, 3)
    for p in tv_head.parameters():  # spread the scores: no near-ties
        torch.nn.init.uniform_(p, -0.3, 0.3)
    args = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
                pre_nms_top_n=dict(training=200, testing=100), post_nms_top_n=dict(training=50, testing=30),
                nms_thresh=0.7)
    args.update(kw)
    tv = TVRPN(TVAnchors(SIZES, RATIOS), tv_head, **args)
    ours = _rpn(**kw)
    ours.head.load_state_dict({k: v.detach().numpy() for k, v in tv_head.state_dict().items()})
    return tv, ours


@pytest.mark.reference
def test_proposals_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.image_list import ImageList as TVImageList

    tv, ours = _tv_and_ours(torch, rng)
    tv.eval(), ours.eval()
    feats = _features(rng)
    with torch.no_grad():
        expected, _ = tv(TVImageList(torch.zeros(2, 3, 128, 160), IMAGE_SIZES),
                         OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items()))
    with record_intermediates() as rec:
        got, losses = ours(ImageList(np.zeros((2, 3, 128, 160), np.float32), IMAGE_SIZES),
                           OrderedDict((k, Tensor(v)) for k, v in feats.items()))
    assert losses == {}
    for e, g in zip(expected, got):
        assert g.shape == tuple(e.shape) and len(g) == 30
        np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-3)
    assert set(rec) >= {"anchors", "objectness", "pred_bbox_deltas", "proposals_before_nms", "proposals"}
    assert sum(rec["num_anchors_per_level"]) == len(rec["anchors"][0])


@pytest.mark.reference
def test_losses_and_gradients_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.image_list import ImageList as TVImageList

    # a batch larger than the anchors: the sampler takes every labelled anchor, so no randomness
    tv, ours = _tv_and_ours(torch, rng, batch_size_per_image=100_000)
    tv.train(), ours.train()
    feats = _features(rng)
    targets = _targets()
    tv_feats = OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items())
    _, expected = tv(TVImageList(torch.zeros(2, 3, 128, 160), IMAGE_SIZES), tv_feats,
                     [{"boxes": torch.from_numpy(t["boxes"])} for t in targets])
    sum(expected.values()).backward()
    _, got = ours(ImageList(np.zeros((2, 3, 128, 160), np.float32), IMAGE_SIZES),
                  OrderedDict((k, Tensor(v)) for k, v in feats.items()), targets)
    assert set(got) == {"loss_objectness", "loss_rpn_box_reg"}
    for k in got:
        np.testing.assert_allclose(got[k].item(), expected[k].item(), rtol=1e-5)
    sum(got.values()).backward()
    tv_grads = dict(tv.head.named_parameters())
    for name, p in ours.head.named_parameters():
        np.testing.assert_allclose(p.grad, tv_grads[name].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_sampled_losses_are_finite_and_backpropagate(rng):
    rpn = _rpn(seed=0)
    rpn.train()
    _, losses = rpn(ImageList(np.zeros((2, 3, 128, 160), np.float32), IMAGE_SIZES),
                    OrderedDict((k, Tensor(v)) for k, v in _features(rng).items()), _targets())
    total = losses["loss_objectness"] + losses["loss_rpn_box_reg"]
    assert np.isfinite(total.item()) and losses["loss_rpn_box_reg"].item() > 0
    total.backward()
    assert all(p.grad is not None and np.any(p.grad) for p in rpn.head.parameters())
