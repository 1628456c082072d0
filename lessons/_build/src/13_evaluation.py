# %% [markdown]
# # 13 · Evaluation: precision, recall and COCO's AP, by hand
#
# **Goal.** Write COCO's evaluation from scratch (matching detections to objects, precision-recall
# curves, the interpolated 101-point AP, AP@[.5:.95], AP50, AP75, the size ranges) and show that it
# gives exactly the numbers of `pycocotools` (which `minimaskrcnn.evaluate` wraps). You will end with
# precision-recall curves at IoU 0.5 and 0.75 and the AP-versus-IoU-threshold curve behind COCO's
# headline number.

# %% [markdown]
# ## The idea
#
# A detector returns, per image, boxes (or masks) with a class and a score. For one class and one IoU
# threshold t:
#
# 1. **Match** (per image): visit the detections by decreasing score; each takes the *unmatched* object
#    of that class with the highest IoU ≥ t; matched detections are true positives (TP), the others false
#    positives (FP). An object can be matched once: a duplicate detection is an FP.
# 2. **Rank** all detections of the class over all images by score. Walking down the list,
#    recall = TP / (number of objects) and precision = TP / (TP + FP).
# 3. **Interpolate**: replace each precision by the best precision at any higher recall (the curve's
#    upper envelope, so it only goes down), and read it at the 101 recall values 0, 0.01, …, 1
#    (0 where that recall is never reached). Their mean is the **AP** at t.
#
# COCO's **AP** is the mean over 10 thresholds t = 0.50, 0.55, …, 0.95 and over classes; **AP50** and
# **AP75** fix t; **APs / APm / APl** count only objects (and unmatched detections) with area < 32², between
# 32² and 96², and above 96² pixels; at most 100 detections per image are counted. Mask AP is the same
# with the IoU of masks instead of boxes. The Mask R-CNN paper reports mask AP (Tables 1 and 2) and box
# AP (Table 3, and Table 2d) this way (§4: "the standard COCO metrics").

# %%
import contextlib
import io

import matplotlib.pyplot as plt
import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.evaluate import coco_evaluate
from minimaskrcnn.ops import boxes as box_ops

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## A toy benchmark
# 30 images with 1-5 objects of 2 classes and sizes from small to large; a simulated detector finds
# most objects (with localisation noise and a score that falls with the error), sometimes twice, and
# adds false alarms.

# %%
num_images = 30


def make_benchmark(seed=0):
    r = np.random.default_rng(seed)
    images, gts, dets = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480})
        for _ in range(int(r.integers(1, 6))):
            side = float(np.exp(r.uniform(np.log(12), np.log(300))))
            w, h = side * r.uniform(0.7, 1.3), side * r.uniform(0.7, 1.3)
            x, y = r.uniform(0, 640 - w), r.uniform(0, 480 - h)
            cat = int(r.integers(1, 3))
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                        "area": w * h, "iscrowd": 0})
            for _copy in range(int(r.choice([0, 1, 1, 1, 2]))):          # missed, found, or found twice
                noise = r.normal(0, 0.12, 4) * [w, h, w, h]
                bx = [x + noise[0], y + noise[1], max(w + noise[2], 2), max(h + noise[3], 2)]
                iou = box_ops.box_iou(box_ops.box_convert(np.array([[x, y, w, h]]), "xywh", "xyxy"),
                                      box_ops.box_convert(np.array([bx]), "xywh", "xyxy"))[0, 0]
                dets.append({"image_id": image_id, "category_id": cat, "bbox": bx,
                             "score": float(np.clip(iou + r.normal(0, 0.15), 0.01, 0.99))})
        for _ in range(int(r.integers(0, 3))):                            # false alarms
            w, h = r.uniform(10, 150, 2)
            dets.append({"image_id": image_id, "category_id": int(r.integers(1, 3)),
                         "bbox": [r.uniform(0, 640 - w), r.uniform(0, 480 - h), w, h], "score": float(r.uniform(0.01, 0.6))})
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": gts, "categories": categories}, dets


gt_dict, detections = make_benchmark()
print(f"{len(gt_dict['annotations'])} objects, {len(detections)} detections on {num_images} images")
log("object areas", np.array([g["area"] for g in gt_dict["annotations"]]))

# %% [markdown]
# ## Build it
# ### Step 1: match the detections of one image and class, at one threshold
# The detections are visited by score; each looks for the best-IoU object not yet taken. Objects outside
# the area range being evaluated are *ignored*: a detection matched to one counts neither as TP nor FP;
# COCO visits non-ignored objects first and prefers them.

# %%
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0, 1, 101)


def xywh_iou(dets, gts):
    return box_ops.box_iou(box_ops.box_convert(np.array(dets, dtype=np.float64).reshape(-1, 4), "xywh", "xyxy"),
                           box_ops.box_convert(np.array(gts, dtype=np.float64).reshape(-1, 4), "xywh", "xyxy"))


def match_image(dets, gts, area_range, max_dets=100):
    """For each threshold: which detections are TP, and which are ignored. Also which objects count."""
    lo, hi = area_range
    gt_ignore = np.array([not (lo <= g["area"] <= hi) for g in gts], dtype=bool)
    gts = [gts[i] for i in np.argsort(gt_ignore, kind="mergesort")]              # counted objects first
    gt_ignore = np.sort(gt_ignore, kind="mergesort")
    dets = [dets[i] for i in np.argsort([-d["score"] for d in dets], kind="mergesort")[:max_dets]]
    iou = xywh_iou([d["bbox"] for d in dets], [g["bbox"] for g in gts]) if dets and gts else np.zeros((len(dets), len(gts)))
    T = len(IOU_THRESHOLDS)
    det_matched = np.zeros((T, len(dets)), dtype=bool)
    det_ignore = np.zeros((T, len(dets)), dtype=bool)
    for t_idx, t in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(len(gts), dtype=bool)
        for d_idx in range(len(dets)):
            best, best_iou = -1, min(t, 1 - 1e-10)
            for g_idx in range(len(gts)):
                if gt_taken[g_idx]:
                    continue
                if best > -1 and not gt_ignore[best] and gt_ignore[g_idx]:
                    break                                   # a counted object beats any ignored one
                if iou[d_idx, g_idx] < best_iou:
                    continue
                best, best_iou = g_idx, iou[d_idx, g_idx]
            if best == -1:
                continue
            det_matched[t_idx, d_idx], det_ignore[t_idx, d_idx] = True, gt_ignore[best]
            gt_taken[best] = True
    # an unmatched detection outside the area range is ignored too
    det_area = np.array([d["bbox"][2] * d["bbox"][3] for d in dets])
    det_ignore |= ~det_matched & ((det_area < lo) | (det_area > hi))[None]
    return np.array([d["score"] for d in dets]), det_matched, det_ignore, int((~gt_ignore).sum())

# %% [markdown]
# ### Step 2: precision, recall and the 101-point AP
# Concatenate the matches of all images, rank them by score, and read the envelope of the
# precision-recall curve at 101 recall values.

# %%
def average_precision(scores, matched, ignore, num_objects):
    """AP at each threshold (T,), from the concatenated detections of all images of one class."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignore = matched[:, order], ignore[:, order]
    tp = np.cumsum(matched & ~ignore, axis=1).astype(float)
    fp = np.cumsum(~matched & ~ignore, axis=1).astype(float)
    aps, curves = [], []
    for t in range(len(IOU_THRESHOLDS)):
        recall = tp[t] / num_objects
        precision = tp[t] / (tp[t] + fp[t] + np.spacing(1))
        envelope = np.maximum.accumulate(precision[::-1])[::-1]       # best precision at any higher recall
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")     # first rank reaching each recall point
        sampled = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
        aps.append(sampled.mean())
        curves.append((recall, precision, envelope, sampled))
    return np.array(aps), curves


def evaluate_by_hand(gt_dict, detections, area="all", max_dets=100):
    """{category: AP per threshold (10,)}; categories without counted objects are left out."""
    result, curves = {}, {}
    for cat in [c["id"] for c in gt_dict["categories"]]:
        per_image = [match_image([d for d in detections if d["image_id"] == i and d["category_id"] == cat],
                                 [g for g in gt_dict["annotations"] if g["image_id"] == i and g["category_id"] == cat],
                                 AREA_RANGES[area], max_dets)
                     for i in range(1, num_images + 1)]
        num_objects = sum(p[3] for p in per_image)
        if num_objects == 0:
            continue
        scores = np.concatenate([p[0] for p in per_image])
        matched = np.concatenate([p[1] for p in per_image], axis=1)
        ignore = np.concatenate([p[2] for p in per_image], axis=1)
        result[cat], curves[cat] = average_precision(scores, matched, ignore, num_objects)
    return result, curves


ap_by_cat, curves = evaluate_by_hand(gt_dict, detections)
ours = {
    "AP": np.mean([ap.mean() for ap in ap_by_cat.values()]),
    "AP50": np.mean([ap[0] for ap in ap_by_cat.values()]),
    "AP75": np.mean([ap[5] for ap in ap_by_cat.values()]),
}
for area, name in [("small", "APs"), ("medium", "APm"), ("large", "APl")]:
    per_area, _ = evaluate_by_hand(gt_dict, detections, area)
    ours[name] = np.mean([ap.mean() for ap in per_area.values()]) if per_area else -1.0
for name, value in ours.items():
    print(f"{name:5s} {value:.4f}")

# %% [markdown]
# ## Check it: pycocotools, and the library's wrapper
# The same detections through pycocotools' `COCOeval`: every number must agree to rounding.

# %%
with contextlib.redirect_stdout(io.StringIO()):           # pycocotools prints as it goes
    coco_gt = COCO()
    coco_gt.dataset = gt_dict
    coco_gt.createIndex()
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in detections]), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
reference = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], coco_eval.stats[:6]))
for name in ours:
    print(f"{name:5s} ours {ours[name]:.6f}   pycocotools {reference[name]:.6f}")
    assert abs(ours[name] - reference[name]) < 1e-12, name

lib_stats = coco_evaluate(coco_gt, [dict(d) for d in detections], "bbox")
assert all(abs(lib_stats[k] - reference[k]) < 1e-12 for k in reference)
print("minimaskrcnn.evaluate.coco_evaluate gives the same numbers")

# %% [markdown]
# ## See it
# ### Precision-recall curves
# Class 1 at IoU 0.5 and 0.75: the raw precision (thin), its upper envelope (thick) and the 101 points
# COCO averages (dots). At 0.75 the noisier detections stop counting: recall tops out lower and the
# false positives pile up earlier.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, t_idx in zip(axes, [0, 5]):
    recall, precision, envelope, sampled = curves[1][t_idx]
    ax.plot(recall, precision, lw=0.8, color="0.6", label="precision")
    ax.plot(recall, envelope, lw=2, label="upper envelope")
    ax.plot(RECALL_POINTS, sampled, ".", ms=3, label="101 points")
    ax.set_title(f"class 1, IoU {IOU_THRESHOLDS[t_idx]:.2f}: AP = {ap_by_cat[1][t_idx]:.3f}")
    ax.set_xlabel("recall"), ax.set_xlim(0, 1.02), ax.set_ylim(0, 1.02)
axes[0].set_ylabel("precision"), axes[0].legend(fontsize=8)
plt.show()

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for cat, ap in ap_by_cat.items():
    ax.plot(IOU_THRESHOLDS, ap, "o-", label=f"class {cat}")
mean_curve = np.mean(list(ap_by_cat.values()), axis=0)
ax.plot(IOU_THRESHOLDS, mean_curve, "k--", label=f"mean: its average is AP = {mean_curve.mean():.3f}")
ax.set_xlabel("IoU threshold"), ax.set_ylabel("AP"), ax.legend(fontsize=8)
ax.set_title("AP at each IoU threshold: COCO's AP is the mean of the 10 points")
plt.show()

# %% [markdown]
# ### Mask IoU
# For mask AP, the IoU is between masks, computed by pycocotools on run-length encodings. By hand it is
# just counting pixels:

# %%
masks = (rng.random((3, 60, 80)) < 0.1).cumsum(axis=2) % 2 == 1      # three blobby masks
gt_masks = np.roll(masks, 3, axis=2)
inter = (masks[:, None] & gt_masks[None]).sum((2, 3))
union = (masks[:, None] | gt_masks[None]).sum((2, 3))
ours_miou = inter / union
rle = lambda m: [mask_utils.encode(np.asfortranarray(x.astype(np.uint8))) for x in m]
coco_miou = mask_utils.iou(rle(masks), rle(gt_masks), [0, 0, 0])
log("mask IoU (3 x 3)", ours_miou)
assert np.allclose(ours_miou, coco_miou)
print("equal to pycocotools.mask.iou")

# %% [markdown]
# ## Keypoints: object keypoint similarity instead of IoU
# COCO's keypoint track (Mask R-CNN §5; lesson 15) matches and ranks detections exactly as above; only the
# overlap changes. A detection d and a person g overlap by their **object keypoint similarity**
#
# $$\mathrm{OKS} = \frac{\sum_i \exp\left(-d_i^2 / (2 s^2 k_i^2)\right) [v_i > 0]}{\sum_i [v_i > 0]}$$
#
# where d_i is the distance between the predicted and the true keypoint i, s² the person's area (of its
# segmentation), k_i = 2σ_i with σ_i the spread of human annotators for keypoint i relative to the person's
# size (0.026 for the nose, up to 0.107 for the hips), and v_i the true keypoint's visibility. So OKS is 1
# for a perfect pose and each keypoint's term falls like a Gaussian whose width grows with the person and
# with how hard that keypoint is to place. Persons without any labelled keypoint are ignored; at most 20
# detections per image count; the size ranges are medium and large only. (For an object with no labelled
# keypoint pycocotools measures how far outside twice its box each predicted keypoint falls; it is ignored
# in the AP anyway.)
#
# Below: synthetic stick figures (`FiguresDataset`, 13 keypoints with their own sigmas) and a simulated
# pose estimator; OKS by hand equals pycocotools' `computeOks`, and the AP from OKS equals its keypoint AP.

# %%
from minimaskrcnn.data.figures import FiguresDataset

figures = FiguresDataset(12 if QUICK else 40, seed=7)
kp_gt = figures.coco_dict()
sigmas = np.array(figures.keypoint_sigmas)


def simulate_poses(gt_dict, seed=0):
    """Per labelled figure: 0-2 detections whose keypoints are off by noise proportional to its size."""
    r = np.random.default_rng(seed)
    dets = []
    for g in gt_dict["annotations"]:
        true = np.array(g["keypoints"], dtype=np.float64).reshape(-1, 3)
        for _copy in range(int(r.choice([0, 1, 1, 1, 2]))):
            spread = r.uniform(0.01, 0.12) * np.sqrt(g["area"])            # pixels
            xy = true[:, :2] + r.normal(0, spread, true[:, :2].shape)
            if not (true[:, 2] > 0).any():  # nothing labelled: somewhere near
                xy = np.array(g["bbox"][:2]) + r.uniform(0, 1, xy.shape) * np.array(g["bbox"][2:])
            dets.append({"image_id": g["image_id"], "category_id": 1, "score": float(r.uniform(0.3, 1) / (1 + spread)),
                         "keypoints": np.concatenate([xy, np.ones((len(xy), 1))], 1).ravel().tolist()})
    return dets


kp_dets = simulate_poses(kp_gt)
print(f"{len(kp_gt['annotations'])} figures ({sum(g['num_keypoints'] > 0 for g in kp_gt['annotations'])} "
      f"with labelled keypoints), {len(kp_dets)} detections")


def oks_by_hand(det, gt, sigmas):
    """Object keypoint similarity of one detection with one object (pycocotools' formula)."""
    g = np.array(gt["keypoints"], dtype=np.float64).reshape(-1, 3)
    d = np.array(det["keypoints"], dtype=np.float64).reshape(-1, 3)
    visible = g[:, 2] > 0
    if visible.any():
        dx, dy = d[:, 0] - g[:, 0], d[:, 1] - g[:, 1]
    else:  # distance outside the box grown to twice its size on each side
        x, y, w, h = gt["bbox"]
        dx = np.maximum(0, (x - w) - d[:, 0]) + np.maximum(0, d[:, 0] - (x + 2 * w))
        dy = np.maximum(0, (y - h) - d[:, 1]) + np.maximum(0, d[:, 1] - (y + 2 * h))
    e = (dx**2 + dy**2) / (2 * sigmas) ** 2 / (gt["area"] + np.spacing(1)) / 2
    return float(np.exp(-(e[visible] if visible.any() else e)).mean())


with contextlib.redirect_stdout(io.StringIO()):
    kp_coco = COCO()
    kp_coco.dataset = kp_gt
    kp_coco.createIndex()
    kp_eval = COCOeval(kp_coco, kp_coco.loadRes([dict(d) for d in kp_dets]), "keypoints")
    kp_eval.params.kpt_oks_sigmas = sigmas
    kp_eval.evaluate(), kp_eval.accumulate(), kp_eval.summarize()
checked = 0
for (image_id, _cat), matrix in kp_eval.ious.items():
    if len(matrix) == 0:
        continue
    dets = sorted((d for d in kp_dets if d["image_id"] == image_id), key=lambda d: -d["score"])[:20]
    gts = [g for g in kp_gt["annotations"] if g["image_id"] == image_id]
    mine = np.array([[oks_by_hand(d, g, sigmas) for g in gts] for d in dets])
    assert np.allclose(mine, matrix, atol=1e-12), image_id
    checked += mine.size
print(f"OKS by hand equals pycocotools' computeOks on all {checked} (detection, figure) pairs")

# %% [markdown]
# The AP: the matcher of step 1 with OKS for IoU, persons without labelled keypoints ignored, a
# detection's area the box around its keypoints, 20 detections per image; then `average_precision`
# unchanged.

# %%
def match_image_oks(dets, gts, area_range, max_dets=20):
    lo, hi = area_range
    gt_ignore = np.array([g["num_keypoints"] == 0 or g.get("iscrowd", 0) or not (lo <= g["area"] <= hi)
                          for g in gts], dtype=bool)
    gts = [gts[i] for i in np.argsort(gt_ignore, kind="mergesort")]
    gt_ignore = np.sort(gt_ignore, kind="mergesort")
    dets = [dets[i] for i in np.argsort([-d["score"] for d in dets], kind="mergesort")[:max_dets]]
    overlap = np.array([[oks_by_hand(d, g, sigmas) for g in gts] for d in dets]).reshape(len(dets), len(gts))
    det_matched = np.zeros((len(IOU_THRESHOLDS), len(dets)), dtype=bool)
    det_ignore = np.zeros_like(det_matched)
    for t_idx, t in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(len(gts), dtype=bool)
        for d_idx in range(len(dets)):
            best, best_overlap = -1, min(t, 1 - 1e-10)
            for g_idx in range(len(gts)):
                if gt_taken[g_idx]:
                    continue
                if best > -1 and not gt_ignore[best] and gt_ignore[g_idx]:
                    break
                if overlap[d_idx, g_idx] < best_overlap:
                    continue
                best, best_overlap = g_idx, overlap[d_idx, g_idx]
            if best > -1:
                det_matched[t_idx, d_idx], det_ignore[t_idx, d_idx] = True, gt_ignore[best]
                gt_taken[best] = True
    xy = [np.array(d["keypoints"]).reshape(-1, 3)[:, :2] for d in dets]
    det_area = np.array([np.prod(p.max(0) - p.min(0)) for p in xy])
    det_ignore |= ~det_matched & ((det_area < lo) | (det_area > hi))[None]
    return np.array([d["score"] for d in dets]), det_matched, det_ignore, int((~gt_ignore).sum())


image_ids = [im["id"] for im in kp_gt["images"]]
kp_ours = {}
for name, area in [("AP", "all"), ("APm", "medium"), ("APl", "large")]:
    per_image = [match_image_oks([d for d in kp_dets if d["image_id"] == i],
                                 [g for g in kp_gt["annotations"] if g["image_id"] == i],
                                 (0, 1e10) if area == "all" else AREA_RANGES[area]) for i in image_ids]
    count = sum(p[3] for p in per_image)
    if count == 0:
        kp_ours[name] = -1.0
        continue
    aps, _ = average_precision(np.concatenate([p[0] for p in per_image]), np.concatenate([p[1] for p in per_image], 1),
                               np.concatenate([p[2] for p in per_image], 1), count)
    kp_ours[name] = aps.mean()
    if area == "all":
        kp_ours["AP50"], kp_ours["AP75"] = aps[0], aps[5]
kp_reference = dict(zip(["AP", "AP50", "AP75", "APm", "APl"], kp_eval.stats[:5]))
for name in kp_reference:
    print(f"keypoint {name:5s} ours {kp_ours[name]:.6f}   pycocotools {kp_reference[name]:.6f}")
    assert abs(kp_ours[name] - kp_reference[name]) < 1e-12, name
lib = coco_evaluate(kp_coco, [dict(d) for d in kp_dets], "keypoints")
assert all(abs(lib[k] - kp_reference[k]) < 1e-12 for k in kp_reference)
print("and minimaskrcnn.evaluate.coco_evaluate(..., 'keypoints'), which takes the sigmas from the data set")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
d = np.linspace(0, 12, 200)
area = np.median([g["area"] for g in kp_gt["annotations"] if g["num_keypoints"] > 0])
for name in ("head", "left_wrist", "left_hip"):
    sigma = sigmas[figures.keypoint_names.index(name)]
    ax.plot(d, np.exp(-d**2 / (2 * area * (2 * sigma) ** 2)), label=f"{name} (σ = {sigma})")
for level in (0.5, 0.75):  # two of the OKS thresholds of the AP
    ax.axhline(level, color="gray", lw=0.5), ax.text(12, level + 0.02, f"OKS {level}", ha="right", fontsize=8)
ax.set_xlabel("distance from the true keypoint (pixels)"), ax.set_ylabel("OKS term")
ax.set_title(f"one keypoint's OKS term, for a figure of median area {area:.0f} px²", fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** PASCAL VOC (2007) averaged the envelope at 11 recall points 0, 0.1, …, 1 instead of 101.
# Write `ap_11_point(recall, precision)` (precision at recall r: the best precision at any recall ≥ r, 0 if
# none) and compute `voc_ap50`, the mean over both classes of the 11-point AP at IoU 0.5. The check
# compares it with our 101-point AP50.

# %% tags=exercise-1
def ap_11_point(recall, precision):
    raise NotImplementedError  # your code here


voc_ap50 = None

# %% tags=check-1
with exercise(1, "13_evaluation"):
    r = np.array([0.1, 0.25, 0.25, 0.5, 0.65])
    p = np.array([1.0, 1.0, 0.6, 0.7, 0.5])
    assert abs(ap_11_point(r, p) - (3 * 1.0 + 3 * 0.7 + 1 * 0.5) / 11) < 1e-12, "check the toy curve by hand"
    assert voc_ap50 is not None and abs(voc_ap50 - ours["AP50"]) < 0.05, "11 points or 101: close, not equal"
    print(f"VOC 11-point AP50 {voc_ap50:.4f} vs COCO 101-point AP50 {ours['AP50']:.4f}")

# %% [markdown]
# **Exercise 2 (break it on purpose).** Skip the upper envelope: average the raw precision at the 101
# recall points. Write `ap_without_envelope(recall, precision)` and compute `ap50_raw` over both classes
# at IoU 0.5. Is it higher or lower than the real AP50, and why must it be?

# %% tags=exercise-2
def ap_without_envelope(recall, precision):
    raise NotImplementedError  # your code here


ap50_raw = None

# %% tags=check-2
with exercise(2, "13_evaluation"):
    if ap50_raw is None:
        raise NotImplementedError
    expected = np.mean([np.mean([pr[i] if i < len(pr) else 0.0 for i in np.searchsorted(rc, RECALL_POINTS, side="left")])
                        for rc, pr, _, _ in (curves[c][0] for c in curves)])
    assert abs(ap50_raw - expected) < 1e-12
    assert ap50_raw <= ours["AP50"] + 1e-12, "the envelope is never below the raw precision"
    print(f"without the envelope AP50 = {ap50_raw:.4f}, with it {ours['AP50']:.4f}")

# %% [markdown]
# **Exercise 3 (why).** Mask R-CNN's gains from RoIAlign are largest at AP75. Using the curve of AP against
# the IoU threshold, which statement is right? Set `answer_3`:
#
# * (a) AP@[.5:.95] weighs every threshold equally, so a method that localises better gains at the high
#   thresholds, where detections that were hits at 0.5 turn into misses; AP50 cannot see that gain;
# * (b) AP75 is computed on fewer images;
# * (c) AP50 and AP75 always move together.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "13_evaluation"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
# * Matching: by score, each detection takes the best unmatched object with IoU ≥ t; duplicates are FPs.
# * AP at t: the upper envelope of the precision-recall curve, read at 101 recall points, averaged.
# * COCO AP: the mean over t = 0.50 … 0.95 and over classes; size ranges ignore objects outside them.
#   Our loop gives pycocotools' numbers exactly.
# * Keypoints: the same matching and AP with OKS, a Gaussian of the keypoint distances scaled by the
#   object's area and each keypoint's sigma, in place of IoU; by hand it equals pycocotools' `computeOks`.
#
# Next: lesson 14 trains a whole Mask R-CNN and measures it with these numbers.
