"""The Table 2 study: its runs and configurations, the trunk sharing (what a variant loads from its
trunk and what it trains), the tiny version end to end, and ``minimaskrcnn ablate``."""
import dataclasses
import json

import numpy as np
import pytest

from minimaskrcnn.cli import EXIT_BAD_INPUT, main
from minimaskrcnn.experiments import STUDIES, run_study
from minimaskrcnn.experiments.table2 import (
    COMPARISONS,
    PAPER,
    RUNS,
    VARIANTS,
    Table2Settings,
    Table2Study,
    model_config,
    settings_with,
)
from minimaskrcnn.io import load_checkpoint
from minimaskrcnn.models import MaskRCNN

ISSUE_NAMES = ("c5_roipool", "c5_roialign", "c4_roipool", "c4_roiwarp", "c4_roialign_max", "c4_roialign_avg",
               "sigmoid", "softmax", "class_specific", "class_agnostic", "mlp_head", "fcn_head", "r_fpn", "x_fpn",
               "r_c4")


def test_runs_variants_and_comparisons():
    assert VARIANTS == ISSUE_NAMES
    assert set(PAPER) == set(ISSUE_NAMES)
    by_name = {r.name: r for r in RUNS}
    assert {c.a for c in COMPARISONS} | {c.b for c in COMPARISONS} <= set(ISSUE_NAMES)
    # the paper's R50-C4 baseline and R50-FPN are single runs under several names
    assert {n for n, r in by_name.items() if r.same_as == "c4_roialign_avg"} == {"sigmoid", "class_specific", "r_c4"}
    assert by_name["r_fpn"].same_as == "fcn_head"
    assert by_name["x_fpn"].parent == "trunk_x" and by_name["c5_roipool"].parent == "trunk_r"
    assert by_name["trunk_r"].shared and by_name["trunk_x"].shared  # one pretrained trunk for every seed


def test_model_configurations_differ_only_where_the_variant_says():
    s = Table2Settings()
    base = model_config(s, "c4")
    assert base.roi_heads == "res5" and base.backbone.returned_layers == (3,) and not base.backbone.fpn
    assert base.box.roi_output_size == 14 and base.num_classes == len(s.classes) + 1 == 4
    c5 = model_config(s, "c5", pooler="roi_pool")
    assert c5.backbone.returned_layers == (4,) and c5.box.pooler_type == c5.mask.pooler_type == "roi_pool"
    assert model_config(s, "c4", loss="softmax").mask.loss == "softmax"
    assert model_config(s, "fpn", body="x").backbone.groups == 32
    trunk = model_config(s, "fpn", mask_on=False)
    assert not trunk.mask_on and trunk.backbone.fpn
    with pytest.raises(ValueError):
        model_config(s, "c6")


def test_settings_overrides():
    s = settings_with(Table2Settings(), {"head_steps": "12", "classes": "circle,square", "clip_grad_norm": "none",
                                         "lr": "0.01", "object_size": "10,20"})
    assert s.head_steps == 12 and s.classes == ("circle", "square") and s.clip_grad_norm is None
    assert s.lr == 0.01 and s.object_size == (10.0, 20.0)
    with pytest.raises(ValueError, match="no setting"):
        settings_with(Table2Settings(), {"epochs": "3"})
    with pytest.raises(ValueError, match="expected a int"):
        settings_with(Table2Settings(), {"head_steps": "many"})


def test_tiny_study_starts_each_variant_from_its_trunk(tmp_path):
    study = Table2Study(Table2Settings.quick(), data_dir=tmp_path / "data", log=lambda s: None)
    results = run_study(study, [0], tmp_path / "runs", command="test",
                        only=["c4_roialign_avg", "c5_roialign", "fcn_head", "r_c4"], log=lambda s: None)
    assert list(results.variants) == ["c5_roialign", "c4_roialign_avg", "fcn_head", "r_c4"]
    assert results.variants["r_c4"] == results.variants["c4_roialign_avg"]
    assert all(0 <= v[m][0] <= 1 for v in results.variants.values() for m in study.metrics)

    trunk_dir = tmp_path / "runs" / "shared" / "trunk_r"
    trunk = load_checkpoint(trunk_dir / "checkpoint.npz").model_state
    assert not any(k.startswith("roi_heads.mask") for k in trunk)  # the trunk is a Faster R-CNN
    runs = {r.name: r for r in RUNS}
    # FPN: the trunk's body; FPN, RPN and heads new (as C4's and C5's), everything trained
    fpn, trained = study.build(runs["fcn_head"], 0, str(trunk_dir))
    own = fpn.state_dict()
    assert trained == ("",) and all(p.requires_grad for p in fpn.parameters())
    for k in ("backbone.body.conv1.weight", "backbone.body.layer4.1.conv3.weight"):
        np.testing.assert_array_equal(own[k], trunk[k])
    for k in ("backbone.fpn.layer_blocks.0.0.weight", "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight"):
        assert not np.array_equal(own[k], trunk[k])
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in own
    # C4: the trunk's body up to C4 and its layer4 as res5; its own RPN (12 anchors a cell, not 3)
    c4, _ = study.build(runs["c4_roialign_avg"], 0, str(trunk_dir))
    own = c4.state_dict()
    k = "backbone.body.layer3.1.conv2.weight"
    np.testing.assert_array_equal(own[k], trunk[k])
    np.testing.assert_array_equal(own["roi_heads.res5.1.conv3.weight"], trunk["backbone.body.layer4.1.conv3.weight"])
    assert own["rpn.head.cls_logits.weight"].shape != trunk["rpn.head.cls_logits.weight"].shape
    # C5: the whole body; after training, the body has moved (end to end)
    c5, _ = study.build(runs["c5_roialign"], 0, str(trunk_dir))
    np.testing.assert_array_equal(c5.state_dict()["backbone.body.layer4.0.conv1.weight"],
                                  trunk["backbone.body.layer4.0.conv1.weight"])
    trained_c5 = load_checkpoint(tmp_path / "runs" / "seed_0" / "c5_roialign" / "checkpoint.npz").model_state
    assert not np.array_equal(trained_c5["backbone.body.layer4.0.conv1.weight"],
                              trunk["backbone.body.layer4.0.conv1.weight"])


def test_trainable_layers_freeze_the_first_stages(tmp_path):
    study = Table2Study(dataclasses.replace(Table2Settings.quick(), trainable_layers=1), data_dir=tmp_path / "d",
                        log=lambda s: None)
    runs = {r.name: r for r in RUNS}
    c5 = MaskRCNN.from_config(study.config_of(runs["c5_roialign"], 0))
    frozen = {n for n, p in c5.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.body.") and ".layer4." not in "." + n[14:] for n in frozen)
    assert all(p.requires_grad for n, p in c5.named_parameters() if n.startswith("backbone.body.layer4."))
    trunk = MaskRCNN.from_config(study.config_of(runs["trunk_r"], 0))  # trunks always train everything
    assert all(p.requires_grad for p in trunk.parameters())


def test_ablate_command_writes_results_and_refuses_bad_input(tmp_path, capsys):
    argv = ["ablate", "table2", "--quick", "--seeds", "0", "--only", "c5_roipool", "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "table2" / "results.json").read_text())
    assert set(data) == {"command", "setup", "variants"} and data["command"] == "minimaskrcnn " + " ".join(argv)
    assert set(data["variants"]["c5_roipool"]) == {"seeds", "box_AP", "box_AP50", "box_AP75", "mask_AP",
                                                    "mask_AP50", "mask_AP75"}
    assert "c5_roipool" in (tmp_path / "table2" / "table.md").read_text()
    capsys.readouterr()
    for bad, needle in ((["--set", "epochs=3"], "no setting"), (["--only", "c6_roialign"], "unknown runs")):
        code = main(["ablate", "table2", "--quick", "--out", str(tmp_path)] + bad)
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT and err.startswith("error: ") and needle in err and "Traceback" not in err
    code = main(argv + ["--set", "head_steps=3"])  # the finished run was made with other settings
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "other settings" in err and "Traceback" not in err
    assert "table2" in STUDIES


def test_ablate_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_load_model_gives_the_trained_weights(tmp_path):
    study = Table2Study(Table2Settings.quick(), data_dir=tmp_path / "data", log=lambda s: None)
    run_study(study, [3], tmp_path / "runs", only=["r_c4"], log=lambda s: None)
    model = study.load_model("r_c4", 3, tmp_path / "runs")  # an alias: c4_roialign_avg's run
    saved = load_checkpoint(tmp_path / "runs" / "seed_3" / "c4_roialign_avg" / "checkpoint.npz").model_state
    np.testing.assert_array_equal(model.state_dict()["roi_heads.res5.0.conv1.weight"],
                                  saved["roi_heads.res5.0.conv1.weight"])
    assert not model.training
    image, _ = study.datasets()[1][0]
    assert set(model([image])[0]) == {"boxes", "labels", "scores", "masks"}
