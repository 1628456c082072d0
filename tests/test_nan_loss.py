"""A NaN loss stops training, names the op that made it, and leaves the last good checkpoint intact."""
import hashlib
import os

import numpy as np
import pytest

from minimaskrcnn.checkpoint import CHECKPOINT_NAME
from minimaskrcnn.cli import EXIT_BAD_INPUT, main
from minimaskrcnn.errors import NonFiniteLossError
from minimaskrcnn.function import AnomalyError
from minimaskrcnn.io import load_checkpoint
from minimaskrcnn.runlog import read_log
from minimaskrcnn.train import TrainConfig, Trainer


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    kw = dict(
        name="nan", output_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "shapes"),
        num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64,
        model_kwargs={"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 40,
                      "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16},
        steps=6, batch_size=2, warmup_steps=1, log_every=1, checkpoint_every=2, val_max_images=2,
        val_loss_images=0, val_iou_types=("segm",), progress=False,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _poison_mask_loss_after(step: int):
    """A callback that, after ``step``, makes the mask loss go through log of a negative number."""

    def callback(trainer, values):
        if trainer.step != step:
            return
        model = trainer.model
        original = type(model).forward

        def poisoned(images, targets=None, **kwargs):
            losses = original(model, images, targets, **kwargs)
            if model.training:
                losses["loss_mask"] = (losses["loss_mask"] - 1e6).log()  # the planted NaN: Log of < 0
            return losses

        model.forward = poisoned

    return callback


def test_nan_loss_stops_names_the_op_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    ckpt = os.path.join(trainer.run_dir, CHECKPOINT_NAME)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(callback=_poison_mask_loss_after(3))
    err = info.value
    assert isinstance(err, AnomalyError) and isinstance(err, FloatingPointError)
    assert err.step == 4 and not np.isfinite(err.losses["loss_mask"])
    assert err.op == "Log"  # named by re-running the step in anomaly mode
    assert "test_nan_loss.py" in err.where  # where the Log was created: the poisoned forward above
    msg = str(err)
    assert "step 4" in msg and "Log" in msg and ckpt in msg and "step 2" in msg
    # the step-2 checkpoint is the last good one: not overwritten at step 4, weights finite
    assert trainer.last_checkpoint_step == 2 and trainer.step == 3
    before = _digest(ckpt)
    ck = load_checkpoint(ckpt)
    assert ck.extra["step"] == 2
    assert all(np.isfinite(v).all() for v in ck.model_state.values() if v.dtype.kind == "f")
    # parameters were not updated with the NaN step's gradients
    assert all(np.isfinite(p.data).all() for p in trainer.model.parameters())
    assert _digest(ckpt) == before
    assert max(r["step"] for r in read_log(trainer.run_dir)) == 3
    # and the run resumes from that checkpoint
    assert Trainer(tiny_config(tmp_path), resume=True).step == 2


def test_anomaly_mode_on_for_the_whole_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, detect_anomaly=True, steps=3, checkpoint_every=1))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(callback=_poison_mask_loss_after(1))
    assert info.value.op == "Log" and info.value.step == 2 and info.value.checkpoint_step == 1


def test_diverging_run_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    """A learning rate far too large makes the loss blow up: one line, exit code 2, checkpoint kept."""
    cfg = tiny_config(tmp_path)
    argv = ["train", "--output-dir", cfg.output_dir, "--name", "diverge", "--data-dir", cfg.data_dir,
            "--num-train-images", "4", "--num-val-images", "2", "--image-size", "64", "--min-size", "64",
            "--max-size", "64", "--steps", "20", "--batch-size", "2", "--warmup-steps", "0",
            "--lr", "1e12", "--checkpoint-every", "1", "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert len([line for line in err if line.startswith("error:")]) == 1 and err[-1].startswith("error: ")
    assert "non-finite loss at step" in err[-1] and "created at" in err[-1]
    assert not any("Warning" in line or "Traceback" in line for line in err)
    ckpt = os.path.join(cfg.output_dir, "diverge", CHECKPOINT_NAME)
    step = load_checkpoint(ckpt).extra["step"]
    assert f"(step {step})" in err[-1]
