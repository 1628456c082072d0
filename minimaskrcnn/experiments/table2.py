"""Mask R-CNN's Table 2 in miniature: the backbones, mask losses and RoI layers the paper compared.

The study of lesson 17 (``minimaskrcnn ablate table2``; its results, three seeds, are
``lessons/results/table2.json``). It trains on synthetic shapes designed so that the paper's effects
can show:

- *data*: 128-px images holding 1-3 shapes of 32-72 px (circles, triangles and squares, as the
  default shapes), occluding each other, so that a mask depends on the image, not only on the box.
  At stride 32 such an object covers 1-2.25 feature cells, so RoIPool's rounding of its box (up to
  16 px per side) is a large fraction of it; at stride 16 half as large.
- *trunks* (trained once, with ``runner.SHARED_SEED``, for every seed): a small bottleneck ResNet
  (depth 26, a quarter of the width) and its ResNeXt (32x4d), each with FPN, trained end to end as
  Faster R-CNNs (no mask branch). They stand in for the paper's ImageNet-pretrained backbones (the
  paper starts all its models from one pretrained network per backbone), and are neutral between
  the variants: no RoI layer, mask head or mask loss under test shaped them.
- *variants*: every variant takes its trunk's body (stem to res5; C4's res5, which is its RoI head,
  starts from the trunk's res5, as the paper's C4 head starts from the pretrained res5) and trains
  a new detector on it, end to end: FPN or not, RPN, box and mask heads started afresh, all for the
  same number of steps (``trainable_layers`` can freeze the body's first stages instead). A seed
  gives every variant the same initial weights and data order, so two variants are compared seed
  by seed; the seeds vary the variants' training, not the trunks (as rerunning the paper's
  fine-tuning would). Variants that are one configuration in the paper (its R50-C4 baseline
  appears in four tables, its R50-FPN in two) are one run here.

``Table2Study`` is a ``runner.Study``; ``Table2Settings`` holds every size and schedule (``quick()``
is the tiny version CI and the lesson's quick mode run).
"""
from __future__ import annotations

import dataclasses
import json
import os

from minimaskrcnn.experiments.runner import Comparison, Run, write_json_atomic

# The paper's figures (COCO minival, points): mask AP / AP50 / AP75, and box AP for Table 2d.
PAPER: dict[str, dict[str, float]] = {
    "c5_roipool": {"box_AP": 28.2, "mask_AP": 23.6, "mask_AP50": 46.5, "mask_AP75": 21.6},
    "c5_roialign": {"box_AP": 34.0, "mask_AP": 30.9, "mask_AP50": 51.8, "mask_AP75": 32.1},
    "c4_roipool": {"mask_AP": 26.9, "mask_AP50": 48.8, "mask_AP75": 26.4},
    "c4_roiwarp": {"mask_AP": 27.1, "mask_AP50": 48.9, "mask_AP75": 27.1},  # RoIWarp with average pooling
    "c4_roialign_max": {"mask_AP": 30.2, "mask_AP50": 51.0, "mask_AP75": 31.8},
    "c4_roialign_avg": {"mask_AP": 30.3, "mask_AP50": 51.2, "mask_AP75": 31.5},
    "sigmoid": {"mask_AP": 30.3, "mask_AP50": 51.2, "mask_AP75": 31.5},
    "softmax": {"mask_AP": 24.8, "mask_AP50": 44.1, "mask_AP75": 25.1},
    "class_specific": {"mask_AP": 30.3},
    "class_agnostic": {"mask_AP": 29.7},
    "mlp_head": {"mask_AP": 31.5, "mask_AP50": 53.7, "mask_AP75": 32.8},  # fc 1024, 1024
    "fcn_head": {"mask_AP": 33.6, "mask_AP50": 55.2, "mask_AP75": 35.3},
    "r_fpn": {"mask_AP": 33.6, "mask_AP50": 55.2, "mask_AP75": 35.3},  # R50-FPN
    "x_fpn": {"mask_AP": 36.7, "mask_AP50": 59.5, "mask_AP75": 38.9},  # X101-FPN (the paper has no X50)
    "r_c4": {"mask_AP": 30.3, "mask_AP50": 51.2, "mask_AP75": 31.5},  # R50-C4
}

METRICS = ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")

COMPARISONS = (
    Comparison("RoIAlign vs RoIPool at stride 32 (Table 2d)", "c5_roialign", "c5_roipool", "mask_AP", 7.3),
    Comparison("RoIAlign vs RoIPool at stride 32 (Table 2d)", "c5_roialign", "c5_roipool", "mask_AP75", 10.5),
    Comparison("RoIAlign vs RoIPool at stride 32 (Table 2d)", "c5_roialign", "c5_roipool", "box_AP", 5.8),
    Comparison("RoIAlign vs RoIPool, C4 (Table 2c)", "c4_roialign_avg", "c4_roipool", "mask_AP", 3.4),
    Comparison("RoIAlign vs RoIPool, C4 (Table 2c)", "c4_roialign_avg", "c4_roipool", "mask_AP75", 5.1),
    Comparison("RoIAlign vs RoIWarp, C4 (Table 2c)", "c4_roialign_avg", "c4_roiwarp", "mask_AP", 3.2),
    Comparison("RoIAlign: max vs average (Table 2c)", "c4_roialign_max", "c4_roialign_avg", "mask_AP", -0.1),
    Comparison("sigmoid vs softmax (Table 2b)", "sigmoid", "softmax", "mask_AP", 5.5),
    Comparison("class-specific vs class-agnostic masks (sec. 4.2)", "class_specific", "class_agnostic", "mask_AP", 0.6),
    Comparison("FCN vs MLP mask head (Table 2e)", "fcn_head", "mlp_head", "mask_AP", 2.1),
    Comparison("FPN vs C4 backbone (Table 2a)", "r_fpn", "r_c4", "mask_AP", 3.3),
    Comparison("ResNeXt vs ResNet, FPN (Table 2a, at depth 101)", "x_fpn", "r_fpn", "mask_AP", 1.3),
)

DESCRIPTIONS = {
    "c5_roipool": "C5 stride 32, RoIPool", "c5_roialign": "C5 stride 32, RoIAlign",
    "c4_roipool": "C4, RoIPool", "c4_roiwarp": "C4, RoIWarp (avg)", "c4_roialign_max": "C4, RoIAlign (max)",
    "c4_roialign_avg": "C4, RoIAlign (avg)", "sigmoid": "C4, per-pixel sigmoid", "softmax": "C4, per-pixel softmax",
    "class_specific": "C4, a mask per class", "class_agnostic": "C4, one mask for all classes",
    "mlp_head": "FPN, MLP mask head", "fcn_head": "FPN, FCN mask head", "r_fpn": "ResNet-FPN",
    "x_fpn": "ResNeXt-FPN (32x4d)", "r_c4": "ResNet-C4",
}


@dataclasses.dataclass(frozen=True)
class Table2Settings:
    """Every size and schedule of the study. The defaults are the full study's.

    Each field's comment says what raising it does; ``quick()`` shrinks them for CI.
    """

    # --- data (shapes, see the module docstring)
    image_size: int = 128  # side of the square images; the models see them at this size
    classes: tuple[str, ...] = ("circle", "triangle", "square")  # labels 1..3 (the default shapes)
    object_size: tuple[float, float] = (32.0, 72.0)  # diameter range of the shapes, pixels
    objects_per_image: tuple[int, int] = (1, 3)  # shapes tried per image (occluded ones may drop out)
    num_train_images: int = 1000  # training images (more: less overfitting)
    num_val_images: int = 200  # held-out images: more = less AP noise, slower evaluation
    data_seed: int = 2017  # train images use this seed, held-out ones data_seed + 1
    # --- models
    depth: int = 26  # ResNet / ResNeXt depth (26: 2 bottlenecks a stage; 50 is the paper's)
    width: float = 0.25  # ResNet width multiplier (0.25: 16 channels in conv1, res5 out 512)
    fpn_channels: int = 64  # FPN channels
    head_channels: int = 64  # channels of the mask head's convs and deconv (C4 too)
    representation_size: int = 256  # box head fc width, and the MLP mask head's ("1024" in the paper)
    rois_per_image: int = 16  # RoIs sampled per image for the heads' losses (a quarter foreground at most)
    # --- schedule (SGD, warm-up, steps of 10x at 70% and 90%)
    trunk_steps: int = 1500  # Faster R-CNN steps of each trunk
    head_steps: int = 400  # steps of each variant on its trunk's body
    batch_size: int = 4  # images per step
    lr: float = 0.02  # peak learning rate
    warmup_steps: int = 100
    clip_grad_norm: float | None = 10.0  # every run clips the gradient norm (guards from-scratch starts)
    trainable_layers: int = 5  # body stages a variant trains, from the top (5: all, end to end; 1: res5 only)

    @classmethod
    def quick(cls) -> Table2Settings:
        """A tiny version for CI and the lesson's quick mode: 64-px images, a few steps (numbers meaningless)."""
        return cls(image_size=64, object_size=(16.0, 40.0), num_train_images=6, num_val_images=3,
                   fpn_channels=16, head_channels=16, representation_size=32, rois_per_image=16,
                   trunk_steps=2, head_steps=2, batch_size=2, warmup_steps=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_config(settings: Table2Settings, arch: str, body: str = "r", pooler: str = "roi_align", head: str = "fcn",
                 loss: str = "sigmoid", class_agnostic: bool = False, mask_on: bool = True, seed: int = 0,
                 trainable_layers: int = 5):
    """The ``MaskRCNNConfig`` of one model of the study.

    Args:
        settings: sizes.
        arch: "fpn" (ResNet-FPN, torchvision's heads), "c4" (C4 backbone, res5 heads) or "c5"
            (one stride-32 level, the FPN-style heads).
        body: "r" (ResNet) or "x" (ResNeXt 32x4d), both of ``settings.depth`` and ``settings.width``.
        pooler: the RoI layer of both heads (``poolers.POOLER_TYPES``).
        head: "fcn" or "mlp" mask head.
        loss: "sigmoid" or "softmax" mask loss.
        class_agnostic: one mask for every class.
        mask_on: False for a Faster R-CNN (the trunks).
        seed: the model's sampler seed.
        trainable_layers: body stages trained, from the top (torchvision's ``trainable_backbone_layers``:
            5 trains all, 1 only res5; C4's res5 is part of its RoI head and always trains).

    Raises:
        ValueError: an unknown arch or body.
    """
    from minimaskrcnn.models.configs import (
        AnchorConfig,
        BackboneConfig,
        BoxHeadConfig,
        MaskHeadConfig,
        MaskRCNNConfig,
        RPNConfig,
        TransformConfig,
    )

    if arch not in ("fpn", "c4", "c5") or body not in ("r", "x"):
        raise ValueError(f"unknown model: arch {arch!r} (fpn, c4, c5), body {body!r} (r, x)")
    s = settings
    groups, width_per_group = (32, 4) if body == "x" else (1, 64)
    returned = {"fpn": (1, 2, 3, 4), "c4": (3,), "c5": (4,)}[arch]
    backbone = BackboneConfig(depth=s.depth, width_multiplier=s.width, groups=groups, width_per_group=width_per_group,
                              norm="gn", gn_groups=8, trainable_layers=trainable_layers, returned_layers=returned,
                              fpn_channels=s.fpn_channels, fpn=arch == "fpn")
    if arch == "fpn":
        anchors = AnchorConfig(sizes=((32,), (64,), (128,), (256,), (512,)))
    else:  # one level: every size on it
        anchors = AnchorConfig(sizes=((32, 64, 128, 256),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn = RPNConfig(pre_nms_top_n_train=300, pre_nms_top_n_test=200, post_nms_top_n_train=100, post_nms_top_n_test=50,
                    batch_size_per_image=128)
    box = BoxHeadConfig(roi_output_size=14 if arch == "c4" else 7, representation_size=s.representation_size,
                        batch_size_per_image=s.rois_per_image, detections_per_img=20, pooler_type=pooler)
    mask = MaskHeadConfig(layers=(s.head_channels,) * 4, dim_reduced=s.head_channels, pooler_type=pooler, head=head,
                          mlp_dims=(s.representation_size,) * 2, loss=loss, class_agnostic=class_agnostic)
    return MaskRCNNConfig(num_classes=len(s.classes) + 1, backbone=backbone,
                          transform=TransformConfig(min_size=s.image_size, max_size=s.image_size),
                          anchors=anchors, rpn=rpn, box=box, mask=mask, seed=seed,
                          roi_heads="res5" if arch == "c4" else "standard", mask_on=mask_on)


def _runs() -> tuple[Run, ...]:
    c4, fpn, c5 = {"arch": "c4"}, {"arch": "fpn"}, {"arch": "c5"}
    d = DESCRIPTIONS
    return (
        Run("trunk_r", report=False, shared=True, description="ResNet-FPN Faster R-CNN",
            options={"arch": "fpn", "body": "r"}),
        Run("trunk_x", report=False, shared=True, description="ResNeXt-FPN Faster R-CNN",
            options={"arch": "fpn", "body": "x"}),
        Run("c5_roipool", "trunk_r", description=d["c5_roipool"], options={**c5, "pooler": "roi_pool"}),
        Run("c5_roialign", "trunk_r", description=d["c5_roialign"], options={**c5, "pooler": "roi_align"}),
        Run("c4_roipool", "trunk_r", description=d["c4_roipool"], options={**c4, "pooler": "roi_pool"}),
        Run("c4_roiwarp", "trunk_r", description=d["c4_roiwarp"], options={**c4, "pooler": "roi_warp"}),
        Run("c4_roialign_max", "trunk_r", description=d["c4_roialign_max"], options={**c4, "pooler": "roi_align_max"}),
        Run("c4_roialign_avg", "trunk_r", description=d["c4_roialign_avg"], options={**c4, "pooler": "roi_align"}),
        Run("sigmoid", same_as="c4_roialign_avg", description=d["sigmoid"]),
        Run("softmax", "trunk_r", description=d["softmax"], options={**c4, "loss": "softmax"}),
        Run("class_specific", same_as="c4_roialign_avg", description=d["class_specific"]),
        Run("class_agnostic", "trunk_r", description=d["class_agnostic"], options={**c4, "class_agnostic": True}),
        Run("mlp_head", "trunk_r", description=d["mlp_head"], options={**fpn, "head": "mlp"}),
        Run("fcn_head", "trunk_r", description=d["fcn_head"], options=dict(fpn)),
        Run("r_fpn", same_as="fcn_head", description=d["r_fpn"]),
        Run("x_fpn", "trunk_x", description=d["x_fpn"], options={**fpn, "body": "x"}),
        Run("r_c4", same_as="c4_roialign_avg", description=d["r_c4"]),
    )


RUNS = _runs()
VARIANTS = tuple(r.name for r in RUNS if r.report)  # the 15 variant names of the results, in order
METRICS_NAME = "metrics.json"  # in a run's folder: its COCO numbers on the held-out images


class Table2Study:
    """The study of Mask R-CNN's Table 2 (see the module docstring), a ``runner.Study``.

    Args:
        settings: sizes and schedules (``Table2Settings()``: the full study's).
        data_dir: where the shapes data sets are written once (shared by every seed and run).
        log: called with progress lines.
    """

    name = "table2"
    runs = RUNS
    metrics = METRICS
    reference = PAPER
    comparisons = COMPARISONS

    def __init__(self, settings: Table2Settings | None = None, data_dir: str | os.PathLike = "runs/ablate/data",
                 log=print):
        self.settings = settings or Table2Settings()
        self.data_dir = os.fspath(data_dir)
        self.log = log
        self._datasets = None

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> dict:
        """What the results depend on (recorded in the results file)."""
        return {
            "study": "Mask R-CNN (He et al. 2017) Table 2 in miniature, on synthetic shapes",
            "settings": self.settings.to_dict(),
            "protocol": (f"once for every seed: ResNet-{self.settings.depth}-FPN and ResNeXt-{self.settings.depth}-FPN "
                         f"(32x4d) trunks of width {self.settings.width} trained end to end as Faster R-CNNs for "
                         f"{self.settings.trunk_steps} steps; each variant takes its trunk's body (C4's res5 head "
                         "from the trunk's layer4) and "
                         f"trains a new detector on it (FPN or not, RPN, box and mask heads) for "
                         f"{self.settings.head_steps} steps, the body's top {self.settings.trainable_layers} "
                         "stage(s) trained (5: all); the same seed gives every variant the same initial weights "
                         "and data order"),
            "metrics": "COCO AP on the held-out images (pycocotools), fractions; the paper's figures are points",
            "same_runs": {r.name: r.same_as for r in self.runs if r.same_as},
        }

    # -------------------------------------------------------------------------------- data
    def datasets(self):
        """(train, val) CocoDatasets of the shapes, generated into ``data_dir`` once (reused when their
        parameters match the ``params.json`` there)."""
        if self._datasets is None:
            from minimaskrcnn.data import CocoDataset
            from minimaskrcnn.data.shapes import make_shapes_dataset

            s = self.settings
            out = []
            splits = (("train", s.num_train_images, s.data_seed), ("val", s.num_val_images, s.data_seed + 1))
            for split, n, seed in splits:
                params = {"num_images": n, "image_size": s.image_size, "seed": seed, "classes": list(s.classes),
                          "min_size": s.object_size[0], "max_size": s.object_size[1],
                          "min_objects": s.objects_per_image[0], "max_objects": s.objects_per_image[1]}
                folder = os.path.join(self.data_dir, f"{split}-{s.image_size}px-{n}-{seed}")
                meta = os.path.join(folder, "params.json")
                done = None
                if os.path.isfile(meta):
                    with open(meta) as f:
                        done = json.load(f)
                if done != params:
                    self.log(f"generating {n} {split} images into {folder}")
                    make_shapes_dataset(folder, n, s.image_size, seed, classes=s.classes, min_size=s.object_size[0],
                                        max_size=s.object_size[1], min_objects=s.objects_per_image[0],
                                        max_objects=s.objects_per_image[1])
                    write_json_atomic(meta, params)
                out.append(CocoDataset(os.path.join(folder, "instances.json"), os.path.join(folder, "images")))
            self._datasets = tuple(out)
        return self._datasets

    # ------------------------------------------------------------------------------ models
    def config_of(self, run: Run, seed: int):
        """The run's ``MaskRCNNConfig`` (a trunk is a Faster R-CNN: no mask branch)."""
        o = dict(run.options)
        trainable = self.settings.trainable_layers if run.report else 5
        return model_config(self.settings, o.pop("arch"), mask_on=run.report, seed=seed, trainable_layers=trainable,
                            **o)

    def build(self, run: Run, seed: int, parent_dir: str | None):
        """The run's model, with its trunk's weights loaded where the run shares them.

        Returns:
            (model, trained): the MaskRCNN, and the prefixes of the parameters it trains ("": all,
            end to end, as the paper trains every model from its pretrained backbone).
        """
        from minimaskrcnn.io import load_checkpoint
        from minimaskrcnn.models import MaskRCNN
        from minimaskrcnn.nn import init

        init.manual_seed(seed)
        model = MaskRCNN.from_config(self.config_of(run, seed))
        if parent_dir is None:
            return model, ("",)
        trunk = load_checkpoint(os.path.join(parent_dir, "checkpoint.npz")).model_state
        own = model.state_dict()
        # the trunk's body (up to C4 or C5); C4's res5 head starts from the trunk's layer4; the rest is new
        shared = {k: v for k, v in trunk.items() if k.startswith("backbone.body.") and k in own}
        if run.options["arch"] == "c4":
            shared.update({"roi_heads.res5." + k[len("backbone.body.layer4."):]: v for k, v in trunk.items()
                           if k.startswith("backbone.body.layer4.")})
        result = model.load_state_dict(shared, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{run.name}: trunk weights without a place in the model: {result.unexpected_keys[:5]}")
        return model, ("",)

    # --------------------------------------------------------------------------- train/eval
    def train_config(self, run: Run, seed: int, run_dir: str):
        """The ``TrainConfig`` of one run (the model itself is built by ``build``)."""
        from minimaskrcnn.train import TrainConfig

        s = self.settings
        steps = s.head_steps if run.report else s.trunk_steps
        return TrainConfig(
            name=os.path.basename(run_dir), output_dir=os.path.dirname(run_dir), steps=steps, batch_size=s.batch_size,
            lr=s.lr, warmup_steps=min(s.warmup_steps, max(1, steps // 5)), clip_grad_norm=s.clip_grad_norm, seed=seed,
            log_every=max(1, steps // 20), val_every=0, checkpoint_every=0, val_loss_images=0, progress=False,
            val_iou_types=("bbox", "segm") if run.report else ("bbox",),
        )

    def train(self, run: Run, seed: int, run_dir: str, parent_dir: str | None) -> None:
        """Train ``run`` (see the module docstring); its checkpoint and ``metrics.json`` go to ``run_dir``."""
        from minimaskrcnn.train import Trainer

        model, trained = self.build(run, seed, parent_dir)
        trainer = Trainer(self.train_config(run, seed, run_dir), datasets=self.datasets(), model=model)
        result = trainer.fit()
        stats = result["val"]
        metrics = {f"{'box' if t == 'bbox' else 'mask'}_{k}": float(stats[t][k])
                   for t in ("bbox", "segm") if t in stats for k in ("AP", "AP50", "AP75")}
        write_json_atomic(os.path.join(run_dir, METRICS_NAME),
                          {"metrics": metrics, "trained": list(trained), "steps": result["step"],
                           "seconds": result["seconds"]})

    def load_model(self, name: str, seed: int, out_dir: str | os.PathLike):
        """The trained model of variant ``name`` (an alias gives its run's) for ``seed``, in eval mode.

        Args:
            name: a variant's name (e.g. "c5_roipool").
            seed: which seed's run.
            out_dir: the study's folder (``run_study``'s ``out_dir``).

        Raises:
            KeyError: an unknown name; CheckpointError: the run has not been trained.
        """
        from minimaskrcnn.experiments.runner import run_dir_of
        from minimaskrcnn.io import load_checkpoint
        from minimaskrcnn.models import MaskRCNN

        run = {r.name: r for r in self.runs}[name]
        run = {r.name: r for r in self.runs}[run.same_as] if run.same_as else run
        model = MaskRCNN.from_config(self.config_of(run, seed))
        model.load_state_dict(load_checkpoint(os.path.join(run_dir_of(out_dir, seed, run.name), "checkpoint.npz"))
                              .model_state)
        return model.eval()

    def evaluate(self, run: Run, seed: int, run_dir: str) -> dict[str, float]:
        """The run's COCO numbers on the held-out images, measured at the end of its training."""
        with open(os.path.join(run_dir, METRICS_NAME)) as f:
            return json.load(f)["metrics"]



def settings_with(base: Table2Settings, overrides: dict[str, str] | None) -> Table2Settings:
    """``base`` with fields replaced from ``{"field": "text"}`` (the command line's ``--set field=value``).

    Values are read as the field's type: numbers, a tuple as comma-separated items, None as "none".

    Raises:
        ValueError: an unknown field or a value that does not read as its type.
    """
    if not overrides:
        return base
    fields = {f.name: f for f in dataclasses.fields(Table2Settings)}
    changes: dict = {}
    for name, text in overrides.items():
        if name not in fields:
            raise ValueError(f"table2 has no setting {name!r}: choose among {sorted(fields)}")
        current = getattr(base, name)
        try:
            if isinstance(current, tuple):
                items = [t.strip() for t in str(text).split(",") if t.strip()]
                kind = type(current[0]) if current else str
                changes[name] = tuple(kind(t) for t in items)
            elif str(text).lower() == "none" and fields[name].type.endswith("None"):
                changes[name] = None
            elif isinstance(current, bool):
                changes[name] = str(text).lower() in ("1", "true", "yes")
            elif current is None:
                changes[name] = float(text)
            else:
                changes[name] = type(current)(text)
        except ValueError:
            raise ValueError(f"table2 setting {name}={text!r}: expected a {type(current).__name__}") from None
    return dataclasses.replace(base, **changes)


def make_study(quick: bool = False, overrides: dict[str, str] | None = None, data_dir: str | os.PathLike | None = None,
               log=print) -> Table2Study:
    """The study as the command line builds it: the full study's settings (or ``quick()``), changed by
    ``overrides``; data in ``data_dir`` (default runs/ablate/data)."""
    settings = settings_with(Table2Settings.quick() if quick else Table2Settings(), overrides)
    return Table2Study(settings, data_dir or os.path.join("runs", "ablate", "data"), log=log)
