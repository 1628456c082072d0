"""train.py: the run's outputs, the schedule, clipping, parameter groups, validation without side effects."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from minimaskrcnn.checkpoint import CHECKPOINT_NAME
from minimaskrcnn.config import CONFIG_NAME
from minimaskrcnn.rng import find_generators
from minimaskrcnn.runlog import CURVES_NAME, LOG_NAME, read_log
from minimaskrcnn.train import TrainConfig, Trainer


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """r18-shapes on 64-px shapes with few anchors/RoIs: a step takes well under a second."""
    kw = dict(
        name="tiny", output_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "shapes"),
        num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64,
        model_kwargs={"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 40,
                      "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                      "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16},
        steps=3, batch_size=2, lr=0.01, warmup_steps=0, log_every=1, checkpoint_every=0, val_every=0,
        val_max_images=2, val_loss_images=2, progress=False,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


def test_config_round_trip():
    cfg = TrainConfig(lr_milestones=(5, 9), model_kwargs={"min_size": 64}, val_iou_types=("segm",))
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert TrainConfig(steps=100).milestones() == (70, 90)
    assert TrainConfig(name=None).run_dir == os.path.join("runs", "r18-shapes")


def test_a_run_writes_log_curves_checkpoint_and_results(tmp_path, capsys):
    cfg = tiny_config(tmp_path, progress=True)
    result = Trainer(cfg).fit()
    run = cfg.run_dir
    for name in (LOG_NAME, CURVES_NAME, CHECKPOINT_NAME, CONFIG_NAME, "results_bbox.json", "results_segm.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    rows = read_log(run)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
                "lr", "grad_norm", "images_per_s"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    for r in train_rows:  # the total is the sum of the five
        parts = sum(r[k] for k in r if k.startswith("loss_"))
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
    val = [r for r in rows if "val_segm_AP50" in r]
    assert len(val) == 1 and val[0]["step"] == 3 and "val_loss_mask" in val[0]
    assert set(result["val"]) == {"bbox", "segm"} and result["step"] == 3
    with open(os.path.join(run, CONFIG_NAME)) as f:
        assert TrainConfig.from_dict(json.load(f)) == cfg
    err = capsys.readouterr().err
    assert "img/s" in err and "loss=" in err and "3/3" in err  # the progress bar


def test_learning_rate_schedule_in_the_log(tmp_path):
    cfg = tiny_config(tmp_path, steps=6, warmup_steps=3, warmup_factor=0.1, lr_milestones=(4,), gamma=0.5, lr=0.01,
                      val_loss_images=0, val_iou_types=("bbox",))
    Trainer(cfg).fit()
    lrs = [r["lr"] for r in read_log(cfg.run_dir) if "lr" in r]
    # step t (1-based) uses the rate of iteration t - 1: linear warm-up over 3, halved from iteration 4
    expected = [0.01 * (0.1 + 0.9 * t / 3) if t < 3 else 0.01 * (0.5 if t >= 4 else 1.0) for t in range(6)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_parameter_groups_exempt_norms_and_biases(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, weight_decay=1e-4, norm_weight_decay=0.0))
    groups = trainer.optimizer.param_groups
    decays = sorted({g["weight_decay"] for g in groups})
    assert decays == [0.0, 1e-4]
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    expected = {id(p) for m in trainer.model.modules() if type(m).__name__ in ("GroupNorm", "BatchNorm2d")
                for p in m.parameters()}
    expected |= {id(p) for n, p in trainer.model.named_parameters() if n.endswith(".bias")}
    assert no_decay == expected and len(expected) > 0
    everything = sum(len(g["params"]) for g in groups)
    assert everything == len([p for p in trainer.model.parameters() if p.requires_grad])
    single = Trainer(tiny_config(tmp_path, name="single", norm_weight_decay=None))
    assert len(single.optimizer.param_groups) == 1


def test_gradient_clipping_bounds_the_first_update(tmp_path):
    clip, lr = 0.5, 0.01
    trainer = Trainer(tiny_config(tmp_path, clip_grad_norm=clip, lr=lr, weight_decay=0.0, steps=1, lr_milestones=()))
    before = [p.data.copy() for p in trainer.params]
    values = {}
    trainer.fit(callback=lambda t, v: values.update(v))
    assert values["grad_norm"] > clip  # the gradient really was clipped
    step = math.sqrt(sum(float(((p.data - b).astype(np.float64) ** 2).sum()) for p, b in zip(trainer.params, before)))
    # first SGD step: p -= lr * g_clipped, and |g_clipped| = clip
    assert step == pytest.approx(lr * clip, rel=1e-3)


def test_validation_has_no_side_effects(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.fit(until_step=1)
    weights = trainer.model.state_dict()
    states = trainer.generator_states()
    loader = trainer.loader.state_dict()
    mode = trainer.model.training
    row = trainer.validate()
    assert row["step"] == 1 and "val_loss" in row and 0.0 <= row["val_segm_AP50"] <= 1.0
    assert trainer.generator_states() == states and trainer.loader.state_dict() == loader
    after = trainer.model.state_dict()
    assert all(np.array_equal(weights[k], after[k]) for k in weights)
    assert trainer.model.training == mode


def test_generators_of_the_model_and_loader_are_found(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    gens = find_generators(trainer.model, "model")
    assert any("fg_bg_sampler" in name and "rpn" in name for name in gens)
    assert any("fg_bg_sampler" in name and "roi_heads" in name for name in gens)
    states = trainer.generator_states()
    assert set(states["owned"]) >= set(gens)
    json.dumps(states)  # all plain values


def test_train_function_with_overrides(tmp_path):
    from minimaskrcnn.train import train

    cfg = tiny_config(tmp_path, steps=1, val_loss_images=0, val_iou_types=("bbox",))
    result = train(cfg, steps=2, name="via-train")
    assert result["step"] == 2 and result["run_dir"].endswith("via-train")
    assert dataclasses.replace(cfg, steps=2).steps == 2


def test_limit_threads():
    import numba

    from minimaskrcnn.backend import limit_threads

    before = numba.get_num_threads()
    assert limit_threads(None, None) == {"blas": False, "numba": False}  # None leaves each pool alone
    assert numba.get_num_threads() == before
    done = limit_threads(1, None)
    assert done == {"blas": False, "numba": True} and numba.get_num_threads() == 1
    done = limit_threads(None, 1)
    with open("/proc/self/maps") as f:
        openblas = "openblas" in f.read().lower()
    assert done == {"blas": openblas, "numba": False}  # NumPy's OpenBLAS (that of the PyPI wheels) found and limited
    limit_threads(before, None)
    assert numba.get_num_threads() == before
