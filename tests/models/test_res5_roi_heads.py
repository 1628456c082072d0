"""The C4 configuration: res5 as the RoI head (detectron2's Res5ROIHeads), the single-level backbone,
and parity with a torch composition of torchvision's parts (roi_align, Bottleneck blocks,
FastRCNNPredictor, MaskRCNNPredictor, the losses) given the same weights and sampled RoIs."""
from collections import OrderedDict

import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, record_intermediates
from minimaskrcnn.data.shapes import ShapesDataset
from minimaskrcnn.models import build_model
from minimaskrcnn.models.configs import (
    AnchorConfig,
    BackboneConfig,
    BoxHeadConfig,
    MaskHeadConfig,
    MaskRCNNConfig,
    TransformConfig,
)
from minimaskrcnn.models.res5_roi_heads import Res5ROIHeads, res5_head

L = 4
IMAGE_SIZES = [(128, 160), (112, 150)]


def c4_config(**changes):
    """A tiny R50-C4 (width 1/8: C4 has 128 channels, res5 256) with frozen batch norm."""
    backbone = BackboneConfig(depth=50, width_multiplier=0.125, norm="frozen_bn", trainable_layers=5,
                              returned_layers=(3,), fpn=False)
    config = MaskRCNNConfig(num_classes=L, backbone=backbone, roi_heads="res5", seed=0,
                            transform=TransformConfig(min_size=96, max_size=128),
                            anchors=AnchorConfig(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),)),
                            box=BoxHeadConfig(roi_output_size=14, batch_size_per_image=10_000, positive_fraction=1.0),
                            mask=MaskHeadConfig(dim_reduced=16))
    return config.with_overrides(**changes) if changes else config


def test_res5_is_the_fifth_stage_and_halves_the_pool():
    res5, c4, c5 = res5_head(c4_config().backbone)
    assert (c4, c5) == (128, 256) and len(res5) == 3
    assert res5[0].conv2.stride == (2, 2) and res5[0].downsample[0].stride == (2, 2)  # torchvision: stride in the 3x3
    out = res5(Tensor(np.zeros((2, 128, 14, 14), np.float32)))
    assert out.shape == (2, 256, 7, 7)


def test_c4_model_parts_names_and_shapes():
    model = build_model(c4_config())
    assert isinstance(model.roi_heads, Res5ROIHeads) and model.backbone.out_channels == 128
    names = list(model.state_dict())
    assert "backbone.body.layer3.0.conv1.weight" in names
    assert not any(n.startswith("backbone.body.layer4") for n in names)
    assert "roi_heads.res5.0.downsample.0.weight" in names and "roi_heads.mask_predictor.conv5_mask.weight" in names
    assert not any(n.startswith(("backbone.fpn", "roi_heads.box_head", "roi_heads.mask_head")) for n in names)
    ds = ShapesDataset(2, 96, seed=0, min_size=24, max_size=60)
    model.eval()
    out = model([ds[0][0]])[0]
    assert out["masks"].shape[1:] == (1, 96, 96)
    with record_intermediates() as rec:
        model([ds[0][0]])
    if len(rec["mask_logits"]):
        assert rec["mask_logits"].shape[1:] == (L, 14, 14)  # C4 masks are 14 x 14


def test_c4_training_reaches_res5_and_the_bad_configurations_raise():
    model = build_model(c4_config(box_batch_size_per_image=16))
    ds = ShapesDataset(2, 96, seed=1, min_size=24, max_size=60)
    model.train()
    losses = model([ds[0][0], ds[1][0]], [ds[0][1], ds[1][1]])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name in ("roi_heads.res5.2.conv3.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight",
                 "backbone.body.layer3.0.conv1.weight"):
        assert params[name].grad is not None and np.any(params[name].grad), name
    import dataclasses

    config = c4_config()
    with pytest.raises(ValueError, match="pool once for both branches"):
        build_model(dataclasses.replace(config, mask=MaskHeadConfig(pooler_type="roi_pool")))
    with pytest.raises(ValueError, match="returning C4"):
        build_model(dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, returned_layers=(4,))))
    with pytest.raises(ValueError, match="roi_heads"):
        build_model(dataclasses.replace(config, roi_heads="res6"))


def test_res5_block_gradcheck():
    rng = np.random.default_rng(0)
    config = BackboneConfig(depth=50, width_multiplier=1 / 32, norm="gn", gn_groups=2)
    res5, c4, _ = res5_head(config)
    res5.to_dtype(np.float64)
    x = Tensor(rng.standard_normal((1, c4, 5, 5)), requires_grad=True)
    result = gradcheck(lambda t: res5(t), [x], tol=1e-5)
    assert result.passed, result.report()


# ------------------------------------------------------------------------------ torch oracle
def _torch_c4_heads(torch, ours):
    """The same heads from torchvision's parts, with ours' weights loaded (random frozen BN statistics)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops.misc import FrozenBatchNorm2d

    down = torch.nn.Sequential(torch.nn.Conv2d(128, 256, 1, stride=2, bias=False), FrozenBatchNorm2d(256))
    heads = torch.nn.Module()
    heads.res5 = torch.nn.Sequential(Bottleneck(128, 64, 2, down, norm_layer=FrozenBatchNorm2d),
                                     Bottleneck(256, 64, norm_layer=FrozenBatchNorm2d),
                                     Bottleneck(256, 64, norm_layer=FrozenBatchNorm2d))
    heads.box_predictor = FastRCNNPredictor(256, L)
    heads.mask_predictor = MaskRCNNPredictor(256, 16, L)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in list(heads.named_parameters()) + list(heads.named_buffers()):
            if "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif name.endswith("weight") and t.ndim == 1:
                t.uniform_(0.5, 1.5)
            else:
                t.uniform_(-0.1, 0.1)
    sd = {k: v.detach().numpy() for k, v in heads.state_dict().items()}
    assert set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd)
    return heads


def _targets():
    targets = []
    for h, w in IMAGE_SIZES:
        boxes = np.array([[10, 20, 60, 90], [70, 30, 150, 60], [5, 5, 100, 110]], np.float32)
        masks = np.zeros((3, h, w), np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
            m[y1 + 3:y2 - 2, x1 + 1:x2 - 4] = 1
        targets.append({"boxes": boxes, "labels": np.array([1, 3, 2]), "masks": masks})
    return targets


@pytest.mark.reference
def test_c4_training_losses_and_gradients_match_torchvision_parts():
    torch = pytest.importorskip("torch")
    import torchvision
    from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss

    rng = np.random.default_rng(0)
    ours = Res5ROIHeads.from_config(c4_config(), 128)
    tv = _torch_c4_heads(torch, ours)
    feats = OrderedDict([("0", Tensor(rng.standard_normal((2, 128, 8, 10)).astype(np.float32)))])
    targets = _targets()
    proposals = [np.concatenate([rng.uniform(0, 60, (12, 2)), rng.uniform(70, 120, (12, 2))], axis=1)[:, [0, 1, 2, 3]]
                 .astype(np.float32) for _ in targets]
    proposals = [np.concatenate([p, t["boxes"] + rng.uniform(-4, 4, (3, 4)).astype(np.float32)])
                 for p, t in zip(proposals, targets)]
    ours.train()
    with record_intermediates() as rec:
        _, got = ours(feats, proposals, IMAGE_SIZES, targets)
    sum(got.values()).backward()

    # torch: the same sampled RoIs (every RoI is sampled: no randomness), torchvision's losses
    rois = [torch.from_numpy(p) for p in rec["roi_proposals"]]
    x = torchvision.ops.roi_align(torch.from_numpy(feats["0"].numpy()), rois, 14, 1 / 16, 2, False)
    x = tv.res5(x)
    logits, deltas = tv.box_predictor(x.mean(dim=(2, 3)))
    labels = [torch.from_numpy(lbl) for lbl in rec["roi_labels"]]
    loss_cls, loss_box = fastrcnn_loss(logits, deltas, labels,
                                       [torch.from_numpy(t) for t in rec["roi_regression_targets"]])
    positive = torch.cat(labels) > 0
    mask_logits = tv.mask_predictor(x[positive])
    pos_idxs = [torch.from_numpy(m[lbl > 0]) for m, lbl in zip(rec["roi_matched_idxs"], rec["roi_labels"])]
    loss_mask = maskrcnn_loss(mask_logits, [torch.from_numpy(p) for p in rec["mask_proposals"]],
                              [torch.from_numpy(t["masks"]) for t in targets],
                              [torch.from_numpy(t["labels"]) for t in targets], pos_idxs)
    for name, expected in (("loss_classifier", loss_cls), ("loss_box_reg", loss_box), ("loss_mask", loss_mask)):
        np.testing.assert_allclose(got[name].item(), expected.item(), rtol=1e-4, err_msg=name)
    (loss_cls + loss_box + loss_mask).backward()
    tv_params = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tv_params[name].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.reference
def test_c4_eval_logits_match_torchvision_parts():
    torch = pytest.importorskip("torch")
    import torchvision

    rng = np.random.default_rng(1)
    ours = Res5ROIHeads.from_config(c4_config(box_score_thresh=0.0), 128)
    tv = _torch_c4_heads(torch, ours)
    feats = OrderedDict([("0", Tensor(rng.standard_normal((2, 128, 8, 10)).astype(np.float32)))])
    proposals = [np.array([[10, 20, 60, 90], [70, 30, 150, 60]], np.float32), np.array([[5, 5, 100, 110]], np.float32)]
    ours.eval()
    with record_intermediates() as rec:
        result, _ = ours(feats, proposals, IMAGE_SIZES)
    with torch.no_grad():
        f = torch.from_numpy(feats["0"].numpy())
        x = tv.res5(torchvision.ops.roi_align(f, [torch.from_numpy(p) for p in proposals], 14, 1 / 16, 2, False))
        logits, _ = tv.box_predictor(x.mean(dim=(2, 3)))
        np.testing.assert_allclose(rec["class_logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
        boxes = [torch.from_numpy(r["boxes"]) for r in result]
        x = tv.res5(torchvision.ops.roi_align(f, boxes, 14, 1 / 16, 2, False))
        np.testing.assert_allclose(rec["mask_logits"], tv.mask_predictor(x).numpy(), rtol=1e-4, atol=1e-5)
    assert all(r["masks"].shape[1:] == (1, 14, 14) for r in result)
