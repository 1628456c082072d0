"""Weights from elsewhere: torchvision's Mask R-CNN and ResNet files (random stand-ins saved with
torch.save), our checkpoints, and loading every matching tensor into a model."""
import dataclasses

import numpy as np
import pytest

from minimaskrcnn.errors import CheckpointError
from minimaskrcnn.models import build_model
from minimaskrcnn.models.configs import get_config
from minimaskrcnn.pretrained import (
    PREDICTOR_LAYERS,
    backbone_state_dict,
    load_matching_weights,
    read_weights,
)


@pytest.fixture(scope="module")
def coco_weights(torchvision_maskrcnn_file):
    return read_weights(torchvision_maskrcnn_file)


def test_reads_a_torchvision_maskrcnn_file(coco_weights):
    from minimaskrcnn.data.categories import coco_class_names

    assert coco_weights.kind == "maskrcnn" and coco_weights.num_classes == 91
    assert coco_weights.class_names == coco_class_names()
    assert coco_weights.state_dict["backbone.body.conv1.weight"].shape == (64, 3, 7, 7)


def test_reads_a_reference_script_checkpoint(tmp_path, coco_weights):
    torch = pytest.importorskip("torch")
    import argparse

    small = {k: torch.from_numpy(v) for k, v in list(coco_weights.state_dict.items())[:6]}
    small["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 4)
    torch.save({"model": small, "optimizer": {"state": {}}, "epoch": 25,
                "args": argparse.Namespace(lr=0.02, dataset="coco")}, tmp_path / "model_25.pth")
    w = read_weights(tmp_path / "model_25.pth")
    assert w.kind == "maskrcnn" and w.num_classes == 91 and list(w.state_dict)[0] == "backbone.body.conv1.weight"


def test_loads_every_matching_tensor_and_remakes_the_predictors(coco_weights):
    config = get_config("maskrcnn_resnet50_fpn", num_classes=3, seed=0)
    model = build_model(config)
    fresh = model.state_dict()
    report = load_matching_weights(model, coco_weights.state_dict, remake=PREDICTOR_LAYERS)
    state = model.state_dict()
    assert report.remade_layers == list(PREDICTOR_LAYERS)
    assert not report.missing and not report.mismatched
    assert len(report.loaded) + len(report.remade) == len(state)
    for key in report.loaded:
        np.testing.assert_array_equal(state[key], coco_weights.state_dict[key], err_msg=key)
    for key in report.remade:
        np.testing.assert_array_equal(state[key], fresh[key], err_msg=key)
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (3, 1024)
    assert "re-made: roi_heads.box_predictor.cls_score" in report.summary()


def test_shapes_that_differ_are_left_fresh_and_reported(coco_weights):
    model = build_model(get_config("maskrcnn_resnet50_fpn", num_classes=5, seed=0))
    report = load_matching_weights(model, coco_weights.state_dict)  # no remake: the shapes decide
    assert sorted(report.mismatched) == sorted(f"{layer}.{p}" for layer in PREDICTOR_LAYERS for p in ("weight", "bias"))
    assert "other shapes" in report.summary()


def test_another_architecture_is_refused(coco_weights):
    model = build_model("r18-shapes", seed=0)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_matching_weights(model, coco_weights.state_dict, path="coco.pth")


def test_backbone_weights_load_the_body_only(torchvision_resnet50_file):
    w = read_weights(torchvision_resnet50_file)
    assert w.kind == "classification" and w.num_classes is None
    body = backbone_state_dict(w.state_dict)
    assert "backbone.body.fc.weight" not in body and "backbone.body.conv1.weight" in body
    config = get_config("maskrcnn_resnet50_fpn", num_classes=3, seed=0)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, trainable_layers=3))
    model = build_model(config)
    fresh = model.state_dict()
    report = load_matching_weights(model, body)
    state = model.state_dict()
    assert report.loaded and all(k.startswith("backbone.body.") for k in report.loaded)
    body_keys = [k for k in state if k.startswith("backbone.body.")]
    assert sorted(report.loaded) == sorted(body_keys)  # every body tensor, batch-norm statistics included
    for key in body_keys:
        np.testing.assert_array_equal(state[key], w.state_dict[key[len("backbone.body."):]], err_msg=key)
    for key in state:
        if not key.startswith("backbone.body."):
            np.testing.assert_array_equal(state[key], fresh[key], err_msg=key)
    assert all(k.endswith("num_batches_tracked") or k.startswith("backbone.body.fc.") for k in report.unused)


def test_our_checkpoint_and_a_run_folder(tmp_path):
    from minimaskrcnn.io import save_checkpoint

    model = build_model("r18-shapes", seed=0)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint.npz", model.state_dict(), None,
                    {"num_classes": 4, "class_names": ["__background__", "a", "b", "c"], "config": {}})
    for path in (run, run / "checkpoint.npz"):
        w = read_weights(path)
        assert w.kind == "minimaskrcnn" and w.num_classes == 4 and w.class_names[1] == "a"
        assert w.extra["num_classes"] == 4


def test_files_that_are_no_weights(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match="neither a torchvision Mask R-CNN") as err:
        read_weights(tmp_path / "linear.pth")
    assert "linear.pth" in str(err.value) and "weight" in str(err.value)
    with pytest.raises(CheckpointError, match="no such file"):
        read_weights(tmp_path / "nothing.pth")


def test_maskrcnn_resnet50_fpn_takes_weights_backbone(torchvision_resnet50_file, torchvision_maskrcnn_file):
    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    w = read_weights(torchvision_resnet50_file)
    model = maskrcnn_resnet50_fpn(weights_backbone=torchvision_resnet50_file, num_classes=3, seed=0)
    state = model.state_dict()
    np.testing.assert_array_equal(state["backbone.body.layer4.2.conv3.weight"], w.state_dict["layer4.2.conv3.weight"])
    np.testing.assert_array_equal(state["backbone.body.bn1.running_var"], w.state_dict["bn1.running_var"])
    # torchvision's default when starting from weights: layer2-layer4 train, conv1 and layer1 frozen
    trainable = {name.split(".")[2] for name, p in model.named_parameters()
                 if p.requires_grad and name.startswith("backbone.body.")}
    assert trainable == {"layer2", "layer3", "layer4"}
    with pytest.raises(CheckpointError, match="weights_backbone needs a ResNet classification"):
        maskrcnn_resnet50_fpn(weights_backbone=torchvision_maskrcnn_file)
