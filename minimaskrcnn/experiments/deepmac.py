"""Deep-MAC in miniature: can a mask head segment classes it never saw a mask of? (lesson 18)

Birodkar et al. 2021 ("The surprising impact of mask-head architecture on novel class segmentation")
train Mask R-CNN with masks for some classes and boxes only for the others, and find two things: the
class-agnostic mask head must be trained on crops of the ground-truth boxes rather than of positive
proposals, and it must be strong (an hourglass rather than four convs). This module runs their 2 x 2
on six-kind synthetic shapes, where circles, squares and triangles have masks and stars, rings and
crosses have boxes only:

    arms:     {proposals, gtbox} x {fcn, hourglass}, class-agnostic, the same crop size, and the same
              number of mask-head training examples per step (one crop per object with a mask:
              the gt box, or one random positive proposal of it)
    metrics:  mask AP on the seen and on the unseen classes (COCOeval over those categories), and the
              mean mask IoU of masks predicted on the ground-truth boxes (the mask head alone, apart
              from detection), per run; mean and standard deviation over the seeds

    python -m minimaskrcnn.experiments.deepmac --out lessons/results/deepmac.json

Each run is one ``Trainer`` training; finished runs are kept under ``--work-dir`` (metrics.json and
checkpoint.npz) and reused, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ARMS: dict[str, dict[str, str]] = {
    "proposals_fcn": {"train_rois": "proposals", "head": "fcn"},
    "gtbox_fcn": {"train_rois": "gt_boxes", "head": "fcn"},
    "proposals_hourglass": {"train_rois": "proposals", "head": "hourglass"},
    "gtbox_hourglass": {"train_rois": "gt_boxes", "head": "hourglass"},
}
METRICS = ("unseen_mask_AP", "unseen_gt_box_mask_IoU", "seen_mask_AP")  # the results file's, per arm
OTHER_METRICS = ("seen_gt_box_mask_IoU", "seen_box_AP", "unseen_box_AP", "mask_examples_per_step")

# What Deep-MAC reports for its Mask R-CNN (ResNet-50-FPN, COCO, train masks of the 20 VOC classes,
# evaluate mask mAP on the 60 others), from the TF model garden's project README
# (official/projects/deepmac_maskrcnn), whose configs set class_agnostic and use_gt_boxes_for_masks.
DEEPMAC_REFERENCE = {
    "source": "Birodkar et al. 2021; TF model garden official/projects/deepmac_maskrcnn README and configs "
              "(deep_mask_head_rcnn_voc_r50.yaml, deep_mask_head_rcnn_voc_r50_hg52.yaml)",
    "setting": "COCO val2017, masks for the 20 VOC classes in training, mask mAP on the 60 non-VOC classes, "
               "Mask R-CNN ResNet-50-FPN, class-agnostic mask head",
    "unseen_mask_AP": {"gtbox_fcn": 25.9, "gtbox_hourglass": 33.1, "proposals_fcn": None,
                       "proposals_hourglass": None},
    "notes": "gtbox_fcn: the default 4-conv head on 14x14 crops; gtbox_hourglass: Hourglass-52 (width 64) on 32x32 "
             "crops. The model garden gives no proposal-trained figures; the paper's abstract: training the mask "
             "head on ground-truth boxes instead of proposals 'dramatically improves its performance on novel "
             "classes', and that is what lets deeper heads help.",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the study depends on besides the arm and the seed (recorded in the results file)."""

    model: str = "r18-shapes"  # the model configuration (ResNet-18 width 0.25, GroupNorm, FPN 64)
    image_size: int = 96  # side of the square shapes images (and the model's input size)
    num_train_images: int = 600
    num_val_images: int = 64
    train_data_seed: int = 10  # the shapes generator's seeds (train and held-out sets differ)
    val_data_seed: int = 11
    seen: tuple[str, ...] = ("circle", "square", "triangle")  # classes with mask labels in training
    unseen: tuple[str, ...] = ("star", "ring", "cross")  # classes with boxes only in training
    steps: int = 600
    batch_size: int = 4
    lr: float = 0.02
    warmup_steps: int = 100
    clip_grad_norm: float | None = 10.0  # clip the gradient norm (typically 2-9 here): rare spikes made NaNs
    crop_size: int = 14  # mask-head input crop (RoIAlign output) for every arm; masks are 2x
    hourglass_depth: int = 20  # Deep-MAC's Hourglass-20 (two halvings)
    hourglass_width: int = 16  # its stem channels; stages of 32, 32, 48
    rois_per_object: int = 1  # proposal arms: random positive proposals per object and step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK_SETUP = Setup(num_train_images=6, num_val_images=3, steps=2, batch_size=2, warmup_steps=1)


# --------------------------------------------------------------------------------- one run
def make_data(setup: Setup, data_dir: str) -> dict[str, str]:
    """Generate (once) the shapes train and val sets (labels 1.. = seen, then unseen kinds); return their files.

    Raises:
        ValueError: a kind the shapes generator does not draw, or one named twice.
    """
    from minimaskrcnn.data.shapes import make_shapes_dataset, shape_classes

    kinds = shape_classes(classes=tuple(setup.seen) + tuple(setup.unseen))
    # the study's six kinds keep their folder name (the stored study's data); other choices are named by kind
    name = f"shapes{len(kinds)}" if kinds == _STUDY_KINDS else "shapes-" + "-".join(kinds)
    files = {}
    for split, n, seed in (("train", setup.num_train_images, setup.train_data_seed),
                           ("val", setup.num_val_images, setup.val_data_seed)):
        folder = os.path.join(data_dir, f"{name}-{setup.image_size}px-{n}-seed{seed}")
        if not os.path.isfile(os.path.join(folder, "instances.json")):
            make_shapes_dataset(folder, n, setup.image_size, seed=seed, classes=kinds)
        files[f"{split}_annotations"] = os.path.join(folder, "instances.json")
        files[f"{split}_images"] = os.path.join(folder, "images")
    return files


_STUDY_KINDS = ("circle", "square", "triangle", "star", "ring", "cross")


def train_config(setup: Setup, arm: str, seed: int, work_dir: str, files: dict[str, str]):
    """The ``TrainConfig`` of one run: the arm's mask head and crop source, masks for the seen classes only."""
    from minimaskrcnn.config import TrainConfig

    spec = ARMS[arm]
    model_kwargs = {
        "mask.class_agnostic": True,
        "mask.roi_output_size": setup.crop_size,
        "mask.head": spec["head"],
        "mask.head_depth": setup.hourglass_depth,
        "mask.head_width": setup.hourglass_width,
        "mask.train_rois": spec["train_rois"],
        "mask.train_rois_per_object": setup.rois_per_object if spec["train_rois"] == "proposals" else None,
    }
    return TrainConfig(
        model=setup.model, name=f"{arm}-seed{seed}", output_dir=os.path.join(work_dir, "runs"),
        min_size=setup.image_size, max_size=setup.image_size, model_kwargs=model_kwargs, dataset="coco",
        mask_categories=",".join(setup.seen), **files, steps=setup.steps, batch_size=setup.batch_size, lr=setup.lr,
        warmup_steps=setup.warmup_steps, clip_grad_norm=setup.clip_grad_norm, seed=seed,
        log_every=max(1, min(50, setup.steps)), val_every=0,
        checkpoint_every=0, val_iou_types=("bbox",), val_loss_images=0, progress=False,
    )


@contextlib.contextmanager
def _count_mask_examples(counter: list[int]):
    """Count the RoIs the mask head trains on (wraps ``roi_heads.select_mask_training_rois``)."""
    from minimaskrcnn.models import roi_heads

    original = roi_heads.select_mask_training_rois

    def counting(*args, **kwargs):
        rois, matched = original(*args, **kwargs)
        counter[0] += sum(len(r) for r in rois)
        return rois, matched

    roi_heads.select_mask_training_rois = counting
    try:
        yield
    finally:
        roi_heads.select_mask_training_rois = original


def _ap(coco_gt, results: list[dict], iou_type: str, category_ids: Sequence[int]) -> float:
    """COCO AP over the given categories only (detections of other categories are left out)."""
    from pycocotools.cocoeval import COCOeval

    results = [r for r in results if r["category_id"] in set(category_ids)]
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.params.catIds = list(category_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(max(coco_eval.stats[0], 0.0))


def evaluate_run(model, val_dataset, seen_ids: Sequence[int], unseen_ids: Sequence[int]) -> dict[str, Any]:
    """Mask and box AP on the seen and on the unseen classes, and the mean mask IoU on gt boxes of each."""
    from minimaskrcnn.evaluate import detections_to_coco_results, mask_iou_on_gt_boxes, run_model

    detections, image_ids = run_model(model, val_dataset)
    to_cat = val_dataset.label_to_category_id
    out: dict[str, Any] = {}
    for iou_type, name in (("segm", "mask_AP"), ("bbox", "box_AP")):
        results = detections_to_coco_results(detections, image_ids, to_cat, iou_type)
        out[f"seen_{name}"] = _ap(val_dataset.coco, results, iou_type, seen_ids)
        out[f"unseen_{name}"] = _ap(val_dataset.coco, results, iou_type, unseen_ids)
    ious = mask_iou_on_gt_boxes(model, val_dataset)  # by label
    label_of = val_dataset.category_id_to_label
    out["seen_gt_box_mask_IoU"] = _mean([v for c in seen_ids for v in ious.get(label_of[c], [])])
    out["unseen_gt_box_mask_IoU"] = _mean([v for c in unseen_ids for v in ious.get(label_of[c], [])])
    names = val_dataset.class_names
    out["gt_box_mask_IoU_per_category"] = {names[label]: _mean(v) for label, v in sorted(ious.items())}
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none (JSON has no NaN)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def run_arm(arm: str, seed: int, setup: Setup, work_dir: str, reuse: bool = True) -> dict[str, Any]:
    """Train and evaluate one arm with one seed; reuse ``<work_dir>/runs/<arm>-seed<seed>/metrics.json``
    when it was made with the same setup.

    Returns:
        {"arm", "seed", the METRICS and OTHER_METRICS, "gt_box_mask_IoU_per_category", "train_seconds",
        "eval_seconds", "setup"}.
    """
    from minimaskrcnn.errors import NonFiniteLossError
    from minimaskrcnn.train import Trainer

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose from {sorted(ARMS)}")
    files = make_data(setup, os.path.join(work_dir, "data"))
    config = train_config(setup, arm, seed, work_dir, files)
    metrics_path = os.path.join(config.run_dir, "metrics.json")
    if reuse and os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            saved = json.load(f)
        if saved.get("setup") == json.loads(json.dumps(setup.to_dict())):
            return saved
    counter = [0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the box-only note, once per run: known here
        start = time.perf_counter()
        trainer = Trainer(config)
        try:
            with _count_mask_examples(counter):
                trainer.fit()
        except NonFiniteLossError as e:  # a diverged run is a result too: kept, reported, left out of the means
            row = {"arm": arm, "seed": seed, "failed": str(e), **dict.fromkeys(METRICS + OTHER_METRICS),
                   "gt_box_mask_IoU_per_category": {}, "train_seconds": round(time.perf_counter() - start, 1),
                   "eval_seconds": 0.0, "setup": setup.to_dict()}
            _write_json(row, metrics_path)
            return row
        train_seconds = time.perf_counter() - start
        categories = trainer.val_dataset.categories
        by_name = {name: cid for cid, name in categories.items()}
        start = time.perf_counter()
        metrics = evaluate_run(trainer.model, trainer.val_dataset, [by_name[n] for n in setup.seen],
                               [by_name[n] for n in setup.unseen])
    row = {"arm": arm, "seed": seed, **metrics, "mask_examples_per_step": counter[0] / setup.steps,
           "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1),
           "setup": json.loads(json.dumps(setup.to_dict()))}
    _write_json(row, metrics_path)
    return row


def _write_json(obj: Any, path: str) -> None:
    """Write JSON atomically (``io.atomic_write``: a temporary file, then a rename)."""
    from minimaskrcnn.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def trained_model(arm: str, seed: int, setup: Setup, work_dir: str):
    """The trained model of one run, from its checkpoint (``run_arm`` trains it first if it is not there).

    Returns:
        (model in eval mode, the run's metrics dict, the validation data set).
    """
    from minimaskrcnn.checkpoint import load_model
    from minimaskrcnn.data import CocoDataset

    row = run_arm(arm, seed, setup, work_dir)
    files = make_data(setup, os.path.join(work_dir, "data"))
    config = train_config(setup, arm, seed, work_dir, files)
    model, _ = load_model(os.path.join(config.run_dir, "checkpoint.npz"))
    return model.eval(), row, CocoDataset(files["val_annotations"], files["val_images"])


# ------------------------------------------------------------------------------ the study
def summarize(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per arm: the seeds and, per metric, the values, their mean and sample standard deviation (ddof 1)."""
    arms: dict[str, dict[str, Any]] = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for m in metrics:
            values = [None if r[m] is None else float(r[m]) for r in mine]
            present = [v for v in values if v is not None]
            std = float(np.std(present, ddof=1)) if len(present) > 1 else (0.0 if present else None)
            entry[m] = {"mean": _mean(present), "std": std, "values": values}
        arms[arm] = entry
    return arms


def run_study(setup: Setup, seeds: Sequence[int], arms: Sequence[str], work_dir: str, out: str | None,
              command: str, log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict:
    """Every arm with every seed (seed-major, so that a partial study already compares all arms), then
    the results file ``{"command", "setup", "arms": {arm: {"seeds", METRICS...}}}`` written to ``out``."""
    rows = []
    start = time.perf_counter()
    for seed in seeds:
        for arm in arms:
            row = run_arm(arm, seed, setup, work_dir)
            rows.append(row)
            if row.get("failed"):
                log(f"{arm:20s} seed {seed}: FAILED ({row['failed'][:120]}...)")
                continue
            log(f"{arm:20s} seed {seed}: unseen mask AP {row['unseen_mask_AP']:.3f}, unseen IoU on gt boxes "
                f"{row['unseen_gt_box_mask_IoU'] or float('nan'):.3f}, seen mask AP {row['seen_mask_AP']:.3f} "
                f"({row['train_seconds']:.0f} s + {row['eval_seconds']:.0f} s)")
    results = {
        "command": command,
        "setup": {
            **setup.to_dict(),
            "seeds": list(seeds),
            "mask_head": "class-agnostic; arms differ only in the crops the head trains on and in the head",
            "std": "sample standard deviation over the seeds (ddof 1)",
            "total_train_and_eval_seconds": round(sum(r["train_seconds"] + r["eval_seconds"] for r in rows), 1),
            "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
            "other_metrics": summarize(rows, OTHER_METRICS),
            "gt_box_mask_IoU_per_category": {
                arm: {c: _mean([r["gt_box_mask_IoU_per_category"].get(c) for r in rows if r["arm"] == arm])
                      for c in setup.seen + setup.unseen}
                for arm in arms},
            "failed_runs": [{"arm": r["arm"], "seed": r["seed"], "error": r["failed"]}
                            for r in rows if r.get("failed")],
            "deepmac_reference": DEEPMAC_REFERENCE,
        },
        "arms": summarize(rows, METRICS),
    }
    if out:
        _write_json(results, out)
    return results


def format_table(results: dict) -> str:
    """The arms' mean +- std of each metric as a plain-text table, Deep-MAC's unseen mask AP beside."""
    ref = results["setup"].get("deepmac_reference", {}).get("unseen_mask_AP", {})
    header = f"{'arm':20s} {'unseen mask AP':>16s} {'unseen IoU gt box':>18s} {'seen mask AP':>16s} {'Deep-MAC':>9s}"
    lines = [header, "-" * len(header)]
    for arm, entry in results["arms"].items():
        cells = ["-" if entry[m]["mean"] is None else f"{100 * entry[m]['mean']:6.1f} ± {100 * entry[m]['std']:4.1f}"
                 for m in METRICS]
        paper = ref.get(arm)
        lines.append(f"{arm:20s} {cells[0]:>16s} {cells[1]:>18s} {cells[2]:>16s} "
                     f"{'-' if paper is None else f'{paper:.1f}':>9s}")
    return "\n".join(lines)


def import_everything() -> None:
    """Import every minimaskrcnn module now, so that a study of an hour or more runs one version of the
    code even if the files change meanwhile (the library imports some modules lazily, at first use)."""
    import importlib
    import pkgutil

    import minimaskrcnn

    for info in pkgutil.walk_packages(minimaskrcnn.__path__, "minimaskrcnn."):
        if info.name.endswith(("__main__", ".cuda")) or ".data.sample" in info.name:
            continue  # __main__ would run the command line; CUDA kernels load only with the cuda backend
        importlib.import_module(info.name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m minimaskrcnn.experiments.deepmac", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="lessons/results/deepmac.json", help="the results file to write")
    parser.add_argument("--work-dir", default="runs/deepmac", help="data, runs and their metrics (reused)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the setup's)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting that only checks the machinery")
    args = parser.parse_args(argv)
    setup = QUICK_SETUP if args.quick else Setup()
    if args.steps is not None:
        setup = dataclasses.replace(setup, steps=args.steps)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}: choose from {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    import_everything()
    command = shlex.join(["python", "-m", "minimaskrcnn.experiments.deepmac", *argv])
    results = run_study(setup, seeds, arms, args.work_dir, args.out, command)
    print(format_table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
