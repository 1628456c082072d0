"""Resume: a run stopped at step k and resumed by new objects equals an uninterrupted run, bit for bit."""
import json
import os

import numpy as np

from minimaskrcnn.checkpoint import CHECKPOINT_NAME
from minimaskrcnn.runlog import LOG_NAME
from minimaskrcnn.train import TrainConfig, Trainer


def tiny_config(tmp_path, name: str, **overrides) -> TrainConfig:
    """r18-shapes on 64-px shapes with few anchors/RoIs: a step takes well under a second."""
    kw = dict(
        name=name, output_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "shapes"),
        num_train_images=6, num_val_images=2, image_size=64, min_size=64, max_size=64,
        model_kwargs={"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 40,
                      "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                      "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16},
        steps=5, batch_size=2, lr=0.01, warmup_steps=2, lr_milestones=(3,), clip_grad_norm=10.0,
        log_every=1, checkpoint_every=0, val_every=0, val_max_images=2, val_loss_images=0,
        val_iou_types=("segm",), progress=False, seed=3,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


def _losses(trainer, record):
    return lambda t, values: record.append({k: values[k] for k in sorted(values)})


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    n, k = 5, 2  # 6 images, batch 2: the run crosses an epoch boundary after step 3 (data order reshuffles)
    straight_losses = []
    straight = Trainer(tiny_config(tmp_path, "straight"))
    straight.fit(callback=_losses(straight, straight_losses))

    first_losses = []
    first = Trainer(tiny_config(tmp_path, "stopped"))
    out = first.fit(until_step=k, callback=_losses(first, first_losses))
    assert out["step"] == k and os.path.isfile(out["checkpoint"])
    del first

    # new objects, as a new process would make them (the global generators are reseeded on purpose)
    np.random.seed(12345)
    second_losses = []
    second = Trainer(tiny_config(tmp_path, "stopped"), resume=True)
    assert second.step == k
    second.fit(callback=_losses(second, second_losses))
    assert second.step == n

    assert first_losses + second_losses == straight_losses  # every loss, lr and grad norm, exactly
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for i in sa:
        assert np.array_equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
    assert straight.generator_states() == second.generator_states()
    assert straight.loader.state_dict() == second.loader.state_dict()
    # the weights really moved, and the schedule really stepped past its milestone
    fresh = Trainer(tiny_config(tmp_path, "fresh")).model.state_dict()
    assert not np.array_equal(a["roi_heads.box_predictor.cls_score.weight"],
                              fresh["roi_heads.box_predictor.cls_score.weight"])
    assert straight_losses[-1]["lr"] < straight_losses[2]["lr"]

    # the resumed run's log continues the first: one row per step, no duplicates
    with open(os.path.join(tmp_path, "runs", "stopped", LOG_NAME)) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, n + 1))
    assert os.path.isfile(os.path.join(tmp_path, "runs", "stopped", CHECKPOINT_NAME))


def test_resume_from_a_checkpoint_taken_mid_run_rolls_the_log_back(tmp_path):
    cfg = tiny_config(tmp_path, "periodic", steps=3, checkpoint_every=1)
    trainer = Trainer(cfg)
    trainer.fit(until_step=1)
    ckpt = os.path.join(cfg.run_dir, CHECKPOINT_NAME)
    saved = open(ckpt, "rb").read()
    # steps 2 and 3 run and log but (pretend) crash before their checkpoints: restore step 1's file
    trainer.fit()
    with open(ckpt, "wb") as f:
        f.write(saved)
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 1
    assert [r["step"] for r in resumed.history] == [1]
