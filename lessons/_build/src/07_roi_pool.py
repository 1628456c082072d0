# %% [markdown]
# # 07 · RoIPool and its quantisation
#
# **Goal.** Write RoIPool (Fast R-CNN's way of cutting a fixed-size feature grid out of a feature
# map for any box), with its backward, check it against `minimaskrcnn.ops.roi_pool` (and
# torchvision's), and measure the misalignment its two roundings cause. You will end with a picture
# of a box, the box RoIPool actually pools, and its bins on the feature grid.

# %% [markdown]
# ## The idea
#
# The box head and the mask head need a fixed-size input (7×7 or 14×14 per channel) for boxes of any
# size. Fast R-CNN (§2.1) divides the box into PH×PW bins and max-pools each bin. The box is given in
# input pixels; the feature map has a stride (16 in Fast R-CNN, 4 to 32 with an FPN), so:
#
# 1. **round** the box onto the feature grid: `x1 → round(x1 / stride)` (and the same for y1, x2, y2);
#    the box then covers pixels `x1 … x2` *inclusive*, width `x2 - x1 + 1`;
# 2. split that width into PW bins of width `bin_w = width / PW`; bin j covers pixels
#    `floor(j·bin_w) … ceil((j+1)·bin_w) - 1` (**rounded again**, so neighbouring bins may share a pixel);
# 3. output the maximum of each bin (0 for an empty bin); backward sends `dout` to the winning pixel
#    (the argmax), exactly as max pooling.
#
# Mask R-CNN §3 calls the two roundings *quantisation*: "these quantizations introduce misalignments
# between the RoI and the extracted features. While this may not impact classification, which is
# robust to small translations, it has a large negative effect on predicting pixel-accurate masks."
# Lesson 08 removes them (RoIAlign); this lesson measures them.
#
# Shapes: features (N, C, H, W); RoIs (K, 5) `[batch_idx, x1, y1, x2, y2]` in input pixels;
# `spatial_scale = 1 / stride`; output (K, C, PH, PW).

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

import minimaskrcnn as mm
from minimaskrcnn.ops.roi_pool import roi_pool

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
# ### Step 1: round the box (C's `round`: halves away from zero, unlike NumPy's round-half-to-even)
# Each coordinate is scaled to the feature grid and rounded to the nearest feature pixel.

# %%
def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def quantise_box(box, spatial_scale):
    """The feature pixels [x1, y1, x2, y2] (inclusive) that RoIPool pools for an input-pixel box."""
    return [c_round(v * spatial_scale) for v in box]


box = [37.0, 21.0, 139.0, 90.0]  # input pixels
print("box in input pixels:", box, "-> feature pixels (stride 16):", quantise_box(box, 1 / 16))

# %% [markdown]
# ### Step 2: bins and maxima, with the argmax kept for backward
# Split the rounded box into PH × PW bins with rounded edges, take each bin's maximum per channel and
# remember where it was: backward sends each bin's gradient to that one pixel.

# %%
def roi_pool_loops(features, rois, PH, PW, spatial_scale):
    N, C, H, W = features.shape
    K = len(rois)
    out = np.zeros((K, C, PH, PW), dtype=features.dtype)
    argmax = np.full((K, C, PH, PW), -1, dtype=np.int64)      # flat index h * W + w of each winner
    for k in range(K):
        b = int(rois[k, 0])
        x1, y1, x2, y2 = quantise_box(rois[k, 1:], spatial_scale)
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # inclusive; at least one pixel
        bin_h, bin_w = roi_h / PH, roi_w / PW
        for ph in range(PH):
            h0 = min(max(math.floor(ph * bin_h) + y1, 0), H)     # rounded bin edges, clipped to the map
            h1 = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), H)
            for pw in range(PW):
                w0 = min(max(math.floor(pw * bin_w) + x1, 0), W)
                w1 = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), W)
                if h1 <= h0 or w1 <= w0:
                    continue                                     # empty bin: output 0
                patch = features[b, :, h0:h1, w0:w1].reshape(C, -1)  # (C, pixels of the bin)
                best = patch.argmax(axis=1)                       # first maximum, row-major
                out[k, :, ph, pw] = patch[np.arange(C), best]
                argmax[k, :, ph, pw] = (h0 + best // (w1 - w0)) * W + (w0 + best % (w1 - w0))
    return out, argmax


def roi_pool_backward_loops(dout, rois, argmax, shape):
    N, C, H, W = shape
    dx = np.zeros(shape, dtype=dout.dtype)
    for k in range(len(rois)):
        b = int(rois[k, 0])
        for c in range(C):
            for ph in range(dout.shape[2]):
                for pw in range(dout.shape[3]):
                    idx = argmax[k, c, ph, pw]
                    if idx >= 0:
                        dx[b, c, idx // W, idx % W] += dout[k, c, ph, pw]  # a pixel may win several bins
    return dx


features = rng.standard_normal((2, 3, 12, 16))
rois = np.array([[0, 37.0, 21.0, 139.0, 90.0], [1, 0.0, 0.0, 255.0, 191.0], [0, 100.0, 60.0, 108.0, 70.0]])
out, argmax = roi_pool_loops(features, rois, 2, 2, 1 / 16)
log("features", features)
log("rois", rois)
log("out", out)

# %% [markdown]
# ## Check it
# Against the library (both CPU backends), torchvision, and a gradient check. Max is piecewise linear,
# so finite differences agree with the argmax rule as long as no two pixels of a bin are within ε of
# each other, which holds for random float64 features.

# %%
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        lib = roi_pool(mm.tensor(features), rois, (2, 2), 1 / 16).numpy()
    print(f"{backend}: max |ours - minimaskrcnn| = {np.abs(out - lib).max():.1e}")
    assert np.array_equal(out, lib)

try:
    import torch
    import torchvision

    ref = torchvision.ops.roi_pool(torch.from_numpy(features), torch.from_numpy(rois), (2, 2), 1 / 16).numpy()
    print(f"max |ours - torchvision| = {np.abs(out - ref).max():.1e}")
    assert np.array_equal(out, ref)
except ImportError:
    print("torchvision is not installed: the torchvision comparison was skipped")


class MyRoIPool(mm.Function):
    @staticmethod
    def forward(ctx, x, rois, PH, PW, spatial_scale):
        out, argmax = roi_pool_loops(x, rois, PH, PW, spatial_scale)
        ctx.save_for_backward(rois, argmax)
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        rois, argmax = ctx.saved_tensors
        return roi_pool_backward_loops(dout, rois, argmax, ctx.x_shape), None


x = mm.tensor(features.copy(), requires_grad=True)
result = mm.gradcheck(lambda t: MyRoIPool.apply(t, rois, 3, 3, 1 / 16), [x])
print(result.report())
assert result.passed

dout = rng.standard_normal((3, 3, 3, 3))
x_lib = mm.tensor(features.copy(), requires_grad=True)
roi_pool(x_lib, rois, (3, 3), 1 / 16).backward(dout)
x_ours = mm.tensor(features.copy(), requires_grad=True)
MyRoIPool.apply(x_ours, rois, 3, 3, 1 / 16).backward(dout)
print(f"dx: max |ours - minimaskrcnn| = {np.abs(x_ours.grad - x_lib.grad).max():.1e}")
assert np.allclose(x_ours.grad, x_lib.grad)

# %% [markdown]
# ## See it: the box that is really pooled
# Boxes on a stride-16 feature map, drawn in input pixels (the thin grey lines are feature-pixel borders:
# feature pixel (i, j) covers input pixels [16j, 16j + 16) × [16i, 16i + 16)). Black: the box asked for.
# Red dashed: the feature pixels RoIPool pools. Shaded: its 7×7 bins, one bin outlined in green. When the
# pooled region is a multiple of 7 pixels wide the bins are equal (left); otherwise the rounded bin
# edges make some bins 2 pixels wide and some 3, and neighbours share a row or column of pixels (right).

# %%
def draw_pooled(ax, box, stride=16, PH=7, PW=7, grid=(17, 17), highlight=(2, 2)):
    """Feature grid, the box asked for, the pixels RoIPool pools and its PH x PW bins, in input pixels."""
    for i in range(grid[0] + 1):
        ax.axhline(i * stride, color="0.85", lw=0.6, zorder=0)
    for j in range(grid[1] + 1):
        ax.axvline(j * stride, color="0.85", lw=0.6, zorder=0)
    x1, y1, x2, y2 = quantise_box(box, 1 / stride)
    roi_w, roi_h = x2 - x1 + 1, y2 - y1 + 1                      # inclusive
    shades = ["tab:blue", "tab:orange"]
    for ph in range(PH):
        for pw in range(PW):
            h0, h1 = math.floor(ph * roi_h / PH) + y1, math.ceil((ph + 1) * roi_h / PH) + y1
            w0, w1 = math.floor(pw * roi_w / PW) + x1, math.ceil((pw + 1) * roi_w / PW) + x1
            ax.add_patch(Rectangle((w0 * stride, h0 * stride), (w1 - w0) * stride, (h1 - h0) * stride,
                                   color=shades[(ph + pw) % 2], alpha=0.28, lw=0))
            if (ph, pw) == highlight:
                ax.add_patch(Rectangle((w0 * stride, h0 * stride), (w1 - w0) * stride, (h1 - h0) * stride,
                                       fill=False, color="tab:green", lw=2.5))
                ax.annotate(f"bin {highlight}: {w1 - w0} x {h1 - h0} feature pixels", (w1 * stride, h0 * stride),
                            xytext=(w1 * stride + 16, h0 * stride - 24), color="tab:green", fontsize=9, bbox=dict(fc="white", ec="none", alpha=0.85),
                            arrowprops=dict(arrowstyle="->", color="tab:green"))
    ax.add_patch(Rectangle((x1 * stride, y1 * stride), roi_w * stride, roi_h * stride, fill=False, color="tab:red", lw=2, ls="--"))
    ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, color="black", lw=2.5))
    ax.set_xlim(0, grid[1] * stride), ax.set_ylim(grid[0] * stride, 0), ax.set_aspect("equal")
    ax.set_xticks(range(0, grid[1] * stride + 1, 32)), ax.set_yticks(range(0, grid[0] * stride + 1, 32))
    ax.set_xlabel("x (input pixels); grey lines: feature pixels, stride 16"), ax.set_ylabel("y (input pixels)")


fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
box = [26.0, 18.0, 234.0, 226.0]
moved = [box[0] + 12, box[1] + 5, box[2] + 12, box[3] + 5]
draw_pooled(axes[0], box)
axes[0].add_patch(Rectangle((moved[0], moved[1]), moved[2] - moved[0], moved[3] - moved[1], fill=False, color="black", lw=1.5, ls=":"))
assert quantise_box(box, 1 / 16) == quantise_box(moved, 1 / 16)
axes[0].set_title("a 14 x 14 pixel region: 7 x 7 bins of 2 x 2 pixels;\nthe box moved by (12, 5) px (dotted) pools the very same bins", fontsize=11)
odd = [50.0, 30.0, 196.0, 210.0]
draw_pooled(axes[1], odd)
axes[1].set_title("a 10 x 12 pixel region: bins 2 or 3 pixels wide,\nneighbours sharing a row or column of pixels", fontsize=11)
handles = [Line2D([], [], color="black", lw=2.5, label="the box asked for"),
           Line2D([], [], color="tab:red", lw=2, ls="--", label="the feature pixels RoIPool pools"),
           Patch(color="tab:blue", alpha=0.4, label="bins, shaded alternately"),
           Patch(color="tab:orange", alpha=0.4, label="(a shared pixel looks darker)")]
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=10, bbox_to_anchor=(0.5, -0.02))
plt.show()

# %% [markdown]
# ### How far off, in input pixels?
# The first rounding moves each box edge to the nearest feature pixel: up to half a stride. The pooled
# pixels `x1 … x2` are inclusive and cover `[16·x1, 16·(x2 + 1))` of the input at stride 16, so the far
# edges (x2, y2) end up between half a stride and one and a half strides beyond the box. (The second
# rounding, of the bin edges, moves the bins inside the region but not its outer edges.) For random
# boxes, the distance between each edge of the box and the same edge of the pooled region:

# %%
num = 2000 if QUICK else 20000
strides = [4, 8, 16, 32]
fig, ax = plt.subplots(figsize=(6, 3))
for stride in strides:
    b = np.sort(rng.uniform(0, 800, (num, 2)), axis=1)
    q = np.array([[c_round(v / stride) for v in pair] for pair in b])
    err = np.abs(np.concatenate([q[:, 0] * stride - b[:, 0], (q[:, 1] + 1) * stride - b[:, 1]]))
    ax.hist(err, bins=40, histtype="step", lw=1.5,
            label=f"stride {stride}: mean {err.mean():.1f} px, max {err.max():.1f} px = {err.max() / stride:.2f} strides")
ax.set_xlabel("|box edge - pooled edge| (input pixels)"), ax.set_ylabel("count (near and far edges)"), ax.legend(fontsize=8)
ax.set_title("RoIPool's misalignment of the pooled region's edges")
plt.show()

# %% [markdown]
# At stride 16 an edge is off by about 10 pixels on average and by up to 24 (1.5 strides): for a
# 32-pixel object, a third of its size on average. Box classification shrugs that off; a 28×28 mask
# cannot. Lesson 08 shows the cure.

# %% [markdown]
# ### The output as a box slides
# Slide a box across a smooth feature map (a ramp: value = x in feature pixels) one input pixel at a
# time. RoIPool's output stays flat and then jumps: a staircase. Its gradient for the box position is
# zero almost everywhere.

# %%
ramp = np.tile(np.arange(16, dtype=np.float64), (1, 1, 12, 1))  # (1, 1, 12, 16): value = column index
shifts = np.arange(0, 64, 1.0)
slid = np.array([[0, 40 + s, 40, 104 + s, 104] for s in shifts])
pooled = roi_pool(mm.tensor(ramp), slid, (1, 1), 1 / 16).numpy()[:, 0, 0, 0]
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.step(shifts, pooled, where="post", label="RoIPool, one 1x1 bin (max)")
ax.set_xlabel("box shift (input pixels)"), ax.set_ylabel("output = column index"), ax.legend(fontsize=8)
ax.set_title("a 64-pixel box sliding over a ramp: a staircase with 16-pixel steps")
plt.show()

# %% [markdown]
# ## Speed
# The loops above, the library's NumPy reference, and its Numba kernel, on 256 RoIs over a
# (1, 64, 50, 68) feature map at 7×7: the box head's load for one image.

# %%
big = rng.standard_normal((1, 64, 50, 68)).astype(np.float32)
xy = rng.uniform(0, 900, (256, 2))
wh = rng.uniform(16, 300, (256, 2))
big_rois = np.concatenate([np.zeros((256, 1)), xy, xy + wh], 1).astype(np.float32)
num_rois = 64 if QUICK else 256
timings = {}
t0 = time.perf_counter(); roi_pool_loops(big, big_rois[:num_rois], 7, 7, 1 / 16); timings["loops (this notebook)"] = time.perf_counter() - t0
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        roi_pool(mm.tensor(big), big_rois[:2], 7, 1 / 16)  # compile
        t0 = time.perf_counter(); roi_pool(mm.tensor(big), big_rois[:num_rois], 7, 1 / 16)
        timings[f"minimaskrcnn ({backend})"] = time.perf_counter() - t0
for name, t in timings.items():
    print(f"{name:26s} {t * 1e3:9.1f} ms for {num_rois} RoIs")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** RoIPool pools pixels `x1 … x2` inclusive, so the pooled region spans input pixels
# `[16·x1, 16·(x2 + 1))` at stride 16. Write `pooled_region(box, stride)` returning that region as an
# input-pixel box `[X1, Y1, X2, Y2]`. The check compares it with regions worked out by hand for a few
# boxes (mind the rounding of halves).

# %% tags=exercise-1
def pooled_region(box, stride):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "07_roi_pool"):
    assert list(pooled_region([37.0, 21.0, 139.0, 90.0], 16)) == [32, 16, 160, 112]
    assert list(pooled_region([0.0, 0.0, 7.9, 7.9], 16)) == [0, 0, 16, 16]
    assert list(pooled_region([8.0, 8.0, 24.0, 24.0], 16)) == [16, 16, 48, 48], "halves round away from zero"

# %% [markdown]
# **Exercise 2.** Using `roi_pool_loops`, find how many *distinct* outputs RoIPool gives for a 1×1 bin
# on the `ramp` map as a box of width 64 slides from shift 0 to 63 in steps of 1/4 pixel (256 positions).
# Set `num_distinct`. (RoIAlign will give one per position.)

# %% tags=exercise-2
num_distinct = None

# %% tags=check-2
with exercise(2, "07_roi_pool"):
    if num_distinct is None:
        raise NotImplementedError
    fine = np.arange(0, 64, 0.25)
    expected = len(np.unique(roi_pool(mm.tensor(ramp), np.array([[0, 40 + s, 40, 104 + s, 104] for s in fine]), (1, 1), 1 / 16).numpy()))
    assert num_distinct == expected, "count the unique values of the outputs"
    print(f"{num_distinct} distinct outputs for 256 positions")

# %% [markdown]
# **Exercise 3 (why).** Why does RoIPool's backward send each bin's gradient to a single pixel, while
# RoIAlign's (lesson 08) spreads it over many? Set `answer_3`:
#
# * (a) because max pooling's derivative is 1 for the winner and 0 for the others;
# * (b) because RoIPool rounds the box;
# * (c) because the argmax is saved in float32.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "07_roi_pool"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
# * RoIPool rounds the box onto the feature grid, splits it into bins with rounded edges, and takes
#   each bin's maximum; backward goes to the argmax.
# * The roundings misalign the pooled region with the box: up to half a stride at the near edges, half
#   to one and a half strides at the far edges (up to 24 pixels at stride 16); the output is a staircase
#   function of the box position.
#
# Next: lesson 08, RoIAlign: no rounding at all.
