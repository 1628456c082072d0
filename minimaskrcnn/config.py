"""The configuration of a training run, whose fields are also the options of ``minimaskrcnn train``.

Each field of ``TrainConfig`` carries its command-line help in ``field(metadata={"help": ...})``, and
``"group"`` (where ``--help`` lists it); ``cli.py`` makes one option per field from its name, type,
default and metadata, so a new field with its help is a new option. Optional metadata: ``"choices"``
(a sequence, or a function returning one), ``"flag"`` (another option name), ``"metavar"``.
A checkpoint stores the configuration (``TrainConfig.to_dict()``), and each run writes it as
``config.json``: it is everything a run depends on.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from minimaskrcnn.backend import BACKENDS
from minimaskrcnn.data.prepare import DATASETS, DEFAULT_FIGURES_DIR, DEFAULT_SHAPES_DIR

__all__ = ["CONFIG_NAME", "DEFAULT_OUTPUT_DIR", "OPTION_GROUPS", "TrainConfig"]

CONFIG_NAME = "config.json"
DEFAULT_OUTPUT_DIR = "runs"
OPTION_GROUPS = ("model", "data", "optimisation", "run")  # the order `minimaskrcnn train --help` lists them in


def _model_names() -> list[str]:
    """The named model configurations (imported when the CLI asks: the models package is large)."""
    from minimaskrcnn.models.configs import CONFIGS

    return list(CONFIGS)


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved in each checkpoint (and as ``config.json``).

    The defaults are the README's main command: the small "r18-shapes" model on the built-in
    synthetic shapes data, tuned to finish within 15 minutes on a 2-core CPU.
    """

    # --- what to train
    model: str = field(default="r18-shapes", metadata={
        "group": "model", "choices": _model_names, "help": "named model configuration"})
    name: str | None = field(default=None, metadata={
        "group": "run", "help": "run name, the run folder <output_dir>/<name> (default: the model configuration's)"})
    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata={
        "group": "run", "help": "parent folder of the run folders"})
    min_size: int | None = field(default=None, metadata={
        "group": "model", "help": "override the model's input min_size (smaller: faster, coarser)"})
    max_size: int | None = field(default=None, metadata={
        "group": "model", "help": "override the model's input max_size"})
    model_kwargs: dict | None = field(default=None, metadata={
        "group": "model", "flag": "--model-arg", "metavar": "KEY=VALUE",
        "help": "a torchvision-style model argument, e.g. box_batch_size_per_image=128 (repeatable)"})

    # --- starting weights (docs/FINETUNE.md): torchvision's fine-tuning recipe
    weights: str | None = field(default=None, metadata={
        "group": "model", "metavar": "PATH",
        "help": "start from these weights: a torchvision Mask R-CNN .pth (maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth, "
                "with --model maskrcnn_resnet50_fpn; see docs/FINETUNE.md for where to get it) or one of our "
                "checkpoints or run folders; every tensor whose name and shape fit is loaded, and the box and mask "
                "predictors are re-made unless the data set's categories are the weights' classes"})
    backbone_weights: str | None = field(default=None, metadata={
        "group": "model", "metavar": "PATH",
        "help": "start the ResNet body from an ImageNet classification .pth (torchvision's resnet50 keys without "
                "'backbone.body.', e.g. resnet50-0676ba61.pth: torchvision's weights_backbone); --weights, when "
                "given too, wins for every tensor it holds"})
    trainable_backbone_layers: int | None = field(default=None, metadata={
        "group": "model", "metavar": "N",
        "help": "ResNet stages trained, counted from the top, as torchvision: 5 all (conv1 too), 3 layer2-layer4, "
                "0 none; the others keep their starting values (default: 3 with --weights or --backbone-weights, "
                "else the model configuration's)"})
    remake_predictors: bool = field(default=False, metadata={
        "group": "model",
        "help": "with --weights, re-make the box and mask predictors for the data set's categories (contiguous "
                "labels) even when they are classes of the weights (a COCO subset otherwise keeps COCO's ids and "
                "the pretrained 91-way predictors)"})
    norm_eps: float | None = field(default=None, metadata={
        "group": "model", "metavar": "EPS",
        "help": "eps of the backbone's normalisation layers (default: 0.0 with torchvision's Mask R-CNN weights, as "
                "torchvision sets it for COCO_V1; else the model configuration's, 1e-5)"})
    contiguous_labels: bool = field(default=False, metadata={
        "group": "data",
        "help": "label the categories 1..K in the order of their ids instead of by their ids (always so for ids "
                "<= 0, which would collide with the background, and when --weights re-makes the predictors)"})
    class_names: tuple[str, ...] | None = field(default=None, metadata={
        "group": "data", "metavar": "NAME,...",
        "help": "the model's classes by label from 1 ('N/A' where no category is), which the data set's categories "
                "must be among (default: the data set's categories; set by --weights when the data set's "
                "categories are the weights' classes, e.g. COCO's)"})

    # --- data: "shapes" or "figures" (generated, cached in data_dir), "coco-sample" (the package's COCO
    # sample: train split, val split), "coco-overfit" (its 8 overfitting images for both) or "coco" (any
    # COCO-format files: give the annotation files and image folders)
    dataset: str = field(default="shapes", metadata={
        "group": "data", "choices": DATASETS,
        "help": "built-in shapes, built-in stick figures with keypoints (for the keypoint models), the package's "
                "COCO sample (or its 8 overfitting images), or your COCO-format files"})
    data_dir: str | None = field(default=None, metadata={
        "group": "data", "help": f"shapes/figures cache folder (default {DEFAULT_SHAPES_DIR}, {DEFAULT_FIGURES_DIR})"})
    num_train_images: int = field(default=600, metadata={
        "group": "data", "help": "shapes/figures: training images generated"})
    num_val_images: int = field(default=64, metadata={
        "group": "data", "help": "shapes/figures: held-out images generated from another seed"})
    image_size: int = field(default=128, metadata={
        "group": "data", "help": "shapes/figures: image side in pixels"})
    train_annotations: str | None = field(default=None, metadata={
        "group": "data", "help": "COCO instances JSON for training"})
    train_images: str | None = field(default=None, metadata={
        "group": "data", "help": "folder of the training images"})
    val_annotations: str | None = field(default=None, metadata={
        "group": "data", "help": "COCO instances JSON for validation"})
    val_images: str | None = field(default=None, metadata={
        "group": "data", "help": "folder of the validation images"})
    train_max_images: int | None = field(default=None, metadata={
        "group": "data", "help": "train on the first N images only (e.g. 8 to overfit)"})
    val_max_images: int | None = field(default=None, metadata={
        "group": "data", "help": "validate on the first N images only"})
    exif_transpose: bool = field(default=False, metadata={
        "group": "data",
        "help": "read images turned by their EXIF orientation, for annotations made on the image as a viewer shows "
                "it (default: the stored pixels, as COCO)"})
    hflip_prob: float = field(default=0.5, metadata={
        "group": "data", "help": "probability of a horizontal flip of each training image"})
    min_keypoints_per_image: int | None = field(default=None, metadata={
        "group": "data", "help": "keypoint data: train only on images with at least this many labelled keypoints "
                                 "(torchvision's keypoint training uses 10)"})
    mask_categories: str | None = field(default=None, metadata={
        "group": "data", "metavar": "NAMES",
        "help": "train masks only for these categories (comma-separated names or ids; 'voc': COCO's 20 PASCAL VOC "
                "categories); the other categories' instances are box-only: they train the RPN and box head, "
                "not the mask head (partially supervised, lesson 18)"})

    # --- optimisation (SGD with momentum, linear warm-up, then steps of the learning rate)
    steps: int = field(default=1500, metadata={
        "group": "optimisation", "help": "optimizer steps (iterations) in the whole run"})
    batch_size: int = field(default=4, metadata={
        "group": "optimisation",
        "help": "images per step: the global batch, split evenly over the processes (--processes, mpiexec)"})
    lr: float = field(default=0.02, metadata={
        "group": "optimisation", "help": "peak learning rate (after warm-up)"})
    momentum: float = field(default=0.9, metadata={
        "group": "optimisation", "help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={
        "group": "optimisation", "help": "L2 on the weights"})
    norm_weight_decay: float | None = field(default=0.0, metadata={
        "group": "optimisation", "help": "weight decay of norm weights/biases and all biases (None: as weight_decay)"})
    warmup_steps: int = field(default=100, metadata={
        "group": "optimisation", "help": "steps of linear warm-up from lr * warmup_factor to lr"})
    warmup_factor: float = field(default=0.001, metadata={
        "group": "optimisation", "help": "learning rate factor at the start of the warm-up"})
    lr_milestones: tuple[int, ...] | None = field(default=None, metadata={
        "group": "optimisation", "help": "steps where lr is multiplied by gamma, e.g. 1000,1300 (default 70%,90%)"})
    gamma: float = field(default=0.1, metadata={
        "group": "optimisation", "help": "lr factor at each milestone"})
    clip_grad_norm: float | None = field(default=None, metadata={
        "group": "optimisation", "help": "clip the global gradient norm to this (default: no clipping)"})
    seed: int = field(default=0, metadata={
        "group": "optimisation", "help": "seeds initialisation, data order, flips and the model's sampling"})

    # --- bookkeeping
    log_every: int = field(default=10, metadata={
        "group": "run", "help": "steps between log rows (averages over those steps)"})
    val_every: int = field(default=250, metadata={
        "group": "run", "help": "steps between validations (0: only at the end); each costs a few seconds"})
    checkpoint_every: int = field(default=250, metadata={
        "group": "run", "help": "steps between checkpoints (one is always written at the end)"})
    val_iou_types: tuple[str, ...] | None = field(default=None, metadata={
        "group": "run", "choices": ("bbox", "segm", "keypoints"),
        "help": "what validation measures, e.g. bbox,segm (default: all the model predicts: bbox, segm with a "
                "mask head, keypoints with a keypoint head)"})
    val_loss_images: int = field(default=16, metadata={
        "group": "run", "help": "validation losses over at most this many images (0: skip them)"})
    backend: str | None = field(default=None, metadata={
        "group": "run", "choices": BACKENDS, "help": "kernels to run (default: keep the current one, numba)"})
    processes: int | None = field(default=None, metadata={
        "group": "run", "help": "data-parallel processes on this machine: each takes batch-size/N images of every "
                                "step and the gradients are summed, the same training as one process (1: one "
                                "process). Default: one per core, as many as split the batch evenly, on the "
                                "CPU, for models without batch norm (2 for the default run on 2 cores); the "
                                "environment variable MINIMASKRCNN_PROCESSES sets the default. Under mpiexec, "
                                "the processes are mpiexec's (-n)"})
    threads: int | None = field(default=None, metadata={
        "group": "run", "help": "threads of the Numba kernels of each process (default: the process's share "
                                "of the cores)"})
    blas_threads: int | None = field(default=1, metadata={
        "group": "run", "help": "threads of NumPy's matrix products, process-wide; 1 is fastest for the small "
                                "models on few cores, where both thread pools spinning on the same cores slow "
                                "a step down 2x"})
    detect_anomaly: bool = field(default=False, metadata={
        "group": "run", "help": "run every step in anomaly mode (slow; NaNs are caught anyway)"})
    progress: bool = field(default=True, metadata={
        "group": "run", "help": "show a tqdm progress bar"})

    @property
    def run_name(self) -> str:
        return self.name or self.model

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_dir, self.run_name)

    def milestones(self) -> tuple[int, ...]:
        if self.lr_milestones is not None:
            return tuple(int(m) for m in self.lr_milestones)
        return (int(0.7 * self.steps), int(0.9 * self.steps))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("lr_milestones", "val_iou_types", "class_names"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)
