"""The mask-branch alternatives of Mask R-CNN's Table 2: the MLP mask head, a per-pixel softmax over
the classes, class-agnostic masks, and the RoI layer choice in the poolers: shapes and names,
gradient checks, parity with torch, and each configured through MaskRCNN.from_config."""
import dataclasses
from collections import OrderedDict

import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, record_intermediates
from minimaskrcnn.data.shapes import ShapesDataset
from minimaskrcnn.models import build_model
from minimaskrcnn.models.configs import MaskHeadConfig, get_config
from minimaskrcnn.models.poolers import POOLER_TYPES, MultiScaleRoIAlign
from minimaskrcnn.models.roi_heads import (
    MaskRCNNMLPHead,
    MaskRCNNPredictor,
    MLPMaskPredictor,
    RoIHeads,
    maskrcnn_inference,
    maskrcnn_loss,
)
from minimaskrcnn.ops import roi_align, roi_pool, roi_warp

L = 4


def _mask_case(rng, K=5, S=6, dtype=np.float64):
    """Logits for K positive RoIs of two images, their proposals, gt masks, labels and matches."""
    logits = rng.standard_normal((K, L, S, S)).astype(dtype)
    gt_masks = [np.zeros((2, 40, 40), np.uint8), np.zeros((1, 40, 40), np.uint8)]
    gt_masks[0][0, 5:20, 8:30] = 1
    gt_masks[0][1, 22:38, 2:18] = 1
    gt_masks[1][0, 10:35, 10:35] = 1
    gt_labels = [np.array([2, 3]), np.array([1])]
    proposals = [np.array([[6, 4, 31, 22], [0, 20, 20, 39], [7, 5, 28, 19]], dtype),
                 np.array([[8, 9, 37, 36], [12, 10, 30, 33]], dtype)]
    matched = [np.array([0, 1, 0]), np.array([0, 0])]
    return logits, proposals, gt_masks, gt_labels, matched


# ------------------------------------------------------------------------------------ MLP head
def test_mlp_head_shapes_names_and_gradcheck():
    rng = np.random.default_rng(0)
    head, predictor = MaskRCNNMLPHead(3 * 4 * 4, (7, 5)), MLPMaskPredictor(5, L, mask_size=6)
    assert list(head.state_dict()) == ["mask_fc1.weight", "mask_fc1.bias", "mask_fc2.weight", "mask_fc2.bias"]
    assert list(predictor.state_dict()) == ["mask_fc_logits.weight", "mask_fc_logits.bias"]
    assert predictor(head(Tensor(np.zeros((2, 3, 4, 4), np.float32)))).shape == (2, L, 6, 6)
    head.to_dtype(np.float64), predictor.to_dtype(np.float64)
    x = Tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True)
    w = dict(head.named_parameters())["mask_fc1.weight"]
    result = gradcheck(lambda t, w: predictor(head(t)), [x, w], tol=1e-5)
    assert result.passed, result.report()
    with pytest.raises(ValueError):
        MaskRCNNMLPHead(10, ())


@pytest.mark.reference
def test_mlp_head_matches_torch_linear_layers():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    head, predictor = MaskRCNNMLPHead(3 * 4 * 4, (7, 5)), MLPMaskPredictor(5, L, mask_size=6)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    params = {k: torch.from_numpy(np.asarray(v)) for k, v in {**head.state_dict(),
              **{"p." + k: v for k, v in predictor.state_dict().items()}}.items()}
    t = torch.from_numpy(x).flatten(1)
    t = torch.relu(torch.nn.functional.linear(t, params["mask_fc1.weight"], params["mask_fc1.bias"]))
    t = torch.relu(torch.nn.functional.linear(t, params["mask_fc2.weight"], params["mask_fc2.bias"]))
    t = torch.nn.functional.linear(t, params["p.mask_fc_logits.weight"], params["p.mask_fc_logits.bias"])
    np.testing.assert_allclose(predictor(head(Tensor(x))).numpy(), t.reshape(2, L, 6, 6).numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- mask losses
@pytest.mark.reference
def test_softmax_mask_loss_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    rng = np.random.default_rng(2)
    logits, proposals, gt_masks, gt_labels, matched = _mask_case(rng)
    x = Tensor(logits, requires_grad=True)
    loss = maskrcnn_loss(x, proposals, gt_masks, gt_labels, matched, loss="softmax")
    loss.backward()
    targets = torch.cat([project_masks_on_boxes(torch.from_numpy(m), torch.from_numpy(p), torch.from_numpy(i), 6)
                         for m, p, i in zip(gt_masks, proposals, matched)])
    labels = torch.cat([torch.from_numpy(g[i]) for g, i in zip(gt_labels, matched)])
    pixel_labels = torch.where(targets >= 0.5, labels[:, None, None], torch.zeros_like(labels)[:, None, None])
    xt = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(xt, pixel_labels)
    expected.backward()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-10)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_softmax_mask_loss_gradcheck_and_errors():
    rng = np.random.default_rng(3)
    logits, proposals, gt_masks, gt_labels, matched = _mask_case(rng, S=4)
    x = Tensor(logits, requires_grad=True)
    result = gradcheck(lambda t: maskrcnn_loss(t, proposals, gt_masks, gt_labels, matched, loss="softmax"), [x])
    assert result.passed, result.report()
    with pytest.raises(ValueError, match="class-agnostic"):
        maskrcnn_loss(Tensor(logits[:, :1]), proposals, gt_masks, gt_labels, matched, loss="softmax")
    with pytest.raises(ValueError, match="unknown mask loss"):
        maskrcnn_loss(x, proposals, gt_masks, gt_labels, matched, loss="hinge")


def test_class_agnostic_loss_and_inference_read_the_one_channel():
    rng = np.random.default_rng(4)
    logits, proposals, gt_masks, gt_labels, matched = _mask_case(rng)
    single = logits[:, :1]
    # one channel = every class's channel equal to it
    agnostic = maskrcnn_loss(Tensor(single), proposals, gt_masks, gt_labels, matched)
    repeated = maskrcnn_loss(Tensor(np.repeat(single, L, axis=1)), proposals, gt_masks, gt_labels, matched)
    np.testing.assert_allclose(agnostic.item(), repeated.item(), rtol=1e-12)
    probs = maskrcnn_inference(single, [np.array([3, 1, 2]), np.array([2, 2])])
    np.testing.assert_allclose(np.concatenate(probs)[:, 0], 1 / (1 + np.exp(-single[:, 0])), rtol=1e-12)


def test_softmax_inference_keeps_the_pixels_the_class_wins():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, L, 5, 5))
    labels = [np.array([1, 2, 3]), np.array([3, 1, 2])]
    probs = np.concatenate(maskrcnn_inference(logits, labels, loss="softmax"))[:, 0]
    wins = logits.argmax(axis=1) == np.concatenate(labels)[:, None, None]
    np.testing.assert_array_equal(probs > 0.5, wins)
    assert ((probs >= 0) & (probs <= 1)).all()


# ----------------------------------------------------------------------------------- poolers
def test_pooler_types_pool_with_their_op():
    rng = np.random.default_rng(6)
    feats = OrderedDict([("0", Tensor(rng.standard_normal((1, 2, 16, 16)).astype(np.float32)))])
    boxes = [np.array([[3.3, 7.9, 40.2, 51.0], [10.0, 2.0, 60.0, 30.0]], np.float32)]
    rois = np.concatenate([np.zeros((2, 1), np.float32), boxes[0]], axis=1)
    expected = {
        "roi_align": roi_align(feats["0"], rois, 7, 0.25, 2),
        "roi_align_max": roi_align(feats["0"], rois, 7, 0.25, 2, mode="max"),
        "roi_warp": roi_warp(feats["0"], rois, 7, 0.25, 2),
        "roi_warp_max": roi_warp(feats["0"], rois, 7, 0.25, 2, mode="max"),
        "roi_pool": roi_pool(feats["0"], rois, 7, 0.25),
    }
    assert set(expected) == set(POOLER_TYPES)
    for pooler_type, e in expected.items():
        got = MultiScaleRoIAlign(["0"], 7, 2, pooler_type=pooler_type)(feats, boxes, [(64, 64)])
        np.testing.assert_array_equal(got.numpy(), e.numpy(), err_msg=pooler_type)
    assert "roi_warp_max" in repr(MultiScaleRoIAlign(["0"], 7, 2, pooler_type="roi_warp_max"))
    with pytest.raises(ValueError, match="pooler_type"):
        MultiScaleRoIAlign(["0"], 7, 2, pooler_type="roi_crop")


# ------------------------------------------------------------------------- through the config
@pytest.mark.parametrize("mask", [MaskHeadConfig(head="mlp", mlp_dims=(32, 32), pooler_type="roi_warp_max"),
                                  MaskHeadConfig(loss="softmax", layers=(8,), dim_reduced=8, pooler_type="roi_pool"),
                                  MaskHeadConfig(class_agnostic=True, layers=(8,), dim_reduced=8)])
def test_configured_variants_train_and_detect(mask):
    config = get_config("r18-shapes", num_classes=L, min_size=64, max_size=64, seed=0, box_batch_size_per_image=16)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, width_multiplier=0.125,
                                                                       fpn_channels=8), mask=mask)
    config = dataclasses.replace(config, box=dataclasses.replace(config.box, pooler_type=mask.pooler_type))
    model = build_model(config)
    heads = model.roi_heads
    assert isinstance(heads, RoIHeads) and heads.mask_loss == mask.loss
    assert heads.box_roi_pool.pooler_type == heads.mask_roi_pool.pooler_type == mask.pooler_type
    if mask.head == "mlp":
        assert isinstance(heads.mask_head, MaskRCNNMLPHead) and isinstance(heads.mask_predictor, MLPMaskPredictor)
    else:
        assert isinstance(heads.mask_predictor, MaskRCNNPredictor)
    ds = ShapesDataset(2, 64, seed=0, min_size=16, max_size=40)
    model.train()
    with record_intermediates() as rec:
        losses = model([ds[0][0], ds[1][0]], [ds[0][1], ds[1][1]])
    assert rec["mask_logits"].shape[1:] == ((1 if mask.class_agnostic else L), 28, 28)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in heads.mask_predictor.parameters())
    model.eval()
    out = model([ds[0][0]])[0]
    assert out["masks"].shape[1:] == (1, 64, 64)
    with pytest.raises(ValueError, match="mask head"):
        build_model(dataclasses.replace(config, mask=MaskHeadConfig(head="hourglass-9000")))
