# %% [markdown]
# # 16 · The paper's ablations, reproduced with statistics
#
# **Goal.** Find out, with measurements that can be trusted, *why* Mask R-CNN is built the way it is:
# re-run the experiments of the paper's Table 2 (He et al. 2017, §4.2) in miniature: the backbone
# (C4 or FPN, ResNet or ResNeXt), the RoI layer (RoIPool, RoIWarp, RoIAlign with max or average),
# the mask loss (per-pixel sigmoid or softmax), class-specific or class-agnostic masks, an MLP or a
# convolutional mask head. You will end with the table of all fifteen variants, three seeds each,
# beside the paper's figures, a verdict on each comparison that says how sure it is, and pictures of
# the two failures the paper found largest: RoIPool's shifted masks at stride 32, and the classes
# competing for every pixel under a softmax.

# %% [markdown]
# ## The idea: a comparison is a claim, and a claim needs its noise measured
#
# Table 2 of the paper changes one piece at a time and reports COCO mask AP:
#
# | question | variants here | the paper (mask AP) |
# |---|---|---|
# | RoIAlign vs RoIPool on a stride-32 map (2d) | `c5_roialign`, `c5_roipool` | 30.9 vs 23.6 (AP75 32.1 vs 21.6) |
# | the RoI layer on C4 (2c) | `c4_roialign_avg`, `c4_roialign_max`, `c4_roiwarp`, `c4_roipool` | 30.3, 30.2, 27.1, 26.9 |
# | per-pixel sigmoid vs softmax (2b) | `sigmoid`, `softmax` | 30.3 vs 24.8 |
# | a mask per class or one for all (§4.2) | `class_specific`, `class_agnostic` | 30.3 vs 29.7 |
# | FCN vs MLP mask head (2e) | `fcn_head`, `mlp_head` | 33.6 vs 31.5 |
# | backbone (2a) | `r_c4`, `r_fpn`, `x_fpn` | 30.3, 33.6, 36.7 (X-101) |
#
# A miniature can answer these only if two things hold. **The data must let the effect show.** Our
# shapes are drawn for it (below): objects of 48-112 px in 192-px images, so that on a stride-32 map
# an object covers two or three cells and RoIPool's rounding (up to 16 px per side) matters; five
# classes of which three (circle, pentagon, hexagon) look alike, so that a softmax has classes to
# confuse; objects that occlude each other, so that a mask depends on the image and not only on the box.
# **The noise must be measured.** Training from a different seed moves AP by a point or more; a single
# run cannot tell a one-point effect from luck. So every variant is trained with three seeds; a seed
# fixes the initial weights, the data order and the shared trunk, so the two variants of a comparison
# are *paired* by seed, and we judge their per-seed differences. A difference counts as resolved when
# its mean is larger than two standard deviations of those differences; otherwise we say "not resolved
# here", whatever its sign.
#
# **How the runs share work.** 15 variants × 3 seeds on a shared CPU forbid training every model from
# scratch. As the paper starts every model from an ImageNet-pretrained ResNet, we start from a *trunk*
# trained once per seed: a ResNet-50 (and a ResNeXt-50 32×4d) at a quarter of the width, with FPN,
# trained as a Faster R-CNN (boxes only, so no mask loss or mask head under test shaped it). Each
# variant then freezes the trunk's body and trains what it changes: the C4 and C5 models their RPN and
# RoI heads (C4's res5 starting from the trunk's fifth stage, as the paper's C4 starts from the
# pretrained res5), the FPN models their box and mask heads. Variants that are one configuration in the
# paper are one run here (its R50-C4 baseline is `c4_roialign_avg`, `sigmoid`, `class_specific` and
# `r_c4`; its R50-FPN is `fcn_head` and `r_fpn`). `minimaskrcnn ablate table2` runs it all; the pieces are
# the library's: `roi_warp`, `roi_align(mode="max")`, `Res5ROIHeads`, `MaskRCNNMLPHead`, the softmax
# mask loss, ResNeXt.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _helpers import QUICK, exercise, log
from matplotlib.patches import Rectangle

from minimaskrcnn import record_intermediates, visualize
from minimaskrcnn.experiments import run_study
from minimaskrcnn.experiments.runner import StudyResults
from minimaskrcnn.experiments.table2 import COMPARISONS, METRICS, PAPER, Table2Settings, make_study
from minimaskrcnn.kernels.roi_warp import quantize_rois
from minimaskrcnn.ops import box_iou, roi_align, roi_pool, roi_warp

plt.rcParams["figure.dpi"] = 80
OUT = Path("..") / "runs" / "ablate"  # where `minimaskrcnn ablate table2` (run from the repository) keeps its runs

# %% [markdown]
# ## The data
#
# `Table2Settings` holds every size of the study. The shapes generator (`minimaskrcnn.data.shapes`)
# draws them from a seed: 1,000 training and 200 held-out images.

# %%
settings = Table2Settings.quick() if QUICK else Table2Settings()
study = make_study(quick=QUICK, data_dir=OUT / ("data-quick" if QUICK else "data"))
train_set, val_set = study.datasets()
log(f"classes {settings.classes}, {len(train_set)} training and {len(val_set)} held-out images")
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for ax, i in zip(axes, range(4)):
    image, target = val_set[i]
    gt = {"boxes": target["boxes"], "labels": target["labels"], "scores": np.ones(len(target["labels"])),
          "masks": target["masks"][:, None].astype(np.float32)}
    ax.imshow(visualize.draw_detections(image, gt, train_set.class_names))
    ax.set_title(f"held-out image {i}: {len(target['labels'])} objects", fontsize=9)
    ax.axis("off")
fig.suptitle("Ground truth: masks are the visible parts (later shapes occlude earlier ones)")
plt.show()

# %% [markdown]
# ## Where each RoI layer looks, on a stride-32 map
#
# The C5 feature map has one cell per 32×32 pixels. **RoIPool** rounds the box's corners to whole
# cells (`round(x / 32)`) and max-pools whole cells; **RoIWarp** rounds the same way, then samples
# bilinearly inside the rounded box; **RoIAlign** samples bilinearly inside the box itself (here 7×7
# bins, 2×2 samples each). The mask head predicts a mask in the frame of the *box*; with RoIPool and
# RoIWarp it reads features from a frame shifted by up to half a cell (16 px) on each side, a shift
# that changes from box to box, so it cannot learn to undo it.

# %%
stride = 32
box = np.array([37.0, 50.0, 110.0, 131.0])  # (x1, y1, x2, y2) in image pixels
rois = np.array([[0.0, *box]])
cells = quantize_rois(rois, 1 / stride)[0, 1:]  # RoIPool's and RoIWarp's rounded corners, in cells
log(f"box {box} -> rounded corners (cells) {cells} -> in pixels {cells * stride}")
PH = PW = 7
grid = 2
x_samples = box[0] + (np.arange(PW * grid) + 0.5) * (box[2] - box[0]) / (PW * grid)
y_samples = box[1] + (np.arange(PH * grid) + 0.5) * (box[3] - box[1]) / (PH * grid)

fig, ax = plt.subplots(figsize=(5.6, 5.6))
ax.imshow(np.full((192, 192, 3), 0.25))
for v in range(0, 193, stride):
    ax.axhline(v, color="w", lw=0.6, alpha=0.6)
    ax.axvline(v, color="w", lw=0.6, alpha=0.6)
ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="lime", lw=2.5, label="the box (RoIAlign)"))
pool_box = np.array([cells[0], cells[1], cells[2] + 1, cells[3] + 1]) * stride  # RoIPool: end cell included
ax.add_patch(Rectangle(pool_box[:2], *(pool_box[2:] - pool_box[:2]), fill=False, ec="red", lw=2, ls="--",
                       label="RoIPool's cells"))
warp_box = cells * stride
ax.add_patch(Rectangle(warp_box[:2], *(warp_box[2:] - warp_box[:2]), fill=False, ec="orange", lw=2, ls=":",
                       label="RoIWarp's rounded box"))
xx, yy = np.meshgrid(x_samples, y_samples)
ax.plot(xx.ravel(), yy.ravel(), ".", color="deepskyblue", ms=3, label="RoIAlign's samples")
ax.set_xlim(0, 192), ax.set_ylim(192, 0)
ax.set_title("One box on a stride-32 grid (white lines: feature cells)")
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# The same in numbers: pool a feature map that is a ramp along x (its value is the x coordinate of
# the cell) with each layer. RoIAlign's bins follow the box; RoIPool's and RoIWarp's follow the grid.

# %%
ramp = np.tile(np.arange(6, dtype=np.float64), (1, 1, 6, 1))  # (1, 1, 6, 6): value = column index
shifted = rois + [0, 10.0, 0, 10.0, 0]  # the same box 10 px to the right
for name, pool in (("RoIAlign", lambda r: roi_align(ramp, r, (1, 4), 1 / stride, 2)),
                   ("RoIWarp", lambda r: roi_warp(ramp, r, (1, 4), 1 / stride, 2)),
                   ("RoIPool", lambda r: roi_pool(ramp, r, (1, 4), 1 / stride))):
    before, after = pool(rois).numpy()[0, 0, 0], pool(shifted).numpy()[0, 0, 0]
    print(f"{name:9s} bins' x (cells): {np.round(before, 2)}   box moved 10 px right: {np.round(after, 2)}")

# %% [markdown]
# RoIAlign's bins move by 10/32 = 0.31 cell with the box; RoIPool's and RoIWarp's do not move at all
# (the rounded corners are the same), then jump by a whole cell when the box crosses a rounding
# boundary. The mask head's targets move with the box in every case.
#
# ## Softmax: the classes compete for every pixel
#
# With a per-pixel sigmoid the mask head answers, for the class the box head chose, "is this pixel
# the object?". With a per-pixel softmax over the L classes (`MaskHeadConfig(loss="softmax")`, trained
# with the gt class inside the mask and background outside) it must also say *which* class every
# pixel belongs to, and a pixel belongs to the detected class's mask only where that class wins.
# Where the head hesitates between look-alike classes, the mass is shared and the winner can be
# another class, though the box head had already decided:

# %%
logits = np.array([0.2, 2.0, -1.0, -1.0, 1.6, 1.7])  # background, circle, triangle, square, pentagon, hexagon
p = np.exp(logits - logits.max())
p /= p.sum()
log("softmax over the classes at one pixel", p)
print(f"the box head says pentagon (4): softmax gives it {p[4]:.2f}, circle wins with {p[1]:.2f} -> pixel left out")
print(f"a sigmoid of the pentagon logit alone: {1 / (1 + np.exp(-logits[4])):.2f} -> pixel kept")

# %% [markdown]
# ## The study
#
# `minimaskrcnn.experiments.runner` is generic: a study is a list of runs (trunks and variants) and
# two functions, `train` and `evaluate`; `run_study` trains parents before children for every seed,
# keeps each finished run on disk (so an interrupted study resumes), and collects the metrics.
# `experiments/table2.py` is this study. The committed results (`lessons/results/table2.json`) come
# from the command recorded in them; here (in quick mode: a tiny version of the same runner on 64-px
# images for two steps, whose numbers mean nothing) we run, or find on disk, the seed-0 models the
# pictures below need.

# %%
committed = json.loads(Path("results/table2.json").read_text())
results = StudyResults.from_json(committed, "table2", METRICS)
print("committed results made by:", committed["command"])
print(f"training and evaluation time of the full run: {committed['setup']['train_seconds'] / 3600:.1f} h")

PICTURES = ["c5_roipool", "c5_roialign", "sigmoid", "softmax"]
runs_dir = OUT / ("table2-quick" if QUICK else "table2")
here = run_study(study, [0], runs_dir, command="lesson 16", only=PICTURES, log=print)
if QUICK:
    print(here.markdown_table(PAPER))

# %% [markdown]
# ## The table, beside the paper's
#
# Mean ± standard deviation over the seeds, in points (COCO AP × 100), on the 200 held-out images.
# The paper's figures are COCO minival with ResNet-50/101 and 90k-160k iterations: compare the
# *differences*, not the levels.

# %%
print(results.markdown_table(PAPER, {r.name: r.description for r in study.runs}))

# %% [markdown]
# ## The verdicts
#
# Each comparison pairs the two variants seed by seed. The chart shows our mean difference with an
# error bar of two standard deviations of the per-seed differences, and the paper's difference.

# %%
rows = [(c, results.compare(c)) for c in COMPARISONS]
for c, r in rows:
    metric = c.metric.replace("_", " ")
    print(f"{c.title}\n    {c.a} - {c.b}, {metric}: {r['mean']:+.1f} ± {r['std']:.1f} points "
          f"(per seed {np.round(r['diffs'], 1).tolist()}; paper {c.reference:+.1f}) -> {r['verdict']}")

fig, ax = plt.subplots(figsize=(10, 5.2))
y = np.arange(len(rows))
ax.barh(y + 0.2, [r["mean"] for _, r in rows], height=0.4, xerr=[2 * r["std"] for _, r in rows],
        color="tab:blue", label="here: mean ± 2 std of the per-seed differences")
ax.barh(y - 0.2, [c.reference for c, _ in rows], height=0.4, color="tab:gray", label="the paper")
ax.set_yticks(y, [f"{c.a} − {c.b} ({c.metric.replace('_', ' ')})" for c, _ in rows], fontsize=8)
ax.axvline(0, color="k", lw=0.8)
ax.invert_yaxis()
ax.set_xlabel("difference in AP points (first minus second)")
ax.set_title("Each comparison of Table 2: ours and the paper's")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What RoIPool does to masks at stride 32
#
# The same held-out images through the two C5 models of seed 0 (detections scoring 0.5 or more).

# %%
models = {name: study.load_model(name, 0, runs_dir) for name in PICTURES}
class_names = train_set.class_names
shown = [i for i in range(len(val_set))][:3]
fig, axes = plt.subplots(2, len(shown), figsize=(4.2 * len(shown), 8.4), squeeze=False)
for col, i in enumerate(shown):
    image, _ = val_set[i]
    for row, name in enumerate(("c5_roialign", "c5_roipool")):
        axes[row, col].imshow(visualize.draw_detections(image, models[name]([image])[0], class_names))
        axes[row, col].set_title(f"{name}, image {i}", fontsize=9)
        axes[row, col].axis("off")
fig.suptitle("Stride 32: RoIAlign (top) against RoIPool (bottom)")
plt.show()

# %% [markdown]
# ## What the softmax does to a look-alike class
#
# One detection of the softmax model (C4, seed 0): the per-class probabilities of its 14×14 mask (the
# softmax over the six channels at every pixel), the mask it gives (where the detected class wins),
# and the sigmoid model's mask for the same object.

# %%
def mask_logits_of(model, image):
    """The model's detections on one image and the mask logits of each (D, L, S, S)."""
    with record_intermediates() as rec:
        detections = model([image])[0]
    return detections, rec["mask_logits"] if "mask_logits" in rec else np.zeros((0, 6, 14, 14))


look_alike = [class_names.index(k) for k in ("circle", "pentagon", "hexagon") if k in class_names]
choice = None
for i in range(len(val_set)):
    image, target = val_set[i]
    detections, logits = mask_logits_of(models["softmax"], image)
    candidates = [d for d in range(len(detections["labels"]))
                  if detections["labels"][d] in look_alike and detections["scores"][d] >= 0.5]
    if candidates or i == len(val_set) - 1:
        choice = (i, image, detections, logits, candidates[0] if candidates else None)
        break
i, image, detections, logits, d = choice
if d is None:
    print("no look-alike detection with score >= 0.5 in the held-out images (quick mode's models detect nothing)")
else:
    probs = np.exp(logits[d] - logits[d].max(0))
    probs /= probs.sum(0)
    label = int(detections["labels"][d])
    sig_detections, sig_logits = mask_logits_of(models["sigmoid"], image)
    # the sigmoid model's detection of the same object: the one whose box overlaps it most
    overlap = box_iou(detections["boxes"][d:d + 1], sig_detections["boxes"])[0]
    same = int(np.argmax(overlap)) if overlap.size else None
    fig, axes = plt.subplots(1, 8, figsize=(16, 2.6))
    x1, y1, x2, y2 = detections["boxes"][d].astype(int)
    axes[0].imshow(image.transpose(1, 2, 0)[y1:y2, x1:x2])
    axes[0].set_title(f"image {i}: {class_names[label]}", fontsize=9)
    for k in range(1, 6):
        axes[k].imshow(probs[k], vmin=0, vmax=1, cmap="viridis")
        axes[k].set_title(f"p({class_names[k]})", fontsize=9)
    axes[6].imshow(probs.argmax(0) == label, cmap="gray")
    axes[6].set_title("softmax mask", fontsize=9)
    if same is not None:
        sig_label = int(sig_detections["labels"][same])
        axes[7].imshow(1 / (1 + np.exp(-sig_logits[same, sig_label])) > 0.5, cmap="gray")
        axes[7].set_title("sigmoid mask", fontsize=9)
    for ax in axes:
        ax.axis("off")
    plt.show()

# %% [markdown]
# ## Masks for classes that were never masked
#
# A later question, not in Table 2: can the mask head segment classes for which training had boxes
# but no masks? Lesson 18 ("Masks for classes that were never masked") answers it with Deep-MAC's
# experiments, on the same runner.

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (RoIPool's rounding).** For the box `(70, 20, 150, 101)` on a stride-32 map, compute
# the rounded corners in cells, as RoIPool rounds them (C's `round`: halves away from zero), and
# how many pixels each corner moves. Set `corners` (4 numbers, in cells) and `moved` (4 numbers, in
# pixels, rounded corner minus the box's corner).

# %% tags=exercise-1
corners = None
moved = None

# %% tags=check-1
with exercise(1, "16_ablations"):
    if corners is None:
        raise NotImplementedError
    truth = quantize_rois(np.array([[0, 70.0, 20.0, 150.0, 101.0]]), 1 / 32)[0, 1:]
    np.testing.assert_allclose(corners, truth)
    np.testing.assert_allclose(moved, truth * 32 - np.array([70.0, 20.0, 150.0, 101.0]))
    print("rounded corners", truth, "moved by", truth * 32 - np.array([70.0, 20.0, 150.0, 101.0]), "px")

# %% [markdown]
# **Exercise 2 (a verdict by hand).** From `results.variants`, compute the per-seed differences of
# mask AP75 between `c4_roialign_avg` and `c4_roipool` (in points, the first minus the second), their
# mean and their standard deviation (`ddof=1`), and decide whether the difference is resolved (mean
# above two standard deviations). Set `diffs`, `mean`, `std` and `resolved`.

# %% tags=exercise-2
diffs = None
mean = None
std = None
resolved = None

# %% tags=check-2
with exercise(2, "16_ablations"):
    if diffs is None:
        raise NotImplementedError
    expected = results.compare(next(c for c in COMPARISONS if c.a == "c4_roialign_avg" and c.metric == "mask_AP75"))
    np.testing.assert_allclose(diffs, expected["diffs"])
    np.testing.assert_allclose([mean, std], [expected["mean"], expected["std"]])
    assert resolved == expected["resolved"]
    print(f"{mean:+.1f} ± {std:.1f} points: {expected['verdict']}")

# %% [markdown]
# **Exercise 3 (why).** Why does a per-pixel softmax lose mask AP that a per-pixel sigmoid keeps?
# Set `answer_3`:
#
# * (a) with a softmax the mask head must also classify every pixel, and the classes compete: where it
#   hesitates between look-alike classes the detected class loses pixels, although the box branch had
#   already decided the class;
# * (b) a softmax is slower to compute, so the model trains fewer steps;
# * (c) a softmax predicts smaller masks, 14×14 instead of 28×28.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "16_ablations"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
#
# * Each piece of Table 2 is a configuration of the library's model: `BackboneConfig(fpn=False,
#   returned_layers=(3,))` with `roi_heads="res5"` for C4, `(4,)` for C5, `pooler_type` for the RoI
#   layer, `MaskHeadConfig(loss=..., class_agnostic=..., head=...)` for the mask branch, `groups` and
#   `width_per_group` for ResNeXt.
# * `minimaskrcnn ablate` trains a study's variants for several seeds, shares trunks, resumes, and
#   writes the table with the paper's figures and a verdict per comparison.
# * A difference between two variants is evidence only when it stands out of the seed-to-seed spread.
