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
# **What the study found.** The study (15 variant names, 11 trainings per seed on two shared trunks,
# 3 seeds, on shapes designed for it) ran in 57 minutes on this project's 2-core machine; its results are
# in `lessons/results/table2.json` and this lesson reads them, retraining nothing. Every difference the
# paper reports as large has the paper's sign here and is resolved out of the seed-to-seed spread, but
# one: at stride 32 both models are too weak for their AP75 to tell. The paper's small differences (max
# vs average in RoIAlign, class-agnostic masks, ResNeXt) are not resolved here either. The *sizes* do
# not match the paper's: several effects are three to five times larger in this miniature, and the
# sections below say why. Absolute APs on shapes are not comparable with COCO's.

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
import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle
from minimaskrcnn.kernels.roi_warp import quantize_rois

from minimaskrcnn import visualize
from minimaskrcnn.experiments import StudyResults, run_study
from minimaskrcnn.experiments.table2 import (
    COMPARISONS,
    DESCRIPTIONS,
    METRICS,
    PAPER,
    RUNS,
    VARIANTS,
    Table2Settings,
    Table2Study,
    make_study,
    model_config,
)
from minimaskrcnn.models import MaskRCNN
from minimaskrcnn.ops import roi_align, roi_pool, roi_warp
from minimaskrcnn.tensor import Tensor

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
warnings.filterwarnings("ignore", message="IProgress not found")  # the trainer's progress bar is off anyway
OUT = Path("..") / "runs" / "ablate"  # the study's runs (ignored by git), and the quick mode's smoke runs

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
# The feature maps each gives a 128-pixel image, at the study's default sizes (a ResNet of depth 26 at
# a quarter of the width, standing in for the paper's ResNet-50):

# %%
settings = Table2Settings()
for arch, body in (("c4", "r"), ("c5", "r"), ("fpn", "r"), ("fpn", "x")):
    model = MaskRCNN.from_config(model_config(settings, arch, body))
    features = model.backbone(Tensor(np.zeros((1, 3, settings.image_size, settings.image_size), np.float32)))
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
# `experiments/table2.py` is the Table 2 study. It first trains two *trunks*, once for every seed: a
# ResNet and a ResNeXt with FPN, as Faster R-CNNs without a mask branch. They stand in for the paper's
# ImageNet-pretrained backbones (the paper starts every model from one pretrained network per backbone),
# and no RoI layer, mask head or mask loss under test shaped them. Every variant then takes its trunk's
# *body* (stem to res5; C4's res5 head starts from the trunk's res5) and trains a new detector on it,
# end to end: FPN or not, RPN, box and mask heads all start afresh and train for the same number of
# steps. A seed gives the two variants of a comparison the same initial weights and data order, so they
# are compared seed by seed. Variants that are one configuration in the paper are one run here:

# %%
for run in RUNS:
    kind = ("trunk, trained once" if run.shared else "trunk") if not run.report else (
        f"same run as {run.same_as}" if run.same_as else f"from {run.parent}'s body")
    print(f"{run.name:16s} {run.description:32s} {kind}")
distinct = [r for r in RUNS if not r.same_as]
print(f"{len(VARIANTS)} variant names, {sum(1 for r in distinct if r.report)} trainings per seed "
      f"plus {sum(1 for r in distinct if not r.report)} trunks")

# %% [markdown]
# ## The study and its numbers
#
# The study is one command from the repository root; it trains what is not on disk yet, resumes if
# interrupted, and records the command, every setting and the time of each run. This lesson reads its
# results from `lessons/results/table2.json` and retrains nothing:
#
# ```
# minimaskrcnn ablate table2 --seeds 0,1,2 --results lessons/results/table2.json --table lessons/results/table2.md
# ```
#
# Alone, that command trains everything in turn. The committed results were made faster on the same
# 2-core machine: the two trunks first (`--seeds 0 --only trunk_r`, `--only trunk_x`, in parallel), then
# one process per seed (`--seeds 0`, `--seeds 1`, `--seeds 2`, one thread each), 57 minutes of wall time
# in all; the command above then found every run on disk and wrote the results.

# %%
with open(Path("results") / "table2.json") as f:
    study_data = json.load(f)
results = StudyResults.from_json(study_data, study="table2", metrics=METRICS)
study_settings = Table2Settings(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in study_data["setup"]["settings"].items()})
seeds = study_data["setup"]["seeds"]
print(f"command: {study_data['command']}")
print(f"seeds {seeds}; {study_data['setup']['train_seconds'] / 3600:.1f} hours of training and evaluation, summed "
      "over the runs")
print(f"data: {study_settings.num_train_images} training and {study_settings.num_val_images} held-out "
      f"{study_settings.image_size}-px images, 1 class per shape {study_settings.classes}, "
      f"{study_settings.objects_per_image[0]}-{study_settings.objects_per_image[1]} shapes of "
      f"{study_settings.object_size[0]:.0f}-{study_settings.object_size[1]:.0f} px")
print(f"schedule: trunks {study_settings.trunk_steps} steps, variants {study_settings.head_steps} steps, "
      f"{study_settings.batch_size} images a step")
display(Markdown("Mean ± standard deviation over the seeds, COCO AP on the held-out images in points; "
                 "the paper's figures (COCO minival, ResNet-50 unless said otherwise) in the last column.\n\n"
                 + results.markdown_table(PAPER, DESCRIPTIONS)))

# %% [markdown]
# Every comparison of the paper's table, seed by seed: the difference `a - b` for each seed (the same seed
# gives both variants the same initial weights and data order), its mean and standard deviation, and the
# runner's verdict.

# %%
display(Markdown(results.markdown_comparisons(COMPARISONS)))

# %%
fig, ax = plt.subplots(figsize=(10.5, 0.42 * len(COMPARISONS) + 1.2))
for row, c in enumerate(COMPARISONS):
    r = results.compare(c)
    y = len(COMPARISONS) - 1 - row
    color = "tab:green" if r["resolved"] else "tab:gray"
    ax.plot(r["diffs"], [y] * r["n"], "o", color=color, ms=5, alpha=0.8)
    ax.errorbar(r["mean"], y, xerr=2 * r["std"], fmt="|", color=color, ms=14, capsize=4, lw=1.5)
    if c.reference is not None:
        ax.plot(c.reference, y, "*", color="tab:red", ms=10)
ax.axvline(0, color="black", lw=0.8)
ax.set_yticks(range(len(COMPARISONS)))
ax.set_yticklabels([f"{c.a} - {c.b} ({c.metric.replace('_', ' ')})" for c in reversed(COMPARISONS)], fontsize=9)
ax.set_xlabel("difference a - b (AP points)")
ax.set_title("Paired differences per seed (dots), mean ± 2 std (bar), the paper's (star)")
ax.legend(handles=[plt.Line2D([], [], color="tab:green", marker="o", ls="", label="resolved (|mean| > 2 std)"),
                   plt.Line2D([], [], color="tab:gray", marker="o", ls="", label="not resolved"),
                   plt.Line2D([], [], color="tab:red", marker="*", ls="", ms=10, label="the paper")],
          loc="lower right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **What the numbers say, comparison by comparison** (differences in AP points, mean ± standard deviation
# of the three per-seed differences; "resolved" is the runner's rule, |mean| > 2 std, which with three
# seeds is a lenient test: read a resolved difference whose seeds disagree in sign as a hint, not a finding):
#
# * **RoIAlign vs RoIPool at stride 32 (Table 2d).** Both stride-32 models are weak (box AP 5-8): on a
#   128-pixel image the C5 map is 4×4 and an object covers 1-2 of its cells, too coarse for this small
#   model to detect well in 400 steps. RoIAlign is ahead on every seed: mask AP +3.2 ± 1.5 (resolved, just)
#   and mask AP50 +7.3; mask AP75 (+2.0 ± 1.3) and box AP (+2.7 ± 1.9) are not resolved. The paper: +7.3
#   mask AP, +10.5 AP75. This row supports the paper's direction but cannot tell its size: the weak point of
#   this design, whose stride-32 models would need larger images or longer training.
# * **RoI layer on C4 (Table 2c).** RoIAlign (avg) beats RoIPool by +12.8 ± 1.8 mask AP and +18.3 ± 3.1
#   AP75, and RoIWarp by +11.6 ± 2.1: resolved, and about four times the paper's +3.4 / +5.1 / +3.2. The
#   objects here are 32-72 px, 2 to 4.5 cells of the stride-16 map, pooled to 14×14 bins: RoIPool's bins
#   are smaller than a cell, so it repeats whole cells, and its rounding moves each edge by up to 8 px,
#   up to a quarter of a small object. Most of COCO's objects in the paper's 800-pixel images span many
#   more cells. RoIWarp is better than RoIPool by +1.3 ± 0.4 mask AP (paper +0.2), far from RoIAlign:
#   bilinear sampling inside a rounded box does not fix the rounding, the paper's point. Max vs average
#   inside RoIAlign's bins: -0.2 ± 1.8, not resolved (paper -0.1): both sample at the right place.
# * **Mask loss (Table 2b).** The per-pixel sigmoid beats the softmax by +9.2 ± 0.8 mask AP (+17 AP50),
#   paper +5.5, with box AP unchanged (27.0 vs 27.9): the loss is all in the masks, as the mechanism says.
# * **Class-specific vs class-agnostic masks (§4.2).** -0.8 ± 1.9, not resolved; the paper's +0.6 is
#   small too. One mask for all classes works as well here.
# * **FCN vs MLP mask head (Table 2e).** The 4-conv FCN head beats the MLP by +10.9 ± 0.7 mask AP (+18
#   AP75), paper +2.1: flattening the RoI's 14×14 features loses the spatial layout that a 28×28 mask
#   needs. Here the MLP model's box AP is lower too (34.2 vs 36.4): trained end to end, its large fc
#   layer's gradients reach the shared features.
# * **FPN vs C4 (Table 2a).** +13.3 ± 0.8 mask AP for FPN, paper +3.3. Part of it is the same small-object
#   effect as above: FPN pools these objects from P2 (stride 4), C4 from stride 16.
# * **ResNeXt vs ResNet (Table 2a).** -0.7 ± 0.8, not resolved (paper +1.3, at depth 101). At a quarter
#   of the width and depth 26, this ResNeXt's first stage has 32 groups of *one* channel each (a
#   depthwise convolution) and the same number of parameters as its ResNet (0.84 M vs 0.88 M in the
#   body): not the paper's X101, and no evidence either way.

# %% [markdown]
# ## What RoIPool does to a mask
#
# The tables measure; pictures show how. For the models of seed 0, every ground-truth object of the
# held-out set gets the best IoU of a mask the model predicts for it (among all its detections of the
# object's class; 0 when it has none), and the two models of a comparison are set side by side: the
# distribution of those IoUs over all objects, then the four objects on which the two differ most
# (chosen *after the fact* to show the failure, so they say nothing about how often it happens; the
# distribution does). First RoIAlign vs RoIPool on C4 (stride 16), then at stride 32.

# %%
if QUICK:  # the smoke run's models (a few steps: their pictures mean nothing), so that CI runs this code
    pictures_study = make_study(quick=True, data_dir=OUT / "data-quick", log=lambda line: None)
    pictures_dir = OUT / "table2-quick"
    run_study(pictures_study, [0], pictures_dir, command="lesson 17 smoke run",
              only=["c5_roipool", "c5_roialign", "c4_roipool", "sigmoid", "softmax"], log=lambda line: None)
else:
    pictures_study = Table2Study(study_settings, data_dir=OUT / "data", log=lambda line: None)
    pictures_dir = OUT / "table2"
val_set = pictures_study.datasets()[1]
val_images = [val_set[i] for i in range(3 if QUICK else len(val_set))]


run_of = {r.name: r.same_as or r.name for r in RUNS}  # a variant's trained run (aliases share one)
best_masks_of = {}  # run name -> best_masks(its model), each run evaluated once


def best_masks(model):
    """Per ground-truth object of ``val_images``: (image index, gt mask, best IoU, the best mask or None)."""
    rows = []
    for index, (image, target) in enumerate(val_images):
        out = model([image])[0]
        masks = out["masks"][:, 0] > 0.5
        for gt_mask, gt_label in zip(target["masks"].astype(bool), target["labels"]):
            best, best_mask = 0.0, None
            for mask in masks[out["labels"] == gt_label]:
                iou = np.logical_and(mask, gt_mask).sum() / max(np.logical_or(mask, gt_mask).sum(), 1)
                if iou > best:
                    best, best_mask = float(iou), mask
            rows.append((index, gt_mask, best, best_mask))
    return rows


def compare_masks(a, b, title):
    """The distribution of best mask IoUs of models a and b, and the four objects where they differ most."""
    for name in (a, b):
        if run_of[name] not in best_masks_of:
            best_masks_of[run_of[name]] = best_masks(pictures_study.load_model(name, 0, pictures_dir))
    rows = {name: best_masks_of[run_of[name]] for name in (a, b)}
    ious = {name: np.array([r[2] for r in rows[name]]) for name in (a, b)}
    fig = plt.figure(figsize=(13, 3.6))
    grid = fig.add_gridspec(1, 5, width_ratios=[1.5, 1, 1, 1, 1])
    ax = fig.add_subplot(grid[0])
    bins = np.linspace(0, 1, 21)
    for name, color in ((a, "tab:blue"), (b, "tab:red")):
        ax.hist(ious[name], bins=bins, histtype="step", lw=2, color=color,
                label=f"{name}: mean {ious[name].mean():.2f}")
    ax.set_xlabel("best mask IoU of an object")
    ax.set_ylabel("objects")
    ax.set_title(f"all {len(ious[a])} held-out objects", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    for k, i in enumerate(np.argsort(ious[b] - ious[a])[:4]):
        index, gt_mask = rows[a][i][0], rows[a][i][1]
        ax = fig.add_subplot(grid[k + 1])
        ax.imshow(visualize.to_uint8_image(val_images[index][0]))
        ax.contour(gt_mask, levels=[0.5], colors="white", linewidths=2)
        for name, color in ((a, "tab:blue"), (b, "tab:red")):
            if rows[name][i][3] is not None:
                ax.contour(rows[name][i][3], levels=[0.5], colors=color, linewidths=1.5)
        ax.set_title(f"IoU {ious[a][i]:.2f} vs {ious[b][i]:.2f}", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{title}: {a} (blue) vs {b} (red), ground truth in white; right: the four largest "
                 "differences, chosen after the fact", fontsize=10)
    plt.tight_layout()
    plt.show()
    for name in (a, b):
        print(f"{name:16s} objects with a mask of their class: {np.mean(ious[name] > 0):.2f}; best mask IoU: "
              f"mean {ious[name].mean():.3f}, share >= 0.75 {np.mean(ious[name] >= 0.75):.2f}")


compare_masks("c4_roialign_avg" if not QUICK else "sigmoid", "c4_roipool", "C4, seed 0")

# %%
compare_masks("c5_roialign", "c5_roipool", "Stride 32, seed 0")

# %% [markdown]
# On C4, RoIAlign's masks are tighter over the whole held-out set (mean best IoU 0.72 vs 0.65, and 55% vs
# 25% of the objects at IoU 0.75 or more: the AP75 gap of the table). RoIPool's masks, where they fail,
# are blobs offset from the object or spilling onto a neighbour: the head was fed features from a frame
# rounded to whole cells of the map, and its 28×28 mask is pasted back into the box's own frame. At
# stride 32 the distributions overlap more (0.59 vs 0.53): both models are weak there, and a lost object
# (IoU 0) is as often a missed detection as a misplaced mask.
#
# ## What the softmax does to a mask
#
# The same for the C4 models of seed 0 with a per-pixel sigmoid (`sigmoid`, the paper's) and a per-pixel
# softmax over the classes (`softmax`):

# %%
compare_masks("sigmoid", "softmax", "C4, seed 0: mask loss")

# %% [markdown]
# The softmax's failure is of another kind: on a large share of the objects (the left bar) its mask for
# the detected class is nearly empty, a few pixels where that class wins, although the box and its class
# are right (box AP is the same for both models). Every pixel has to be won against the other classes
# and the background; the sigmoid only answers "is this pixel the object?" for the class the box branch
# chose. On the objects where both give a mask, the two are much closer.

# %% [markdown]
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
#   it stands out of the seed-to-seed spread.
# * The miniature (3 seeds, 57 minutes on 2 cores) resolves the paper's large effects with the paper's
#   sign: RoIAlign over RoIPool and RoIWarp on C4, the sigmoid over the softmax, the FCN over the MLP mask
#   head, FPN over C4; at stride 32 only mask AP and AP50. It does not resolve the small ones (max vs
#   average, class-agnostic masks, ResNeXt), nor does the paper find them large. Its effect sizes are
#   several times the paper's where small objects meet a coarse map.
