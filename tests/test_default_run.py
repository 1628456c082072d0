"""The README's main command as a user runs it: ``minimaskrcnn train`` with no arguments.

It must train the small model on the built-in shapes data and reach mask AP50 >= 0.8 on held-out
shapes images it never saw, showing a progress bar and writing the log, the curves and a
checkpoint. This test runs exactly that command, in an empty folder, in a subprocess with a
user's environment (without the suite's one-thread caps from conftest.py), and checks each promise.
Measured (2026-11-30, two local processes, the default on 2 cores, from a fresh clone): mask AP50 0.923,
box AP50 0.941 at step 1,500, 268-310 s from the command to its exit (seeds 1 and 2: 0.921, 0.944).
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minimaskrcnn import io as mio
from minimaskrcnn import local_parallel

SUITE_ONLY_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                   "NUMBA_ENABLE_CUDASIM", "MINIMASKRCNN_BACKEND", "MINIMASKRCNN_PROCESSES")


def _image_digests(folder: Path) -> set:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_minimaskrcnn_train_with_no_arguments(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY_VARS}
    proc = subprocess.run([sys.executable, "-m", "minimaskrcnn", "train"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=45 * 60)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "runs" / "r18-shapes"
    assert "1500/1500" in proc.stderr and "step/s" in proc.stderr  # the tqdm progress bar
    # one process per core, as many as split the batch of 4 evenly (local_parallel.default_processes)
    processes = max(n for n in (1, 2, 4) if n <= local_parallel.available_cores())
    assert (f"{processes} processes of {4 // processes} images per step" in proc.stderr) == (processes > 1)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["step"] == 1500 and train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    checkpoint = mio.load_checkpoint(run / "checkpoint.npz")
    assert checkpoint.extra["step"] == 1500 and len(checkpoint.model_state) > 100
    assert all(np.isfinite(a).all() for a in checkpoint.model_state.values())

    # held out: the validation images are not among the training images
    shapes = tmp_path / "runs" / "data" / "shapes"
    val_images = _image_digests(shapes / "val" / "images")
    assert len(val_images) == 64 and not val_images & _image_digests(shapes / "train" / "images")

    final = [r for r in rows if "val_segm_AP50" in r][-1]
    print(f"default run: mask AP50 {final['val_segm_AP50']:.3f}, mask AP {final['val_segm_AP']:.3f}, "
          f"box AP50 {final['val_bbox_AP50']:.3f}")
    assert final["step"] == 1500
    assert final["val_segm_AP50"] >= 0.8
    assert final["val_bbox_AP50"] >= 0.8
