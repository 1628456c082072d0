# %% [markdown]
# # 09 · The feature pyramid network
#
# **Goal.** Write the FPN's top-down pathway from ResNet stages C2 … C5 to pyramid levels P2 … P6,
# check it against `minimaskrcnn.models.fpn.FeaturePyramidNetwork` (and torchvision's, with the same
# weights), then write the rule that picks the level each RoI is pooled from and the multi-scale
# RoIAlign built on it. You will end with a picture of boxes coloured by the level they are pooled
# from, and of coarse information flowing down the pyramid.

# %% [markdown]
# ## The idea
#
# A ResNet's stages see more and more context but at coarser and coarser resolution: C2 has stride 4,
# C5 stride 32. Small objects need the fine maps, but the fine maps are "semantically weak". The FPN
# (Lin et al. 2017, §3; Mask R-CNN's backbone of choice: §3 "Network Architecture", Table 2a, FPN
# beats C4 by 3.3 mask AP with ResNet-50) builds maps that are both:
#
# $$P_5 = \mathrm{conv}_{3\times3}(L_5),\quad L_5 = \mathrm{conv}_{1\times1}(C_5)$$
# $$L_l = \mathrm{conv}_{1\times1}(C_l) + \mathrm{upsample}_{2\times}(L_{l+1}),\quad P_l = \mathrm{conv}_{3\times3}(L_l),\quad l = 4, 3, 2$$
#
# * every level has the same number of channels (d = 256), so one RPN head and one box head serve them
#   all (FPN §3: "all levels of the pyramid use shared classifiers/regressors"); these extra layers have
#   no non-linearity;
# * upsampling is nearest-neighbour (to the lateral map's exact size);
# * P6, only for the RPN's 512-pixel anchors, keeps every other pixel of P5 (FPN §4.1: "a stride two
#   subsampling of P5"; torchvision: a 1×1 max pool with stride 2); the box and mask heads never use it.
#
# **Which level does an RoI come from?** FPN Eq. (1): an RoI of width w and height h (input pixels)
# is pooled from
#
# $$k = \left\lfloor k_0 + \log_2\!\left(\sqrt{wh} / 224\right) \right\rfloor,\quad k_0 = 4,$$
#
# clamped to [2, 5]: a 224-pixel RoI (ImageNet's image size) from P4, one half as large from P3, and
# so on. Level k takes the RoIs with √(wh) in [224·2^(k−4), 448·2^(k−4)), and its stride is 2^k, so an
# RoI always spans 14 to 28 cells per side of its level (e.g. s in [224, 448) on P4 at stride 16):
# the pooled 7×7 or 14×14 grid then samples each RoI at a similar density. Only the clamp breaks
# this: every RoI under 112 pixels goes to P2, however small (a 16-pixel RoI spans 4 cells of P2), and
# every RoI of 448 pixels or more to P5. `MultiScaleRoIAlign` applies RoIAlign (lesson 08) on that
# level with its stride.
#
# **What this does to small models.** The rule is written for COCO images resized to 800 pixels. The
# shapes models of lessons 14 and 17 see 128- and 96-pixel images with objects 15-60 pixels across:
# every object-sized RoI is under 112 pixels, so *every* RoI of theirs lands on P2; only a proposal
# covering almost the whole 128-pixel image (√(wh) ≥ 112) reaches P3. Their P3-P5 serve the RPN only.
#
# Shapes: C_l (N, C_l, H/2^l, W/2^l) with C = 256, 512, 1024, 2048 for ResNet-50; P_l (N, 256, H/2^l, W/2^l).

# %%
from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn import nn
from minimaskrcnn.models.fpn import FeaturePyramidNetwork, LastLevelMaxPool
from minimaskrcnn.models.poolers import LevelMapper, MultiScaleRoIAlign
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops.roi_align import roi_align

from _helpers import exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

try:
    import torch
    import torchvision
except ImportError:
    torch = torchvision = None
    print("torch/torchvision are not installed: the PyTorch comparisons are skipped")

# %% [markdown]
# ## Build it
# ### Step 1: the top-down pathway
# Small channel counts keep it quick: stages with 8, 16, 32, 64 channels, an FPN with 16. The weights
# are the library module's own (random) ones, read out of its `state_dict()` by name.

# %%
in_channels = [8, 16, 32, 64]
out_channels = 16
image_size = (512, 640)
stages = OrderedDict((str(i), mm.tensor(rng.standard_normal((1, c, image_size[0] // s, image_size[1] // s)).astype(np.float32)))
                     for i, (c, s) in enumerate(zip(in_channels, [4, 8, 16, 32])))
for name, c in stages.items():
    log(f"C{int(name) + 2}", c)

nn.init.manual_seed(0)
fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
weights = {k: mm.tensor(v) for k, v in fpn.state_dict().items()}


def fpn_by_hand(stages, weights):
    c = list(stages.values())
    lateral = lambda i: F.conv2d(c[i], weights[f"inner_blocks.{i}.0.weight"], weights[f"inner_blocks.{i}.0.bias"])
    smooth = lambda i, t: F.conv2d(t, weights[f"layer_blocks.{i}.0.weight"], weights[f"layer_blocks.{i}.0.bias"], padding=1)
    top = len(c) - 1
    inner = lateral(top)                                   # L5
    outputs = [smooth(top, inner)]                         # P5
    for i in range(top - 1, -1, -1):                       # C4, C3, C2
        lat = lateral(i)
        inner = lat + F.interpolate(inner, size=lat.shape[-2:], mode="nearest")   # L_l
        outputs.insert(0, smooth(i, inner))                # P_l
    outputs.append(outputs[-1][:, :, ::2, ::2])            # P6: every other pixel of P5
    return OrderedDict(zip(["0", "1", "2", "3", "pool"], outputs))


with mm.no_grad():
    ours = fpn_by_hand(stages, weights)
for (name, p), level in zip(ours.items(), range(2, 7)):
    log(f"P{level} ({name})", p)

# %% [markdown]
# ## Check it
# Against the library module, then against torchvision's `FeaturePyramidNetwork` with the same
# weights (the parameter names are the same, so the state dict copies over as it is).

# %%
with mm.no_grad():
    lib = fpn(stages)
for name in ours:
    assert np.allclose(ours[name].numpy(), lib[name].numpy(), rtol=1e-5, atol=1e-5), name
print("equal to minimaskrcnn's FeaturePyramidNetwork on every level")

if torchvision is not None:
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool

    tv_fpn = torchvision.ops.FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=TVLastLevelMaxPool())
    tv_fpn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in fpn.state_dict().items()})
    with torch.no_grad():
        ref = tv_fpn(OrderedDict((k, torch.from_numpy(v.numpy())) for k, v in stages.items()))
    for name in ours:
        err = np.abs(ours[name].numpy() - ref[name].numpy()).max()
        assert err < 1e-4, (name, err)
    print("and torchvision's, with the same weights:", list(ref.keys()))

# %% [markdown]
# ## See it: coarse information flowing down
# Hand-set weights make the FPN transparent: every lateral conv copies channel 0 and every smoothing
# conv is the identity. Put a single "semantic" blob in C5 only and a fine texture in C2 only: P2
# then holds both, the blob upsampled from 32× coarser, which is the point of the top-down pathway.

# %%
toy = FeaturePyramidNetwork([1, 1, 1, 1], 1, extra_blocks=LastLevelMaxPool())
toy_state = {}
for k, v in toy.state_dict().items():
    v = np.zeros_like(v)
    if k.endswith("weight"):
        v[0, 0, v.shape[2] // 2, v.shape[3] // 2] = 1.0   # identity (the centre tap)
    toy_state[k] = v
toy.load_state_dict(toy_state)
H, W = 128, 128
c2 = np.zeros((1, 1, H // 4, W // 4), np.float32)
c2[0, 0, ::4, :] = 0.3                                     # fine stripes only in C2
c5 = np.zeros((1, 1, H // 32, W // 32), np.float32)
c5[0, 0, 1:3, 2:4] = 1.0                                  # a blob only in C5
toy_in = OrderedDict([("0", mm.tensor(c2)), ("1", mm.tensor(np.zeros((1, 1, H // 8, W // 8), np.float32))),
                      ("2", mm.tensor(np.zeros((1, 1, H // 16, W // 16), np.float32))), ("3", mm.tensor(c5))])
with mm.no_grad():
    toy_out = toy(toy_in)
fig, axes = plt.subplots(1, 7, figsize=(15, 2.9))
panels = [("C2 input", c2), ("C5 input", c5)] + [(f"P{level}", v.numpy()) for level, v in zip(range(2, 7), toy_out.values())]
for ax, (title, img) in zip(axes, panels):
    shown = ax.imshow(img[0, 0], cmap="viridis", vmin=0, vmax=1.3)
    ax.set_title(f"{title} {img.shape[2]}x{img.shape[3]}", fontsize=9), ax.axis("off")
fig.colorbar(shown, ax=axes, shrink=0.8, label="value")
plt.suptitle("a blob put only in C5 reaches P2, added to C2's stripes (toy FPN: identity weights)")
plt.show()

# %% [markdown]
# ### Step 2: which level for which RoI
# FPN Eq. (1), with torchvision's clamp to the levels that exist and its 1e-6 before the floor.

# %%
def level_of(boxes, k0=4, s0=224, k_min=2, k_max=5):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    k = np.floor(k0 + np.log2(np.sqrt(w * h) / s0) + 1e-6)   # torchvision adds 1e-6 before the floor
    return np.clip(k, k_min, k_max).astype(np.int64)


sides = np.array([16, 32, 64, 111, 112, 113, 224, 447, 448, 800], dtype=np.float32)
square = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
lib_levels = LevelMapper(2, 5)([square]) + 2
print("side :", sides.astype(int))
print("level:", level_of(square))
assert np.array_equal(level_of(square), lib_levels)
if torchvision is not None:
    from torchvision.ops.poolers import LevelMapper as TVLevelMapper

    assert np.array_equal(TVLevelMapper(2, 5)([torch.from_numpy(square)]).numpy() + 2, lib_levels)
    print("equal to minimaskrcnn's LevelMapper and torchvision's")

# %% [markdown]
# ### Step 3: multi-scale RoIAlign
# Split the RoIs by level, RoIAlign each group on its level with that level's scale, and put the
# results back in RoI order.

# %%
def multiscale_roi_align_by_hand(features, boxes, output_size=7, sampling_ratio=2):
    levels = level_of(boxes)
    rois = np.concatenate([np.zeros((len(boxes), 1), boxes.dtype), boxes], 1)  # one image: batch index 0
    out = np.zeros((len(boxes), features["0"].shape[1], output_size, output_size), np.float32)
    for name, level in zip(["0", "1", "2", "3"], range(2, 6)):
        idx = np.nonzero(levels == level)[0]
        if len(idx):
            out[idx] = roi_align(features[name], rois[idx], output_size, 1 / 2**level, sampling_ratio).numpy()
    return out


xy = rng.uniform(0, 200, (12, 2)).astype(np.float32)
boxes = np.concatenate([xy, xy + np.exp(rng.uniform(np.log(16), np.log(500), (12, 1))) * [1.0, 0.8]], 1).astype(np.float32)
boxes = np.minimum(boxes, [image_size[1], image_size[0]] * 2).astype(np.float32)
pooled = multiscale_roi_align_by_hand(lib, boxes)
pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
with mm.no_grad():
    lib_pooled = pooler(lib, [boxes], [image_size]).numpy()
log("pooled", pooled)
print("levels of the 12 RoIs:", level_of(boxes), "(library:", pooler.last_levels + 2, ")")
assert len(np.unique(level_of(boxes))) >= 3, "the check should cover several levels"
assert np.allclose(pooled, lib_pooled, atol=1e-6)
if torchvision is not None:
    tv_pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    with torch.no_grad():
        tv_pooled = tv_pooler({k: torch.from_numpy(v.numpy()) for k, v in lib.items()}, [torch.from_numpy(boxes)], [image_size]).numpy()
    assert np.allclose(pooled, tv_pooled, atol=1e-5)
    print("equal to minimaskrcnn's MultiScaleRoIAlign and torchvision's")

# %% [markdown]
# ### See it: boxes by level
# Boxes of many sizes on an 800×1216 image, coloured by the level they are pooled from; the thin
# squares show one feature cell of that level (its stride). Between the clamps a box spans 14 to 28
# cells of its level per side, whatever its size; below 112 pixels (P2) it spans fewer.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
many_sides = np.exp(rng.uniform(np.log(12), np.log(700), 40))
centres = rng.uniform([100, 100], [1116, 700], (40, 2))
many = np.concatenate([centres - many_sides[:, None] / 2, centres + many_sides[:, None] / 2], 1)
colors = {2: "tab:blue", 3: "tab:orange", 4: "tab:green", 5: "tab:red"}
for box, level in zip(many, level_of(many)):
    axes[0].add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, color=colors[level], lw=1.3))
    axes[0].add_patch(Rectangle(box[:2], 2**level, 2**level, color=colors[level], alpha=0.5))
for level, color in colors.items():
    axes[0].plot([], [], color=color, label=f"P{level} (stride {2 ** level})")
axes[0].set_xlim(0, 1216), axes[0].set_ylim(800, 0), axes[0].set_aspect("equal"), axes[0].legend(fontsize=8, loc="lower right")
axes[0].set_xlabel("x (input pixels)"), axes[0].set_ylabel("y (input pixels)")
axes[0].set_title("RoIs coloured by FPN level (filled square: one cell)")
s = np.linspace(8, 1000, 400)
k = level_of(np.stack([0 * s, 0 * s, s, s], 1))
axes[1].plot(s, k, drawstyle="steps-post", color="black", label="level k")
cells = axes[1].twinx()
cells.plot(s, s / 2.0**k, color="tab:purple", label="cells per side (s / stride)")
cells.axhspan(14, 28, color="tab:purple", alpha=0.1)
cells.set_ylabel("cells per side of its level", color="tab:purple"), cells.set_ylim(0, 60)
axes[1].axvline(224, color="gray", ls=":")
axes[1].set_xscale("log"), axes[1].set_xlabel("sqrt(w h) (pixels)"), axes[1].set_ylabel("level k")
axes[1].set_yticks([2, 3, 4, 5]), axes[1].set_ylim(1.5, 5.5)
axes[1].legend(loc="upper left", fontsize=8), cells.legend(loc="lower right", fontsize=8)
axes[1].set_title("FPN Eq. (1): 14-28 cells per side between the clamps")
plt.show()

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** For an input batch of 800×1216 (the COCO model's size), list the (H, W) of P2, P3,
# P4, P5 and P6 in `pyramid_sizes` (a list of five tuples). Hint: ResNet stages halve with
# `(H + 1) // 2`-style rounding from convolutions with padding; for these sizes every division is exact
# until P6, which keeps every other pixel of P5.

# %% tags=exercise-1
pyramid_sizes = None

# %% tags=check-1
with exercise(1, "09_fpn"):
    if pyramid_sizes is None:
        raise NotImplementedError
    assert [tuple(s) for s in pyramid_sizes] == [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]

# %% [markdown]
# **Exercise 2.** With k0 = 4 and s0 = 224, a square RoI goes to P2 below some side length and to P5
# from some side length on. Find both (the smallest integer side that maps to P3: `first_p3`; the
# smallest that maps to P5: `first_p5`). Check your algebra with `level_of`.

# %% tags=exercise-2
first_p3 = None
first_p5 = None

# %% tags=check-2
with exercise(2, "09_fpn"):
    if first_p3 is None:
        raise NotImplementedError
    side = lambda s: level_of(np.array([[0, 0, s, s]], dtype=np.float64))[0]
    assert side(first_p3) == 3 and side(first_p3 - 1) == 2, "first_p3 is not the first side on P3"
    assert side(first_p5) == 5 and side(first_p5 - 1) == 4, "first_p5 is not the first side on P5"

# %% [markdown]
# **Exercise 3 (why).** Why does every FPN level have the same number of channels (256)? Set `answer_3`:
#
# * (a) 256 channels are enough for any resolution;
# * (b) one RPN head and one box/mask head are shared by all levels, so their inputs must have the same
#   shape whatever level they come from;
# * (c) the additions of the top-down pathway require it, and nothing else does.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "09_fpn"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b", "(c) is part of it, but the heads are the reason the paper gives"

# %% [markdown]
# ## Summary
# * P_l = 3×3 conv of (1×1 conv of C_l + nearest 2× upsampling of the level above); P6 subsamples P5.
# * An RoI of side s is pooled from level ⌊4 + log2(s / 224)⌋ clamped to [2, 5], by RoIAlign with that
#   level's stride.
#
# Next: lesson 10, the region proposal network that runs on every level of this pyramid.
