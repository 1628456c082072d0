"""Evaluation with COCO's metrics: detections to a COCO results file, then pycocotools' COCOeval.

The model gives per-image dicts (boxes (x1, y1, x2, y2), labels, scores, mask probabilities); COCO
wants a flat list of results with (x, y, w, h) boxes, its own category ids and RLE-encoded masks.
``evaluate`` runs a model over a data set and returns the 12 standard numbers for bbox and segm.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm  # text bars, also in notebooks (tqdm.auto warns there without ipywidgets)

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.data.coco import BoxOnlyInstancesWarning, CocoDataset, has_segmentation
from minimaskrcnn.io import atomic_write
from minimaskrcnn.ops.boxes import box_convert

# The 12 numbers COCOeval.summarize() prints, in its order (AP over IoU 0.50:0.95 unless named).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_DESCRIPTIONS = (
    "AP    @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "AP    @[IoU=0.50      | area=   all | maxDets=100]",
    "AP    @[IoU=0.75      | area=   all | maxDets=100]",
    "AP    @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "AP    @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AP    @[IoU=0.50:0.95 | area= large | maxDets=100]",
    "AR    @[IoU=0.50:0.95 | area=   all | maxDets=  1]",
    "AR    @[IoU=0.50:0.95 | area=   all | maxDets= 10]",
    "AR    @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "AR    @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "AR    @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR    @[IoU=0.50:0.95 | area= large | maxDets=100]",
)
# COCOeval.summarize()'s 10 numbers for keypoints (OKS instead of IoU; at most 20 detections per image,
# no small range: COCO labels no keypoints on persons under 32 x 32 pixels)
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
KEYPOINT_STAT_DESCRIPTIONS = (
    "AP    @[OKS=0.50:0.95 | area=   all | maxDets= 20]",
    "AP    @[OKS=0.50      | area=   all | maxDets= 20]",
    "AP    @[OKS=0.75      | area=   all | maxDets= 20]",
    "AP    @[OKS=0.50:0.95 | area=medium | maxDets= 20]",
    "AP    @[OKS=0.50:0.95 | area= large | maxDets= 20]",
    "AR    @[OKS=0.50:0.95 | area=   all | maxDets= 20]",
    "AR    @[OKS=0.50      | area=   all | maxDets= 20]",
    "AR    @[OKS=0.75      | area=   all | maxDets= 20]",
    "AR    @[OKS=0.50:0.95 | area=medium | maxDets= 20]",
    "AR    @[OKS=0.50:0.95 | area= large | maxDets= 20]",
)
# pycocotools' per-keypoint OKS sigmas of COCO's 17 person keypoints (nose, eyes, ears, shoulders,
# elbows, wrists, hips, knees, ankles), used when the ground truth names no others
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                      0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
IOU_TYPES = ("bbox", "segm")
ALL_IOU_TYPES = ("bbox", "segm", "keypoints")
MASK_THRESHOLD = 0.5  # mask probabilities above this are inside the object (as torchvision's references)


# ------------------------------------------------------------------------------ conversions
def encode_masks(masks: np.ndarray, threshold: float = MASK_THRESHOLD) -> list[dict]:
    """Threshold mask probabilities and run-length encode them as COCO does.

    Args:
        masks: (N, 1, H, W) or (N, H, W) float probabilities in [0, 1] (or bool/uint8 binary masks).
        threshold: a pixel belongs to the object where its probability is > threshold.

    Returns:
        N dicts {"size": [H, W], "counts": str}: compressed RLE, JSON-ready (counts decoded to str).
    """
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.dtype == bool or masks.dtype == np.uint8:
        binary = masks.astype(np.uint8)
    else:
        binary = (masks > threshold).astype(np.uint8)
    if len(binary) == 0:
        return []
    # pycocotools wants (H, W, N) Fortran-ordered uint8
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | Callable[[int], int] | None = None,
    iou_type: str = "bbox",
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict]:
    """Convert the model's per-image detections to a COCO results list.

    Args:
        detections: one dict per image, as the model returns in eval mode: "boxes" (N, 4) float,
            (x1, y1, x2, y2) in original-image pixels; "labels" (N,) int, the model's contiguous
            labels; "scores" (N,) float; for "segm" also "masks" (N, 1, H, W) float probabilities.
            NumPy or CuPy arrays, or Tensors.
        image_ids: the COCO image id of each entry of ``detections``.
        label_to_category_id: maps a model label to its COCO category id (a dict or a function);
            None keeps the labels as they are. Detections whose label a dict does not map are left
            out: a class the data set does not have (a model that kept COCO's 91 classes, evaluated
            on a COCO subset) cannot be scored against it.
        iou_type: "bbox" (results with "bbox"), "segm" (results with RLE "segmentation") or
            "keypoints" (results with "keypoints" [x1, y1, v1, ...], from the detections' (N, NK, 3)
            "keypoints"; the score is the box's, as torchvision's references).
        mask_threshold: probability above which a mask pixel is foreground.

    Returns:
        a list of {"image_id", "category_id", "score", and "bbox" [x, y, w, h] or "segmentation"
        RLE}; JSON-serialisable.
    """
    if iou_type not in ALL_IOU_TYPES:
        raise ValueError(f"iou_type must be one of {ALL_IOU_TYPES}, got {iou_type!r}")
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection dicts for {len(image_ids)} image ids")
    if label_to_category_id is None:
        to_cat = int
    elif callable(label_to_category_id):
        to_cat = label_to_category_id
    else:
        mapping = dict(label_to_category_id)
        to_cat = lambda label: mapping.get(int(label))  # noqa: E731
    results: list[dict] = []
    for det, image_id in zip(detections, image_ids):
        scores = to_numpy(det["scores"]).astype(np.float64).reshape(-1)
        labels = to_numpy(det["labels"]).astype(np.int64).reshape(-1)
        if len(scores) == 0:
            continue
        if iou_type == "bbox":
            # COCO's (x, y, width, height), computed in float64 from the model's float32 boxes
            boxes = box_convert(to_numpy(det["boxes"]).astype(np.float64).reshape(-1, 4), "xyxy", "xywh")
            entries = [{"bbox": [round(float(v), 4) for v in box]} for box in boxes]
        elif iou_type == "keypoints":
            keypoints = to_numpy(det["keypoints"]).astype(np.float64)
            entries = [{"keypoints": [round(float(v), 3) for v in kp.reshape(-1)]} for kp in keypoints]
        else:
            entries = [{"segmentation": rle} for rle in encode_masks(to_numpy(det["masks"]), mask_threshold)]
        for entry, label, score in zip(entries, labels, scores):
            category_id = to_cat(int(label))
            if category_id is None:
                continue
            entry.update(image_id=int(image_id), category_id=int(category_id), score=float(score))
            results.append(entry)
    return results


def iou_types_of(model) -> tuple[str, ...]:
    """What a model's detections can be scored on: "bbox", then "segm" with a mask head and
    "keypoints" with a keypoint head (``model.roi_heads.has_mask()`` / ``has_keypoint()``)."""
    heads = model.roi_heads
    return ("bbox",) + ("segm",) * heads.has_mask() + ("keypoints",) * heads.has_keypoint()


# ------------------------------------------------------------------------------- COCOeval
def keypoint_sigmas_of(coco_gt: COCO) -> np.ndarray:
    """The per-keypoint OKS sigmas for a keypoint ground truth.

    The sigmas are the spread of human annotations of each keypoint relative to the object's size
    (COCO's keypoint evaluation page). Taken from the categories' ``keypoint_sigmas`` (a key our
    synthetic figures carry; COCO files do not), else pycocotools' COCO person sigmas.

    Returns:
        (NK,) float64.

    Raises:
        ValueError: the categories name no sigmas and do not have 17 keypoints (then COCO's sigmas
            cannot apply).
    """
    for category in coco_gt.dataset.get("categories", []):
        if "keypoint_sigmas" in category:
            return np.asarray(category["keypoint_sigmas"], dtype=np.float64)
    counts = {len(c["keypoints"]) for c in coco_gt.dataset.get("categories", []) if c.get("keypoints")}
    if counts and counts != {len(COCO_PERSON_SIGMAS)}:
        raise ValueError(f"the ground truth's categories have {sorted(counts)} keypoints and no 'keypoint_sigmas': "
                         f"COCO's {len(COCO_PERSON_SIGMAS)} person sigmas do not apply")
    return np.asarray(COCO_PERSON_SIGMAS, dtype=np.float64)


def coco_evaluate(
    coco_gt: COCO,
    results: list[dict] | str,
    iou_type: str = "bbox",
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Run pycocotools' COCOeval once and return its summary numbers by name.

    Args:
        coco_gt: the ground truth, a ``pycocotools.coco.COCO``.
        results: a results list (as ``detections_to_coco_results`` makes) or the path of a results JSON.
        iou_type: "bbox", "segm" or "keypoints" (object keypoint similarity, OKS, with the sigmas of
            ``keypoint_sigmas_of``).
        image_ids: the images to evaluate on (default: every image of ``coco_gt``); images without
            any detection still count, their objects as misses.

    Returns:
        {"AP": ..., "AP50": ..., ..., "ARl": ...} (``STAT_NAMES``; ``KEYPOINT_STAT_NAMES`` for
        keypoints), floats in [0, 1], or -1.0 where COCO has nothing to average (e.g. no small
        objects). With no detections at all every number with ground truth is 0.0 (pycocotools
        itself cannot load an empty results list).
    """
    if isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            results = json.load(f)
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
    if len(results) == 0:
        return _stats_without_detections(coco_gt, image_ids, iou_type)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        # loadRes adds ids and areas to the dicts it gets: give it copies
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.params.imgIds = image_ids
        if iou_type == "keypoints":
            coco_eval.params.kpt_oks_sigmas = keypoint_sigmas_of(coco_gt)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(names, coco_eval.stats)}


def _stats_without_detections(coco_gt: COCO, image_ids: list[int], iou_type: str = "bbox") -> dict[str, float]:
    """What COCOeval would report for an empty results list: 0 where there is ground truth, else -1."""
    anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids)) if not a.get("iscrowd", 0)]
    if iou_type == "keypoints":  # objects without labelled keypoints are ignored
        anns = [a for a in anns if a.get("num_keypoints", 0) > 0]
    areas = np.array([a.get("area", 0.0) for a in anns], dtype=np.float64)
    ranges = {"all": (0, 1e10), "s": (0, 32**2), "m": (32**2, 96**2), "l": (96**2, 1e10)}
    has = {k: bool(((areas >= lo) & (areas <= hi)).any()) for k, (lo, hi) in ranges.items()}
    if iou_type == "keypoints":
        keys, names = ("all", "all", "all", "m", "l") * 2, KEYPOINT_STAT_NAMES
    else:
        keys, names = ("all", "all", "all", "s", "m", "l", "all", "all", "all", "s", "m", "l"), STAT_NAMES
    return {name: (0.0 if has[k] else -1.0) for name, k in zip(names, keys)}


def format_stats_table(stats: Mapping[str, Mapping[str, float]]) -> str:
    """The 12 numbers of each IoU type side by side, one row per number.

    Args:
        stats: {"bbox": {"AP": ...}, "segm": {...}} as ``evaluate`` returns.

    Returns:
        the table as a string (no trailing newline).
    """
    types = [t for t in IOU_TYPES if t in stats]
    lines = []
    if types:
        header = f"{'metric':<7} {'':<48}" + "".join(f"{t:>8}" for t in types)
        lines += [header, "-" * len(header)]
        for name, desc in zip(STAT_NAMES, STAT_DESCRIPTIONS):
            row = f"{name:<7} {desc:<48}" + "".join(f"{stats[t][name]:>8.3f}" for t in types)
            lines.append(row)
    if "keypoints" in stats:
        header = f"{'metric':<7} {'':<48}{'keypoints':>10}"
        lines += ([""] if lines else []) + [header, "-" * len(header)]
        for name, desc in zip(KEYPOINT_STAT_NAMES, KEYPOINT_STAT_DESCRIPTIONS):
            lines.append(f"{name:<7} {desc:<48}{stats['keypoints'][name]:>10.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ model over data set
def run_model(
    model,
    dataset,
    batch_size: int = 1,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[list[dict], list[int]]:
    """Run the model in eval mode over (part of) a data set.

    Args:
        model: a Mask R-CNN in the torchvision convention (eval mode: ``model(images)`` -> dicts).
        dataset: items ``(image (3, H, W) float32 in [0, 1], target dict with "image_id")``.
        batch_size: images per forward pass.
        indices: which items (default: all).
        progress: show a tqdm bar.

    Returns:
        (detections, image_ids): one dict of NumPy arrays per image (boxes, labels, scores, masks)
        and the COCO image id of each.
    """
    from minimaskrcnn.function import no_grad

    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    detections: list[dict] = []
    image_ids: list[int] = []
    bar = tqdm(total=len(indices), desc="evaluate", unit="img", leave=False, disable=not progress)
    try:
        with no_grad():
            for start in range(0, len(indices), batch_size):
                batch = [dataset[i] for i in indices[start : start + batch_size]]
                outputs = model([image for image, _ in batch])
                for (_, target), out in zip(batch, outputs):
                    detections.append({k: to_numpy(v) for k, v in out.items()})
                    image_ids.append(int(to_numpy(target["image_id"]).reshape(-1)[0]))
                bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return detections, image_ids


def validation_losses(model, dataset, indices: Sequence[int], batch_size: int = 1,
                      generators: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Mean losses of ``model`` over the items ``indices`` of a data set, without changing anything.

    The model runs in training mode (the losses need it), without gradients; the random generators
    (Python's, NumPy's global and ``generators``, see ``rng``) and the model's buffers (e.g. batch-norm
    statistics) are restored afterwards, so that a training run validating on the way goes on as if
    it had not. The trainer's validation losses (``Trainer.validate``'s "val_*" losses).

    Args:
        model: a Mask R-CNN in the torchvision convention (``model(images, targets)`` -> {name: loss}).
        dataset: items ``(image (3, H, W) float32 in [0, 1], target dict)`` with the training targets.
        indices: which items (in batches of ``batch_size`` images).
        generators: {name: generator} the model and data pipeline own (``rng.find_generators``).

    Returns:
        {"loss": the total, each loss name: its value}, means over the images (float); {} without indices.
    """
    from minimaskrcnn.function import no_grad
    from minimaskrcnn.ops.loss import sum_losses
    from minimaskrcnn.rng import get_rng_state, set_rng_state

    n = len(indices)
    if n <= 0:
        return {}
    owned = dict(generators or {})
    sums: dict[str, float] = defaultdict(float)
    with no_grad():
        states = get_rng_state(owned)
        buffers = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        try:
            model.train()
            bs = max(1, batch_size)
            for start in range(0, n, bs):
                batch = [dataset[i] for i in indices[start : min(n, start + bs)]]
                loss_dict = model([b[0] for b in batch], [b[1] for b in batch])
                sums["loss"] += float(sum_losses(loss_dict).item()) * len(batch)
                for k, v in loss_dict.items():
                    sums[k] += float(v.item()) * len(batch)
        finally:
            model.load_state_dict(buffers)
            set_rng_state(states, owned)
    return {k: v / n for k, v in sums.items()}


def evaluate(
    model,
    dataset: CocoDataset,
    iou_types: Sequence[str] = IOU_TYPES,
    batch_size: int = 1,
    results_dir: str | os.PathLike | None = None,
    indices: Sequence[int] | None = None,
    verbose: bool = True,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Run the model over a COCO-format data set and compute COCO AP/AR for boxes and masks.

    Args:
        model: a Mask R-CNN (put in eval mode for the run, then back to its previous mode).
        dataset: its ``coco`` (the pycocotools COCO of its annotations) is the ground truth and its
            ``label_to_category_id`` maps the model's labels back to COCO's ids; items give
            original-size images, since the COCO ground truth is in original pixels.
        iou_types: any of "bbox", "segm", "keypoints".
        batch_size: images per forward pass.
        results_dir: if given, the results are saved there as ``results_bbox.json`` /
            ``results_segm.json`` (COCO results format, readable by ``COCO.loadRes``).
        indices: evaluate only these items of the data set (default: all).
        verbose: print the table of the 12 numbers.
        progress: show a progress bar.

    Returns:
        {"bbox": {"AP": ..., ..., "ARl": ...}, "segm": {...}}: the 12 numbers of each IoU type.
    """
    detections, image_ids = run_model(model, dataset, batch_size=batch_size, indices=indices, progress=progress)
    return evaluate_detections(
        dataset.coco, detections, image_ids, dataset.label_to_category_id, iou_types, results_dir, verbose,
        box_only_ids=dataset.box_only_annotation_ids,
    )


def evaluate_detections(
    coco_gt: COCO,
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | Callable[[int], int] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    results_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    box_only_ids: Iterable[int] | None = None,
) -> dict[str, dict[str, float]]:
    """COCO AP/AR of detections that have already been computed (see ``evaluate``).

    Args:
        coco_gt: ground truth as a pycocotools COCO.
        detections, image_ids, label_to_category_id: as in ``detections_to_coco_results``.
        iou_types: any of "bbox", "segm", "keypoints".
        results_dir: where to save ``results_<iou_type>.json`` (optional).
        verbose: print the table.
        box_only_ids: annotation ids to treat as box-only in "segm" besides those without a
            segmentation (see ``segm_ground_truth``, which says once what it left out).

    Returns:
        {iou_type: {stat name: value}}.
    """
    results = {t: detections_to_coco_results(detections, image_ids, label_to_category_id, t) for t in iou_types}
    return evaluate_results(coco_gt, results, image_ids, results_dir, verbose, box_only_ids)


def evaluate_results(
    coco_gt: COCO,
    results: Mapping[str, list[dict]],
    image_ids: Sequence[int],
    results_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    box_only_ids: Iterable[int] | None = None,
) -> dict[str, dict[str, float]]:
    """COCO AP/AR of COCO results lists (see ``evaluate_detections``, which makes them).

    Args:
        results: {iou_type: the results list of that type} (``detections_to_coco_results``), e.g.
            gathered from the processes of a data-parallel run, each of which ran part of the images.
        image_ids: every image evaluated, those without any detection included.
        results_dir, verbose, box_only_ids: as in ``evaluate_detections``.

    Returns:
        {iou_type: {stat name: value}}.
    """
    stats: dict[str, dict[str, float]] = {}
    for iou_type, type_results in results.items():
        if results_dir is not None:
            save_results(type_results, os.path.join(results_dir, f"results_{iou_type}.json"))
        gt = coco_gt
        if iou_type == "segm":
            gt, left_out = segm_ground_truth(coco_gt, box_only_ids)
            if left_out:
                _say_box_only(left_out)
        stats[iou_type] = coco_evaluate(gt, type_results, iou_type, image_ids=image_ids)
    if verbose:
        print(format_stats_table(stats))
    return stats


def save_results(results: list[dict], path: str | os.PathLike) -> None:
    """Write a COCO results list as JSON (atomically: a temporary file, then a rename)."""
    with atomic_write(path, "w") as f:
        json.dump(results, f)


# ------------------------------------------------------------- partially supervised masks (lesson 18)
def segm_ground_truth(coco_gt: COCO, box_only_ids: Iterable[int] | None = None) -> tuple[COCO, dict[str, Any]]:
    """The ground truth for mask AP when some annotations have no mask: they become ignored regions.

    A box-only annotation (no, a null or an empty segmentation, or an id in ``box_only_ids``) cannot
    be a mask target; counting it as an object would make every correct detection of it a miss. It
    becomes a crowd region covering its box (pycocotools' ignore mechanism): a detection that lies
    mostly inside it (intersection over the detection's area >= the IoU threshold) and matches no
    annotation with a mask is neither a true nor a false positive. Mask AP therefore counts only
    annotations with masks; a category left with none drops out of the average (COCOeval averages
    over categories with ground truth).

    Args:
        coco_gt: the ground truth (not modified).
        box_only_ids: more annotation ids to treat as box-only (e.g. a data set's ``mask_categories``).

    Returns:
        (coco, left_out): ``coco_gt`` itself when every annotation has a mask, else a new COCO; and
        {"num_annotations": n, "categories": names of the categories concerned, "without_any_mask":
        names of those with no mask at all} ({} when nothing was left out).
    """
    extra = set(int(i) for i in box_only_ids) if box_only_ids is not None else set()
    anns = coco_gt.dataset.get("annotations", [])
    box_only = [a for a in anns if not a.get("iscrowd", 0) and (a["id"] in extra or not has_segmentation(a))]
    if not box_only:
        return coco_gt, {}
    ids = {a["id"] for a in box_only}
    new_anns = []
    for a in anns:
        if a["id"] in ids:
            x, y, w, h = a["bbox"]
            a = dict(a, iscrowd=1, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]], area=float(w * h))
        new_anns.append(a)
    dataset = dict(coco_gt.dataset, annotations=new_anns)
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        gt.createIndex()
    names = {c["id"]: c["name"] for c in dataset.get("categories", [])}
    concerned = sorted({a["category_id"] for a in box_only})
    with_mask = {a["category_id"] for a in anns if a["id"] not in ids and not a.get("iscrowd", 0)}
    return gt, {"num_annotations": len(box_only), "categories": [names.get(c, str(c)) for c in concerned],
                "without_any_mask": [names.get(c, str(c)) for c in concerned if c not in with_mask]}


def _say_box_only(left_out: Mapping[str, Any]) -> None:
    msg = (f"mask AP counts only annotations with masks: {left_out['num_annotations']} box-only annotation(s) "
           f"({', '.join(left_out['categories'])}) are ignored regions")
    if left_out["without_any_mask"]:
        msg += f"; categories without any mask are left out of mask AP: {', '.join(left_out['without_any_mask'])}"
    warnings.warn(msg, BoxOnlyInstancesWarning, stacklevel=3)


def mask_iou_on_gt_boxes(model, dataset, indices: Sequence[int] | None = None,
                         threshold: float = MASK_THRESHOLD) -> dict[int, list[float]]:
    """Mask IoU of the masks a model predicts on the ground-truth boxes, per category: the mask head
    alone, apart from detection (Deep-MAC sec. 4 evaluates its heads on gt boxes the same way).

    For each instance with a mask: the model's mask for its gt box (``predict.predict_masks_for_boxes``,
    the gt class's channel), thresholded at ``threshold``, against the gt mask; IoU over the image's pixels.

    Args:
        model: a Mask R-CNN.
        dataset: items (image (3, H, W) float in [0, 1], target with "boxes" (M, 4) x1 y1 x2 y2 in the
            image's pixels, "labels" (M,), "masks" (M, H, W) and optionally "has_mask" (M,)).
        indices: the items to use (default: all).
        threshold: probability above which a pixel is inside the predicted mask.

    Returns:
        {label: [IoU of each instance]}, the model's labels (``dataset.class_names`` names them).
    """
    from minimaskrcnn.predict import predict_masks_for_boxes

    ious: dict[int, list[float]] = {}
    for i in range(len(dataset)) if indices is None else indices:
        image, target = dataset[i]
        keep = np.asarray(target.get("has_mask", np.ones(len(target["labels"]), bool)), dtype=bool)
        if not keep.any():
            continue
        gt_masks = np.asarray(target["masks"])[keep].astype(bool)
        labels = np.asarray(target["labels"])[keep]
        probs = predict_masks_for_boxes(model, [image], [np.asarray(target["boxes"])[keep]], [labels])[0]
        pred = probs > threshold
        inter = (pred & gt_masks).sum(axis=(1, 2))
        union = (pred | gt_masks).sum(axis=(1, 2))
        for label, a, b in zip(labels, inter, union):
            ious.setdefault(int(label), []).append(float(a / b) if b else 1.0)
    return ious
