"""RoI heads: level mapping, multi-scale RoIAlign, box post-processing, the losses and the mask
branch, each against torchvision's given the same inputs and weights."""
from collections import OrderedDict

import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, record_intermediates
from minimaskrcnn.models.poolers import LevelMapper, MultiScaleRoIAlign, infer_scale
from minimaskrcnn.models.roi_heads import (
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
    select_mask_training_rois,
)

L = 4  # classes with background
C = 8  # channels
IMAGE_SIZES = [(128, 160), (112, 150)]
GRIDS = [(32, 40), (16, 20), (8, 10), (4, 5)]


def test_level_mapper_by_hand():
    mapper = LevelMapper(2, 5)
    boxes = np.array([[0, 0, 224, 224],   # canonical: P4
                      [0, 0, 112, 112],   # half: P3
                      [0, 0, 448, 448],   # twice: P5
                      [0, 0, 10, 10],     # tiny: clamped to P2
                      [0, 0, 2000, 2000]], np.float32)  # huge: clamped to P5
    np.testing.assert_array_equal(mapper([boxes]), [2, 1, 3, 0, 3])


def test_infer_scale():
    assert infer_scale((200, 267), (800, 1066)) == 0.25
    assert infer_scale((25, 34), (800, 1066)) == 1 / 32


def _features(rng, n=2, requires_grad=False):
    return OrderedDict((str(i), Tensor(rng.standard_normal((n, C) + g).astype(np.float32), requires_grad=requires_grad))
                       for i, g in enumerate(GRIDS))


def _boxes(rng, k):
    xy = rng.uniform(0, 100, (k, 2))
    wh = rng.uniform(4, 150, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.reference
def test_level_mapper_matches_torchvision(rng):
    pytest.importorskip("torch")
    import torch
    from torchvision.ops.poolers import LevelMapper as TVLevelMapper

    boxes = [_boxes(rng, 300), _boxes(rng, 100) * 3]
    expected = TVLevelMapper(2, 5)([torch.from_numpy(b) for b in boxes]).numpy()
    np.testing.assert_array_equal(LevelMapper(2, 5)(boxes), expected)


@pytest.mark.reference
def test_multiscale_roi_align_forward_and_backward_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.ops import MultiScaleRoIAlign as TVPool

    feats = _features(rng, requires_grad=True)
    huge = np.array([[0, 0, 460, 470], [-20, -10, 500, 520]], np.float32)  # P5
    boxes = [np.concatenate([_boxes(rng, 40), huge]), _boxes(rng, 25) * 2]
    tv_feats = OrderedDict((k, torch.tensor(v.numpy(), requires_grad=True)) for k, v in feats.items())
    expected = TVPool(list(feats), 7, 2)(tv_feats, [torch.from_numpy(b) for b in boxes], IMAGE_SIZES)
    pool = MultiScaleRoIAlign(list(feats), 7, 2)
    got = pool(feats, boxes, IMAGE_SIZES)
    np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert set(np.unique(pool.last_levels)) == {0, 1, 2, 3}  # every level used: the merge is exercised
    dout = rng.standard_normal(got.shape).astype(np.float32)
    expected.backward(torch.from_numpy(dout))
    got.backward(dout)
    for k in feats:
        np.testing.assert_allclose(feats[k].grad, tv_feats[k].grad.numpy(), rtol=1e-4, atol=1e-4)


def _tv_heads(torch, **kw):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
    from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TVMaskHeads
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TVMaskPredictor
    from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
    from torchvision.ops import MultiScaleRoIAlign as TVPool

    torch.manual_seed(0)
    args = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
                bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    args.update(kw)
    names = [str(i) for i in range(len(GRIDS))]
    tv = TVRoIHeads(TVPool(names, 7, 2), TVTwoMLPHead(C * 49, 32), TVPredictor(32, L), **args,
                    mask_roi_pool=TVPool(names, 14, 2), mask_head=TVMaskHeads(C, (C, C), 1),
                    mask_predictor=TVMaskPredictor(C, C, L))
    with torch.no_grad():  # moderate weights: spread-out scores and boxes
        for p in tv.parameters():
            p.uniform_(-0.1, 0.1)
    ours = RoIHeads(MultiScaleRoIAlign(names, 7, 2), TwoMLPHead(C * 49, 32), FastRCNNPredictor(32, L), **args,
                    mask_roi_pool=MultiScaleRoIAlign(names, 14, 2), mask_head=MaskRCNNHeads(C, (C, C), 1),
                    mask_predictor=MaskRCNNPredictor(C, C, L))
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd)
    return tv, ours


def _targets(rng):
    targets = []
    for h, w in IMAGE_SIZES:
        boxes = np.array([[10, 20, 60, 90], [70, 30, 150, 60], [5, 5, 100, 110]], np.float32)
        masks = np.zeros((3, h, w), np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
            m[y1 + 3:y2 - 2, x1 + 1:x2 - 4] = 1
        targets.append({"boxes": boxes, "labels": np.array([1, 3, 2]), "masks": masks})
    return targets


@pytest.mark.reference
def test_eval_detections_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    tv, ours = _tv_heads(torch, score_thresh=0.0, detections_per_img=40)
    tv.eval(), ours.eval()
    feats = _features(rng)
    proposals = [_boxes(rng, 60), _boxes(rng, 45)]
    with torch.no_grad():
        expected, _ = tv(OrderedDict((k, torch.from_numpy(v.numpy())) for k, v in feats.items()),
                         [torch.from_numpy(p) for p in proposals], IMAGE_SIZES)
    with record_intermediates() as rec:
        got, losses = ours(feats, proposals, IMAGE_SIZES)
    assert losses == {}
    for e, g in zip(expected, got):
        assert set(g) == {"boxes", "labels", "scores", "masks"} and len(g["boxes"]) == 40
        np.testing.assert_array_equal(g["labels"], e["labels"].numpy())
        np.testing.assert_allclose(g["boxes"], e["boxes"].numpy(), rtol=0, atol=1e-3)
        np.testing.assert_allclose(g["scores"], e["scores"].numpy(), rtol=0, atol=1e-6)
        assert g["masks"].shape == (40, 1, 28, 28)
        np.testing.assert_allclose(g["masks"], e["masks"].numpy(), rtol=0, atol=1e-5)
    assert rec["class_logits"].shape == (105, L) and rec["mask_logits"].shape == (80, L, 28, 28)


@pytest.mark.reference
def test_training_losses_and_gradients_match_torchvision(rng):
    torch = pytest.importorskip("torch")
    # the batch is larger than the proposals: every RoI is sampled, so no randomness
    tv, ours = _tv_heads(torch, batch_size_per_image=10_000, positive_fraction=1.0)
    tv.train(), ours.train()
    feats = _features(rng)
    targets = _targets(rng)
    proposals = [np.concatenate([_boxes(rng, 30), t["boxes"] + rng.uniform(-4, 4, (3, 4)).astype(np.float32)])
                 for t in targets]
    tv_targets = [{k: torch.from_numpy(v) for k, v in t.items()} for t in targets]
    _, expected = tv(OrderedDict((k, torch.from_numpy(v.numpy())) for k, v in feats.items()),
                     [torch.from_numpy(p) for p in proposals], IMAGE_SIZES, tv_targets)
    sum(expected.values()).backward()
    with record_intermediates() as rec:
        _, got = ours(feats, proposals, IMAGE_SIZES, targets)
    assert set(got) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    for k in got:
        np.testing.assert_allclose(got[k].item(), expected[k].item(), rtol=1e-4)
    sum(got.values()).backward()
    tv_params = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tv_params[name].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    # the record: sampled RoIs include the gt boxes, mask targets are 28x28 in [0, 1]
    assert all(len(p) == 36 for p in rec["roi_proposals"])
    mask_targets = rec["mask_targets"]
    assert mask_targets.shape[1:] == (28, 28) and 0 <= mask_targets.min() <= mask_targets.max() <= 1


@pytest.mark.reference
def test_fastrcnn_loss_matches_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import fastrcnn_loss as tv_loss

    logits = rng.standard_normal((10, L)).astype(np.float32)
    deltas = rng.standard_normal((10, 4 * L)).astype(np.float32)
    labels = [np.array([0, 1, 3, 0, 2, 2]), np.array([1, 0, 0, 3])]
    targets = [rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)]
    expected = tv_loss(torch.from_numpy(logits), torch.from_numpy(deltas), [torch.from_numpy(x) for x in labels],
                       [torch.from_numpy(t) for t in targets])
    got = fastrcnn_loss(Tensor(logits), Tensor(deltas), labels, targets)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.item(), e.item(), rtol=1e-5)


def test_mask_inference_picks_the_class_channel():
    logits = np.zeros((3, L, 2, 2), np.float32)
    logits[0, 2] = 5.0
    logits[2, 1] = -5.0
    probs = maskrcnn_inference(logits, [np.array([2, 1]), np.array([1])])
    assert [p.shape for p in probs] == [(2, 1, 2, 2), (1, 1, 2, 2)]
    np.testing.assert_allclose(probs[0][0], 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    np.testing.assert_allclose(probs[0][1], 0.5)
    np.testing.assert_allclose(probs[1][0], 1 / (1 + np.exp(5.0)), rtol=1e-6)


def test_mask_predictor_doubles_the_size():
    head = MaskRCNNHeads(C, (6, 6, 6, 6))
    pred = MaskRCNNPredictor(6, 5, L)
    out = pred(head(Tensor(np.zeros((3, C, 14, 14), np.float32))))
    assert out.shape == (3, L, 28, 28)
    assert list(head.state_dict())[:2] == ["0.0.weight", "0.0.bias"]
    assert list(pred.state_dict()) == ["conv5_mask.weight", "conv5_mask.bias", "mask_fcn_logits.weight",
                                       "mask_fcn_logits.bias"]


def test_no_positive_rois_gives_zero_mask_loss(rng):
    names = [str(i) for i in range(len(GRIDS))]
    heads = RoIHeads(MultiScaleRoIAlign(names, 7, 2), TwoMLPHead(C * 49, 16), FastRCNNPredictor(16, L), 0.5, 0.5,
                     64, 0.25, None, 0.05, 0.5, 10, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                     mask_head=MaskRCNNHeads(C, (C,)), mask_predictor=MaskRCNNPredictor(C, C, L), seed=0)
    heads.train()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, 128, 160), np.uint8)}
    _, losses = heads(_features(rng), [_boxes(rng, 20), _boxes(rng, 20)], IMAGE_SIZES, [empty, dict(empty)])
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()


# --------------------------------------------- box-only instances and the Deep-MAC switches (lesson 18)
def test_mask_loss_ignores_box_only_instances_with_a_gradient_check(rng):
    """RoIs of box-only gt instances add nothing to the mask loss and get exactly zero gradient."""
    S, H, W = 6, 20, 24
    gt_masks = [(rng.uniform(size=(3, H, W)) > 0.5).astype(np.uint8)]
    gt_labels = [np.array([1, 2, 3])]
    has_mask = [np.array([True, False, True])]
    boxes = [np.array([[1, 1, 12, 15], [4, 2, 20, 18], [0, 0, 23, 19], [6, 5, 14, 16]], np.float64)]
    matched = [np.array([0, 1, 2, 1])]  # RoIs 1 and 3 belong to the box-only instance 1
    logits = Tensor(rng.standard_normal((4, L, S, S)), requires_grad=True)

    loss = maskrcnn_loss(logits, boxes, gt_masks, gt_labels, matched, gt_has_mask=has_mask)
    kept = maskrcnn_loss(Tensor(logits.numpy()[[0, 2]]), [boxes[0][[0, 2]]], gt_masks, gt_labels, [matched[0][[0, 2]]])
    np.testing.assert_allclose(loss.item(), kept.item(), rtol=1e-12)  # the mean over the kept RoIs only
    # a box-only instance's (all-zero or garbage) mask changes nothing
    garbage = [gt_masks[0].copy()]
    garbage[0][1] = 1 - garbage[0][1]
    np.testing.assert_allclose(maskrcnn_loss(logits, boxes, garbage, gt_labels, matched, gt_has_mask=has_mask).item(),
                               loss.item(), rtol=1e-12)
    loss.backward()
    assert not logits.grad[[1, 3]].any() and logits.grad[[0, 2]].any()
    result = gradcheck(lambda x: maskrcnn_loss(x, boxes, gt_masks, gt_labels, matched, gt_has_mask=has_mask),
                       [Tensor(rng.standard_normal((4, L, S, S)), requires_grad=True)])
    assert result.passed, result.report()
    # with every mask present the same call is the ordinary loss
    all_true = [np.ones(3, bool)]
    np.testing.assert_allclose(maskrcnn_loss(logits, boxes, gt_masks, gt_labels, matched, gt_has_mask=all_true).item(),
                               maskrcnn_loss(logits, boxes, gt_masks, gt_labels, matched).item(), rtol=1e-12)


def _partial_heads(**kw):
    names = [str(i) for i in range(len(GRIDS))]
    from minimaskrcnn.nn import init

    init.manual_seed(0)
    return RoIHeads(MultiScaleRoIAlign(names, 7, 2), TwoMLPHead(C * 49, 16), FastRCNNPredictor(16, L), 0.5, 0.5,
                    10_000, 1.0, None, 0.05, 0.5, 10, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                    mask_head=MaskRCNNHeads(C, (C,)), mask_predictor=MaskRCNNPredictor(C, C, L), seed=0, **kw).train()


def _losses_and_grads(heads, feats, proposals, targets):
    for p in heads.parameters():
        p.grad = None
    _, losses = heads(feats, proposals, IMAGE_SIZES, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.copy() for n, p in heads.named_parameters() if n.startswith("mask_")}
    return {k: v.item() for k, v in losses.items()}, grads


def test_box_only_instances_take_part_in_box_losses_and_not_in_mask_loss(rng):
    heads = _partial_heads()
    feats = _features(rng)
    targets = _targets(rng)
    proposals = [np.concatenate([_boxes(rng, 30), t["boxes"] + rng.uniform(-4, 4, (3, 4)).astype(np.float32)])
                 for t in targets]

    def variant(has_mask_1, mask_1=None, drop_1=False):
        out = []
        for t in targets:
            t = {k: v.copy() for k, v in t.items()}
            t["has_mask"] = np.array([True, has_mask_1, True])
            if mask_1 is not None:
                t["masks"][1] = mask_1(t["masks"][1])
            if drop_1:
                t = {k: v[[0, 2]] for k, v in t.items()}
            out.append(t)
        return out

    box_only, g_box_only = _losses_and_grads(heads, feats, proposals, variant(False, lambda m: 0 * m))
    garbage, g_garbage = _losses_and_grads(heads, feats, proposals, variant(False, lambda m: 1 - m))
    with_mask, _ = _losses_and_grads(heads, feats, proposals, variant(True, lambda m: 1 - m))
    dropped, _ = _losses_and_grads(heads, feats, proposals, variant(False, drop_1=True))
    # mask loss and its gradient: the box-only instance's mask is never read
    assert garbage["loss_mask"] == box_only["loss_mask"]
    for name in g_box_only:
        np.testing.assert_array_equal(g_garbage[name], g_box_only[name], err_msg=name)
    assert with_mask["loss_mask"] != box_only["loss_mask"]  # the same mask, once it counts, changes the loss
    # box losses: full weight, exactly as if it had a mask; different from leaving the instance out
    for k in ("loss_classifier", "loss_box_reg"):
        assert box_only[k] == with_mask[k], k
        assert box_only[k] != dropped[k], k


def test_mask_training_rois_from_gt_boxes_or_one_proposal_per_object():
    proposals = [np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [21, 19, 31, 29], [50, 50, 60, 60],
                           [2, 0, 12, 10]], np.float32)]
    labels = [np.array([1, 1, 2, 2, 0, 1])]
    matched = [np.array([0, 0, 1, 1, 0, 0])]
    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 5]], np.float32)]
    has = [np.array([True, True, False])]
    # torchvision's rule: every positive RoI
    rois, idx = select_mask_training_rois(proposals, matched, labels, gt_boxes)
    np.testing.assert_array_equal(idx[0], [0, 0, 1, 1, 0])
    # Deep-MAC: the gt boxes that have masks, each once
    rois, idx = select_mask_training_rois(proposals, matched, labels, gt_boxes, has, source="gt_boxes")
    np.testing.assert_array_equal(rois[0], gt_boxes[0][:2])
    np.testing.assert_array_equal(idx[0], [0, 1])
    # one random positive per object: as many examples as gt boxes, drawn from each object's positives
    gen = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        rois, idx = select_mask_training_rois(proposals, matched, labels, gt_boxes, has, rois_per_object=1,
                                              generator=gen)
        assert sorted(idx[0].tolist()) == [0, 1]
        seen.add(tuple(map(tuple, rois[0][idx[0] == 0])))
    assert len(seen) == 3  # all three positives of object 0 get drawn
    # a box-only object's positives are left out
    rois, idx = select_mask_training_rois(proposals, matched, labels, gt_boxes, [np.array([False, True, True])])
    np.testing.assert_array_equal(idx[0], [1, 1])
    with pytest.raises(ValueError, match="unknown mask training RoIs"):
        select_mask_training_rois(proposals, matched, labels, gt_boxes, source="boxes")


def test_class_agnostic_mask_inference_reads_the_one_channel():
    logits = np.zeros((3, 1, 2, 2), np.float32)
    logits[1, 0] = 5.0
    probs = maskrcnn_inference(logits, [np.array([2, 7]), np.array([1])])
    np.testing.assert_allclose(probs[0][1], 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    np.testing.assert_allclose(probs[1][0], 0.5)
