# %% [markdown]
# # 01 · Boxes and IoU
#
# **Goal.** Write the intersection over union (IoU) of two boxes, then of every pair of boxes in two
# sets at once, check it against `minimaskrcnn.ops.box_iou` (and torchvision's), and see what an IoU
# of 0.5 or 0.7 *looks like*: you will end with a picture of boxes drawn at the IoU thresholds the
# whole detector is built on.

# %% [markdown]
# ## The idea
#
# A box is four numbers **(x1, y1, x2, y2)**: the top-left and bottom-right corners, as floats, in
# pixels of the network input. Its width is `x2 - x1` (no `+ 1`: a box from 0 to 2 is 2 pixels
# wide; the old Detectron `+ 1` convention is gone from torchvision and from this project). COCO
# files store (x, y, w, h) and the box coder (lesson 03) uses (cx, cy, w, h); those formats only
# appear at the edges, through named converters.
#
# $$\mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|} = \frac{|A \cap B|}{|A| + |B| - |A \cap B|} \in [0, 1]$$
#
# The intersection of two boxes is again a box: `(max x1, max y1, min x2, min y2)`, empty when
# `min x2 < max x1` (then clamp its width at 0).
#
# IoU is the yardstick of every stage of Mask R-CNN:
#
# | stage | rule | lesson |
# |---|---|---|
# | RPN anchor labels | IoU ≥ 0.7 with a ground-truth box: positive; < 0.3: negative | 08 |
# | RoI sampling for the heads | IoU ≥ 0.5: foreground, else background (paper §3.1) | 11 |
# | NMS | drop a box whose IoU with a better box is > 0.7 (RPN) or > 0.5 (detections, torchvision's default) | 02 |
# | evaluation | a detection is a hit when IoU ≥ 0.5 (AP50), 0.75 (AP75), … | 14 |
#
# Shapes: `boxes1` (N, 4), `boxes2` (M, 4), `iou` (N, M).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from minimaskrcnn.ops import boxes as box_ops

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)


def draw_boxes(ax, boxes, color="tab:blue", lw=2, ls="-", labels=None):
    """Draw (x1, y1, x2, y2) boxes on a matplotlib axis (image coordinates: y grows downwards)."""
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).reshape(-1, 4)):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=lw, ls=ls))
        if labels is not None:
            ax.text(x1, y1 - 0.5, labels[i], color=color, fontsize=9, va="bottom")

# %% [markdown]
# ## Build it
# ### Step 1: area and the IoU of one pair
# The area is width times height; the intersection is the overlap of the two x-ranges times the
# overlap of the two y-ranges, each clamped at 0 when the ranges do not meet.

# %%
def area(box):
    x1, y1, x2, y2 = box
    return (x2 - x1) * (y2 - y1)


def iou_pair(a, b):
    """IoU of two boxes, each (x1, y1, x2, y2)."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)  # width of the intersection, 0 if disjoint
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = w * h
    return inter / (area(a) + area(b) - inter)


a, b = [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]
print("IoU of [0,0,2,2] and [1,1,3,3]:", iou_pair(a, b), "= 1/7 =", 1 / 7)  # overlap 1, union 4 + 4 - 1
assert abs(iou_pair(a, b) - 1 / 7) < 1e-12

fig, ax = plt.subplots(figsize=(4, 4))
draw_boxes(ax, [a], "tab:blue", labels=["a"])
draw_boxes(ax, [b], "tab:orange", labels=["b"])
ax.add_patch(Rectangle((1, 1), 1, 1, color="tab:green", alpha=0.4, label="a ∩ b"))
ax.plot([], [], color="tab:blue", label="a = [0, 0, 2, 2]"), ax.plot([], [], color="tab:orange", label="b = [1, 1, 3, 3]")
ax.set_xlim(-0.5, 3.5), ax.set_ylim(3.5, -0.5), ax.set_aspect("equal")
ax.set_xlabel("x (pixels)"), ax.set_ylabel("y (pixels, downwards)"), ax.legend(fontsize=8, loc="lower left")
ax.set_title("intersection 1, union 4 + 4 - 1 = 7: IoU 1/7")
plt.show()

# %% [markdown]
# ### Step 2: every pair, with loops
# The RPN compares every anchor with every ground-truth box (about 200,000 anchors for an 800-pixel
# image, FPN paper Table 1); the box head compares its 2,000 proposals per training image with them. First the obvious double loop, as the specification.

# %%
def iou_loops(boxes1, boxes2):
    iou = np.zeros((len(boxes1), len(boxes2)))
    for n, a in enumerate(boxes1):
        for m, b in enumerate(boxes2):
            iou[n, m] = iou_pair(a, b)
    return iou


def random_boxes(n, size=100.0, max_side=40.0):
    xy = rng.uniform(0, size - max_side, (n, 2))
    wh = rng.uniform(2, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


boxes1, boxes2 = random_boxes(5), random_boxes(3)
log("boxes1", boxes1)
log("boxes2", boxes2)
log("iou_loops", iou_loops(boxes1, boxes2))

# %% [markdown]
# ### Step 3: every pair, with broadcasting
# Give `boxes1` a new axis in the middle and `boxes2` one at the front: `(N, 1, 2)` against
# `(1, M, 2)` broadcasts to `(N, M, 2)`, every pair's corners at once. This is exactly how
# `minimaskrcnn.ops.box_iou` is written (and torchvision's).

# %%
def iou_broadcast(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (M,)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])      # (N, M, 2)
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = np.clip(bottom_right - top_left, 0, None)                       # (N, M, 2), 0 where disjoint
    inter = wh[..., 0] * wh[..., 1]                                      # (N, M)
    return inter / (area1[:, None] + area2[None, :] - inter)


log("iou_broadcast", iou_broadcast(boxes1, boxes2))
print("max |loops - broadcast| =", np.abs(iou_loops(boxes1, boxes2) - iou_broadcast(boxes1, boxes2)).max())

# %% [markdown]
# ## Check it
# Against the library (`minimaskrcnn.ops.boxes.box_iou`) and torchvision, on larger random sets and
# on the edge cases: identical boxes (1), disjoint and touching boxes (0), a box inside another
# (ratio of areas).

# %%
big1, big2 = random_boxes(300), random_boxes(200)
ours = iou_broadcast(big1, big2)
lib = box_ops.box_iou(big1, big2)
err = np.abs(ours - lib).max()
print(f"max |ours - minimaskrcnn| = {err:.1e}")
assert err < 1e-12

edge1 = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)
edge2 = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [10, 0, 20, 10], [2, 2, 7, 7]], dtype=np.float64)
expected = [1.0, 0.0, 0.0, 25 / 100]
got = np.diag(iou_broadcast(edge1, edge2))
print("identical, disjoint, touching, inside:", got)
assert np.allclose(got, expected) and np.allclose(got, np.diag(box_ops.box_iou(edge1, edge2)))

try:
    import torch
    import torchvision

    ref = torchvision.ops.box_iou(torch.from_numpy(big1), torch.from_numpy(big2)).numpy()
    print(f"max |ours - torchvision| = {np.abs(ours - ref).max():.1e}")
    assert np.abs(ours - ref).max() < 1e-12
except ImportError:
    print("torchvision is not installed: the torchvision comparison was skipped")

# %% [markdown]
# ### Speed: why broadcast
# The loop calls Python 4 times per pair; broadcasting does the same arithmetic in a few NumPy calls.

# %%
n = 100 if QUICK else 300
s1, s2 = random_boxes(n), random_boxes(n)
t0 = time.perf_counter(); iou_loops(s1, s2); t_loop = time.perf_counter() - t0
t0 = time.perf_counter(); iou_broadcast(s1, s2); t_bc = time.perf_counter() - t0
print(f"{n} x {n} pairs: loops {t_loop * 1e3:.1f} ms, broadcasting {t_bc * 1e3:.2f} ms ({t_loop / t_bc:.0f}x)")

# %% [markdown]
# ## See it
# ### What an IoU looks like
# Two equal squares of side w, one shifted by d along x, overlap in a (w - d) × w strip:
# IoU = (w - d) / (w + d). IoU 0.5 already allows a shift of a third of the box; the RPN's positive
# threshold 0.7 allows about a sixth. Shifted along both axes the IoU drops faster.

# %%
w = 30.0
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, target in zip(axes, [0.3, 0.5, 0.7, 0.9]):
    d = w * (1 - target) / (1 + target)  # solve (w - d) / (w + d) = target
    gt = np.array([[10, 10, 10 + w, 10 + w]])
    shifted = gt + [d, 0, d, 0]
    diag_d = w * (1 - np.sqrt(target * 2 / (1 + target)))  # same IoU, shifted along both axes
    diag = gt + [diag_d, diag_d, diag_d, diag_d]
    draw_boxes(ax, gt, "black")
    draw_boxes(ax, shifted, "tab:blue", ls="--")
    draw_boxes(ax, diag, "tab:orange", ls=":")
    check = box_ops.box_iou(gt, np.concatenate([shifted, diag]))[0]
    ax.set_title(f"IoU {check[0]:.2f}: shift {d:.1f} px in x\nor {diag_d:.1f} px in x and y", fontsize=10)
    ax.set_xlim(0, 60), ax.set_ylim(60, 0), ax.set_aspect("equal"), ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
for color, ls, name in [("black", "-", "ground truth (30 x 30)"), ("tab:blue", "--", "shifted in x"),
                        ("tab:orange", ":", "shifted along the diagonal")]:
    axes[0].plot([], [], color=color, ls=ls, label=name)
fig.legend(loc="lower center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, -0.06))
plt.suptitle("what IoU 0.3, 0.5, 0.7 and 0.9 look like")
plt.show()

# %%
shifts = np.linspace(0, 40, 161)
sides = [8, 16, 32, 64]
fig, ax = plt.subplots(figsize=(6, 3.2))
for side in sides:
    gt = np.array([[0, 0, side, side]], dtype=np.float64)
    moved = np.stack([shifts, np.zeros_like(shifts), shifts + side, np.full_like(shifts, side)], 1)
    ax.plot(shifts, box_ops.box_iou(gt, moved)[0], label=f"side {side}px")
for t, ls in ((0.5, ":"), (0.7, "--")):
    ax.axhline(t, color="gray", ls=ls, lw=1, label=f"IoU {t}")
ax.set_xlabel("shift along x (pixels)"), ax.set_ylabel("IoU with the unshifted box"), ax.legend(fontsize=8)
ax.set_title("a 4-pixel shift costs a small box far more IoU than a large one")
plt.show()

# %% [markdown]
# The last plot is why small objects are hard: the same few pixels of error that a 64-pixel box
# barely notices push an 8-pixel box below every threshold. Keep it in mind for lesson 07: RoIPool
# rounds each box edge to the feature grid and pools whole feature pixels, which moves the region it
# pools by up to one and a half strides from the box: up to 24 pixels at stride 16.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** COCO annotation files store boxes as (x, y, w, h). Write `xywh_to_xyxy(boxes)` for
# an (N, 4) array; the check compares it with `box_ops.box_convert(boxes, "xywh", "xyxy")`.

# %% tags=exercise-1
def xywh_to_xyxy(boxes):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "01_boxes_and_iou"):
    coco_boxes = rng.uniform(0, 50, (7, 4))
    got = xywh_to_xyxy(coco_boxes)
    assert got.shape == (7, 4), f"shape {got.shape}"
    assert np.allclose(got, box_ops.box_convert(coco_boxes, "xywh", "xyxy")), "values differ from box_convert"

# %% [markdown]
# **Exercise 2.** Two equal squares of side 32 are shifted against each other by d pixels along x
# *and* d pixels along y. For which d is their IoU exactly 0.5? Compute `d_half` (by algebra or by
# bisection with `iou_pair`); the check evaluates the IoU at your d.

# %% tags=exercise-2
d_half = None  # a float

# %% tags=check-2
with exercise(2, "01_boxes_and_iou"):
    if d_half is None:
        raise NotImplementedError
    sq = [0.0, 0.0, 32.0, 32.0]
    assert abs(iou_pair(sq, [d_half, d_half, 32 + d_half, 32 + d_half]) - 0.5) < 1e-6, "IoU at your d is not 0.5"

# %% [markdown]
# **Exercise 3 (break it on purpose).** The Detectron of 2018 measured widths as `x2 - x1 + 1`
# (pixel indices, both ends included). Write `iou_plus_one(boxes1, boxes2)`, `iou_broadcast` with
# that convention. The check shows how far it is from ours for tiny and for large boxes. Why does
# it matter? Every number in this project (anchors, targets, AP) is compared with torchvision's,
# which dropped the `+ 1`.

# %% tags=exercise-3
def iou_plus_one(boxes1, boxes2):
    raise NotImplementedError  # your code here

# %% tags=check-3
with exercise(3, "01_boxes_and_iou"):
    tiny = np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([[1.0, 1.0, 3.0, 3.0]])
    assert abs(iou_plus_one(*tiny)[0, 0] - 4 / 14) < 1e-12, "[0,0,2,2] vs [1,1,3,3] with +1 should be 4/14"
    large1, large2 = random_boxes(50, size=1000, max_side=400), random_boxes(40, size=1000, max_side=400)
    gap_large = np.abs(iou_plus_one(large1, large2) - iou_broadcast(large1, large2)).max()
    print(f"tiny boxes: 1/7 = {1/7:.3f} becomes {iou_plus_one(*tiny)[0, 0]:.3f}; large boxes: max change {gap_large:.4f}")
    assert gap_large < 0.05

# %% [markdown]
# ## Summary
# * Boxes are (x1, y1, x2, y2) floats in input pixels, width `x2 - x1`.
# * IoU of all pairs: broadcast (N, 1, 2) against (1, M, 2), clamp the intersection at 0.
# * A fixed error in pixels costs small boxes far more IoU: the thresholds 0.5 and 0.7 are strict.
#
# Next: lesson 02 uses IoU to remove duplicate detections (non-maximum suppression).
