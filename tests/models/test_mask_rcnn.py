"""The assembled model: configurations, torchvision's names and call conventions, gradients into every
trainable parameter, and the intermediate results."""
import dataclasses

import numpy as np
import pytest

from minimaskrcnn.data import ShapesDataset
from minimaskrcnn.models import (
    CONFIGS,
    LOSS_NAMES,
    AnchorGenerator,
    BackboneConfig,
    MaskRCNNConfig,
    build_model,
    get_config,
    maskrcnn_resnet50_fpn,
    set_frozen_bn_eps,
)
from minimaskrcnn.nn import FrozenBatchNorm2d


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
    losses, inter = model(images, targets, return_intermediates=True)
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
    model.record_intermediates = True
    out = model(images[:1])
    assert model.intermediates is not None and "detections" in model.intermediates
    assert len(model.intermediates["detections"][0]["boxes"]) == len(out[0]["boxes"])


def test_float64_model(shapes):
    images, _ = shapes
    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0).eval().double()
    out = model([images[0]])
    assert out[0]["boxes"].dtype == np.float64 and out[0]["masks"].dtype == np.float64
