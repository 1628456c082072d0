"""Data-parallel training under ``mpiexec -n 2`` is the one-process run of the same global batch.

Four steps of a global batch of 4 shapes images (two epochs of 8 images, flips and multi-scale
resizing on) on two ranks give the weights of one process: to 1e-4 in float32 and 1e-10 in float64
(the sums run in another order, nothing else); so does a last, smaller batch that leaves a rank
without images. A two-rank run interrupted after step 2 and resumed by a new job equals the
uninterrupted two-rank run bit for bit. And a bad batch ends the job at once.

The model samples every proposal as a RoI and keeps every proposal through the top-n cuts: with a
random subset, two proposals whose scores round to the same float32 probability could be ordered
differently in the two runs and give another sample, after which float32 runs drift apart like two
runs on different hardware (lesson 19 shows it). float64 has no such ties.
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minimaskrcnn.checkpoint import build_model_from_config
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.data.shapes import SHAPE_CLASSES
from minimaskrcnn.io import load_checkpoint
from minimaskrcnn.train import Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_distributed import HERE, ROOT, mpiexec, run_mpi  # noqa: E402

pytestmark = pytest.mark.mpi

MODEL_ARGS = {
    "min_size": [56, 64],  # multi-scale training: each image draws its size (keyed), the batch pads to the largest
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,  # every proposal goes on
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 2048, "box_positive_fraction": 1.0,  # every proposal is a sampled RoI
}


def tiny_config(root, name: str) -> TrainConfig:
    return TrainConfig(
        name=name, output_dir=str(root / "runs"), data_dir=str(root / "shapes"),
        num_train_images=8, num_val_images=2, image_size=64, min_size=None, max_size=64, model_kwargs=MODEL_ARGS,
        steps=4, batch_size=4, lr=0.01, warmup_steps=2, lr_milestones=(3,), clip_grad_norm=10.0, hflip_prob=0.5,
        log_every=1, checkpoint_every=0, val_every=0, val_max_images=1, val_loss_images=0, val_iou_types=("segm",),
        progress=False, seed=3,
    )


def cli_options(config: TrainConfig) -> list[str]:
    """The ``minimaskrcnn train`` options that give ``config``."""
    options = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == f.default or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_kwargs":
            for k, v in value.items():
                options += ["--model-arg", f"{k}={json.dumps(v)}"]
        elif isinstance(value, bool):
            options.append(("--no-" if f.default else "--") + f.name.replace("_", "-"))
        elif isinstance(value, tuple):
            options += [flag, ",".join(map(str, value))]
        else:
            options += [flag, str(value)]
    return options


def run_script(config: TrainConfig, root, n: int = 2, *args: str):
    """``tests/_mpi_train.py`` on n ranks for ``config``; fails the test unless it succeeds."""
    path = root / f"{config.name}-{len(os.listdir(root))}.json"
    path.write_text(json.dumps(config.to_dict()))
    out = run_mpi(n, os.path.join(HERE, "_mpi_train.py"), str(path), *args, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def weights(config: TrainConfig) -> dict:
    return load_checkpoint(os.path.join(config.run_dir, "checkpoint.npz")).model_state


def relative_difference(a: dict, b: dict) -> float:
    """|a - b| / |a| over all the parameters as one vector."""
    diff = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a)
    norm = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in a)
    return (diff / norm) ** 0.5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    mpiexec()  # skips without the distributed extra
    return tmp_path_factory.mktemp("dp")


@pytest.fixture(scope="module")
def one_process(root):
    """The reference: one process, float32, in this test's process."""
    config = tiny_config(root, "one")
    Trainer(config).fit()
    return config


@pytest.fixture(scope="module")
def two_ranks(root, one_process):
    """``mpiexec -n 2 python -m minimaskrcnn train ...`` with the same configuration."""
    config = tiny_config(root, "two")
    out = run_cli(2, config)
    assert out.returncode == 0, out.stdout + out.stderr
    return config, out


def run_cli(n: int, config: TrainConfig, timeout: float = 600) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m minimaskrcnn train <the options of config>``."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "minimaskrcnn", "train", *cli_options(config)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_two_ranks_give_the_weights_of_one_process_float32(one_process, two_ranks):
    config, out = two_ranks
    a, b = weights(one_process), weights(config)
    initial = build_model_from_config(one_process, len(SHAPE_CLASSES) + 1).state_dict()
    assert relative_difference(a, initial) > 1e-3  # the four steps really moved the weights
    assert relative_difference(a, b) < 1e-4
    # the same losses, step by step (the log of rank 0 holds those of the whole batch)
    log_a = [json.loads(line) for line in open(os.path.join(one_process.run_dir, "log.jsonl"))]
    log_b = [json.loads(line) for line in open(os.path.join(config.run_dir, "log.jsonl"))]
    train_a = [r for r in log_a if "loss" in r]
    train_b = [r for r in log_b if "loss" in r]
    assert [r["step"] for r in train_b] == [1, 2, 3, 4]
    for ra, rb in zip(train_a, train_b):
        for k in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-4), (ra["step"], k)
    # rank 0 alone speaks and writes: one "run folder" line, one log, one checkpoint
    assert out.stderr.count("run folder:") == 1 and "2 processes of 2 images per step" in out.stderr
    assert out.stdout.count("done: step 4") == 1


def test_two_ranks_give_the_weights_of_one_process_float64(root):
    config = tiny_config(root, "one64")
    model = build_model_from_config(config, len(SHAPE_CLASSES) + 1).to_dtype(np.float64)
    Trainer(config, model=model).fit()
    config2 = tiny_config(root, "two64")
    run_script(config2, root, 2, "--dtype", "float64")
    a, b = weights(config), weights(config2)
    assert all(v.dtype == np.float64 for v in b.values() if v.dtype.kind == "f")
    assert relative_difference(a, b) < 1e-10


def test_two_ranks_train_a_keypoint_model_like_one_process(root):
    # the keypoint loss is a mean over the valid (RoI, keypoint) pairs: each rank notes its count and the
    # trainer weights it by the global count, so two ranks give the weights of one process (float64)
    config = dataclasses.replace(tiny_config(root, "kp-one"), model="r18-figures-kp", dataset="figures",
                                 data_dir=str(root / "figures"), image_size=96, steps=2,
                                 val_iou_types=("keypoints",))
    model = build_model_from_config(config, 2).to_dtype(np.float64)
    Trainer(config, model=model).fit()
    config2 = dataclasses.replace(config, name="kp-two")
    out = run_script(config2, root, 2, "--dtype", "float64", "--num-classes", "2")
    assert "noted no count" not in out.stderr
    a, b = weights(config), weights(config2)
    assert any(k.startswith("roi_heads.keypoint_head") for k in a)
    initial = build_model_from_config(config, 2).to_dtype(np.float64).state_dict()
    assert relative_difference(a, initial) > 1e-4  # the two steps really moved the weights
    assert relative_difference(a, b) < 1e-10


def test_a_rank_without_images_in_a_last_small_batch_takes_part(root):
    # 5 images, batches of 4: the second batch holds one image, and rank 1 none (it sends zeros)
    config = dataclasses.replace(tiny_config(root, "one5"), num_train_images=5, steps=2, data_dir=str(root / "s5"))
    model = build_model_from_config(config, len(SHAPE_CLASSES) + 1).to_dtype(np.float64)
    Trainer(config, model=model).fit()
    config2 = dataclasses.replace(config, name="two5")
    run_script(config2, root, 2, "--dtype", "float64")
    assert relative_difference(weights(config), weights(config2)) < 1e-10


def test_resume_on_two_ranks_equals_the_uninterrupted_run(root, two_ranks):
    straight, _ = two_ranks
    config = tiny_config(root, "two-resumed")
    out = run_script(config, root, 2, "--until", "2")
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2
    out = run_script(config, root, 2, "--resume")  # a new job: every rank resumes from rank 0's checkpoint
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 4
    a, b = weights(straight), weights(config)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    rows = lambda c: [r for r in map(json.loads, open(os.path.join(c.run_dir, "log.jsonl"))) if "loss" in r]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in rs]
    assert strip(rows(config)) == strip(rows(straight))


def test_a_batch_that_does_not_split_ends_the_job_with_an_error(root):
    config = dataclasses.replace(tiny_config(root, "bad"), batch_size=3)
    out = run_cli(2, config, timeout=120)
    assert out.returncode == 2
    assert "error: [rank" in out.stderr
    assert "--batch-size 3 (the global batch) does not split evenly over 2" in out.stderr
    assert "Traceback" not in out.stderr
