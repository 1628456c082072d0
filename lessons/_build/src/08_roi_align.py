# %% [markdown]
# # 08 · RoIAlign: bilinear sampling, forward and backward
#
# **Goal.** Write RoIAlign, the one new layer of Mask R-CNN, with its backward; check it against
# `minimaskrcnn.ops.roi_align` (and torchvision's) and with a gradient check; and see the misalignment
# it removes. You will end with a picture of RoIAlign's sample grid on a feature map, and RoIPool's
# staircase next to RoIAlign's straight line.

# %% [markdown]
# ## The idea
#
# Mask R-CNN §3: "we propose an *RoIAlign* layer that removes the harsh quantization of RoIPool,
# properly aligning the extracted features with the input. […] We avoid any quantization of the RoI
# boundaries or bins (i.e., we use x/16 instead of [x/16]). We use bilinear interpolation to compute
# the exact values of the input features at four regularly sampled locations in each RoI bin, and
# aggregate the result (using max or average)."
#
# For RoI k = `[b, x1, y1, x2, y2]` (input pixels), feature map `input[b]` with `spatial_scale` = 1/stride,
# and bin (ph, pw) of PH×PW:
#
# * the box on the feature map, not rounded: `start_x = x1·scale` (− 0.5 if `aligned`), `roi_w = (x2 − x1)·scale`
#   (at least 1 when not aligned), `bin_w = roi_w / PW`;
# * `grid_w` samples per bin along x: `sampling_ratio`, or `ceil(roi_w / PW)` when it is ≤ 0 (torchvision's
#   adaptive default; Mask R-CNN uses 2);
# * sample ix of bin pw at `x = start_x + pw·bin_w + (ix + 0.5)·bin_w / grid_w` (and the same along y);
# * **bilinear interpolation**: the value at (y, x) mixes the 4 surrounding pixels with weights
#   `(1 − ly)(1 − lx), (1 − ly)lx, ly(1 − lx), ly·lx`, where ly, lx are the fractional parts;
# * the output is the average of the grid_h × grid_w samples.
#
# **Backward.** The output is linear in the features: each sample's weight goes back to its 4 pixels,
# times `dout / count`. No gradient for the boxes: torchvision does not backpropagate into the
# proposals, and the paper's end-to-end training uses this "approximate" version that ignores the
# gradient with respect to the RoI coordinates (Appendix B).
#
# **`aligned`.** With `aligned=False` (torchvision's Mask R-CNN) a box edge at x1 = 16 samples around
# feature coordinate 1.0; but feature pixel 1 covers input pixels [16, 32), centred at 16 + 8.
# `aligned=True` (Detectron2's default) subtracts half a feature pixel so that the continuous
# coordinates line up. This project keeps torchvision's `aligned=False` for the model, so that
# torchvision's weights give torchvision's results.
#
# Shapes: features (N, C, H, W); RoIs (K, 5); output (K, C, PH, PW); 7×7 for the box head, 14×14
# for the mask head.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn.ops.roi_align import roi_align
from minimaskrcnn.ops.roi_pool import roi_pool

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
# ### Step 1: bilinear interpolation of one point
# With RoIAlign's border rule: a point outside [−1, H] × [−1, W] is 0; inside, coordinates below 0
# are clamped to 0 and a point past the last row/column reads that row/column.

# %%
def bilinear(fmap, y, x):
    """fmap (C, H, W) at the real point (y, x): (C,). Also returns the 4 pixels and their weights."""
    C, H, W = fmap.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return np.zeros(C), []
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)                         # floor, for y, x >= 0
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0                         # fractional parts
    hy, hx = 1 - ly, 1 - lx
    taps = [(y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)]
    value = sum(w * fmap[:, yy, xx] for yy, xx, w in taps)
    return value, taps


fmap = np.arange(12, dtype=np.float64).reshape(1, 3, 4)  # value = 4 * row + column
for point in [(0.0, 0.0), (1.5, 2.25), (-0.5, 1.0), (2.7, 3.6), (3.0, 0.5)]:
    print(f"bilinear at {point}: {bilinear(fmap, *point)[0]}  (4y + x = {4 * max(min(point[0], 2), 0) + max(min(point[1], 3), 0)})")

# %% [markdown]
# On this linear map, bilinear interpolation is exact inside the map (and clamps at the borders).
#
# ### Step 2: the forward, bin by bin and sample by sample

# %%
def roi_geometry(roi, spatial_scale, PH, PW, sampling_ratio, aligned):
    offset = 0.5 if aligned else 0.0
    start_x, start_y = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
    roi_w = roi[3] * spatial_scale - offset - start_x
    roi_h = roi[4] * spatial_scale - offset - start_y
    if not aligned:                                 # legacy: tiny RoIs are widened to 1 pixel
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / PW, roi_h / PH
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / PW)
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / PH)
    return start_x, start_y, bin_w, bin_h, grid_w, grid_h


def sample_points(roi, spatial_scale, PH, PW, sampling_ratio, aligned):
    """Yield (ph, pw, y, x) for every sample of every bin, and the number of samples per bin."""
    start_x, start_y, bin_w, bin_h, grid_w, grid_h = roi_geometry(roi, spatial_scale, PH, PW, sampling_ratio, aligned)
    points = []
    for ph in range(PH):
        for pw in range(PW):
            for iy in range(grid_h):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    points.append((ph, pw, y, x))
    return points, max(grid_h * grid_w, 1)


def roi_align_loops(features, rois, PH, PW, spatial_scale, sampling_ratio=-1, aligned=False):
    K, C = len(rois), features.shape[1]
    out = np.zeros((K, C, PH, PW), dtype=features.dtype)
    for k, roi in enumerate(rois):
        points, count = sample_points(roi, spatial_scale, PH, PW, sampling_ratio, aligned)
        for ph, pw, y, x in points:
            out[k, :, ph, pw] += bilinear(features[int(roi[0])], y, x)[0] / count   # average
    return out


def roi_align_backward_loops(dout, rois, shape, PH, PW, spatial_scale, sampling_ratio=-1, aligned=False):
    dx = np.zeros(shape, dtype=dout.dtype)
    for k, roi in enumerate(rois):
        b = int(roi[0])
        points, count = sample_points(roi, spatial_scale, PH, PW, sampling_ratio, aligned)
        for ph, pw, y, x in points:
            for yy, xx, w in bilinear(dx[b], y, x)[1]:        # the same 4 pixels and weights
                dx[b, :, yy, xx] += w * dout[k, :, ph, pw] / count
    return dx


features = rng.standard_normal((2, 3, 10, 12))
rois = np.array([[0, 10.3, 8.1, 90.7, 70.2], [1, -20.0, 5.0, 60.0, 150.0], [0, 30.0, 30.0, 31.0, 33.0], [1, 0.0, 0.0, 191.9, 159.9]])
out = roi_align_loops(features, rois, 3, 3, 1 / 16, sampling_ratio=2)
log("features", features)
log("rois", rois)
log("out", out)

# %% [markdown]
# ## Check it
# Against the library's kernels (NumPy reference and Numba), torchvision, for both `aligned` values
# and both sampling rules; then a gradient check of our backward and a comparison with the library's.

# %%
def as_function(PH, PW, scale, sampling_ratio, aligned):
    class MyRoIAlign(mm.Function):
        @staticmethod
        def forward(ctx, x, rois):
            ctx.save_for_backward(rois)
            ctx.x_shape = x.shape
            return roi_align_loops(x, rois, PH, PW, scale, sampling_ratio, aligned)

        @staticmethod
        def backward(ctx, dout):
            (rois,) = ctx.saved_tensors
            return roi_align_backward_loops(dout, rois, ctx.x_shape, PH, PW, scale, sampling_ratio, aligned), None

    return MyRoIAlign


try:
    import torch
    import torchvision
except ImportError:
    torchvision = None
    print("torchvision is not installed: the torchvision comparisons are skipped")

for sampling_ratio in (2, -1):
    for aligned in (False, True):
        ours = roi_align_loops(features, rois, 3, 3, 1 / 16, sampling_ratio, aligned)
        for backend in ("numpy", "numba"):
            with mm.use_backend(backend):
                lib = roi_align(mm.tensor(features), rois, 3, 1 / 16, sampling_ratio, aligned).numpy()
            assert np.allclose(ours, lib, rtol=1e-12, atol=1e-12), (sampling_ratio, aligned, backend)
        line = f"sampling_ratio {sampling_ratio:2d}, aligned {aligned!s:5}: equal to minimaskrcnn (numpy, numba)"
        if torchvision is not None:
            ref = torchvision.ops.roi_align(torch.from_numpy(features), torch.from_numpy(rois), 3, 1 / 16, sampling_ratio, aligned).numpy()
            assert np.allclose(ours, ref, rtol=1e-12, atol=1e-12)
            line += " and torchvision"
        print(line)

# %%
x = mm.tensor(features[:, :2, :6, :7].copy(), requires_grad=True)   # small: gradcheck is 2 forwards per element
small_rois = np.array([[0, 10.3, 8.1, 90.7, 70.2], [1, -20.0, 5.0, 60.0, 100.0]])
MyRoIAlign = as_function(3, 3, 1 / 16, 2, False)
result = mm.gradcheck(lambda t: MyRoIAlign.apply(t, small_rois), [x])
print(result.report())
assert result.passed

dout = rng.standard_normal((len(rois), 3, 3, 3))
x_ours, x_lib = mm.tensor(features.copy(), requires_grad=True), mm.tensor(features.copy(), requires_grad=True)
as_function(3, 3, 1 / 16, -1, True).apply(x_ours, rois).backward(dout)
roi_align(x_lib, rois, 3, 1 / 16, -1, True).backward(dout)
print(f"dx: max |ours - minimaskrcnn| = {np.abs(x_ours.grad - x_lib.grad).max():.1e}")
assert np.allclose(x_ours.grad, x_lib.grad, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## See it
# ### The sample grid, in input pixels
# A box on a stride-16 feature map, 2×2 bins with 2×2 samples each (the paper's Figure 3), drawn in the
# input image's pixels. Feature pixel j covers input pixels [16j, 16j + 16), so its value belongs at the
# pixel's centre, 16j + 8 (grey squares). RoIAlign reads the value at feature coordinate f by bilinear
# interpolation between the feature pixels ⌊f⌋ and ⌊f⌋ + 1, whose centres are at 16⌊f⌋ + 8 and beyond: a
# sample at feature coordinate f reads the image around input coordinate 16f + 8, and that is where it
# is drawn (red dots; green lines: the 4 feature pixels one sample mixes, thicker for larger weights).
#
# With `aligned=False` (torchvision's Mask R-CNN) the box's edge x1 becomes f = x1/16, which reads the
# image at x1 + 8: the bins and samples sit half a feature pixel (8 input pixels) right of and below the
# box asked for. `aligned=True` uses f = x1/16 − 0.5, and the bins land exactly on the box.

# %%
def draw_sample_grid(ax, roi, PH=2, PW=2, sampling_ratio=2, stride=16, grid=(6, 8), aligned=False):
    """RoIAlign's bins and samples for one RoI, drawn where they read the input (input pixels)."""
    to_input = lambda f: stride * f + stride / 2      # feature coordinate -> the input pixel its value belongs to
    for i in range(grid[0] + 1):
        ax.axhline(i * stride, color="0.9", lw=0.6, zorder=0)
    for j in range(grid[1] + 1):
        ax.axvline(j * stride, color="0.9", lw=0.6, zorder=0)
    centres = np.arange(grid[1]) * stride + stride / 2, np.arange(grid[0]) * stride + stride / 2
    cx, cy = np.meshgrid(*centres)
    ax.plot(cx.ravel(), cy.ravel(), "s", color="0.7", ms=4, zorder=1)
    ax.add_patch(Rectangle(roi[1:3], roi[3] - roi[1], roi[4] - roi[2], fill=False, color="black", lw=2.5, zorder=2))
    points, _ = sample_points(roi, 1 / stride, PH, PW, sampling_ratio, aligned)
    start_x, start_y, bin_w, bin_h, _, _ = roi_geometry(roi, 1 / stride, PH, PW, sampling_ratio, aligned)
    for ph in range(PH):
        for pw in range(PW):
            x0, y0 = to_input(start_x + pw * bin_w), to_input(start_y + ph * bin_h)
            ax.add_patch(Rectangle((x0, y0), stride * bin_w, stride * bin_h, fill=False, color="tab:blue", lw=1.5, zorder=3))
    ys, xs = np.array([p[2] for p in points]), np.array([p[3] for p in points])
    ax.plot(to_input(xs), to_input(ys), "o", color="tab:red", ms=5, zorder=4)
    _, taps = bilinear(np.zeros((1,) + grid), ys[0], xs[0])
    for yy, xx, w in taps:
        ax.plot([to_input(xs[0]), to_input(xx)], [to_input(ys[0]), to_input(yy)], "-", color="tab:green", lw=0.5 + 3 * w, zorder=3)
    ax.set_xlim(0, grid[1] * stride), ax.set_ylim(grid[0] * stride, 0), ax.set_aspect("equal")
    ax.set_xticks(range(0, grid[1] * stride + 1, 16)), ax.set_yticks(range(0, grid[0] * stride + 1, 16))
    ax.set_xlabel("x (input pixels); grey lines: feature pixels"), ax.set_ylabel("y (input pixels)")


fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
roi = np.array([0, 21.0, 14.0, 85.0, 62.0])
draw_sample_grid(axes[0], roi)
axes[0].set_title("aligned=False: bins and samples 8 px (half a feature pixel)\nright of and below the box", fontsize=11)
draw_sample_grid(axes[1], roi, aligned=True)
axes[1].set_title("aligned=True: f = x/16 - 0.5, the bins land on the box", fontsize=11)
handles = [plt.Line2D([], [], color="black", lw=2.5, label="the box (RoI)"),
           plt.Line2D([], [], color="tab:blue", lw=1.5, label="its 2x2 bins, where they read"),
           plt.Line2D([], [], color="tab:red", marker="o", ls="", label="samples (2x2 per bin)"),
           plt.Line2D([], [], color="tab:green", lw=2, label="one sample's 4 taps"),
           plt.Line2D([], [], color="0.7", marker="s", ls="", label="feature-pixel centres")]
fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, bbox_to_anchor=(0.5, -0.03))
plt.show()

# %% [markdown]
# ### The staircase and the line
# Lesson 07 slid a box over a ramp (value = column index) and got RoIPool's staircase. RoIAlign's
# output follows the box continuously: the ramp's value at the box centre, in feature pixels.

# %%
ramp = np.tile(np.arange(16, dtype=np.float64), (1, 1, 12, 1))
shifts = np.arange(0, 64, 0.5)
slid = np.array([[0, 40 + s, 40, 104 + s, 104] for s in shifts])
fig, ax = plt.subplots(figsize=(6, 3))
ax.step(shifts, roi_pool(mm.tensor(ramp), slid, 1, 1 / 16).numpy().ravel(), where="post", label="RoIPool (max)")
ax.plot(shifts, roi_align(mm.tensor(ramp), slid, 1, 1 / 16, 2).numpy().ravel(), label="RoIAlign (average)")
ax.set_xlabel("box shift (input pixels)"), ax.set_ylabel("output (1x1 bin) = column index"), ax.legend(fontsize=8)
ax.set_title("a 64-pixel box sliding over a ramp")
plt.show()

# %% [markdown]
# ### Where the gradient goes
# The gradient of the sum of a 7×7 output with respect to the feature map, for one box: RoIPool sends
# each bin's gradient to one winning pixel (random features decide which); RoIAlign spreads it over
# every pixel under the box, weighted by the bilinear weights.

# %%
fm = rng.standard_normal((1, 1, 24, 32))
box = np.array([[0, 90.0, 70.0, 330.0, 290.0]])
grads = {}
for name, op in [("RoIPool", lambda t: roi_pool(t, box, 7, 1 / 16)), ("RoIAlign", lambda t: roi_align(t, box, 7, 1 / 16, 2))]:
    t = mm.tensor(fm.copy(), requires_grad=True)
    op(t).sum().backward()
    grads[name] = t.grad[0, 0]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, (name, g) in zip(axes, grads.items()):
    shown = ax.imshow(g, cmap="magma")
    fig.colorbar(shown, ax=ax, shrink=0.8, label="d(sum of output) / d(feature)")
    ax.add_patch(Rectangle((box[0, 1] / 16 - 0.5, box[0, 2] / 16 - 0.5), (box[0, 3] - box[0, 1]) / 16, (box[0, 4] - box[0, 2]) / 16,
                           fill=False, color="tab:cyan", lw=1.5))
    ax.set_title(f"{name}: {int((g > 0).sum())} pixels get a gradient")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Speed
# The loops in this notebook, the library's NumPy reference (loops over RoIs, bins and samples,
# vectorised over channels), its Numba kernel and torchvision, forward, for 256 RoIs at 7×7 with
# sampling ratio 2 on a (1, 256, 50, 68) map (the box head's load for one image, one FPN level).
# Lesson 16 adds the CUDA kernel.

# %%
big = rng.standard_normal((1, 256, 50, 68)).astype(np.float32)
xy = rng.uniform(0, 900, (256, 2))
big_rois = np.concatenate([np.zeros((256, 1)), xy, xy + rng.uniform(16, 300, (256, 2))], 1).astype(np.float32)
n = 16 if QUICK else 64
timings = {}
t0 = time.perf_counter(); roi_align_loops(big, big_rois[:n], 7, 7, 1 / 16, 2)
timings["loops (this notebook)"] = (time.perf_counter() - t0) * 256 / n
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        roi_align(mm.tensor(big), big_rois[:2], 7, 1 / 16, 2)       # compile
        count = n if backend == "numpy" else 256
        t0 = time.perf_counter(); roi_align(mm.tensor(big), big_rois[:count], 7, 1 / 16, 2)
        timings[f"minimaskrcnn ({backend})"] = (time.perf_counter() - t0) * 256 / count
if torchvision is not None:
    t0 = time.perf_counter(); torchvision.ops.roi_align(torch.from_numpy(big), torch.from_numpy(big_rois), 7, 1 / 16, 2)
    timings["torchvision"] = time.perf_counter() - t0
for name, t in timings.items():
    print(f"{name:26s} {t * 1e3:9.1f} ms for 256 RoIs")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (break it on purpose: drop the half-pixel shift).** The feature map below is an image
# average-pooled with stride 4, so feature pixel (i, j) is the mean of input pixels
# `[4i, 4i + 4) × [4j, 4j + 4)`: its centre is at input (4i + 2, 4j + 2) in continuous coordinates
# (pixel p covering [p, p + 1)). Write `roi_align_shifted(features, rois, PH, PW, spatial_scale,
# sampling_ratio)`, RoIAlign that subtracts 0.5 from the scaled box coordinates (and never widens
# tiny boxes); the check compares it with the library's `aligned=True` and measures, on a ramp image,
# how far off `aligned=False` is.

# %% tags=exercise-1
def roi_align_shifted(features, rois, PH, PW, spatial_scale, sampling_ratio):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "08_roi_align"):
    got = roi_align_shifted(features, rois, 3, 3, 1 / 16, 2)
    assert np.allclose(got, roi_align(mm.tensor(features), rois, 3, 1 / 16, 2, aligned=True).numpy()), "differs from aligned=True"
    image = np.tile(np.arange(64, dtype=np.float64) + 0.5, (1, 1, 64, 1))       # value = x of the pixel centre
    pooled = image.reshape(1, 1, 16, 4, 16, 4).mean(axis=(3, 5))                 # stride-4 features
    box = np.array([[0, 20.0, 20.0, 40.0, 40.0]])                                # centre x = 30
    right = roi_align_shifted(pooled, box, 1, 1, 1 / 4, 2).item()
    legacy = roi_align(mm.tensor(pooled), box, 1, 1 / 4, 2).item()
    print(f"box centre x = 30: aligned reads {right:.2f}, legacy reads {legacy:.2f}")
    assert abs(right - 30) < 1e-9 and abs(legacy - 32) < 1e-9

# %% [markdown]
# **Exercise 2.** With `sampling_ratio=-1`, how many bilinear samples in total does RoIAlign take for
# one 7×7 output of a box of 200×120 input pixels on a stride-8 map? Set `num_samples`
# (use `roi_geometry`, or work it out).

# %% tags=exercise-2
num_samples = None

# %% tags=check-2
with exercise(2, "08_roi_align"):
    if num_samples is None:
        raise NotImplementedError
    points, _ = sample_points(np.array([0, 0.0, 0.0, 200.0, 120.0]), 1 / 8, 7, 7, -1, False)
    assert num_samples == len(points), "grid_h * grid_w samples per bin, 49 bins"

# %% [markdown]
# **Exercise 3 (why).** The paper's Table 2c compares RoIAlign with RoIPool and RoIWarp: RoIAlign
# gains about 3 mask AP overall but about 5 at AP75. Why is the gain larger at the strict threshold?
# Set `answer_3`:
#
# * (a) AP75 has fewer detections, so its numbers are noisier;
# * (b) a misalignment of a few pixels barely moves a mask's IoU with the object from, say, 0.8 to 0.7
#   (still a hit at 0.5) but turns hits into misses at 0.75;
# * (c) RoIAlign uses more samples, so it sees more of large objects.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "08_roi_align"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b"

# %% [markdown]
# ## Summary
# * RoIAlign keeps box coordinates real, samples each bin at a regular grid of points by bilinear
#   interpolation and averages them. The output is a smooth function of the box.
# * Backward: every sample scatters `dout / count` to its 4 pixels with the bilinear weights.
# * `aligned=True` subtracts half a pixel so that samples sit where the features really are; the
#   torchvision model (and ours) uses `aligned=False`.
#
# Next: lesson 09 builds the feature pyramid, and the rule that picks the level each RoI is pooled from;
# lesson 11 puts a classifier and a box regressor on top of these 7×7 features.
