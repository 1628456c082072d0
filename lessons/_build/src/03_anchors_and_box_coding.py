# %% [markdown]
# # 03 · Anchors and box coding
#
# **Goal.** Tile anchors over the five FPN feature maps exactly as `minimaskrcnn.models.anchors.AnchorGenerator`
# (and torchvision's) does, encode a ground-truth box as deltas `(dx, dy, dw, dh)` from an anchor and
# decode it back, checking both against the library. You will end with a picture of anchors moving
# onto an object: dashed before refinement, solid after.

# %% [markdown]
# ## The idea
#
# A detector cannot regress "all boxes in the image" directly. Faster R-CNN (§3.1.1) fixes a set of
# reference boxes, **anchors**, at every feature-map cell, and for each one predicts (a) is there an
# object here, (b) how to move and stretch this anchor onto it. With an FPN (Mask R-CNN §3, FPN paper
# §4.1) each level gets anchors of one size, with three aspect ratios h/w ∈ {0.5, 1, 2}
# (A = 3 per location):
#
# | level | stride | anchor size (√area) |
# |---|---|---|
# | P2 | 4 | 32 |
# | P3 | 8 | 64 |
# | P4 | 16 | 128 |
# | P5 | 32 | 256 |
# | P6 | 64 | 512 |
#
# An anchor of size s and ratio r has width s/√r and height s·√r (its area stays s²), is centred on
# the cell's **top-left** input pixel `(x·stride, y·stride)` (torchvision's convention), and has its
# corners rounded to whole pixels.
#
# **Box coding** (Faster R-CNN Eq. 2) describes a target box g relative to an anchor (or proposal) p
# with centres (x, y) and sizes (w, h):
#
# $$d_x = w_x \frac{g_x - p_x}{p_w},\quad d_y = w_y \frac{g_y - p_y}{p_h},\quad d_w = w_w \log\frac{g_w}{p_w},\quad d_h = w_h \log\frac{g_h}{p_h}$$
#
# Offsets are measured in units of the anchor's own size and sizes as log-ratios, so the same deltas
# mean the same thing for a 32-pixel and a 512-pixel anchor. The weights are (1, 1, 1, 1) for the RPN
# and (10, 10, 5, 5) for the box head, whose proposals are already close: the weights scale its small
# deltas up to roughly unit size. Decoding clamps dw, dh at log(1000/16) so exp cannot overflow.
#
# Shapes: per level (H_l·W_l·A, 4) anchors, all levels concatenated R anchors; deltas (R, 4).

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.ops import boxes as box_ops
from minimaskrcnn.ops.box_coder import BoxCoder

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)


def draw_boxes(ax, boxes, color="tab:blue", lw=1.5, ls="-", alpha=1.0):
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=lw, ls=ls, alpha=alpha))

# %% [markdown]
# ## Build it
# ### Step 1: the anchors of one cell
# Three ratios × one size per level, centred on (0, 0), in torchvision's order: ratio-major.

# %%
def cell_anchors(sizes, ratios):
    """(len(ratios) * len(sizes), 4) anchors centred on (0, 0), ratio-major, rounded."""
    out = []
    for r in ratios:
        for s in sizes:
            w, h = s / np.sqrt(r), s * np.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return np.round(np.array(out, dtype=np.float32))  # round half to even, as torch.round


base = cell_anchors([32], [0.5, 1.0, 2.0])
print(base)
log("areas / 32^2", box_ops.box_area(base) / 32**2)

# %% [markdown]
# ### Step 2: tile them over a feature map
# Cell (i, j) of a level with stride S shifts the cell anchors by (j·S, i·S). The order is row-major
# over cells and, inside a cell, the cell-anchor order: the same order in which the RPN head's output
# channels will be flattened (lesson 10), so anchor r and prediction r belong together.

# %%
def tile(cell, grid_h, grid_w, stride):
    ys, xs = np.meshgrid(np.arange(grid_h) * stride, np.arange(grid_w) * stride, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4).astype(np.float32)  # (H*W*A, 4)


image_size = (256, 320)  # (H, W) of the padded input batch
strides = [4, 8, 16, 32, 64]
sizes = [32, 64, 128, 256, 512]
grid_sizes = [(image_size[0] // s, image_size[1] // s) for s in strides]
ours_per_level = [tile(cell_anchors([size], [0.5, 1.0, 2.0]), gh, gw, stride)
                  for size, (gh, gw), stride in zip(sizes, grid_sizes, strides)]
for level, a in zip(range(2, 7), ours_per_level):
    log(f"P{level} anchors {grid_sizes[level - 2]}", a)
print("R =", sum(len(a) for a in ours_per_level), "anchors for one 256x320 image")

# %% [markdown]
# ## Check it
# `AnchorGenerator` with the COCO settings must give the same arrays; so must torchvision's, which
# needs an `ImageList` and feature maps of the right sizes (their values are unused).

# %%
generator = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
lib_per_level = generator.anchors_per_level(image_size, grid_sizes)
for ours, lib in zip(ours_per_level, lib_per_level):
    assert ours.shape == lib.shape and np.array_equal(ours, lib)
print("equal to minimaskrcnn's AnchorGenerator, level by level")

try:
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    tv = TVAnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    features = [torch.zeros(1, 1, gh, gw) for gh, gw in grid_sizes]
    tv_anchors = tv(images, features)[0].numpy()
    assert np.array_equal(np.concatenate(ours_per_level), tv_anchors)
    print("and equal to torchvision's")
except ImportError:
    print("torchvision is not installed: the torchvision comparison was skipped")

# %% [markdown]
# ## See it: the 15 anchors of one location
# An input pixel whose coordinates are multiples of 64, here (x, y) = (128, 128), is the top-left pixel
# of one cell on every level (strides 4 … 64 all divide 64), and so the centre of 15 anchors: 5 sizes ×
# 3 ratios. They are read out of the tiled arrays above, so they are the anchors the RPN really uses.

# %%
centre = np.array([128, 128])                                     # (x, y) in input pixels
fig, ax = plt.subplots(figsize=(6.5, 5.5))
colors = plt.cm.viridis(np.linspace(0, 0.9, 5))
for level, (level_anchors, (gh, gw), stride, color) in enumerate(zip(lib_per_level, grid_sizes, strides, colors)):
    row, col = centre[1] // stride, centre[0] // stride           # the cell whose top-left pixel is the centre
    assert centre[0] % stride == 0 and centre[1] % stride == 0 and row < gh and col < gw
    cell_index = row * gw + col
    these = level_anchors[3 * cell_index:3 * cell_index + 3]       # A = 3 anchors per cell, in cell order
    assert np.allclose((these[:, :2] + these[:, 2:]) / 2, centre, atol=0.5)
    draw_boxes(ax, these, color, lw=1.5)
    ax.plot([], [], color=color, label=f"P{level + 2}: size {sizes[level]}, cell ({row}, {col}) of {gh}x{gw}")
ax.add_patch(Rectangle((0, 0), image_size[1], image_size[0], fill=False, color="black", lw=2))
ax.plot(*centre, "k+", ms=12)
ax.set_xlim(-250, 570), ax.set_ylim(500, -250), ax.set_aspect("equal")
ax.set_xlabel("x (input pixels)"), ax.set_ylabel("y (input pixels)")
ax.legend(fontsize=8, loc="lower right", title="level: anchor size, cell (row, col)", title_fontsize=8)
ax.set_title("the 15 anchors centred on (128, 128); black frame: the 320 x 256 image")
plt.show()

# %% [markdown]
# ### Step 3: box coding, both ways
# `encode` turns a (gt box, anchor) pair into deltas; `decode` applies deltas to an anchor. Each is
# the other's inverse, up to the clamp on dw and dh.

# %%
def encode(gt, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Deltas (K, 4) that move each anchor (K, 4) onto its gt box (K, 4)."""
    wx, wy, ww, wh = weights
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * np.log(gw / pw), wh * np.log(gh / ph)], axis=1)


DW_CLIP = np.log(1000.0 / 16)  # torchvision's bbox_xform_clip


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=DW_CLIP):
    """Boxes (K, 4) obtained by applying deltas (K, 4) to anchors (K, 4)."""
    wx, wy, ww, wh = weights
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = np.minimum(deltas[:, 2] / ww, clip), np.minimum(deltas[:, 3] / wh, clip)
    cx, cy, w, h = px + dx * pw, py + dy * ph, pw * np.exp(dw), ph * np.exp(dh)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


all_anchors = np.concatenate(ours_per_level).astype(np.float64)
gt_box = np.array([[70.0, 60.0, 190.0, 140.0]])          # one object, 120 x 80
iou = box_ops.box_iou(gt_box, all_anchors)[0]             # (R,)
near = np.argsort(-iou)[:8]                               # the 8 anchors that overlap it most
deltas = encode(np.repeat(gt_box, len(near), 0), all_anchors[near])
log("IoU of the 8 best anchors", iou[near])
log("their deltas (1,1,1,1)", deltas)
print("round trip max error:", np.abs(decode(deltas, all_anchors[near]) - gt_box).max())

# %% [markdown]
# ### Check the coder against the library and torchvision
# 500 random anchor/box pairs, with the RPN's weights and with the box head's.

# %%
anchors_k = all_anchors[rng.choice(len(all_anchors), 500, replace=False)]
gt_k = box_ops.box_convert(np.concatenate([rng.uniform(20, 300, (500, 2)), rng.uniform(8, 300, (500, 2))], 1), "cxcywh", "xyxy")
for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
    coder = BoxCoder(weights)
    d_ours, d_lib = encode(gt_k, anchors_k, weights), coder.encode_single(gt_k, anchors_k)
    b_ours, b_lib = decode(d_ours, anchors_k, weights), coder.decode_single(d_lib, anchors_k)
    print(f"weights {weights}: encode max diff {np.abs(d_ours - d_lib).max():.1e}, decode max diff {np.abs(b_ours - b_lib).max():.1e}")
    assert np.allclose(d_ours, d_lib, rtol=1e-12, atol=1e-12) and np.allclose(b_ours, b_lib, rtol=1e-12, atol=1e-9)

try:
    import torch
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    tvc = TVBoxCoder((10.0, 10.0, 5.0, 5.0))
    d_tv = tvc.encode_single(torch.from_numpy(gt_k), torch.from_numpy(anchors_k)).numpy()
    assert np.allclose(encode(gt_k, anchors_k, (10.0, 10.0, 5.0, 5.0)), d_tv, rtol=1e-12, atol=1e-12)
    print("encode equals torchvision's BoxCoder")
except ImportError:
    print("torchvision is not installed: the torchvision comparison was skipped")

# %% [markdown]
# ## See it: refinement, dashed to solid
# Perfect deltas move each anchor exactly onto the object. A trained RPN predicts deltas that are
# only close; here we add noise to the perfect deltas to imitate that.

# %%
noisy = deltas + rng.normal(0, 0.08, deltas.shape)
refined = decode(noisy, all_anchors[near])
fig, ax = plt.subplots(figsize=(5, 4))
draw_boxes(ax, gt_box, "black", lw=2.5)
for k, color in zip(range(4), ["tab:blue", "tab:orange", "tab:green", "tab:red"]):
    draw_boxes(ax, all_anchors[near[k]], color, ls="--")
    draw_boxes(ax, refined[k], color)
    a, r = all_anchors[near[k]], refined[k]
    ax.annotate("", xy=((r[0] + r[2]) / 2, (r[1] + r[3]) / 2), xytext=((a[0] + a[2]) / 2, (a[1] + a[3]) / 2),
                arrowprops=dict(arrowstyle="->", color=color))
ax.set_xlim(0, 320), ax.set_ylim(256, 0), ax.set_aspect("equal")
ax.set_xlabel("x (input pixels)"), ax.set_ylabel("y (input pixels)")
for style, name in [(dict(color="black", lw=2.5), "object"), (dict(color="gray", ls="--"), "anchor (colour: which one)"),
                    (dict(color="gray"), "anchor after the noisy deltas")]:
    ax.plot([], [], **style, label=name)
ax.legend(fontsize=8, loc="lower right")
ax.set_title("four anchors refined onto one object")
plt.show()

# %% [markdown]
# ### How well do the anchors cover objects of each size?
# For square objects of growing size placed at random, the best IoU any anchor reaches. Between
# two anchor sizes (e.g. 45 pixels, between 32 and 64) it dips, and below 32 it falls fast: such an
# object may have no anchor with IoU ≥ 0.7, which is why the matcher also keeps, for every object, its
# best anchor (lesson 10).

# %%
object_sides = np.arange(8, 400, 6 if QUICK else 2)
best = []
for side in object_sides:
    xy = rng.uniform(0, np.array([image_size[1], image_size[0]]) - min(side, 250), (20, 2))
    objs = np.concatenate([xy, xy + side], 1)
    best.append(box_ops.box_iou(objs, all_anchors).max(1).mean())
fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.plot(object_sides, best, label="best IoU of any anchor")
for s in sizes[:4]:
    ax.axvline(s, color="gray", ls=":", lw=1)
ax.plot([], [], color="gray", ls=":", label="anchor sizes 32, 64, 128, 256")
ax.axhline(0.7, color="tab:red", ls="--", label="RPN positive threshold 0.7")
ax.set_xlabel("object side (pixels)"), ax.set_ylabel("best anchor IoU (mean of 20)"), ax.legend(fontsize=8)
ax.set_title("how well the anchors cover square objects of each size")
plt.show()

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** The box head's coder uses weights (10, 10, 5, 5). Measure why: draw 1,000
# "proposals" by jittering `gt_box` (e.g. noise of 10% of its size on each coordinate), keep those with
# IoU ≥ 0.5 (the box head's foreground), encode `gt_box` against them with weights (1, 1, 1, 1) and
# with (10, 10, 5, 5), and set `std_unit` and `std_weighted` to the (4,) standard deviations of the
# deltas per coordinate.

# %% tags=exercise-1
std_unit = None      # (4,) array
std_weighted = None  # (4,) array

# %% tags=check-1
with exercise(1, "03_anchors_and_box_coding"):
    if std_unit is None:
        raise NotImplementedError
    std_unit, std_weighted = np.asarray(std_unit), np.asarray(std_weighted)
    assert std_unit.shape == std_weighted.shape == (4,)
    assert np.allclose(std_weighted, std_unit * [10, 10, 5, 5]), "the weights scale each delta linearly"
    assert 0.2 < std_weighted.mean() < 3, f"weighted deltas should be of order 1, got {std_weighted}"
    print("deltas' std with weights 1:", np.round(std_unit, 3), " with (10,10,5,5):", np.round(std_weighted, 2))

# %% [markdown]
# **Exercise 2 (break it on purpose).** Centre the anchors on the cell *centre* instead, adding
# `stride / 2` to every coordinate (a convention some other implementations use). Write
# `tile_centred(cell, grid_h, grid_w, stride)`; the check confirms it no longer equals the library,
# and measures how much a pretrained RPN would be off: the deltas that compensate, in units of the
# anchor size.

# %% tags=exercise-2
def tile_centred(cell, grid_h, grid_w, stride):
    raise NotImplementedError  # your code here

# %% tags=check-2
with exercise(2, "03_anchors_and_box_coding"):
    p4 = tile_centred(generator.cell_anchors[2], *grid_sizes[2], 16)
    assert p4.shape == lib_per_level[2].shape
    assert np.allclose(p4 - lib_per_level[2], 8), "every coordinate should move by stride / 2 = 8"
    shift = encode(lib_per_level[2].astype(np.float64), p4.astype(np.float64))
    print("deltas from centred to torchvision anchors on P4: dx in", np.round([shift[:, 0].min(), shift[:, 0].max()], 3))

# %% [markdown]
# **Exercise 3 (why).** Why are widths coded as `log(g_w / p_w)` rather than `(g_w - p_w) / p_w`?
# Set `answer_3` to one letter:
#
# * (a) the log is faster to compute;
# * (b) decoding `exp(dw)` always gives a positive width, and halving or doubling a box are
#   symmetric (−log 2 and +log 2);
# * (c) the log makes the loss differentiable.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "03_anchors_and_box_coding"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b", "not quite: think of what (g_w - p_w) / p_w = -0.9 and +9 mean"

# %% [markdown]
# ## Summary
# * Anchors: one size per FPN level, three ratios, centred on each cell's top-left pixel, rounded.
#   R = Σ H_l W_l A anchors, in the order the RPN head's outputs are flattened.
# * Box coding: offsets in units of the anchor's size, sizes as log-ratios; weights (1,1,1,1) for the
#   RPN, (10,10,5,5) for the box head; decoding clamps dw, dh.
#
# Next: lesson 04 builds the engine that will learn to predict those deltas.
