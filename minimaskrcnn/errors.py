"""The project's error types for bad input (annotation files, images, checkpoints) and for a
training run whose loss became NaN/Inf.

Every message names the file, the record inside it (image id, annotation id, key) and the problem,
e.g. ``instances.json: annotation id 7 (image id 3): bbox has negative width -2.0``, so that a user
can open the file and fix the one entry.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Union

from minimaskrcnn.function import AnomalyError

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """Some input file (annotations, image, checkpoint) is malformed or does not match its records.

    Args:
        path: the file at fault.
        problem: what is wrong, one sentence without the file name.
        record: which entry of the file, e.g. ``"annotation id 7 (image id 3)"`` or ``"key 'w'"``;
            None when the whole file is at fault.

    Attributes ``path``, ``record`` and ``problem`` keep the three parts for code that handles them.
    """

    def __init__(self, path: PathLike | None, problem: str, record: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.record = record
        self.problem = problem
        parts = [p for p in (self.path, record) if p]
        super().__init__(": ".join(parts + [problem]))

    def __reduce__(self):
        # keep the three-argument constructor picklable (e.g. across multiprocessing)
        return (type(self), (self.path, self.problem, self.record))


class AnnotationError(DataError):
    """An annotation file (COCO instances JSON) is unreadable, incomplete or inconsistent."""


class ImageError(DataError):
    """An image file is missing, unreadable, or differs from its record (e.g. its size)."""


class CheckpointError(DataError):
    """A checkpoint is missing, truncated, corrupt, or asks to run code we refuse to run."""


class DownloadError(OSError):
    """A download failed (HTTP error, no network) or the downloaded file failed verification.

    An OSError rather than a DataError: the cause is usually the network, not a file's content.
    The message names the URL and, for images, the image id.
    """


class NonFiniteLossError(AnomalyError):
    """Training produced a NaN/Inf loss or gradient; the run stopped.

    Attributes: ``step`` (the step that failed, 1-based), ``losses`` (name -> value of that step),
    ``op`` and ``where`` (the op that made the first NaN/Inf and where it was created, from anomaly
    mode; None if anomaly mode could not pin one down), ``checkpoint`` (the last good checkpoint,
    left untouched, or None).
    """

    def __init__(self, step: int, losses: Mapping[str, float], op: str | None, where: str | None,
                 checkpoint: str | None, checkpoint_step: int | None, detail: str = ""):
        bad = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if not math.isfinite(v)) or detail
        msg = f"non-finite loss at step {step} ({bad})"
        if op is not None:
            first_line = (where or "").strip().splitlines()[0] if where else "?"
            msg += f"; anomaly mode: the first NaN/Inf came from op {op}, created at {first_line}"
        else:
            msg += "; anomaly mode found no op making NaN/Inf (the input data may hold them)"
        if checkpoint is not None:
            msg += f"; last good checkpoint kept: {checkpoint} (step {checkpoint_step})"
        else:
            msg += "; no checkpoint had been written yet"
        super().__init__(msg, op=op or "", where=where or "")
        self.step = step
        self.losses = dict(losses)
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step


def find_nonfinite_op(model, images: list, targets: list[dict], batch_key: tuple | None = None,
                      zero_grad: Callable[[], None] | None = None) -> tuple[str | None, str | None]:
    """Re-run a training step's forward and backward in anomaly mode to find the op that made the first NaN/Inf.

    The trainer calls it when a step's loss or gradient norm is not finite, after restoring the
    random generators to their state before that step, so that the re-run samples as the failed
    pass did; the pair it returns goes into ``NonFiniteLossError``.

    Args:
        model: the model in training mode (``model(images, targets)`` -> {name: loss}).
        images, targets: the failed step's batch ((3, H, W) images and their target dicts).
        batch_key: the step's ``global_batch`` arguments (seed, step, image indices, image sizes),
            so that the random draws are keyed as in the failed pass.
        zero_grad: called before the backward pass (the optimizer's ``zero_grad``).

    Returns:
        (op, where): the op's name and where it was created (``function.AnomalyError``), or
        (None, None) when the re-run met no NaN/Inf.
    """
    import contextlib

    import numpy as np

    from minimaskrcnn.function import detect_anomaly
    from minimaskrcnn.global_batch import global_batch
    from minimaskrcnn.ops.loss import sum_losses

    batch = global_batch(*batch_key) if batch_key is not None else contextlib.nullcontext()
    try:
        with detect_anomaly(), np.errstate(all="ignore"), batch:
            loss = sum_losses(model(images, targets))
            if zero_grad is not None:
                zero_grad()
            loss.backward()
    except AnomalyError as e:
        return e.op, e.where
    return None, None
