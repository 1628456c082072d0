"""Keypoint R-CNN assembled: configurations, torchvision's names, the keypoint branch in training and
inference, keypoints with masks in one model, and the RoIPool variant."""
import dataclasses

import numpy as np
import pytest

from minimaskrcnn import record_intermediates
from minimaskrcnn.data.figures import FiguresDataset
from minimaskrcnn.models import (
    CONFIGS,
    KeypointHeadConfig,
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    MultiScaleRoIAlign,
    build_model,
    get_config,
    keypointrcnn_resnet50_fpn,
)
from minimaskrcnn.models.transform import resize_keypoints
from minimaskrcnn.nn import init

DETECTOR_LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


@pytest.fixture(scope="module")
def figures():
    ds = FiguresDataset(2, seed=0)
    images, targets = zip(*[ds[i] for i in range(2)])
    return list(images), list(targets)


def _model(name="r18-figures-kp", **overrides):
    init.manual_seed(0)
    return build_model(name, seed=0, **overrides)


def test_named_keypoint_configurations():
    tv = CONFIGS["keypointrcnn_resnet50_fpn"]
    assert tv.num_classes == 2 and not tv.mask_on and tv.keypoint == KeypointHeadConfig()
    assert tv.keypoint.layers == (512,) * 8 and tv.keypoint.roi_output_size == 14 and tv.keypoint.num_keypoints == 17
    assert tv.transform.min_size == (640, 672, 704, 736, 768, 800)  # torchvision's keypoint training sizes
    small = CONFIGS["r18-figures-kp"]
    assert small.keypoint.num_keypoints == 13 and len(small.keypoint.layers) == 8 and not small.mask_on
    both = CONFIGS["r18-figures-kp-mask"]
    assert both.mask_on and both.keypoint == small.keypoint
    assert get_config("keypointrcnn_resnet50_fpn", num_keypoints=5).keypoint.num_keypoints == 5
    with pytest.raises(TypeError, match="no keypoint branch"):
        get_config("maskrcnn_resnet50_fpn", num_keypoints=5)
    with pytest.raises(ValueError, match="num_keypoints"):
        KeypointHeadConfig(num_keypoints=0)


def test_keypoint_parts_built_from_the_configuration():
    model = _model()
    heads = model.roi_heads
    assert heads.has_keypoint() and not heads.has_mask()
    assert isinstance(heads.keypoint_roi_pool, MultiScaleRoIAlign) and heads.keypoint_roi_pool.output_size == (14, 14)
    assert isinstance(heads.keypoint_head, KeypointRCNNHeads)
    assert isinstance(heads.keypoint_predictor, KeypointRCNNPredictor)
    assert heads.keypoint_roi_pool.pooler_type == "roi_align"
    pool = _model(keypoint=dataclasses.replace(CONFIGS["r18-figures-kp"].keypoint, pooler_type="roi_pool"))
    assert pool.roi_heads.keypoint_roi_pool.pooler_type == "roi_pool"
    with pytest.raises(ValueError, match="pooler_type"):
        _model(keypoint=dataclasses.replace(CONFIGS["r18-figures-kp"].keypoint, pooler_type="warp"))
    # the named twin differs from r18-figures-kp in the keypoint RoI layer only
    twin = CONFIGS["r18-figures-kp-roipool"]
    assert dataclasses.replace(twin, keypoint=CONFIGS["r18-figures-kp"].keypoint) == CONFIGS["r18-figures-kp"]
    assert twin.keypoint.pooler_type == "roi_pool"
    assert not _model("r18-shapes").roi_heads.has_keypoint()


def test_training_losses_reach_the_keypoint_branch(figures):
    images, targets = figures
    model = _model()
    model.train()
    with record_intermediates() as rec:
        losses = model(images, targets)
    assert set(losses) == DETECTOR_LOSSES | {"loss_keypoint"}
    assert 0 < losses["loss_keypoint"].item() < 2 * np.log(56 * 56)
    assert rec["keypoint_logits"].shape[1:] == (13, 56, 56)
    assert rec["keypoint_logits"].shape[0] == sum(len(p) for p in rec["keypoint_proposals"]) > 0
    sum(losses.values()).backward()
    for name, p in model.roi_heads.named_parameters():
        if name.startswith("keypoint"):
            assert p.grad is not None and np.abs(p.grad).max() > 0, name


def test_targets_without_keypoints_are_refused(figures):
    images, targets = figures
    model = _model()
    model.train()
    with pytest.raises(ValueError, match="keypoints"):
        model(images, [{k: v for k, v in t.items() if k != "keypoints"} for t in targets])


def test_no_visible_keypoint_gives_a_zero_loss_with_gradients(figures):
    images, targets = figures
    model = _model()
    model.train()
    hidden = [dict(t, keypoints=np.zeros_like(t["keypoints"])) for t in targets]
    losses = model(images, hidden)
    assert losses["loss_keypoint"].item() == 0.0
    losses["loss_keypoint"].backward()
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.weight.grad is not None


def test_inference_returns_keypoints_in_image_pixels(figures):
    images, _ = figures
    model = _model(min_size=96, max_size=96, box_score_thresh=0.0)  # the model resizes 128 -> 96 and back
    model.eval()
    out = model(images)
    for det in out:
        d = len(det["boxes"])
        assert d > 0 and det["keypoints"].shape == (d, 13, 3) and det["keypoints_scores"].shape == (d, 13)
        kp = det["keypoints"]
        assert (kp[..., 2] == 1).all()
        # every keypoint lies in its detection's box, in the original (128-px) image's pixels
        boxes = det["boxes"]
        assert (kp[..., 0] >= boxes[:, None, 0] - 1e-3).all() and (kp[..., 0] <= boxes[:, None, 2] + 1e-3).all()
        assert (kp[..., 1] >= boxes[:, None, 1] - 1e-3).all() and (kp[..., 1] <= boxes[:, None, 3] + 1e-3).all()
        assert boxes.max() > 96  # in the original image's pixels, not the 96-px input's


def test_no_detection_gives_empty_keypoints(figures):
    images, _ = figures
    model = _model(box_score_thresh=1.1)
    model.eval()
    det = model(images[:1])[0]
    assert det["keypoints"].shape == (0, 13, 3) and det["keypoints_scores"].shape == (0, 13)


def test_keypoints_and_masks_in_one_model(figures):
    images, targets = figures
    model = _model("r18-figures-kp-mask")
    model.train()
    losses = model(images, targets)
    assert set(losses) == DETECTOR_LOSSES | {"loss_keypoint", "loss_mask"}
    model.eval()
    det = model(images)[0]
    d = len(det["boxes"])
    assert det["masks"].shape == (d, 1, 128, 128) and det["keypoints"].shape == (d, 13, 3)


def test_resize_keypoints_matches_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.transform import resize_keypoints as tv_resize_keypoints

    keypoints = np.concatenate([rng.uniform(0, 300, (4, 17, 2)), rng.integers(0, 3, (4, 17, 1))], axis=2)
    keypoints = keypoints.astype(np.float32)
    got = resize_keypoints(keypoints, (300, 451), (800, 1203))
    expected = tv_resize_keypoints(torch.from_numpy(keypoints), [300, 451], [800, 1203]).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.reference
def test_state_dict_names_and_shapes_equal_torchvision():
    pytest.importorskip("torch")
    import torchvision

    tv = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                num_classes=3, num_keypoints=9)
    ours = keypointrcnn_resnet50_fpn(num_classes=3, num_keypoints=9)
    expected = {k: tuple(v.shape) for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v.shape for k, v in ours.state_dict().items()}
    assert list(got) == list(expected) and got == expected
