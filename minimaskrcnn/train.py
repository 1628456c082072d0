"""Training: the loop that turns data, the model's five losses and SGD into a trained Mask R-CNN.

One step is torchvision's reference recipe: a batch, ``model(images, targets)`` -> five losses,
their sum backpropagated, optional gradient clipping, an SGD step with momentum and weight decay,
a warm-up then multi-step learning rate. Around it: a progress bar, the run log (``runlog``),
periodic validation (losses and COCO AP), and checkpoints that hold every bit of state (weights,
momentum, schedule, data order and every random generator, ``rng``), so that a resumed run goes
on exactly as if it had never stopped. A NaN loss stops the run, re-runs the step in anomaly mode to
name the op that made the first NaN, and leaves the last good checkpoint untouched.

The rest lives in its own room: the configuration in ``config``; data sets and their checks in ``data.prepare``;
starting weights in ``pretrained``; building the model and restoring checkpoints in ``checkpoint``; validation
losses and COCO AP in ``evaluate``; process setup and loss rescaling in ``distributed``; NaN diagnosis in ``errors``.

Data-parallel training (``mpiexec -n N minimaskrcnn train``): each of the N processes holds a replica
and ``batch_size / N`` images of each batch; the losses are rescaled to the global counts and the
gradients summed over the processes (``distributed``), so that the run is the one-process run of the
same batch. Rank 0 alone writes the log, the curves, validation results and checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm  # text bars, also in notebooks (tqdm.auto warns there without ipywidgets)

from minimaskrcnn import distributed, optim
from minimaskrcnn.checkpoint import CHECKPOINT_NAME, build_model_from_config, load_training_state
from minimaskrcnn.config import CONFIG_NAME, TrainConfig
from minimaskrcnn.data import DataLoader
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.prepare import DetectionDataset, check_keypoints, prepare_datasets
from minimaskrcnn.errors import DataError, NonFiniteLossError, find_nonfinite_op
from minimaskrcnn.evaluate import (
    detections_to_coco_results,
    evaluate_results,
    iou_types_of,
    run_model,
    validation_losses,
)
from minimaskrcnn.function import AnomalyError, detect_anomaly
from minimaskrcnn.global_batch import global_batch
from minimaskrcnn.io import atomic_write, load_checkpoint, save_checkpoint
from minimaskrcnn.ops.loss import sum_losses
from minimaskrcnn.pretrained import load_pretrained, read_starting_weights, resolve_run
from minimaskrcnn.rng import find_run_generators, get_rng_state, set_rng_state
from minimaskrcnn.runlog import LossMeter, RunLog

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "train"]


class Trainer:
    """One training run: data, model, optimizer, schedule, loader, and their saved state.

    Args:
        config: the run's configuration.
        resume: continue from ``<run_dir>/checkpoint.npz`` (True), from a given checkpoint path
            (a str), or start afresh (False/None: an existing run folder's log is replaced).
        datasets: optionally (train_dataset, val_dataset) to use instead of those ``config`` names;
            validation needs a CocoDataset (COCO's evaluation reads its annotations).
        model: optionally a ready model (else built from ``config.model``, and started from
            ``config.weights`` / ``config.backbone_weights`` when a fresh run names them: see
            ``pretrained.resolve_config``; what was loaded is in ``weights_reports``).
        comm: the processes of a data-parallel run (default ``distributed.init()``: MPI's world
            under mpiexec, else one process); ``config.batch_size`` is then the global batch.

    Raises:
        DistributedError: the batch does not split evenly over the processes, or the model
            normalises with batch statistics (norm "bn"), which differ on a part of the batch.

    Typical use::

        trainer = Trainer(TrainConfig(steps=100))
        result = trainer.fit()          # or trainer.fit(until_step=50) and later Trainer(..., resume=True).fit()
    """

    def __init__(self, config: TrainConfig, resume: bool | str | None = False,
                 datasets: tuple[DetectionDataset, CocoDataset] | None = None, model=None,
                 comm: distributed.Communicator | None = None):
        self.config = config
        self.comm = distributed.init() if comm is None else comm
        self.is_root = self.comm.is_root  # rank 0 writes the files of the run
        if self.comm.size > 1:
            distributed.check_batch_split(config.batch_size, self.comm.size)
        if config.processes not in (None, self.comm.size) and self.comm.is_root:
            warnings.warn(f"processes={config.processes} is read by `minimaskrcnn train`, which starts them; this "
                          f"Trainer runs in {self.comm.size} process(es) (local_parallel.launch starts more)",
                          stacklevel=2)
        distributed.setup_process(self.comm, config.backend, config.threads, config.blas_threads)  # backend, threads
        self.run_dir = config.run_dir
        self.checkpoint_path = os.path.join(self.run_dir, CHECKPOINT_NAME)
        self.log = RunLog(self.run_dir)

        # 0. starting weights, read first so that a bad file fails before the data are prepared
        starting = model is None and not resume and bool(config.weights or config.backbone_weights)
        weights, backbone = read_starting_weights(config) if starting else (None, None)

        # 1. data (rank 0 first: it may generate the shapes data the others then read)
        if datasets is None:
            with distributed.root_first(self.comm):
                self.train_dataset, self.val_dataset, self.class_names = prepare_datasets(config)
        else:
            self.train_dataset, self.val_dataset = datasets
            self.class_names = list(self.train_dataset.class_names)
        # 1b. starting weights decide the labels and a few model settings, written into the configuration
        self.weights_reports: list = []
        if starting:
            config, self.class_names = resolve_run(config, weights, self.train_dataset, self.val_dataset,
                                                   self.class_names)
            self.config = config
        self.num_classes = len(self.class_names)
        self.train_indices = list(range(len(self.train_dataset)))[: config.train_max_images]
        self.val_indices = list(range(len(self.val_dataset)))[: config.val_max_images]
        if not self.train_indices:
            raise DataError(None, f"the training data set holds no images (train_max_images={config.train_max_images})")
        self.train_dataset.check_images(self.train_indices)  # fail now, not at step 347
        self.val_dataset.check_images(self.val_indices)

        # 2. every source of randomness starts from the seed: init, data order, flips, sampling
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        self.model = model if model is not None else build_model_from_config(config, self.num_classes)
        if starting:
            self.weights_reports = load_pretrained(self.model, self.class_names, weights, backbone,
                                                   remake_predictors=config.remake_predictors)
        check_keypoints(self.model, self.train_dataset, config.model)
        if self.comm.size > 1:
            distributed.check_no_batch_statistics(self.model)
            distributed.broadcast_state_(self.comm, self.model)  # every replica starts from rank 0's weights
        # each process loads its share of every (global) batch
        self.loader = DataLoader(self.train_dataset, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                 hflip_prob=config.hflip_prob, indices=self.train_indices,
                                 num_replicas=self.comm.size, rank=self.comm.rank)

        # 3. optimizer over parameter groups, and the schedule
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optim.SGD(self._param_groups(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        self.scheduler = optim.WarmupMultiStepLR(
            self.optimizer, milestones=list(config.milestones()), gamma=config.gamma,
            warmup_factor=config.warmup_factor, warmup_iters=config.warmup_steps,
        )
        self.step = 0
        self.batch_images = 0  # images of the last step's (global) batch
        self._batch_key: tuple | None = None  # the last step's global_batch arguments
        self._warned_counts: set[str] = set()  # losses without a noted count, warned about once
        self.seconds_before = 0.0  # training time of the run before this process (when resumed)
        self._fit_start: float | None = None
        self.last_checkpoint_step: int | None = None
        self.last_val: dict[str, Any] = {}
        self._generators: dict | None = None

        if self.is_root:
            os.makedirs(self.run_dir, exist_ok=True)
        if resume:
            self.load_checkpoint(resume if isinstance(resume, (str, os.PathLike)) else self.checkpoint_path)
        elif self.is_root:
            self.log.rewrite([])
        if self.is_root:
            with atomic_write(os.path.join(self.run_dir, CONFIG_NAME), "w") as f:
                json.dump(self.config.to_dict(), f, indent=2)

    @property
    def history(self) -> list[dict]:
        """The rows of the run log (training and validation), as in log.jsonl."""
        return self.log.rows

    def _param_groups(self) -> list[dict]:
        """Weights with ``weight_decay``; norm parameters and biases with ``norm_weight_decay``."""
        if self.config.norm_weight_decay is None:
            return [{"params": self.params}]
        return optim.param_groups_weight_decay(self.model, self.config.weight_decay,
                                               norm_weight_decay=self.config.norm_weight_decay,
                                               bias_weight_decay=self.config.norm_weight_decay)

    # --------------------------------------------------------------------------------- state
    def generator_states(self) -> dict:
        """The state of every random generator the run depends on (JSON-serialisable; see ``rng``)."""
        return get_rng_state(self._owned_generators())

    def set_generator_states(self, states: Mapping[str, Any]) -> None:
        set_rng_state(states, self._owned_generators(), source=self.checkpoint_path)

    def _owned_generators(self) -> dict:
        """{path: generator} of the model and the loader, found once (the walk is not free)."""
        if self._generators is None:
            self._generators = find_run_generators(self.model, self.loader)
        return self._generators

    def state_extra(self) -> dict:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            # the keypoints' names and skeleton, for pictures of a keypoint model's predictions
            "keypoint_names": self.train_dataset.keypoint_names,
            "skeleton": getattr(self.train_dataset, "skeleton", None),  # optional: only for drawing
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "generators": self.generator_states(),
            "last_val": self.last_val,
            "seconds": self.seconds_before + (time.perf_counter() - self._fit_start if self._fit_start else 0.0),
        }

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write model, optimizer, schedule, data order and generator states atomically (rank 0 only:
        the replicas are equal)."""
        path = path or self.checkpoint_path
        if self.is_root:
            save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), self.state_extra())
        self.last_checkpoint_step = self.step
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore everything ``save_checkpoint`` wrote; the log is cut back to the checkpoint's step.

        In a data-parallel run, rank 0 reads the file and sends its contents to the others, so that
        every rank resumes from the same checkpoint (no shared file system needed).
        """
        path = os.fspath(path)
        if self.comm.size == 1:
            ckpt = load_checkpoint(path)
        else:
            ckpt = self.comm.bcast(load_checkpoint(path) if self.is_root else None)
        extra = load_training_state(ckpt, path, self.model, self.optimizer, self.num_classes)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loader.load_state_dict(extra["loader"])
        self.set_generator_states(extra["generators"])
        self.step = int(extra["step"])
        self.seconds_before = float(extra.get("seconds", 0.0))
        self.last_checkpoint_step = self.step
        self.checkpoint_path = path if os.path.dirname(path) == self.run_dir else self.checkpoint_path
        self.last_val = dict(extra.get("last_val") or {})
        if self.is_root:
            self.log.cut(self.step)

    # ------------------------------------------------------------------------------- one step
    def train_step(self, images: list, targets: list[dict], image_indices: Sequence[int] | None = None
                   ) -> dict[str, float]:
        """One SGD step on a batch; returns the losses (floats) and "grad_norm", "lr".

        The model's random draws are keyed by (seed, step, index of each image in the batch)
        (``global_batch``). In a data-parallel run, ``images`` are this process's share of the
        batch, at ``image_indices`` in it (default: the loader's last slots); the losses returned are
        those of the whole batch, and the gradients are summed over the processes before the step.

        Raises:
            NonFiniteLossError: a loss or gradient was NaN/Inf (parameters are not updated).
        """
        self.model.train()
        comm = self.comm
        if image_indices is None:
            image_indices = self.loader.last_batch_slots if comm.size > 1 else range(len(images))
        # every process pads like the whole batch: the sizes of all its images
        sizes = None
        if comm.size > 1:
            sizes = [s for part in comm.allgather([tuple(img.shape[-2:]) for img in images]) for s in part]
        self._batch_key = (self.config.seed, self.step, list(image_indices), sizes)
        self.batch_images = len(sizes) if sizes is not None else len(images)
        states_before = self.generator_states() if not self.config.detect_anomaly else None
        values: dict[str, float] = {}
        try:
            # NumPy's overflow/invalid warnings are left out: a NaN/Inf loss is reported, with its op, below
            anomaly_mode = detect_anomaly() if self.config.detect_anomaly else contextlib.nullcontext()
            with anomaly_mode, np.errstate(all="ignore"):
                with global_batch(*self._batch_key) as batch:
                    loss_dict = self.model(images, targets) if images else {}
                if comm.size == 1:
                    loss = sum_losses(loss_dict)
                    values = {k: float(v.item()) for k, v in loss_dict.items()}
                    values = {"loss": float(loss.item()), **values}
                else:  # each loss rescaled to the whole batch's count; the whole batch's values
                    weighted, values = distributed.global_losses(comm, loss_dict, batch.loss_counts, len(images),
                                                                 self._warned_counts)
                    loss = sum_losses(weighted)
                if not math.isfinite(values["loss"]):
                    self._fail(images, targets, states_before, values)
                self.optimizer.zero_grad()
                if loss is not None:
                    loss.backward()
        except AnomalyError as e:
            if isinstance(e, NonFiniteLossError):
                raise
            raise self._error(values, e.op, e.where) from None
        # the gradients of all processes summed, in a few fused buffers (nothing to do alone)
        distributed.allreduce_gradients_(comm, self.params)
        with np.errstate(all="ignore"):
            grad_norm = optim.grad_norm(self.params)  # one sync per step on a GPU
        if not math.isfinite(grad_norm):
            self._fail(images, targets, states_before, values, detail="gradient norm is NaN/Inf")
        if self.config.clip_grad_norm is not None:
            optim.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        values["grad_norm"] = grad_norm
        return values

    def _fail(self, images, targets, states_before, values, detail: str = "") -> None:
        """Re-run the failed step in anomaly mode to name the op (``errors.find_nonfinite_op``), then raise."""
        op = where = None
        if states_before is not None and images:
            self.set_generator_states(states_before)  # the same sampling as the failed pass
            op, where = find_nonfinite_op(self.model, images, targets, self._batch_key, self.optimizer.zero_grad)
        raise self._error(values, op, where, detail)

    def _error(self, values, op, where, detail: str = "") -> NonFiniteLossError:
        ckpt = self.checkpoint_path if self.last_checkpoint_step is not None else None
        return NonFiniteLossError(self.step + 1, values, op, where, ckpt, self.last_checkpoint_step, detail)

    # ------------------------------------------------------------------------------ validation
    def validate(self, verbose: bool = False) -> dict[str, Any]:
        """Validation losses and COCO AP on the validation set; logged as a "val_*" row (returned).

        In a data-parallel run every process calls it: each runs the model over its share of the
        validation images, and rank 0 scores all the results (the numbers of one process) and
        computes the losses; the others return {}.
        """
        comm = self.comm
        iou_types = self.config.val_iou_types or iou_types_of(self.model)
        share = self.val_indices[comm.rank :: comm.size]
        detections, image_ids = run_model(self.model, self.val_dataset, indices=share)
        label_map = self.val_dataset.label_to_category_id
        results = {t: detections_to_coco_results(detections, image_ids, label_map, t) for t in iou_types}
        parts = comm.allgather((image_ids, results))  # one process: [its own]
        if not comm.is_root:
            return {}
        # the results in the order of one process: image k of val_indices was rank k % size's (k // size)-th
        image_ids = [parts[k % comm.size][0][k // comm.size] for k in range(len(self.val_indices))]
        position = {image_id: k for k, image_id in enumerate(image_ids)}
        results = {t: sorted((r for _, res in parts for r in res[t]), key=lambda r: position[r["image_id"]])
                   for t in iou_types}  # a stable sort: each image's results keep their order

        row: dict[str, Any] = {"step": self.step}
        indices = self.val_indices[: max(0, self.config.val_loss_images)]  # the losses change nothing
        val = validation_losses(self.model, self.val_dataset, indices, self.config.batch_size, self._owned_generators())
        row.update({f"val_{k}": v for k, v in val.items()})
        stats = evaluate_results(self.val_dataset.coco, results, image_ids, results_dir=self.run_dir,
                                 verbose=verbose, box_only_ids=self.val_dataset.box_only_annotation_ids)
        for iou_type, numbers in stats.items():
            for k in ("AP", "AP50", "AP75"):
                row[f"val_{iou_type}_{k}"] = numbers[k]
        self.last_val = {"step": self.step, "stats": stats}
        self.log.append(row)
        return row

    # --------------------------------------------------------------------------------- the run
    def fit(self, until_step: int | None = None, callback: Callable[[Trainer, dict], None] | None = None) -> dict:
        """Train until ``config.steps`` (or ``until_step``, to stop early and resume later).

        Args:
            until_step: stop after this step (a checkpoint is written there).
            callback: called after every step with (trainer, that step's values).

        Returns:
            {"step", "run_dir", "checkpoint", "losses" (the last step's), "val" (the last
            validation's stats or {}), "seconds"}.
        """
        cfg = self.config
        end = cfg.steps if until_step is None else min(cfg.steps, int(until_step))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.run_name, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.is_root))
        meter = LossMeter()  # means over the log window, smoothed values and speed for the bar
        t_start = self._fit_start = time.perf_counter()
        values: dict[str, float] = {}
        batches = self.loader.forever()  # batches across epochs (iter() is one epoch)
        try:
            while self.step < end:
                images, targets = next(batches)
                values = self.train_step(images, targets)
                self.step += 1
                meter.update(values, self.batch_images)
                bar.update(1)
                bar.set_postfix_str(meter.postfix())
                if (self.step % cfg.log_every == 0 or self.step == end) and self.is_root:
                    self.log.append({"step": self.step, **meter.row(),
                                     "time": self.seconds_before + meter.now - t_start})
                if callback is not None:
                    callback(self, values)
                if (cfg.val_every and self.step % cfg.val_every == 0) or self.step == cfg.steps:
                    bar.clear()
                    self.validate()  # every process runs the model on its share of the images
                    if self.is_root:  # the others wait (without spinning) until rank 0 has scored and plotted
                        self.log.plot()
                    self.comm.barrier()
                    meter.restart_clock()  # the speed leaves validation out
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
            self.seconds_before += time.perf_counter() - t_start
            self._fit_start = None
        if self.is_root:
            self.log.plot()
        return {
            "step": self.step,
            "run_dir": self.run_dir,
            "checkpoint": self.checkpoint_path if self.last_checkpoint_step is not None else None,
            "losses": values,
            "val": self.last_val.get("stats", {}),
            "seconds": time.perf_counter() - t_start,
        }


def train(config: TrainConfig | None = None, resume: bool | str | None = False, **overrides) -> dict:
    """Train a model as ``config`` says (defaults: the README's shapes run) and return the result.

    Args:
        config: the configuration (default ``TrainConfig()``).
        resume: continue the run from its checkpoint (True) or from a given checkpoint path.
        **overrides: fields of TrainConfig to change, e.g. ``train(steps=100)``.

    Returns:
        what ``Trainer.fit`` returns: step, run_dir, checkpoint, last losses, validation stats, seconds.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    return Trainer(config, resume=resume).fit()

