# %% [markdown]
# # 02 · Non-maximum suppression
#
# **Goal.** Write greedy non-maximum suppression (NMS), then its per-class version, check both against
# `minimaskrcnn.ops.nms` / `batched_nms` (and torchvision's), and see what the IoU threshold does: you
# will end with a picture of the same detections before NMS and after it at three thresholds.

# %% [markdown]
# ## The idea
#
# A detector does not fire once per object: every anchor or proposal near an object scores high, and
# their refined boxes pile up around it. NMS keeps one box per pile:
#
# 1. sort the boxes by score, best first;
# 2. keep the best remaining box;
# 3. drop every remaining box whose IoU with it is **greater than** the threshold;
# 4. repeat from 2 until no box remains.
#
# Mask R-CNN uses it twice. On the RPN's proposals (Faster R-CNN §3.3: threshold 0.7), per image and,
# in torchvision, per FPN level, keeping the best 2,000 in training and 1,000 at test (FPN paper §5.2;
# Mask R-CNN §3.1 "Inference"). And on the final detections, *per class*, so that a person and a bicycle
# in the same place do not suppress each other: torchvision's `box_nms_thresh` is 0.5, the threshold of
# the paper's "updated baseline" (its first results used 0.3; Appendix B). Nothing flows back through
# NMS: it is a plain array function.
#
# Shapes: `boxes` (N, 4) (x1, y1, x2, y2); `scores` (N,); `idxs` (N,) class of each box;
# result `keep` (K,) int64 indices, by decreasing score.
#
# Two rules make the result exactly torchvision's: equal scores are visited in index order (a
# *stable* sort), and a box is suppressed only when IoU > threshold (an IoU exactly at the threshold
# survives).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn.ops import boxes as box_ops

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)


def draw_boxes(ax, boxes, color="tab:blue", lw=1.5, ls="-", alpha=1.0):
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=lw, ls=ls, alpha=alpha))

# %% [markdown]
# ## Toy detections
# Four objects (two of class 0, two of class 1; a class-0 and a class-1 object overlap with IoU 0.69,
# like a person on a bicycle), and around each 15
# jittered boxes whose score falls with their distance from the object: what a detector's raw output
# looks like.

# %%
objects = np.array([[10, 10, 50, 80], [14, 18, 54, 85], [110, 20, 150, 50], [80, 90, 140, 130]], dtype=np.float64)
object_classes = np.array([0, 1, 0, 1])


def jitter_around(objects, classes, per_object=15, noise=0.06):
    boxes, scores, labels = [], [], []
    for box, cls in zip(objects, classes):
        wh = box[2:] - box[:2]
        shift = rng.normal(0, noise, (per_object, 4)) * np.concatenate([wh, wh])
        boxes.append(box + shift)
        iou = box_ops.box_iou(box[None], box + shift)[0]
        scores.append(np.clip(iou + rng.normal(0, 0.05, per_object), 0.05, 0.99))
        labels.append(np.full(per_object, cls))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)


boxes, scores, labels = jitter_around(objects, object_classes)
log("boxes", boxes)
log("scores", scores)
log("labels", labels)

# %% [markdown]
# ## Build it
# ### Step 1: greedy NMS, the loop
# `order` holds the indices by decreasing score (stable); `suppressed` marks boxes dropped so far.

# %%
def iou_one_to_many(box, others):
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(others) - inter)


def nms_loop(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")  # best first; ties by index
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(i)
        later = order[rank + 1:]                            # everything ranked below box i
        iou = iou_one_to_many(boxes[i], boxes[later])
        suppressed[rank + 1:] |= iou > iou_threshold        # strictly greater
    return np.array(keep, dtype=np.int64)


keep = nms_loop(boxes, scores, 0.5)
log("keep", keep)
print("kept boxes per class:", np.bincount(labels[keep]))

# %% [markdown]
# ### Step 2: per class, with the coordinate trick
# To run NMS per class without a Python loop over classes, move each class to its own corner of the
# plane: add `class * (max coordinate + 1)` to every coordinate. Boxes of different classes then
# cannot overlap, and one NMS call does all classes. (torchvision does this for small inputs and
# loops over classes for large ones; `batched_nms` follows it.)

# %%
def batched_nms_trick(boxes, scores, idxs, iou_threshold):
    offsets = idxs.astype(boxes.dtype) * (boxes.max() + 1)
    return nms_loop(boxes + offsets[:, None], scores, iou_threshold)


keep_per_class = batched_nms_trick(boxes, scores, labels, 0.5)
log("keep_per_class", keep_per_class)
print("kept boxes per class:", np.bincount(labels[keep_per_class]))

# %% [markdown]
# Class-agnostic NMS (step 1) lets the boxes of the overlapping person and bicycle suppress each
# other; per class they cannot. Which of the four objects still has a box (IoU ≥ 0.5) after each?

# %%
for name, kept in [("class-agnostic", keep), ("per class", keep_per_class)]:
    found = [bool((box_ops.box_iou(objects[o:o + 1], boxes[kept[labels[kept] == object_classes[o]]]) >= 0.5).any())
             for o in range(len(objects))]
    print(f"{name:15s} objects found: {found}")

# %% [markdown]
# ## Check it
# Against `minimaskrcnn.ops.boxes.nms` under each CPU backend (the readable NumPy reference and the
# Numba kernel), against `batched_nms`, and against torchvision; then the two exact rules: ties and an
# IoU exactly at the threshold.

# %%
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        assert np.array_equal(box_ops.nms(boxes, scores, 0.5), keep), backend
        assert np.array_equal(box_ops.batched_nms(boxes, scores, labels, 0.5), keep_per_class), backend
print("nms and batched_nms equal minimaskrcnn's (numpy and numba backends)")

# ties: equal scores are visited by index, so the lower index survives
tie_boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], dtype=np.float64)
assert list(nms_loop(tie_boxes, np.array([0.9, 0.9]), 0.5)) == [0] == list(box_ops.nms(tie_boxes, np.array([0.9, 0.9]), 0.5))
# IoU exactly 0.5 ([0,0,3,1] and [1,0,4,1]: overlap 2, union 4) is NOT suppressed at threshold 0.5
at_threshold = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], dtype=np.float64)
print("IoU of the pair:", box_ops.box_iou(at_threshold, at_threshold)[0, 1])
assert len(nms_loop(at_threshold, np.array([0.9, 0.8]), 0.5)) == 2 == len(box_ops.nms(at_threshold, np.array([0.9, 0.8]), 0.5))

try:
    import torch
    import torchvision

    tb, ts, tl = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    assert np.array_equal(torchvision.ops.nms(tb, ts, 0.5).numpy(), keep)
    assert np.array_equal(torchvision.ops.batched_nms(tb, ts, tl, 0.5).numpy(), keep_per_class)
    print("and torchvision's")
except ImportError:
    print("torchvision is not installed: the torchvision comparison was skipped")

# %% [markdown]
# ## See it: what the threshold does to a crowd
# Six people of one class standing in a row, neighbours overlapping at IoU 0.3 to 0.6, and eight
# jittered detections around each. NMS cannot tell a second person from a duplicate: a low threshold
# suppresses neighbours that were real people, a high one lets duplicates through.

# %%
gaps = [12, 9, 15, 6, 12]                                    # x distance between neighbours (pixels)
x0 = 10 + np.concatenate([[0], np.cumsum(gaps)])
y0 = np.array([20.0, 28, 16, 24, 30, 18])
crowd = np.stack([x0, y0, x0 + 30, y0 + 70], 1)              # six 30 x 70 people
print("IoU of neighbours:", np.round([box_ops.box_iou(crowd[i:i + 1], crowd[i + 1:i + 2])[0, 0] for i in range(5)], 2))
crowd_boxes, crowd_scores, _ = jitter_around(crowd, np.zeros(6, int), per_object=8, noise=0.09)


def found_and_extra(kept):
    """People with a kept box of IoU >= 0.5 (one box each, best score first), and the kept boxes left over."""
    iou = box_ops.box_iou(crowd_boxes[kept], crowd)
    taken = np.zeros(len(crowd), dtype=bool)
    extra = 0
    for k in range(len(kept)):                                # kept is sorted by decreasing score
        free = np.nonzero((iou[k] >= 0.5) & ~taken)[0]
        if len(free):
            taken[free[iou[k, free].argmax()]] = True
        else:
            extra += 1
    return int(taken.sum()), extra


fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), sharex=True, sharey=True)
cmap = plt.get_cmap("viridis")
for ax, threshold in zip(axes.ravel(), [None, 0.3, 0.5, 0.7]):
    kept = np.argsort(-crowd_scores, kind="stable") if threshold is None else box_ops.nms(crowd_boxes, crowd_scores, threshold)
    for i in kept:
        draw_boxes(ax, crowd_boxes[i], cmap(crowd_scores[i]), lw=1.2)
    draw_boxes(ax, crowd, "black", lw=1.5, ls=":")
    found, extra = found_and_extra(kept)
    name = "before NMS" if threshold is None else f"NMS at {threshold}"
    ax.set_title(f"{name}: {len(kept)} boxes\n{found} of 6 people found, {extra} extra boxes", fontsize=11)
    ax.set_xlim(0, 120), ax.set_ylim(110, 5), ax.set_aspect("equal")
for ax in axes[:, 0]:
    ax.set_ylabel("y (pixels)")
for ax in axes[1]:
    ax.set_xlabel("x (pixels)")
axes[0, 0].plot([], [], "k:", label="the six people"), axes[0, 0].legend(loc="lower left", fontsize=9)
fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), ax=axes, label="detection score", shrink=0.8)
plt.suptitle("one class, one crowd: low thresholds lose people, high thresholds keep duplicates")
plt.show()

# %%
thresholds = np.linspace(0.05, 0.95, 37)
counts = np.array([found_and_extra(box_ops.nms(crowd_boxes, crowd_scores, t)) for t in thresholds])
fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.step(thresholds, counts[:, 0], where="post", label="people found (of 6)")
ax.step(thresholds, counts[:, 1], where="post", label="extra boxes (duplicates)")
ax.set_xlabel("NMS IoU threshold"), ax.set_ylabel("count"), ax.legend(fontsize=8)
ax.set_title("the threshold trades lost people against duplicates")
plt.show()

# %% [markdown]
# ## Speed
# The RPN runs NMS on thousands of boxes per image, so the loop's cost matters. The NumPy reference
# already does each step's IoUs as one array operation; the Numba kernel (`kernels/nms/cpu.py`) is the
# same loop compiled; `kernels/nms/cuda.py` holds a CUDA version (lesson 16 shows how such
# kernels are written, on RoIAlign).

# %%
n = 1000 if QUICK else 4000
many = box_ops.box_convert(np.concatenate([rng.uniform(0, 300, (n, 2)), rng.uniform(20, 120, (n, 2))], 1), "cxcywh", "xyxy")
many_scores = rng.random(n)
with mm.use_backend("numba"):
    box_ops.nms(many[:10], many_scores[:10], 0.7)  # compile once
timings = {}
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        t0 = time.perf_counter()
        kept = box_ops.nms(many, many_scores, 0.7)
        timings[backend] = time.perf_counter() - t0
t0 = time.perf_counter()
kept_loop = nms_loop(many, many_scores, 0.7)
timings["nms_loop (this notebook)"] = time.perf_counter() - t0
assert np.array_equal(kept, kept_loop)
for name, t in timings.items():
    print(f"{name:26s} {t * 1e3:8.1f} ms for {n} boxes ({len(kept)} kept)")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `batched_nms_loop(boxes, scores, idxs, iou_threshold)` the other way: run
# `nms_loop` once per class and merge the kept indices, sorted by decreasing score (stable). The check
# compares it with `box_ops.batched_nms`.

# %% tags=exercise-1
def batched_nms_loop(boxes, scores, idxs, iou_threshold):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "02_nms"):
    for threshold in (0.3, 0.5, 0.7):
        got = batched_nms_loop(boxes, scores, labels, threshold)
        assert np.array_equal(got, box_ops.batched_nms(boxes, scores, labels, threshold)), f"differs at {threshold}"

# %% [markdown]
# **Exercise 2 (break it on purpose).** Change `>` into `>=` in a copy of `nms_loop` called
# `nms_geq`. Then build two boxes `pair` (a (2, 4) array) on which `nms_geq` and `nms_loop` disagree
# at threshold 0.5. Hint: IoU must be exactly 0.5 in floating point.

# %% tags=exercise-2
def nms_geq(boxes, scores, iou_threshold):
    raise NotImplementedError  # your code here


pair = None  # a (2, 4) float array

# %% tags=check-2
with exercise(2, "02_nms"):
    if pair is None:
        raise NotImplementedError
    s = np.array([0.9, 0.8])
    assert len(nms_loop(pair, s, 0.5)) == 2, "the real NMS should keep both boxes"
    assert len(nms_geq(pair, s, 0.5)) == 1, "nms_geq should drop the second box"
    assert np.array_equal(nms_geq(boxes, scores, 0.5), nms_loop(boxes, scores, 0.5)), "on random boxes they agree"

# %% [markdown]
# **Exercise 3 (why).** In a crowd (people standing in a row, their boxes overlapping at IoU 0.6),
# per-class NMS at 0.5 loses people. Which change would keep them? Set `answer_3` to one letter:
#
# * (a) lower the NMS threshold to 0.3;
# * (b) raise the NMS threshold (e.g. 0.7), accepting more duplicate boxes elsewhere;
# * (c) run NMS class-agnostic instead of per class.

# %% tags=exercise-3
answer_3 = None  # "a", "b" or "c"

# %% tags=check-3
with exercise(3, "02_nms"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b", "not quite: a box survives only if its IoU with every better box is <= the threshold"

# %% [markdown]
# ## Summary
# * Greedy NMS: best first, drop boxes with IoU > threshold with a kept box, repeat. Stable sort,
#   strictly greater.
# * Per class: shift each class out of the others' way and run NMS once.
# * The threshold trades duplicates against lost neighbours.
#
# Next: lesson 03 places the anchors that these boxes start from, and the box coding that moves them.
