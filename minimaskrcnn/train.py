"""Training: the loop that turns data, the model's five losses and SGD into a trained Mask R-CNN.

One step is torchvision's reference recipe: a batch, ``model(images, targets)`` -> five losses,
their sum backpropagated, optional gradient clipping, an SGD step with momentum and weight decay,
a warm-up then multi-step learning rate. Around it: a progress bar, a JSONL log and a PNG of the
curves, periodic validation (losses and COCO AP), and checkpoints that hold every bit of state
(weights, momentum, schedule, data order and every random generator), so that a resumed run goes
on exactly as if it had never stopped. A NaN loss stops the run, re-runs the step in anomaly mode to
name the op that made the first NaN, and leaves the last good checkpoint untouched.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from minimaskrcnn.errors import CheckpointError, DataError
from minimaskrcnn.function import AnomalyError, detect_anomaly, no_grad

CHECKPOINT_NAME = "checkpoint.npz"
LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
CONFIG_NAME = "config.json"
DEFAULT_OUTPUT_DIR = "runs"
DEFAULT_SHAPES_DIR = os.path.join(DEFAULT_OUTPUT_DIR, "data", "shapes")
DATASETS = ("shapes", "coco-sample", "coco-overfit", "coco")
SHAPES_TRAIN_SEED = 0  # the built-in shapes data: fixed seeds, so that val never overlaps train
SHAPES_VAL_SEED = 1


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved in each checkpoint (and as ``config.json``).

    The defaults are the README's main command: the small "r18-shapes" model on the built-in
    synthetic shapes data, tuned to finish within 15 minutes on a 2-core CPU.
    """

    # --- what to train
    model: str = "r18-shapes"  # a named configuration of minimaskrcnn.models (see `minimaskrcnn train --help`)
    name: str | None = None  # run folder <output_dir>/<name>; None: the model configuration's name
    output_dir: str = DEFAULT_OUTPUT_DIR  # parent folder of the run folders
    min_size: int | None = None  # override the model's input min_size (smaller: faster, coarser)
    max_size: int | None = None  # override the model's input max_size
    model_kwargs: dict | None = None  # more torchvision-style overrides, e.g. {"box_batch_size_per_image": 32}

    # --- data: "shapes" (generated, cached in data_dir), "coco-sample" (the package's COCO sample:
    # train split, val split), "coco-overfit" (its 8 overfitting images for both) or "coco" (any
    # COCO-format files: give the annotation files and image folders)
    dataset: str = "shapes"
    data_dir: str | None = None  # shapes cache folder (default runs/data/shapes)
    num_train_images: int = 600  # shapes: training images generated
    num_val_images: int = 64  # shapes: held-out images generated from another seed
    image_size: int = 128  # shapes: side of the square images
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    train_max_images: int | None = None  # use only the first N training images (e.g. 8 to overfit)
    val_max_images: int | None = None  # validate on the first N validation images only
    hflip_prob: float = 0.5  # probability of a horizontal flip of each training image

    # --- optimisation (SGD with momentum, linear warm-up, then steps of the learning rate)
    steps: int = 1500  # optimizer steps (iterations) in the whole run
    batch_size: int = 4  # images per step
    lr: float = 0.02  # peak learning rate (after warm-up)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # L2 on the weights
    norm_weight_decay: float | None = 0.0  # on norm weights/biases and all biases; None: as weight_decay
    warmup_steps: int = 100  # steps of linear warm-up from lr * warmup_factor to lr
    warmup_factor: float = 0.001
    lr_milestones: tuple[int, ...] | None = None  # steps where lr is multiplied by gamma; None: 70% and 90%
    gamma: float = 0.1
    clip_grad_norm: float | None = None  # clip the global gradient norm to this (None: no clipping)
    seed: int = 0  # seeds initialisation, data order, flips and the model's sampling

    # --- bookkeeping
    log_every: int = 10  # steps between log rows (averages over those steps)
    val_every: int = 250  # steps between validations (0: only at the end); each costs a few seconds
    checkpoint_every: int = 250  # steps between checkpoints (one is always written at the end)
    val_iou_types: tuple[str, ...] = ("bbox", "segm")
    val_loss_images: int = 16  # validation losses over at most this many images (0: skip them)
    backend: str | None = None  # "numpy" | "numba" | "cuda"; None: keep the current one
    threads: int | None = None  # threads of Numba's kernels, process-wide (None: leave them; Numba starts with every core)
    blas_threads: int | None = 1  # threads of NumPy's BLAS, process-wide (None: leave it); 1 suits the small models
    detect_anomaly: bool = False  # run every step in anomaly mode (slow; NaNs are caught anyway)
    progress: bool = True  # show a tqdm progress bar

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
        for k in ("lr_milestones", "val_iou_types"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


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


# ------------------------------------------------------------------------------------ building
def build_model_from_config(config: TrainConfig, num_classes: int):
    """The model named in ``config`` with ``num_classes`` classes (background included).

    Its initial weights come from ``nn.init.manual_seed(config.seed)`` and its samplers are seeded
    from ``config.seed`` too, so the same configuration always builds the same model. Under the
    "cuda" backend with a GPU, its parameters are moved there (CuPy arrays; see docs/GPU.md).
    """
    from minimaskrcnn.backend import cupy_or_none, get_backend
    from minimaskrcnn.models import build_model
    from minimaskrcnn.nn import init

    init.manual_seed(int(config.seed))
    overrides: dict[str, Any] = dict(config.model_kwargs or {})
    overrides["seed"] = int(config.seed)
    if config.min_size is not None:
        overrides["min_size"] = int(config.min_size)
    if config.max_size is not None:
        overrides["max_size"] = int(config.max_size)
    model = build_model(config.model, num_classes=num_classes, **overrides)
    if get_backend() == "cuda" and cupy_or_none() is not None:
        model.to_device("cuda")  # before any optimizer holds the parameters
    return model


def config_from_checkpoint_extra(extra: Mapping[str, Any], path: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(extra["config"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(path, f"its training configuration is unreadable: {e}") from None


def prepare_datasets(config: TrainConfig):
    """The training and validation data sets named in ``config`` (generating shapes if needed).

    Returns:
        (train_dataset, val_dataset, class_names): CocoDatasets without transforms (the loader
        flips), and names indexed by label with "__background__" at 0.

    Raises:
        DataError: unreadable or empty data.
    """
    from minimaskrcnn.data import CocoDataset

    if config.dataset == "shapes":
        train_ann, train_img, val_ann, val_img = ensure_shapes_data(
            config.data_dir or DEFAULT_SHAPES_DIR, config.num_train_images, config.num_val_images, config.image_size
        )
    elif config.dataset in ("coco-sample", "coco-overfit"):
        from minimaskrcnn.data import sample_files

        # the package's COCO sample: train on its train split and validate on its val split, or
        # ("coco-overfit") train and validate on the same 8 images, to check that a model can overfit
        train_split, val_split = ("train", "val") if config.dataset == "coco-sample" else ("overfit", "overfit")
        train_ann, train_img = (os.fspath(p) for p in sample_files(train_split))
        val_ann, val_img = (os.fspath(p) for p in sample_files(val_split))
        train_ann = config.train_annotations or train_ann
        train_img = config.train_images or train_img
        val_ann = config.val_annotations or val_ann
        val_img = config.val_images or val_img
    elif config.dataset == "coco":
        if not (config.train_annotations and config.train_images):
            raise DataError(None, "dataset 'coco' needs train annotations and an image folder")
        train_ann, train_img = config.train_annotations, config.train_images
        val_ann = config.val_annotations or train_ann
        val_img = config.val_images or (train_img if val_ann == train_ann else None)
        if val_img is None:
            raise DataError(val_ann, "validation annotations given without their image folder")
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}: expected one of {DATASETS}")
    train_ds = CocoDataset(train_ann, train_img)
    val_ds = CocoDataset(val_ann, val_img)
    if len(train_ds) == 0:
        raise DataError(train_ann, "the training data set holds no images")
    if len(val_ds) == 0:
        raise DataError(val_ann, "the validation data set holds no images")
    return train_ds, val_ds, class_names_of(train_ds)


def check_images(dataset, indices: Sequence[int]) -> None:
    """Fail now, not at step 347: every image exists, is readable and has its record's size.

    Reads only the image headers. Data sets without ``image_path``/``image_info`` are not checked.

    Raises:
        ImageError: naming the file and the image id.
    """
    from PIL import Image

    from minimaskrcnn.errors import ImageError

    if not (hasattr(dataset, "image_path") and hasattr(dataset, "image_info")):
        return
    for i in indices:
        path, info = dataset.image_path(i), dataset.image_info(i)
        record = f"image id {info['id']}"
        if not os.path.isfile(path):
            raise ImageError(path, "image file not found", record=record)
        try:
            with Image.open(path) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(path, f"cannot read the image ({e})", record=record) from None
        if size != (info["width"], info["height"]):
            raise ImageError(path, f"image is {size[0]}x{size[1]} pixels (width x height) but its record says "
                             f"{info['width']}x{info['height']}", record=record)


def ensure_shapes_data(data_dir: str, num_train: int, num_val: int, image_size: int) -> tuple[str, str, str, str]:
    """Generate the shapes train and val splits into ``data_dir`` unless they are already there.

    A split is reused only if it was made with the same number of images, size and seed (kept
    in ``<split>/meta.json``), so changing a setting regenerates it.

    Returns:
        (train annotation file, train image folder, val annotation file, val image folder).
    """
    from minimaskrcnn.data.shapes import make_shapes_dataset

    out: list[str] = []
    for split, n, seed in (("train", num_train, SHAPES_TRAIN_SEED), ("val", num_val, SHAPES_VAL_SEED)):
        split_dir = os.path.join(data_dir, split)
        meta_path = os.path.join(split_dir, "meta.json")
        params = {"num_images": int(n), "image_size": int(image_size), "seed": seed}
        done = None
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                done = json.load(f)
        if done is None or done.get("params") != params:
            made = make_shapes_dataset(split_dir, num_images=int(n), image_size=int(image_size), seed=seed)
            # names relative to the split folder, so that the folder can move
            names = {"annotations": os.path.relpath(made.annotation_file, split_dir),
                     "images": os.path.relpath(made.image_dir, split_dir)}
            with open(meta_path, "w") as f:
                json.dump({"params": params, **names}, f)
        else:
            names = done
        out += [os.path.join(split_dir, names["annotations"]), os.path.join(split_dir, names["images"])]
    return tuple(out)


def class_names_of(dataset) -> list[str]:
    """Names indexed by the model's label ("__background__" at 0, "N/A" in gaps) of a CocoDataset."""
    names = getattr(dataset, "class_names", None)
    if names is not None:
        return list(names)
    n = int(getattr(dataset, "num_classes", 0)) or 1 + max(dataset.coco.getCatIds(), default=0)
    names = ["__background__"] + ["N/A"] * (n - 1)
    for cat in dataset.coco.loadCats(dataset.coco.getCatIds()):
        names[cat["id"]] = cat["name"]
    return names


# ------------------------------------------------------------------------- random generators
def find_generators(root: Any, prefix: str = "") -> dict[str, Any]:
    """Every NumPy random generator reachable from ``root`` through minimaskrcnn objects.

    Walks attributes, lists, tuples and dicts of objects defined in this package (modules,
    loaders, transforms, data sets) and returns {attribute path: Generator or RandomState}. The
    trainer saves and restores all of them, so that randomness the model or the data pipeline
    owns (anchor and RoI sampling, flips, data order) resumes exactly.
    """
    found: dict[str, Any] = {}
    seen: set[int] = set()
    stack = [(prefix, root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.random.Generator, np.random.RandomState)):
            found[path] = obj
            continue
        if isinstance(obj, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in obj.items() if isinstance(k, (str, int)))
        elif type(obj).__module__.startswith("minimaskrcnn") and hasattr(obj, "__dict__"):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in vars(obj).items())
    return dict(sorted(found.items()))


def _generator_state(g) -> dict:
    if isinstance(g, np.random.Generator):
        return {"kind": "Generator", "state": g.bit_generator.state}
    state = g.get_state(legacy=False)
    state["state"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state["state"].items()}
    return {"kind": "RandomState", "state": state}


def _set_generator_state(g, saved: Mapping[str, Any]) -> None:
    if isinstance(g, np.random.Generator):
        g.bit_generator.state = saved["state"]
    else:
        state = dict(saved["state"])
        inner = dict(state["state"])
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
        state["state"] = inner
        g.set_state(state)


# -------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: data, model, optimizer, schedule, loader, and their saved state.

    Args:
        config: the run's configuration.
        resume: continue from ``<run_dir>/checkpoint.npz`` (True), from a given checkpoint path
            (a str), or start afresh (False/None: an existing run folder's log is replaced).
        datasets: optionally (train_dataset, val_dataset) to use instead of those ``config`` names.
        model: optionally a ready model (else built from ``config.model``).

    Typical use::

        trainer = Trainer(TrainConfig(steps=100))
        result = trainer.fit()          # or trainer.fit(until_step=50) and later Trainer(..., resume=True).fit()
    """

    def __init__(self, config: TrainConfig, resume: bool | str | None = False, datasets=None, model=None):
        from minimaskrcnn.backend import set_backend

        self.config = config
        if config.backend is not None:
            set_backend(config.backend)
        limit_threads(config.threads, config.blas_threads)
        self.run_dir = config.run_dir
        self.checkpoint_path = os.path.join(self.run_dir, CHECKPOINT_NAME)
        self.log_path = os.path.join(self.run_dir, LOG_NAME)
        self.curves_path = os.path.join(self.run_dir, CURVES_NAME)

        # 1. data
        if datasets is None:
            self.train_dataset, self.val_dataset, self.class_names = prepare_datasets(config)
        else:
            self.train_dataset, self.val_dataset = datasets
            self.class_names = class_names_of(self.train_dataset)
        self.num_classes = len(self.class_names)
        self.train_indices = list(range(len(self.train_dataset)))[: config.train_max_images]
        self.val_indices = list(range(len(self.val_dataset)))[: config.val_max_images]
        if not self.train_indices:
            raise DataError(getattr(self.train_dataset, "annotation_file", None), "the training data set holds no images")
        check_images(self.train_dataset, self.train_indices)
        check_images(self.val_dataset, self.val_indices)

        # 2. every source of randomness starts from the seed: init, data order, flips, sampling
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        self.model = model if model is not None else build_model_from_config(config, self.num_classes)
        self.loader = self._make_loader()

        # 3. optimizer over parameter groups, and the schedule
        from minimaskrcnn import optim

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optim.SGD(self._param_groups(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        self.scheduler = optim.WarmupMultiStepLR(
            self.optimizer, milestones=list(config.milestones()), gamma=config.gamma,
            warmup_factor=config.warmup_factor, warmup_iters=config.warmup_steps,
        )
        self.step = 0
        self.seconds_before = 0.0  # training time of the run before this process (when resumed)
        self._fit_start: float | None = None
        self.last_checkpoint_step: int | None = None
        self.history: list[dict] = []
        self.last_val: dict[str, Any] = {}

        os.makedirs(self.run_dir, exist_ok=True)
        if resume:
            path = resume if isinstance(resume, (str, os.PathLike)) else self.checkpoint_path
            self.load_checkpoint(path)
        else:
            self._rewrite_log([])
        with open(os.path.join(self.run_dir, CONFIG_NAME), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)

    # ---------------------------------------------------------------------------- set-up parts
    def _make_loader(self):
        from minimaskrcnn.data import DataLoader

        return DataLoader(
            self.train_dataset, batch_size=self.config.batch_size, shuffle=True, seed=self.config.seed,
            hflip_prob=self.config.hflip_prob, indices=self.train_indices,
        )

    def _param_groups(self) -> list[dict]:
        """Weights with ``weight_decay``; norm parameters and biases with ``norm_weight_decay``."""
        from minimaskrcnn.optim import param_groups_weight_decay

        if self.config.norm_weight_decay is None:
            return [{"params": self.params}]
        return param_groups_weight_decay(self.model, self.config.weight_decay,
                                         norm_weight_decay=self.config.norm_weight_decay,
                                         bias_weight_decay=self.config.norm_weight_decay)

    # --------------------------------------------------------------------------------- state
    def generator_states(self) -> dict:
        """The state of every random generator the run depends on (JSON-serialisable)."""
        py = random.getstate()
        states = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy_global": _generator_state(np.random.mtrand._rand),
            "owned": {name: _generator_state(g) for name, g in self._owned_generators().items()},
        }
        return states

    def set_generator_states(self, states: Mapping[str, Any]) -> None:
        py = states["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        _set_generator_state(np.random.mtrand._rand, states["numpy_global"])
        owned = self._owned_generators()
        missing = set(owned) ^ set(states["owned"])
        if missing:
            raise CheckpointError(self.checkpoint_path, f"random generators differ from the model's: {sorted(missing)}")
        for name, g in owned.items():
            _set_generator_state(g, states["owned"][name])

    def _owned_generators(self) -> dict:
        """{path: generator} of the model and the loader, found once (the walk is not free)."""
        if getattr(self, "_generators", None) is None:
            gens = find_generators(self.model, "model")
            for name, value in vars(self.loader).items():
                if name != "dataset":  # its thousands of annotation records hold no generator
                    gens.update(find_generators(value, f"loader.{name}"))
            self._generators = gens
        return self._generators

    def state_extra(self) -> dict:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "generators": self.generator_states(),
            "last_val": self.last_val,
            "seconds": self.seconds_before + (time.perf_counter() - self._fit_start if self._fit_start else 0.0),
        }

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write model, optimizer, schedule, data order and generator states atomically."""
        from minimaskrcnn import io as mio

        path = path or self.checkpoint_path
        mio.save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), self.state_extra())
        self.last_checkpoint_step = self.step
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore everything ``save_checkpoint`` wrote; the log is cut back to the checkpoint's step."""
        from minimaskrcnn import io as mio

        path = os.fspath(path)
        ckpt = mio.load_checkpoint(path)
        extra = ckpt.extra or {}
        for key in ("step", "scheduler", "loader", "generators"):
            if key not in extra:
                raise CheckpointError(path, f"not a training checkpoint (no {key!r})")
        if int(extra.get("num_classes", self.num_classes)) != self.num_classes:
            raise CheckpointError(path, f"has {extra['num_classes']} classes, the data set {self.num_classes}")
        try:
            self.model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(path, f"does not fit this model and optimizer: {e}") from None
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loader.load_state_dict(extra["loader"])
        self.set_generator_states(extra["generators"])
        self.step = int(extra["step"])
        self.seconds_before = float(extra.get("seconds", 0.0))
        self.last_checkpoint_step = self.step
        self.checkpoint_path = path if os.path.dirname(path) == self.run_dir else self.checkpoint_path
        self.last_val = dict(extra.get("last_val") or {})
        rows = [r for r in self._read_log() if int(r.get("step", 0)) <= self.step]
        self._rewrite_log(rows)

    # ----------------------------------------------------------------------------------- log
    def _read_log(self) -> list[dict]:
        if not os.path.isfile(self.log_path):
            return []
        rows = []
        with open(self.log_path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash: drop it and what follows
        return rows

    def _rewrite_log(self, rows: list[dict]) -> None:
        self.history = list(rows)
        tmp = self.log_path + ".tmp"
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.log_path)

    def _append_log(self, row: dict) -> None:
        self.history.append(row)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------------------- one step
    def train_step(self, images: list, targets: list[dict]) -> dict[str, float]:
        """One SGD step on a batch; returns the losses (floats) and "grad_norm", "lr".

        Raises:
            NonFiniteLossError: a loss or gradient was NaN/Inf (parameters are not updated).
        """
        self.model.train()
        states_before = self.generator_states() if not self.config.detect_anomaly else None
        try:
            # NumPy's overflow/invalid warnings are left out: a NaN/Inf loss is reported, with its op, below
            with _maybe_anomaly(self.config.detect_anomaly), np.errstate(all="ignore"):
                loss_dict = self.model(images, targets)
                loss = _sum_losses(loss_dict)
                values = {k: float(v.item()) for k, v in loss_dict.items()}
                values = {"loss": float(loss.item()), **values}
                if not math.isfinite(values["loss"]):
                    self._fail(images, targets, states_before, values)
                self.optimizer.zero_grad()
                loss.backward()
        except AnomalyError as e:
            if isinstance(e, NonFiniteLossError):
                raise
            raise self._error(locals().get("values", {}), e.op, e.where) from None
        with np.errstate(all="ignore"):
            grad_norm = self._grad_norm()
        if not math.isfinite(grad_norm):
            self._fail(images, targets, states_before, values, detail="gradient norm is NaN/Inf")
        if self.config.clip_grad_norm is not None:
            from minimaskrcnn.optim import clip_grad_norm_

            clip_grad_norm_(self.params, self.config.clip_grad_norm)
        values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        values["grad_norm"] = grad_norm
        return values

    def _grad_norm(self) -> float:
        # each parameter's sum of squares stays on its device; one copy to the host at the end
        # (one sync per step on a GPU instead of one per parameter)
        # squares in float64: float32 overflows at |g| > 1.8e19 and would report a finite gradient as Inf
        total = sum(((g * g).sum() for g in (p.grad.astype(np.float64) for p in self.params if p.grad is not None)), 0.0)
        total = float(total)
        return math.sqrt(total) if math.isfinite(total) else float("nan")

    def _fail(self, images, targets, states_before, values, detail: str = "") -> None:
        """Re-run the failed step in anomaly mode to name the op, then raise NonFiniteLossError."""
        op = where = None
        if states_before is not None:
            self.set_generator_states(states_before)  # the same sampling as the failed pass
            try:
                with detect_anomaly(), np.errstate(all="ignore"):
                    loss = _sum_losses(self.model(images, targets))
                    self.optimizer.zero_grad()
                    loss.backward()
            except AnomalyError as e:
                op, where = e.op, e.where
        raise self._error(values, op, where, detail)

    def _error(self, values, op, where, detail: str = "") -> NonFiniteLossError:
        ckpt = self.checkpoint_path if self.last_checkpoint_step is not None else None
        return NonFiniteLossError(self.step + 1, values, op, where, ckpt, self.last_checkpoint_step, detail)

    # ------------------------------------------------------------------------------ validation
    @no_grad()
    def validation_losses(self) -> dict[str, float]:
        """Mean losses over up to ``val_loss_images`` validation images (no update, no side effect).

        The model runs in training mode (losses need it); the random generators and the model's
        buffers (e.g. batch-norm statistics) are restored afterwards so that validating does not
        change the training run.
        """
        n = min(self.config.val_loss_images, len(self.val_indices))
        if n <= 0:
            return {}
        states = self.generator_states()
        buffers = {k: np.array(v, copy=True) for k, v in self.model.state_dict().items()}
        sums: dict[str, float] = defaultdict(float)
        try:
            self.model.train()
            bs = max(1, self.config.batch_size)
            for start in range(0, n, bs):
                batch = [self.val_dataset[i] for i in self.val_indices[start : min(n, start + bs)]]
                loss_dict = self.model([b[0] for b in batch], [b[1] for b in batch])
                sums["loss"] += float(_sum_losses(loss_dict).item()) * len(batch)
                for k, v in loss_dict.items():
                    sums[k] += float(v.item()) * len(batch)
        finally:
            self.model.load_state_dict(buffers)
            self.set_generator_states(states)
        return {k: v / n for k, v in sums.items()}

    def validate(self, verbose: bool = False) -> dict[str, Any]:
        """Validation losses and COCO AP on the validation set; logged as a "val_*" row."""
        from minimaskrcnn.evaluate import evaluate

        row: dict[str, Any] = {"step": self.step}
        row.update({f"val_{k}": v for k, v in self.validation_losses().items()})
        stats = evaluate(self.model, self.val_dataset, iou_types=self.config.val_iou_types,
                         indices=self.val_indices, verbose=verbose,
                         results_dir=self.run_dir)
        for iou_type, numbers in stats.items():
            for k in ("AP", "AP50", "AP75"):
                row[f"val_{iou_type}_{k}"] = numbers[k]
        self.last_val = {"step": self.step, "stats": stats}
        self._append_log(row)
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
        bar = _progress_bar(cfg.progress, total=cfg.steps, initial=self.step, desc=self.config.run_name)
        window: dict[str, list[float]] = defaultdict(list)
        smooth: dict[str, float] = {}
        t_start = self._fit_start = time.perf_counter()
        t_window = t_start
        images_window = 0
        values: dict[str, float] = {}
        batches = self.loader.forever()  # batches across epochs (iter() is one epoch)
        try:
            while self.step < end:
                images, targets = next(batches)
                values = self.train_step(images, targets)
                self.step += 1
                images_window += len(images)
                for k, v in values.items():
                    window[k].append(v)
                    smooth[k] = v if k not in smooth else 0.9 * smooth[k] + 0.1 * v
                now = time.perf_counter()
                speed = images_window / max(now - t_window, 1e-9)
                bar.update(1)
                bar.set_postfix_str(_postfix(smooth, speed))
                if self.step % cfg.log_every == 0 or self.step == end:
                    row = {"step": self.step, **{k: float(np.mean(v)) for k, v in window.items()},
                           "images_per_s": speed, "time": self.seconds_before + now - t_start}
                    self._append_log(row)
                    window.clear()
                    t_window, images_window = now, 0
                if callback is not None:
                    callback(self, values)
                if (cfg.val_every and self.step % cfg.val_every == 0) or self.step == cfg.steps:
                    bar.clear()
                    self.validate()
                    plot_log(self.history, self.curves_path)
                    t_window, images_window = time.perf_counter(), 0  # the speed leaves validation out
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
            self.seconds_before += time.perf_counter() - t_start
            self._fit_start = None
        plot_log(self.history, self.curves_path)
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


# ------------------------------------------------------------------------------------ helpers
def limit_threads(threads: int | None = None, blas_threads: int | None = None) -> dict[str, bool]:
    """Set how many threads Numba's kernels and OpenBLAS (NumPy's matrix products) may use.

    Args:
        threads: Numba's kernels (im2col, RoIAlign, ...) run on this many threads (capped at the
            number Numba started with, which is every core); None: leave Numba alone.
        blas_threads: OpenBLAS threads (or MKL's); None: leave BLAS alone.

    Why two numbers: both pools spin while they wait for work, so on a small machine the two
    fighting over the same cores can make a training step 2-20x slower. Measured on 2 cores with
    the default ``minimaskrcnn train`` (100 steps): Numba 2 + BLAS 1 took 36 s, Numba 1 + BLAS 2
    38 s, 1 + 1 45 s, 2 + 2 (both spinning) about 90 s. The small models' matrix products are small;
    their copies (im2col, col2im) and RoI kernels gain more from the second core.

    Returns:
        which pools were set: {"blas": bool, "numba": bool}.
    """
    import ctypes

    done = {"blas": False, "numba": False}
    if threads is not None:
        try:
            import numba

            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
            done["numba"] = True
        except (ImportError, ValueError):
            pass
    if blas_threads is None:
        return done
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() and ".so" in line}
    except OSError:  # not Linux: leave BLAS alone
        pass
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(max(1, int(blas_threads))))
                done["blas"] = True
                break
    return done


def _sum_losses(loss_dict: Mapping[str, Any]):
    total = None
    for v in loss_dict.values():
        total = v if total is None else total + v
    return total


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _maybe_anomaly(on: bool):
    return detect_anomaly() if on else _NullContext()


_SHORT = {"loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask",
          "loss_objectness": "obj", "loss_rpn_box_reg": "rpn"}


def _postfix(smooth: Mapping[str, float], speed: float) -> str:
    parts = [f"loss={smooth.get('loss', float('nan')):.3f}"]
    parts += [f"{short}={smooth[k]:.3f}" for k, short in _SHORT.items() if k in smooth]
    if "lr" in smooth:
        parts.append(f"lr={smooth['lr']:.2g}")
    parts.append(f"{speed:.1f} img/s")
    return " ".join(parts)


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
    from minimaskrcnn.evaluate import _NoBar

    return _NoBar()


def plot_log(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Write the PNG of the training curves from the log rows (see ``visualize.plot_curves``)."""
    from minimaskrcnn.visualize import plot_curves

    if rows:
        plot_curves(rows, path)


def read_log(run_dir: str) -> list[dict]:
    """The rows of a run's JSONL log (training rows have "loss", validation rows "val_*")."""
    path = os.path.join(run_dir, LOG_NAME)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
