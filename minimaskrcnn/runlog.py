"""The run log: ``log.jsonl`` (one JSON object per row) and ``curves.png`` drawn from it.

Training rows hold the step, the mean of each loss over the rows' steps, "lr", "grad_norm",
"images_per_s" and "time"; validation rows hold "val_*" numbers (losses and COCO AP). ``RunLog``
appends rows, reads them back, cuts the log to a step when a run resumes from a checkpoint, and
draws the curves; ``LossMeter`` turns each step's values into those rows and into the progress bar.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from minimaskrcnn.io import atomic_write

__all__ = ["CURVES_NAME", "LOG_NAME", "LossMeter", "RunLog", "read_log"]

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"


class RunLog:
    """The log of the run in ``run_dir``: ``rows`` in memory, ``log.jsonl`` on disk, ``curves.png``.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOG_NAME)
        self.curves_path = os.path.join(run_dir, CURVES_NAME)
        self.rows: list[dict] = []

    def read(self) -> list[dict]:
        """The rows on disk ([] without a file); a last line cut short by a crash is dropped."""
        if not os.path.isfile(self.path):
            return []
        rows = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash: drop it and what follows
        return rows

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the log with ``rows`` (atomically)."""
        self.rows = list(rows)
        with atomic_write(self.path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def cut(self, step: int) -> None:
        """Keep the rows up to ``step``: those of a checkpoint the run resumes from."""
        self.rewrite([r for r in self.read() if int(r.get("step", 0)) <= step])

    def append(self, row: dict) -> None:
        """Add a row (one line appended to the file)."""
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self) -> None:
        """Write ``curves.png`` from the rows (see ``visualize.plot_curves``)."""
        from minimaskrcnn.visualize import plot_curves

        if self.rows:
            plot_curves(self.rows, self.curves_path)


def read_log(run_dir: str) -> list[dict]:
    """The rows of a run's JSONL log (training rows have "loss", validation rows "val_*").

    Raises:
        FileNotFoundError: the run folder has no log.
    """
    path = os.path.join(run_dir, LOG_NAME)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# progress-bar names of the five losses
_SHORT = {"loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask",
          "loss_objectness": "obj", "loss_rpn_box_reg": "rpn"}


class LossMeter:
    """Each step's values in; log rows (means over a window of steps) and progress-bar text out.

    Also measures training speed in images per second over the window (``restart_clock`` leaves
    time spent on validation out).
    """

    def __init__(self):
        self.window: dict[str, list[float]] = defaultdict(list)
        self.smooth: dict[str, float] = {}  # exponential moving averages, for the progress bar
        self.restart_clock()

    def restart_clock(self) -> None:
        self.now = self.t_window = time.perf_counter()
        self.images = 0

    def update(self, values: Mapping[str, float], num_images: int) -> None:
        """Record one step: its values (losses, lr, grad_norm) and how many images it saw."""
        self.now = time.perf_counter()
        self.images += num_images
        for k, v in values.items():
            self.window[k].append(v)
            self.smooth[k] = v if k not in self.smooth else 0.9 * self.smooth[k] + 0.1 * v

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.now - self.t_window, 1e-9)

    def row(self) -> dict[str, Any]:
        """The means over the window and "images_per_s"; starts a new window."""
        row = {k: float(np.mean(v)) for k, v in self.window.items()}
        row["images_per_s"] = self.images_per_s
        self.window.clear()
        self.t_window, self.images = self.now, 0
        return row

    def postfix(self) -> str:
        """E.g. ``loss=1.234 cls=0.2 ... lr=0.02 3.1 img/s``, for ``tqdm.set_postfix_str``."""
        s = self.smooth
        parts = [f"loss={s.get('loss', float('nan')):.3f}"]
        parts += [f"{short}={s[k]:.3f}" for k, short in _SHORT.items() if k in s]
        if "lr" in s:
            parts.append(f"lr={s['lr']:.2g}")
        parts.append(f"{self.images_per_s:.1f} img/s")
        return " ".join(parts)
