"""The assembled model: configurations, torchvision's names and call conventions, gradients into every
trainable parameter, and the intermediate results."""
import dataclasses

import numpy as np
import pytest

from minimaskrcnn import record_intermediates
from minimaskrcnn.data import ShapesDataset
from minimaskrcnn.models import (
    CONFIGS,
    LOSS_NAMES,
    AnchorGenerator,
    BackboneConfig,
    GeneralizedRCNNTransform,
    MaskRCNN,
    MaskRCNNConfig,
    MaskRCNNPredictor,
    MultiScaleRoIAlign,
    RegionProposalNetwork,
    RoIHeads,
    RPNHead,
    build_model,
    get_config,
    maskrcnn_resnet50_fpn,
    resnet_fpn_backbone,
    set_frozen_bn_eps,
)
from minimaskrcnn.nn import FrozenBatchNorm2d, init


@pytest.fixture(scope="module")
def shapes():
    ds = ShapesDataset(2, image_size=128, seed=0)
    images, targets = zip(*[ds[i] for i in range(2)])
    return list(images), list(targets)


def test_named_configurations():
    assert set(CONFIGS) >= {"maskrcnn_resnet50_fpn", "r18-shapes", "r18-coco-tiny"}
    assert CONFIGS["maskrcnn_resnet50_fpn"] == MaskRCNNConfig()
    small = CONFIGS["r18-shapes"]
    assert small.backbone.depth == 18 and small.backbone.norm == "gn" and small.backbone.trainable_layers == 5
    assert small.transform.min_size == 128 and small.num_classes == 4
    with pytest.raises(KeyError, match="unknown configuration"):
        get_config("r7")


def test_torchvision_keyword_arguments_map_onto_stages():
    cfg = get_config("maskrcnn_resnet50_fpn", min_size=512, rpn_post_nms_top_n_test=300, box_score_thresh=0.0,
                     bbox_reg_weights=None, box_batch_size_per_image=128, trainable_backbone_layers=5,
                     rpn_anchor_generator=AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5))
    assert cfg.transform.min_size == 512 and cfg.rpn.post_nms_top_n_test == 300
    assert cfg.box.score_thresh == 0.0 and cfg.box.batch_size_per_image == 128
    assert cfg.box.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)  # None keeps the default
    assert cfg.backbone.trainable_layers == 5
    assert cfg.anchors.sizes[0] == (8,) and cfg.anchors.aspect_ratios[0] == (1.0,)
    assert MaskRCNNConfig().with_overrides(num_classes=3).num_classes == 3
    dotted = get_config("r18-shapes", **{"mask.head": "hourglass", "mask.layers": [8, 8], "rpn.nms_thresh": 0.6})
    assert dotted.mask.head == "hourglass" and dotted.mask.layers == (8, 8) and dotted.rpn.nms_thresh == 0.6
    with pytest.raises(TypeError, match="no field 'heads'"):
        get_config("r18-shapes", **{"mask.heads": "hourglass"})
    with pytest.raises(TypeError, match="rpn_head"):
        get_config("maskrcnn_resnet50_fpn", rpn_head=object())


@pytest.mark.reference
def test_state_dict_names_and_shapes_equal_torchvision():
    pytest.importorskip("torch")
    import torchvision

    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=7)
    ours = maskrcnn_resnet50_fpn(num_classes=7)
    expected = {k: tuple(v.shape) for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v.shape for k, v in ours.state_dict().items()}
    assert list(got) == list(expected) and got == expected
    # a torchvision state dict (BatchNorm2d's num_batches_tracked included) loads strictly
    ours.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items()})
    np.testing.assert_array_equal(ours.roi_heads.box_predictor.cls_score.weight.numpy(),
                                  tv.roi_heads.box_predictor.cls_score.weight.detach().numpy())
    # trainable_backbone_layers=3 by default: conv1 and layer1 frozen (torchvision's pretrained default)
    frozen = {n.split(".")[2] for n, p in ours.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}


def test_frozen_bn_eps():
    model = build_model("maskrcnn_resnet50_fpn", backbone=dataclasses.replace(BackboneConfig(), norm_eps=0.0))
    eps = {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {0.0}
    set_frozen_bn_eps(model, 1e-5)
    assert {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)} == {1e-5}


def test_eval_returns_torchvision_style_detections(shapes):
    images, _ = shapes
    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0).eval()
    sizes = [(3, 128, 128), (3, 100, 128)]
    inputs = [images[0], np.ascontiguousarray(images[1][:, :100])]
    out = model(inputs)
    assert isinstance(out, list) and len(out) == 2
    for det, shape in zip(out, sizes):
        assert set(det) == {"boxes", "labels", "scores", "masks"}
        assert all(isinstance(v, np.ndarray) for v in det.values())
        d = len(det["boxes"])
        assert 0 < d <= model.config.box.detections_per_img
        assert det["boxes"].shape == (d, 4) and det["labels"].dtype == np.int64 and det["scores"].shape == (d,)
        assert det["masks"].shape == (d, 1) + shape[1:]
        assert 0 <= det["masks"].min() and det["masks"].max() <= 1
        assert (det["boxes"][:, 0::2] <= shape[2]).all() and (det["boxes"][:, 1::2] <= shape[1]).all()
        assert np.all(np.diff(det["scores"]) <= 0) and set(det["labels"]) <= {1, 2, 3}


def test_training_losses_reach_every_trainable_parameter(shapes):
    images, targets = shapes
    model = build_model("r18-shapes", seed=0).train()
    losses = model(images, targets)
    assert set(losses) == set(LOSS_NAMES)
    assert all(np.isfinite(v.item()) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # trainable_layers=5: nothing frozen
    no_grad = [n for n, p in trainable if p.grad is None or not np.any(p.grad)]
    assert no_grad == []


def test_training_needs_targets_and_valid_boxes(shapes):
    images, targets = shapes
    model = build_model("r18-shapes", seed=0).train()
    with pytest.raises(ValueError, match="targets"):
        model(images)
    bad = [dict(targets[0], boxes=np.array([[10, 10, 5, 20]], np.float32), labels=np.array([1]),
                masks=targets[0]["masks"][:1])]
    with pytest.raises(ValueError, match="positive height and width"):
        model(images[:1], bad)


def test_intermediates(shapes):
    images, targets = shapes
    model = build_model("r18-shapes", seed=0).train()
    with record_intermediates() as inter:
        losses = model(images, targets)
    assert set(losses) == set(LOSS_NAMES)
    for key in ("images", "body_features", "features", "anchors", "objectness", "proposals_before_nms", "proposals",
                "rpn_labels", "rpn_sampled_pos_idx", "roi_proposals", "roi_labels", "roi_regression_targets",
                "mask_targets", "class_logits", "mask_logits"):
        assert key in inter, key
    assert list(inter["features"]) == ["0", "1", "2", "3", "pool"]
    r = len(inter["anchors"][0])
    assert inter["rpn_labels"][0].shape == (r,) and set(np.unique(inter["rpn_labels"][0])) <= {-1.0, 0.0, 1.0}
    assert len(inter["rpn_sampled_pos_idx"]) > 0
    # the sampled RoIs include every gt box (added to the proposals)
    gt = inter["targets"][0]["boxes"]
    assert all((np.abs(inter["roi_proposals"][0] - g).max(axis=1) == 0).any() for g in gt)
    assert inter["mask_targets"].shape[1:] == (28, 28)
    model.eval()
    with record_intermediates() as inter:
        out = model(images[:1])
    assert "detections" in inter and "rpn_labels" not in inter
    assert len(inter["detections"][0]["boxes"]) == len(out[0]["boxes"])


def _walk(value):
    """Every leaf of a recorded value (arrays inside lists, tuples and dicts)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


# key -> (shape, dtype) for the r18-shapes model on the fixture's two 128x128 images; R anchors, P proposals
# after NMS, K sampled RoIs, F positive RoIs (per batch), D detections. "train"/"eval": recorded in that mode only.
def _catalogue(rec, training: bool):
    n, r, k = 2, 4092, sum(len(p) for p in rec.get("roi_proposals", []))
    levels = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    expect = {
        "images": ((n, 3, 128, 128), np.float32),
        "anchors": [((r, 4), np.float32)] * n,
        "num_anchors_per_level": [3 * h * w for h, w in levels],
        "anchors_per_level": [((3 * h * w, 4), np.float32) for h, w in levels],
        "objectness": [((n, 3, h, w), np.float32) for h, w in levels],
        "pred_bbox_deltas": [((n, 12, h, w), np.float32) for h, w in levels],
        "class_logits": ((k if training else sum(len(p) for p in rec["proposals"]), 4), np.float32),
    }
    for key, want in expect.items():
        got = rec[key]
        if key == "num_anchors_per_level":
            assert got == want
            continue
        pairs = zip(got, want) if isinstance(want, list) else [(got, want)]
        assert isinstance(want, tuple) or len(got) == len(want), key
        for array, (shape, dtype) in pairs:
            assert array.shape == shape and array.dtype == dtype, (key, array.shape, array.dtype)
    assert [tuple(f.shape) for f in rec["features"].values()] == [(n, 64, h, w) for h, w in levels]
    for boxes, scores in zip(rec["proposals"], rec["proposal_scores"]):
        assert boxes.shape == (len(scores), 4) and boxes.dtype == scores.dtype == np.float32
    assert rec["box_regression"].shape == (len(rec["class_logits"]), 16)
    num_masks = sum(len(p) for p in rec["mask_proposals"])
    assert rec["mask_logits"].shape == (num_masks, 4, 28, 28)


def test_recorder_keys_and_shapes_in_both_modes(shapes):
    images, targets = shapes
    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0).train()
    with record_intermediates() as rec:
        model(images, targets)
    train_only = {"targets", "rpn_labels", "rpn_matched_gt_boxes", "rpn_regression_targets", "rpn_sampled_pos_idx",
                  "rpn_sampled_neg_idx", "roi_proposals", "roi_matched_idxs", "roi_labels", "roi_regression_targets",
                  "mask_targets", "mask_labels"}
    both = {"images", "image_sizes", "original_image_sizes", "body_features", "features", "anchors",
            "anchors_per_level", "num_anchors_per_level", "objectness", "pred_bbox_deltas", "proposals_before_nms",
            "proposals", "proposal_scores", "class_logits", "box_regression", "mask_proposals", "mask_logits"}
    assert set(rec) == both | train_only
    assert isinstance(rec, dict) and not any(type(a).__name__ == "Tensor" for a in _walk(dict(rec)))
    _catalogue(rec, training=True)
    r, k = 4092, sum(len(p) for p in rec["roi_proposals"])
    assert [lbl.shape for lbl in rec["rpn_labels"]] == [(r,), (r,)] and rec["rpn_labels"][0].dtype == np.float32
    assert [b.shape for b in rec["rpn_matched_gt_boxes"]] == [(r, 4)] * 2
    assert [t.shape for t in rec["rpn_regression_targets"]] == [(r, 4)] * 2
    assert rec["rpn_sampled_pos_idx"].dtype == np.int64 and rec["rpn_sampled_pos_idx"].max() < 2 * r
    assert len(rec["rpn_sampled_pos_idx"]) + len(rec["rpn_sampled_neg_idx"]) == 2 * 128  # batch_size_per_image
    assert [len(x) for x in rec["roi_labels"]] == [len(x) for x in rec["roi_proposals"]] == [64, 64]
    assert rec["roi_labels"][0].dtype == np.int64 and rec["roi_matched_idxs"][0].dtype == np.int64
    assert sum(len(t) for t in rec["roi_regression_targets"]) == k
    num_pos = int(sum((lbl > 0).sum() for lbl in rec["roi_labels"]))
    assert rec["mask_targets"].shape == (num_pos, 28, 28) and rec["mask_labels"].shape == (num_pos,)
    assert rec["image_sizes"] == rec["original_image_sizes"] == [(128, 128), (128, 128)]

    model.eval()
    with record_intermediates() as rec:
        out = model(images)
    assert set(rec) == both | {"detections"}
    _catalogue(rec, training=False)
    for det, final in zip(rec["detections"], out):
        d = len(final["boxes"])
        assert det["boxes"].shape == (d, 4) and det["masks"].shape == (d, 1, 28, 28)  # before pasting
        np.testing.assert_array_equal(det["scores"], final["scores"])


def test_nothing_recorded_and_nothing_spent_without_a_recorder(shapes, monkeypatch):
    import minimaskrcnn.intermediates as intermediates

    images, targets = shapes
    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0)
    with record_intermediates():
        pass  # a finished block records nothing more
    with record_intermediates() as rec:
        expected = model.eval()(images[:1])

    def fail(*args, **kwargs):
        raise AssertionError("recording work done without a recorder")

    # no copy is made (every record goes through _snapshot)
    monkeypatch.setattr(intermediates, "_snapshot", fail)
    got = model.eval()(images[:1])
    losses = model.train()(images, targets)
    assert set(losses) == set(LOSS_NAMES) and not intermediates.is_recording()
    assert not hasattr(model, "intermediates") and "detections" in rec
    for key in ("boxes", "scores", "masks"):
        np.testing.assert_array_equal(got[0][key], expected[0][key])  # recording changes no result


def test_model_from_parts_equals_from_config():
    config = get_config("r18-shapes", seed=3)
    init.manual_seed(0)
    built = MaskRCNN.from_config(config)
    init.manual_seed(0)  # the same parts by hand, in the pipeline's order
    backbone = resnet_fpn_backbone(config.backbone)
    rpn = RegionProposalNetwork.from_config(config, backbone.out_channels)
    roi_heads = RoIHeads.from_config(config, backbone.out_channels)
    transform = GeneralizedRCNNTransform.from_config(config.transform, seed=config.seed)
    by_hand = MaskRCNN(backbone, rpn, roi_heads, transform)
    assert built.config == config and by_hand.config is None
    a, b = built.state_dict(), by_hand.state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    init.manual_seed(0)
    assert list(build_model(config).state_dict()) == list(a)
    image = ShapesDataset(1, image_size=128, seed=1)[0][0]
    out_a, out_b = built.eval()([image])[0], by_hand.eval()([image])[0]
    for key in out_a:
        np.testing.assert_array_equal(out_a[key], out_b[key])


def test_parts_replace_the_configured_ones():
    config = get_config("r18-shapes", seed=0)
    c = config.backbone.fpn_channels
    predictor = MaskRCNNPredictor(config.mask.layers[-1], 16, config.num_classes)
    pooler = MultiScaleRoIAlign(["0", "1"], 7, 0)
    heads = RoIHeads.from_config(config, c, mask_predictor=predictor, box_roi_pool=pooler)
    assert heads.mask_predictor is predictor and heads.box_roi_pool is pooler
    assert heads.mask_roi_pool.output_size == (14, 14) and heads.box_head.fc6.weight.shape == (256, c * 49)
    head = RPNHead(c, 3, conv_depth=2)
    rpn = RegionProposalNetwork.from_config(config, c, head=head)
    assert rpn.head is head and rpn.anchor_generator.sizes == config.anchors.sizes

    class Variant(RoIHeads):  # a subclass with its own constructor argument, built from the same config
        def __init__(self, *args, switch: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.switch = switch

    variant = Variant.from_config(config, c, switch="gt")
    assert isinstance(variant, Variant) and variant.switch == "gt" and variant.detections_per_img == 50
    model = MaskRCNN(resnet_fpn_backbone(config.backbone), rpn, variant,
                     GeneralizedRCNNTransform.from_config(config.transform))
    assert model.roi_heads is variant and model.rpn.head is head


def test_float64_model(shapes):
    images, _ = shapes
    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0).eval().double()
    out = model([images[0]])
    assert out[0]["boxes"].dtype == np.float64 and out[0]["masks"].dtype == np.float64


@pytest.mark.parametrize("head,train_rois", [("hourglass", "gt_boxes"), ("resnet", "proposals")])
def test_deepmac_configuration_trains_and_predicts(shapes, head, train_rois):
    """A class-agnostic deep mask head trained on gt boxes (or one proposal per object), a box-only instance."""
    images, targets = shapes
    targets = [dict(t, has_mask=np.arange(len(t["labels"])) % 2 == 0) for t in targets]  # every other one box-only
    config = get_config("r18-shapes", seed=0)
    mask = dataclasses.replace(config.mask, head=head, head_width=8, head_depth=10 if head == "hourglass" else 2,
                               class_agnostic=True, train_rois=train_rois, roi_output_size=16,
                               train_rois_per_object=1 if train_rois == "proposals" else None)
    model = build_model(dataclasses.replace(config, mask=mask)).train()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1
    losses = model(images, targets)
    assert all(np.isfinite(v.item()) for v in losses.values()) and losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None and np.any(p.grad) for p in model.roi_heads.mask_head.parameters())
    model.eval()
    model.roi_heads.score_thresh = 0.0
    det = model(images[:1])[0]
    assert det["masks"].shape[1:] == (1, 128, 128) and len(det["masks"]) == len(det["boxes"]) > 0
