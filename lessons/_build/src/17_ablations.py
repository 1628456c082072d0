# %% [markdown]
# # 17 · The paper's ablations: the pieces of Table 2 and the runner that compares them
#
# **Goal.** Table 2 of the Mask R-CNN paper (He et al. 2017, §4.2) changes one piece of the model at a
# time and measures COCO mask AP: the backbone (C4 or FPN, ResNet or ResNeXt), the RoI layer (RoIPool,
# RoIWarp, RoIAlign with max or average), the mask loss (per-pixel sigmoid or softmax), class-specific or
# class-agnostic masks, an MLP or a convolutional mask head. This lesson builds each of those pieces in
# the library, shows what each does differently (where each RoI layer reads the feature map; how a
# softmax makes the classes compete for every pixel), and runs the ablation runner that compares them
# with several seeds.
#
# **What this lesson does not have: results.** The study behind it (15 variants, 3 seeds, on shapes
# designed for it) has **not been run yet**: at its measured cost it needs about 13 hours of one CPU
# core (below). The runner is run here only in its *quick* mode, a smoke run of a few training steps
# on 64-pixel images whose numbers mean nothing. No conclusion in this lesson comes from our runs: the
# paper's figures are the paper's, and the table that would test them is the command at the end.

# %% [markdown]
# ## The paper's Table 2
#
# COCO minival, mask AP (AP50 / AP75 where the paper gives them), ResNet-50 unless said otherwise:
#
# | question (table) | compared | the paper | variant names here |
# |---|---|---|---|
# | RoI layer on a stride-32 map (2d) | RoIPool / RoIAlign | 23.6 / 30.9 (AP75 21.6 / 32.1; box AP 28.2 / 34.0) | `c5_roipool`, `c5_roialign` |
# | RoI layer on C4, stride 16 (2c) | RoIPool / RoIWarp (avg) / RoIAlign (max) / RoIAlign (avg) | 26.9 / 27.1 / 30.2 / 30.3 | `c4_roipool`, `c4_roiwarp`, `c4_roialign_max`, `c4_roialign_avg` |
# | mask loss (2b) | per-pixel softmax / sigmoid | 24.8 / 30.3 | `softmax`, `sigmoid` |
# | masks per class (§4.2) | class-agnostic / class-specific | 29.7 / 30.3 | `class_agnostic`, `class_specific` |
# | mask head on FPN (2e) | MLP fc 1024-1024 / FCN (4 convs) | 31.5 / 33.6 | `mlp_head`, `fcn_head` |
# | backbone (2a) | R50-C4 / R50-FPN / X101-FPN | 30.3 / 33.6 / 36.7 | `r_c4`, `r_fpn`, `x_fpn` |
#
# The two largest effects are mechanical: RoIPool's rounding misplaces the features of a small box on
# a coarse map (+7.3 mask AP and +10.5 AP75 for RoIAlign at stride 32), and a softmax over classes
# makes the mask head classify every pixel again (+5.5 for the sigmoid). The next sections show both
# mechanisms on small examples; whether they show in a miniature on shapes is what the study would measure.

# %%
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle
from minimaskrcnn.kernels.roi_warp import quantize_rois

from minimaskrcnn.experiments import run_study
from minimaskrcnn.experiments.table2 import COMPARISONS, PAPER, RUNS, VARIANTS, Table2Settings, make_study, model_config
from minimaskrcnn.models import MaskRCNN
from minimaskrcnn.ops import roi_align, roi_pool, roi_warp
from minimaskrcnn.tensor import Tensor

from _helpers import exercise, log

plt.rcParams["figure.dpi"] = 80
warnings.filterwarnings("ignore", message="IProgress not found")  # the trainer's progress bar is off anyway
OUT = Path("..") / "runs" / "ablate"  # where this lesson keeps its smoke runs (ignored by git)

# %% [markdown]
# ## The backbones: C4, C5 and FPN
#
# All three are a configuration of the library's model; `experiments/table2.py`'s `model_config` builds
# each one the study uses (`BackboneConfig(fpn=False, returned_layers=(3,))` with `roi_heads="res5"` for
# C4; `returned_layers=(4,)` for C5; `groups=32, width_per_group=4` for ResNeXt).
#
# * **C4** (the paper's Fig. 4, left; detectron2's `Res5ROIHeads`): the ResNet up to its fourth stage
#   gives one map of stride 16; RoIs are pooled 14×14 from it, the fifth stage (res5) runs *per RoI*
#   as the head, then average pooling, the class and box predictors; the mask branch deconvolves
#   res5's 7×7 output to 14×14 and predicts one mask per class.
# * **C5**: one map of stride 32 (the whole ResNet) with the FPN-style heads (7×7 RoIs for two fc
#   layers, 14×14 for four convs): Table 2d's setting, where RoIPool's rounding is largest.
# * **FPN**: four levels of stride 4 to 32; each RoI is pooled from the level that suits its size.
#
# The feature maps each gives a 160-pixel image, at the study's default sizes (a ResNet of depth 26 at
# a quarter of the width, standing in for the paper's ResNet-50):

# %%
settings = Table2Settings()
for arch, body in (("c4", "r"), ("c5", "r"), ("fpn", "r"), ("fpn", "x")):
    model = MaskRCNN.from_config(model_config(settings, arch, body))
    features = model.backbone(Tensor(np.zeros((1, 3, 160, 160), np.float32)))
    sizes = ", ".join(f"{f.shape[1]}x{f.shape[2]}x{f.shape[3]}" for f in features.values())
    heads = sum(p.data.size for name, p in model.named_parameters() if name.startswith("roi_heads"))
    print(f"{arch.upper()} {'ResNeXt' if body == 'x' else 'ResNet'}: RoI heads {type(model.roi_heads).__name__} "
          f"({heads / 1e6:.1f} M parameters); features (C x H x W): {sizes}")

# %% [markdown]
# C4's RoI heads carry res5; C5's first fc layer alone takes 512·7·7 inputs, hence its size. ResNeXt
# changes only the body (grouped 3×3 convolutions, torchvision's `resnext50_32x4d` widths).
#
# ## Where each RoI layer reads a stride-32 map
#
# A feature map of stride 32 holds one value per 32×32 pixels; in torchvision's convention
# (`aligned=False`) value `i` sits at image coordinate `32 i` (the grey dots below). For one box:
#
# * **RoIPool** rounds the box's corners to whole cells (`round(x / 32)`) and takes, in each of its
#   bins, the *maximum of the values* that fall in it: it reads only the grey dots inside the rounded box;
# * **RoIWarp** (MNC) rounds the corners the same way, then samples bilinearly inside the rounded box;
# * **RoIAlign** samples bilinearly inside the box itself, 2×2 samples per bin, and averages them
#   (or, `roi_align_max`, takes their maximum).
#
# The mask head predicts a mask in the frame of the *box*. RoIPool and RoIWarp feed it features from a
# frame shifted by up to half a cell (16 px) on each side, a shift that changes from box to box.

# %%
stride = 32
box = np.array([37.0, 50.0, 110.0, 131.0])  # (x1, y1, x2, y2) in image pixels
rois = np.array([[0.0, *box]])
cells = quantize_rois(rois, 1 / stride)[0, 1:]  # RoIPool's and RoIWarp's rounded corners, in cells
log(f"box {box} -> rounded corners (cells) {cells} -> in pixels {cells * stride}")
PH = PW = 7
grid = 2  # samples per bin side


def bin_samples(x1, y1, x2, y2):
    """The bilinear sample points of RoIAlign's 7x7 bins, 2x2 each, inside (x1, y1, x2, y2)."""
    xs = x1 + (np.arange(PW * grid) + 0.5) * (x2 - x1) / (PW * grid)
    ys = y1 + (np.arange(PH * grid) + 0.5) * (y2 - y1) / (PH * grid)
    return np.meshgrid(xs, ys)


lattice = np.arange(0, 193, stride)
warp_box = cells * stride
fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.9))
for ax, name in zip(axes, ("RoIPool", "RoIWarp", "RoIAlign")):
    lx, ly = np.meshgrid(lattice, lattice)
    ax.plot(lx.ravel(), ly.ravel(), "o", color="0.6", ms=4, label="feature values (stride 32)")
    ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="green", lw=2.5, label="the box"))
    if name == "RoIPool":
        inside = (lx >= warp_box[0]) & (lx <= warp_box[2]) & (ly >= warp_box[1]) & (ly <= warp_box[3])
        ax.plot(lx[inside], ly[inside], "o", color="red", ms=8, label="values it max-pools")
    else:
        region = warp_box if name == "RoIWarp" else box
        sx, sy = bin_samples(*region)
        ax.plot(sx.ravel(), sy.ravel(), ".", color="tab:blue", ms=3, label="bilinear samples")
    if name != "RoIAlign":
        ax.add_patch(Rectangle(warp_box[:2], *(warp_box[2:] - warp_box[:2]), fill=False, ec="red", lw=1.5,
                               ls="--", label="rounded box"))
    ax.set_xlim(-8, 200), ax.set_ylim(200, -8)
    ax.set_aspect("equal")
    ax.set_xlabel("x (image pixels)")
    ax.set_ylabel("y (image pixels)")
    ax.set_title(name)
    ax.legend(loc="lower right", fontsize=8)
fig.suptitle("One box on a stride-32 map: what each RoI layer reads")
plt.tight_layout()
plt.show()

# %% [markdown]
# The same in numbers: pool a feature map that is a ramp along x (each value is its column index) into
# 1×4 bins, then move the box 10 px to the left.

# %%
ramp = np.tile(np.arange(6, dtype=np.float64), (1, 1, 6, 1))  # (1, 1, 6, 6): value = column index
shifted = rois - [0, 10.0, 0, 10.0, 0]  # the same box 10 px to the left
for name, pool in (("RoIAlign", lambda r: roi_align(ramp, r, (1, 4), 1 / stride, 2)),
                   ("RoIWarp", lambda r: roi_warp(ramp, r, (1, 4), 1 / stride, 2)),
                   ("RoIPool", lambda r: roi_pool(ramp, r, (1, 4), 1 / stride))):
    before, after = pool(rois).numpy()[0, 0, 0], pool(shifted).numpy()[0, 0, 0]
    print(f"{name:9s} bins' x (cells): {np.round(before, 2)}   box moved 10 px left: {np.round(after, 2)}")

# %% [markdown]
# RoIAlign's bins move by 10/32 = 0.31 cell with the box; RoIPool's and RoIWarp's do not move (the
# rounded corners are the same). Moved 10 px to the *right* instead, the box's right edge would cross a
# rounding boundary (110/32 = 3.44 rounds to 3, 120/32 = 3.75 to 4) and their last bins would jump by a
# whole cell. The mask targets move with the box in every case, so a head fed by RoIPool sees the same
# features for targets shifted by up to 16 px.
#
# **Max or average inside a bin.** RoIAlign (max) keeps the largest of a bin's samples and sends the
# gradient to that one sample's four neighbours; the average spreads it over all samples. The paper
# measured no difference (30.2 vs 30.3): both sample at the right place, which is what matters.

# %%
features = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6) % 7  # a small irregular map
one_bin = np.array([[0.0, 1.2, 0.7, 3.4, 2.9]])  # one box, pooled to a single bin (stride 1)
avg = roi_align(features, one_bin, (1, 1), 1.0, 2)
mx = roi_align(features, one_bin, (1, 1), 1.0, 2, mode="max")
log(f"RoIAlign (avg) {avg.numpy().ravel()}, RoIAlign (max) {mx.numpy().ravel()} over the same 2x2 samples")

# %% [markdown]
# ## Softmax: the classes compete for every pixel
#
# With a per-pixel sigmoid (the paper's choice) the mask head answers, for the class the box head chose,
# "is this pixel the object?"; the other classes' masks are not trained on this RoI. With a per-pixel
# softmax over the L channels (`MaskHeadConfig(loss="softmax")`, trained with the gt class inside the
# mask and background outside, as FCN's semantic segmentation is) it must also say *which* class every
# pixel belongs to, and a pixel is in the detected class's mask only where that class wins. Where the
# head hesitates between look-alike classes, the detected class can lose pixels that the box head had
# already settled. One pixel first:

# %%
classes = ["background", "circle", "triangle", "square", "hexagon"]
logits = np.array([0.2, 1.9, -1.0, -1.0, 1.6])
p = np.exp(logits - logits.max())
p /= p.sum()
log("softmax over the classes at one pixel", np.round(p, 3))
print(f"the box head says hexagon: the softmax gives it {p[4]:.2f} and circle wins with {p[1]:.2f} -> pixel left out")
print(f"a sigmoid of the hexagon logit alone: {1 / (1 + np.exp(-logits[4])):.2f} -> pixel kept")

# %% [markdown]
# Now a whole 28×28 mask. The logits below are **constructed by hand** (not a trained model's): a
# hexagon detection, whose hexagon channel is confident inside the object, and a circle channel
# that is nearly as confident in the hexagon's rounder middle (hexagons and circles look alike).

# %%
S = 28
yy, xx = np.mgrid[0:S, 0:S] + 0.5
angle, radius = np.arctan2(yy - S / 2, xx - S / 2), np.hypot(xx - S / 2, yy - S / 2)
hexagon_radius = 11 * np.cos(np.pi / 6) / np.cos((angle % (np.pi / 3)) - np.pi / 6)
obj = radius <= hexagon_radius  # the hexagon's pixels
z = np.full((5, S, S), -3.0)  # (L, S, S) logits: background, circle, triangle, square, hexagon
z[0] = np.where(obj, -2.0, 3.0)
z[4] = np.where(obj, 2.5, -2.0)
z[1] = np.where(obj, 3.2 - 0.15 * radius, -2.0)  # the look-alike: strongest near the centre
probs = np.exp(z - z.max(0))
probs /= probs.sum(0)
softmax_mask = probs.argmax(0) == 4
sigmoid_mask = 1 / (1 + np.exp(-z[4])) > 0.5
fig, axes = plt.subplots(1, 5, figsize=(14, 3.3))
panels = [(obj, "the object\n(target)", "gray"), (probs[4], "softmax\np(hexagon)", "viridis"),
          (probs[1], "softmax\np(circle)", "viridis"), (softmax_mask, "softmax mask:\nwhere hexagon wins", "gray"),
          (sigmoid_mask, "sigmoid mask:\nσ(hexagon logit) > 0.5", "gray")]
for ax, (image, title, cmap) in zip(axes, panels):
    shown = ax.imshow(image, vmin=0, vmax=1, cmap=cmap)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
fig.colorbar(shown, ax=axes, shrink=0.8, label="probability / mask")
fig.suptitle("Constructed logits for a hexagon detection: the softmax's look-alike class takes the middle")
plt.show()
print(f"mask IoU with the object: softmax {np.sum(softmax_mask & obj) / np.sum(softmax_mask | obj):.2f}, "
      f"sigmoid {np.sum(sigmoid_mask & obj) / np.sum(sigmoid_mask | obj):.2f}")

# %% [markdown]
# **Class-agnostic masks** (`MaskHeadConfig(class_agnostic=True)`) predict one mask for every class: no
# competition and no per-class channel; the paper found them nearly as good (29.7 vs 30.3), evidence
# that the box branch's classification and the mask are well decoupled. **The MLP mask head**
# (`MaskHeadConfig(head="mlp")`, fc 1024, 1024, then L×28×28) flattens the RoI's features, losing the
# spatial layout that the FCN head's convolutions keep (31.5 vs 33.6 in the paper).
#
# ## The runner
#
# `minimaskrcnn.experiments.runner` is generic: a study is a list of runs and two functions, `train`
# and `evaluate`. `run_study` trains every run for every seed, parents first, keeps each finished run on
# disk (an interrupted study resumes), and collects the metrics into a `StudyResults` that gives the mean
# and standard deviation over seeds and, for a `Comparison`, the per-seed differences and a verdict
# (resolved when the mean difference exceeds two standard deviations of those differences).
#
# `experiments/table2.py` is the Table 2 study. For each seed it trains two *trunks* (a ResNet and a
# ResNeXt with FPN, as Faster R-CNNs without a mask branch, standing in for the paper's
# ImageNet-pretrained backbones); every variant starts from its trunk and trains end to end, so a seed gives the
# two variants of a comparison the same trunk, initial weights and data order, and they are compared
# seed by seed. Variants that are one configuration in the paper are one run here:

# %%
for run in RUNS:
    kind = "trunk" if not run.report else (f"same run as {run.same_as}" if run.same_as else f"from {run.parent}")
    print(f"{run.name:16s} {run.description:32s} {kind}")
distinct = [r for r in RUNS if not r.same_as]
print(f"{len(VARIANTS)} variant names, {len(distinct)} trainings per seed "
      f"({sum(1 for r in distinct if not r.report)} trunks)")

# %% [markdown]
# ### A smoke run (not evidence)
#
# The runner's quick mode (`Table2Settings.quick()`: 64-pixel images, 6 training images, 2 steps a run)
# is what CI runs. Here it trains the two stride-32 variants and their ResNet trunk for two seeds
# (`only=` picks variants; the trunks they need come with them), about half a minute. It checks that the
# path works (data, trunk, weights handed from trunk to variant, training, COCO evaluation, the table and
# a verdict); **its numbers mean nothing**: models trained for two steps have learnt nothing.

# %%
smoke = make_study(quick=True, data_dir=OUT / "data-quick", log=lambda line: None)
start = time.perf_counter()
smoke_results = run_study(smoke, [0, 1], OUT / "table2-quick", command="lesson 17 smoke run",
                          only=["c5_roipool", "c5_roialign"], log=lambda line: None)
print(f"smoke run: 3 trainings x 2 seeds in {time.perf_counter() - start:.0f} s (0 s when found on disk)")
display(Markdown("**Smoke run (quick mode): not evidence.** Mean ± std over 2 seeds, AP in points; the "
                 "paper's figures (COCO, ResNet-50) in the last column.\n\n" + smoke_results.markdown_table(PAPER)))

# %%
print("SMOKE RUN, NOT EVIDENCE: the verdict machinery on meaningless numbers")
for c in COMPARISONS[:3]:  # the stride-32 comparisons
    r = smoke_results.compare(c)
    print(f"  {c.a} - {c.b}, {c.metric}: {r['mean']:+.1f} ± {r['std']:.1f} points over {len(r['diffs'])} seeds "
          f"(paper {c.reference:+.1f})\n    -> {r['verdict']}")

# %% [markdown]
# ## The study has not been run yet
#
# The full study is one command (from the repository root; it writes `runs/ablate/table2/results.json`
# and `table.md`, resumes if interrupted, and records the command in the results file):
#
# ```
# minimaskrcnn ablate table2 --seeds 0,1,2
# ```
#
# Its default settings (`Table2Settings()`): 160-pixel images with 2-5 shapes of 40-96 px in four
# classes (circle, triangle, square, hexagon; so that on a stride-32 map an object covers one to three
# cells and RoIPool's rounding is a large part of it, and so that a softmax has look-alike classes),
# 1,000 training and 200 held-out images; trunks of 1,000 steps, variants of 500 steps, 4 images a step.
#
# **What a pilot measured** (seed 0 only, one core of a shared 2-core machine): the ResNet trunk took
# 1,132 s and one variant (`c5_roipool`) 1,148 s, reaching box AP 3.7 and mask AP 2.7 on the held-out
# images. At that cost the study is 13 trainings × about 1,150 s × 3 seeds ≈ 13 hours. And models that
# weak are a warning: at a few AP points, seed-to-seed noise can hide even the paper's large effects,
# so the schedule (or the model size) likely has to grow before the study can resolve anything. Until
# it is run, **this project has no evidence for or against any row of the paper's table**.
#
# ## Masks for classes that were never masked
#
# A later question, outside the paper: can the mask head segment classes that had boxes but no masks in
# training (partial supervision)? That is lesson 18 (Deep-MAC, Birodkar et al. 2021).

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (RoIPool's rounding).** For the box `(70, 20, 150, 101)` on a stride-32 map, compute the
# rounded corners in cells, as RoIPool rounds them (C's `round`: halves away from zero), and how many
# pixels each corner moves. Set `corners` (4 numbers, in cells) and `moved` (4 numbers, in pixels,
# rounded corner minus the box's corner).

# %% tags=exercise-1
corners = None
moved = None

# %% tags=check-1
with exercise(1, "17_ablations"):
    if corners is None:
        raise NotImplementedError
    truth = quantize_rois(np.array([[0, 70.0, 20.0, 150.0, 101.0]]), 1 / 32)[0, 1:]
    np.testing.assert_allclose(corners, truth)
    np.testing.assert_allclose(moved, truth * 32 - np.array([70.0, 20.0, 150.0, 101.0]))
    print("rounded corners", truth, "moved by", truth * 32 - np.array([70.0, 20.0, 150.0, 101.0]), "px")

# %% [markdown]
# **Exercise 2 (a verdict by hand).** Two variants trained with the same five seeds gave these mask APs
# (made-up numbers for the exercise, in points): `a = [31.0, 29.5, 30.8, 28.9, 30.1]`,
# `b = [29.8, 29.9, 29.0, 28.7, 29.4]`. Compute the per-seed differences `a - b`, their mean and their
# standard deviation (`ddof=1`), and decide, with the runner's rule, whether the difference is resolved
# (mean above two standard deviations of the differences). Set `diffs`, `mean`, `std` and `resolved`.

# %% tags=exercise-2
diffs = None
mean = None
std = None
resolved = None

# %% tags=check-2
with exercise(2, "17_ablations"):
    if diffs is None:
        raise NotImplementedError
    a_ap, b_ap = np.array([31.0, 29.5, 30.8, 28.9, 30.1]), np.array([29.8, 29.9, 29.0, 28.7, 29.4])
    np.testing.assert_allclose(diffs, a_ap - b_ap)
    np.testing.assert_allclose([mean, std], [np.mean(a_ap - b_ap), np.std(a_ap - b_ap, ddof=1)])
    assert resolved == bool(abs(np.mean(a_ap - b_ap)) > 2 * np.std(a_ap - b_ap, ddof=1))
    print(f"{mean:+.2f} ± {std:.2f} points: {'resolved' if resolved else 'not resolved'}")

# %% [markdown]
# **Exercise 3 (why).** Why does a per-pixel softmax lose mask AP that a per-pixel sigmoid keeps, in the
# paper? Set `answer_3`:
#
# * (a) with a softmax the mask head must also classify every pixel, and the classes compete: where it
#   hesitates between look-alike classes the detected class loses pixels, although the box branch had
#   already decided the class;
# * (b) a softmax is slower to compute, so the model trains fewer steps;
# * (c) a softmax predicts smaller masks, 14×14 instead of 28×28.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "17_ablations"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
#
# * Each piece of Table 2 is a configuration of the library's model: `BackboneConfig(fpn=False,
#   returned_layers=(3,))` with `roi_heads="res5"` for C4, `(4,)` for C5; `pooler_type` (`roi_pool`,
#   `roi_warp`, `roi_warp_max`, `roi_align`, `roi_align_max`) for the RoI layer;
#   `MaskHeadConfig(loss=..., class_agnostic=..., head=...)` for the mask branch; `groups` and
#   `width_per_group` for ResNeXt.
# * RoIPool and RoIWarp read the feature map in a frame rounded to whole cells; RoIAlign reads it in the
#   box's own frame. A per-pixel softmax makes the classes compete for the mask's pixels.
# * `minimaskrcnn ablate` trains a study's variants for several seeds, shares trunks, resumes, and writes
#   the table with the paper's figures and a verdict per comparison. A difference is evidence only when
#   it stands out of the seed-to-seed spread, and only for runs that were made: the Table 2 study has not
#   been run yet (`minimaskrcnn ablate table2 --seeds 0,1,2`).
