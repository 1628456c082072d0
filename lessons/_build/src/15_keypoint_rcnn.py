# %% [markdown]
# # 15 · Keypoint R-CNN: human pose with the same framework
#
# **Goal.** Turn Mask R-CNN into a pose estimator, as the paper's §5 does: a keypoint is a *one-hot mask*,
# so the mask branch, given one 56×56 map per keypoint and a softmax over its positions instead of a
# per-pixel sigmoid, finds people's joints. You will build the keypoint targets, the 3136-way softmax
# loss and the decoding (a bicubic resize to the box, then an argmax) by hand, check each against
# `minimaskrcnn` (and torchvision's), train a small Keypoint R-CNN on synthetic stick figures, and
# compare RoIAlign with RoIPool for keypoints over several seeds beside the paper's Table 6. You will end
# with predicted skeletons on held-out figures and that comparison in one chart.

# %% [markdown]
# ## The idea
#
# Mask R-CNN §5 ("Mask R-CNN for Human Pose Estimation") models a keypoint's location as a mask: for each
# of the K keypoints of an instance, the training target is "a one-hot m × m binary mask where only a
# single pixel is labeled as foreground", and for each visible ground-truth keypoint the loss is the
# cross-entropy "over an m²-way softmax output (which encourages a single point to be detected)". The K
# keypoints are still treated independently, as the K class masks were.
#
# * **Head.** RoIAlign 14×14 from the FPN → "eight 3×3 512-d conv layers, followed by a deconv layer and
#   2× bilinear upscaling, producing an output resolution of 56×56" (the paper found keypoints need a
#   finer output than masks' 28×28).
# * **Target.** Keypoint (x, y) in the RoI (x1, y1, x2, y2) falls in cell
#   `(⌊(x − x1)·56/(x2 − x1)⌋, ⌊(y − y1)·56/(y2 − y1)⌋)`; its label is the flat index `y·56 + x`, one
#   of 56² = 3136 classes. Only labelled keypoints (visibility > 0) inside the RoI count.
# * **Loss.** Softmax cross-entropy over the 3136 positions, averaged over the valid (RoI, keypoint)
#   pairs of all positive RoIs.
# * **Inference.** For each detected box: resize its 56×56 logits bicubically to the box's size in
#   pixels, take each keypoint's argmax, map the pixel back (its centre, +0.5); the keypoint's score is
#   the resized logit there.
#
# The same model can carry the mask head too (the paper's "keypoint & mask" rows: 63.1 keypoint AP on
# test-dev, 62.7 without masks). Shapes: gt keypoints (M, NK, 3) as (x, y, visibility); positive RoIs
# (K, 4); targets (K, NK) flat indices; logits (K, NK, 56, 56); predictions (D, NK, 3) and scores (D, NK).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn.data.figures import FIGURE_KEYPOINTS, FIGURE_SKELETON, FiguresDataset
from minimaskrcnn.models.keypoint_head import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    heatmaps_to_keypoints,
    keypointrcnn_loss,
    keypoints_to_heatmap,
)
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops import boxes as box_ops
from minimaskrcnn.ops.upsample import cubic_convolution_weights, resize_bicubic
from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)
try:
    import torch
    from torchvision.models.detection import roi_heads as tv_roi_heads
except ImportError:
    torch = None
    print("torch/torchvision are not installed: the torchvision comparisons are skipped")

S = 56  # the heatmap side
NK = len(FIGURE_KEYPOINTS)

# %% [markdown]
# ## The data: stick figures with named keypoints
# COCO's person keypoints are 17 named points, each `(x, y, v)` with v = 0 not labelled, 1 labelled but
# hidden, 2 visible, and a *skeleton* of limbs joining them. `FiguresDataset` makes the same thing
# synthetically: 1-3 figures per 128×128 image, 13 keypoints each (the head, then shoulders, elbows,
# wrists, hips, knees and ankles, left and right), the limbs of COCO's skeleton, and per-keypoint
# sigmas for the OKS metric (lesson 13). Figures face the viewer, so a figure's *left* joints are on the
# image's right, as for a person facing the camera; a horizontal flip must therefore swap left and right.

# %%
dataset = FiguresDataset(8, seed=0)
image, target = dataset[7]
log("image", image)
log("keypoints (M, NK, 3)", target["keypoints"])
print("keypoints:", ", ".join(FIGURE_KEYPOINTS))
print("visibility counts (0, 1, 2):", np.bincount(target["keypoints"][..., 2].astype(int).ravel(), minlength=3))


def draw_skeletons(ax, keypoints, colour="yellow", min_score=None, scores=None):
    """Limbs between labelled (or confident) keypoints; left joints in red, right in blue."""
    for k, kp in enumerate(keypoints):
        shown = kp[:, 2] > 0 if scores is None else scores[k] > min_score
        for a, b in FIGURE_SKELETON:
            if shown[a - 1] and shown[b - 1]:
                ax.plot(kp[[a - 1, b - 1], 0], kp[[a - 1, b - 1], 1], "-", color=colour, lw=1.5)
        side = np.array(["w"] + ["r", "b"] * 6)
        ax.scatter(kp[shown, 0], kp[shown, 1], c=side[shown], s=12, zorder=3)


fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
axes[0].imshow(image.transpose(1, 2, 0)), axes[0].set_title("a sample")
axes[1].imshow(image.transpose(1, 2, 0)), axes[1].set_title("keypoints: left red, right blue; skeleton")
draw_skeletons(axes[1], target["keypoints"])
for box in target["boxes"]:
    axes[1].add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, color="white", lw=1))
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Build it
# ### Step 1: the targets, one cell per keypoint
# Positive RoIs around each figure (jittered ground-truth boxes with IoU ≥ 0.5, what the head trains on).
# Each keypoint of the RoI's figure goes to the 56×56 cell it falls in; a keypoint exactly on the right
# or bottom edge would land one past the last cell and is put in the last one.

# %%
def positive_rois(gt_boxes, rng, per_gt=4):
    wh = np.tile(gt_boxes[:, 2:] - gt_boxes[:, :2], 2)
    rois = np.repeat(gt_boxes, per_gt, 0) + rng.normal(0, 0.08, (len(gt_boxes) * per_gt, 4)) * np.repeat(wh, per_gt, 0)
    matched = np.repeat(np.arange(len(gt_boxes)), per_gt)
    keep = np.diag(box_ops.box_iou(rois, gt_boxes[matched])) >= 0.5
    return rois[keep].astype(np.float32), matched[keep]


def heatmap_targets_by_hand(keypoints, rois, S):
    """(K, NK) flat indices and (K, NK) validity, one keypoint at a time."""
    K, num_kp = keypoints.shape[:2]
    labels, valid = np.zeros((K, num_kp), np.int64), np.zeros((K, num_kp), bool)
    for k in range(K):
        x1, y1, x2, y2 = rois[k]
        for j in range(num_kp):
            x, y, v = keypoints[k, j]
            cx = S - 1 if x == x2 else int(np.floor((x - x1) * (np.float32(S) / (x2 - x1))))
            cy = S - 1 if y == y2 else int(np.floor((y - y1) * (np.float32(S) / (y2 - y1))))
            if v > 0 and 0 <= cx < S and 0 <= cy < S:
                labels[k, j], valid[k, j] = cy * S + cx, True
    return labels, valid


rois, matched = positive_rois(target["boxes"], rng)
kp = target["keypoints"][matched]
labels, valid = heatmap_targets_by_hand(kp, rois, S)
log("positive RoIs", rois)
log("targets (K, NK)", labels)
lib_labels, lib_valid = keypoints_to_heatmap(kp, rois, S)
assert np.array_equal(valid, lib_valid) and np.array_equal(labels, lib_labels)
print("equal to minimaskrcnn's keypoints_to_heatmap", end="")
if torch is not None:
    tv_labels, tv_valid = tv_roi_heads.keypoints_to_heatmap(torch.from_numpy(kp), torch.from_numpy(rois), S)
    assert np.array_equal(valid, tv_valid.numpy().astype(bool)) and np.array_equal(labels, tv_labels.numpy())
    print(" and torchvision's", end="")
print(f"; {valid.sum()} of {valid.size} (RoI, keypoint) pairs are valid")

# %% [markdown]
# The targets of one RoI, drawn as what they are, one-hot 56×56 masks (four of the 13 shown), and all
# 13 cells over the RoI's crop:

# %%
k = int(valid.sum(axis=1).argmax())  # the RoI with the most valid keypoints
x1, y1, x2, y2 = rois[k]
fig, axes = plt.subplots(1, 5, figsize=(14, 3))
axes[0].imshow(image.transpose(1, 2, 0), extent=(0, 128, 128, 0))
axes[0].set_xlim(x1, x2), axes[0].set_ylim(y2, y1)
cells = np.stack([labels[k] % S, labels[k] // S], 1)
cx, cy = x1 + (cells[:, 0] + 0.5) * (x2 - x1) / S, y1 + (cells[:, 1] + 0.5) * (y2 - y1) / S
axes[0].scatter(cx[valid[k]], cy[valid[k]], c="yellow", s=10)
axes[0].set_title("RoI crop, target cells")
for ax, j in zip(axes[1:], [0, 5, 6, 11]):
    one_hot = np.zeros(S * S)
    if valid[k, j]:
        one_hot[labels[k, j]] = 1
        ax.add_patch(plt.Circle((labels[k, j] % S, labels[k, j] // S), 3, fill=False, color="red"))
    ax.imshow(one_hot.reshape(S, S), cmap="gray")
    ax.set_title(f"{FIGURE_KEYPOINTS[j]}: 56x56 target" + ("" if valid[k, j] else " (not valid)"), fontsize=9)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ### Step 2: the loss, a 3136-way softmax per keypoint
# Each valid (RoI, keypoint) pair is one classification among 3136 positions:
# `ℓ = −z[label] + log Σ exp(z)`, whose gradient is `softmax(z) − one_hot(label)`; the loss is the mean
# over the valid pairs. When no keypoint is valid the loss is zero (and still a Tensor that reaches the
# logits, so the training step does not break).

# %%
def keypoint_loss_by_hand(logits, labels, valid):
    z = logits.reshape(-1, S * S)[valid.reshape(-1)]               # (V, 3136): the valid pairs only
    t = labels.reshape(-1)[valid.reshape(-1)]
    shifted = z - z.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_prob[np.arange(len(t)), t].mean()
    grad_valid = np.exp(log_prob)
    grad_valid[np.arange(len(t)), t] -= 1
    grad = np.zeros((logits.size // (S * S), S * S))
    grad[valid.reshape(-1)] = grad_valid / len(t)
    return loss, grad.reshape(logits.shape)


logits = rng.standard_normal((len(rois), NK, S, S))
loss, grad = keypoint_loss_by_hand(logits, labels, valid)
print(f"keypoint loss {loss:.6f} (a uniform guess gives log 3136 = {np.log(S * S):.6f})")
logits_t = mm.tensor(logits, requires_grad=True)
lib_loss = keypointrcnn_loss(logits_t, [rois.astype(np.float64)], [target["keypoints"]], [matched])
lib_loss.backward()
assert abs(lib_loss.item() - loss) < 1e-12 and np.allclose(logits_t.grad, grad, rtol=1e-9, atol=1e-15)
print("loss and gradient equal minimaskrcnn's keypointrcnn_loss", end="")
if torch is not None:
    tv_logits = torch.tensor(logits, requires_grad=True)
    tv_loss = tv_roi_heads.keypointrcnn_loss(tv_logits, [torch.from_numpy(rois.astype(np.float64))],
                                             [torch.from_numpy(target["keypoints"])], [torch.from_numpy(matched)])
    tv_loss.backward()
    assert abs(tv_loss.item() - loss) < 1e-9 and np.allclose(tv_logits.grad.numpy(), grad, atol=1e-12)
    print(" and torchvision's", end="")
print()
small = mm.tensor(rng.standard_normal((2, 3, 6, 6)), requires_grad=True)
small_rois = [np.array([[0, 0, 12, 12], [2, 2, 8, 14]], np.float64)]
small_gt = [np.array([[[1, 1, 2], [7, 11.5, 2], [5, 5, 0]], [[3, 3, 1], [7.9, 13.9, 2], [2, 2, 2]]])]
r = mm.gradcheck(lambda t: keypointrcnn_loss(t, small_rois, small_gt, [np.array([0, 1])]), [small])
print("gradcheck of the keypoint loss:", "passed" if r.passed else "FAILED")
assert r.passed

# %% [markdown]
# ### Why a softmax over positions, and not the mask head's per-pixel sigmoid?
# A one-hot target has 1 positive pixel and 3135 negatives. Under the mask loss (mean per-pixel binary
# cross-entropy) the trivial answer "the keypoint is nowhere" is already nearly perfect; under the
# softmax it is as bad as guessing uniformly, and the only way down is to put probability on the right
# cell. The softmax also makes the positions compete: its probabilities sum to one, so one keypoint is in
# exactly one place ("which encourages a single point to be detected").

# %%
target_map = np.zeros(S * S)
target_map[1234] = 1
guesses = {"nowhere (all logits -8)": np.full(S * S, -8.0),
           "uniform (all logits 0)": np.zeros(S * S),
           "right cell +8, rest -8": np.where(target_map == 1, 8.0, -8.0),
           "two cells +8, rest -8": np.where((target_map == 1) | (np.arange(S * S) == 77), 8.0, -8.0)}
print(f"{'guess':26s} {'mean per-pixel BCE':>20s} {'3136-way softmax CE':>20s}")
for name, z in guesses.items():
    bce = F.binary_cross_entropy_with_logits(mm.tensor(z), target_map).item()
    ce = F.cross_entropy(mm.tensor(z[None]), np.array([1234])).item()
    print(f"{name:26s} {bce:20.4f} {ce:20.4f}")

# %% [markdown]
# Read the table by columns. The per-pixel loss scores "nowhere" within a few thousandths of the right
# answer, since the one positive pixel weighs 1/3136 of it, and a second peak costs no more than missing
# the keypoint altogether. The softmax loss of "nowhere" is that of a uniform guess, log 3136 ≈ 8.05; it
# is near zero only when the mass sits on the right cell, and a second equal peak costs exactly log 2.

# %% [markdown]
# ### Step 3: decoding, a bicubic resize and an argmax
# At inference each detection's 56×56 logits are resized to the box's size in pixels,
# `ceil(w) × ceil(h)`, with bicubic interpolation (torch's `F.interpolate(mode="bicubic",
# align_corners=False)`, Keys' cubic convolution with a = −0.75). Output pixel i samples the input at
# `s = (i + 0.5)·in/out − 0.5` from the four pixels ⌊s⌋ − 1 … ⌊s⌋ + 2 (clamped to the border), with the
# weights W(1 + t), W(t), W(1 − t), W(2 − t), t = s − ⌊s⌋:
#
# `W(d) = (a + 2)|d|³ − (a + 3)|d|² + 1` for |d| ≤ 1, `a|d|³ − 5a|d|² + 8a|d| − 4a` for 1 < |d| < 2.

# %%
d = np.linspace(-2.2, 2.2, 441)


def keys_kernel(d, a):
    d = np.abs(d)
    return np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1, np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0))


fig, ax = plt.subplots(figsize=(6, 2.8))
for a in (-0.5, -0.75):
    ax.plot(d, keys_kernel(d, a), label=f"a = {a}" + (" (torch, OpenCV)" if a == -0.75 else " (Keys' choice)"))
ax.plot(d, np.maximum(1 - np.abs(d), 0), "k:", label="bilinear (triangle)")
ax.axhline(0, color="gray", lw=0.5), ax.set_xlabel("distance d from the sample point (input pixels)")
ax.set_ylabel("weight W(d)"), ax.set_title("interpolation kernels"), ax.legend(fontsize=8)
plt.show()
t = np.float64(0.3)
assert np.allclose(cubic_convolution_weights(t), keys_kernel(np.array([1 + t, t, 1 - t, 2 - t]), -0.75))


def bicubic_by_hand(m, out_h, out_w, a=-0.75):
    """(H, W) -> (out_h, out_w): every output pixel from the 4 x 4 input pixels around its sample point."""
    H, W = m.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = (i + 0.5) * H / out_h - 0.5
        for j in range(out_w):
            sx = (j + 0.5) * W / out_w - 0.5
            for dy in range(-1, 3):
                wy = keys_kernel(sy - (np.floor(sy) + dy), a)
                for dx in range(-1, 3):
                    wx = keys_kernel(sx - (np.floor(sx) + dx), a)
                    yy, xx = int(min(max(np.floor(sy) + dy, 0), H - 1)), int(min(max(np.floor(sx) + dx, 0), W - 1))
                    out[i, j] += wy * wx * m[yy, xx]
    return out


m = rng.standard_normal((7, 9))
by_hand = bicubic_by_hand(m, 12, 5)
assert np.allclose(by_hand, resize_bicubic(m, 12, 5), atol=1e-12)
print("bicubic by hand equals minimaskrcnn's resize_bicubic", end="")
if torch is not None:
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(12, 5), mode="bicubic",
                                          align_corners=False)[0, 0].numpy()
    assert np.allclose(by_hand, ref, atol=1e-12)
    print(" and torch's F.interpolate(mode='bicubic')", end="")
print()

# %% [markdown]
# The decoding, by hand for one RoI: resize, argmax, back to image pixels through the cell centre.

# %%
def decode_by_hand(maps, roi):
    x1, y1, x2, y2 = roi
    w, h = max(x2 - x1, 1), max(y2 - y1, 1)
    W, H = int(np.ceil(w)), int(np.ceil(h))
    out = np.zeros((len(maps), 3)), np.zeros(len(maps))
    for j, m in enumerate(maps):
        resized = resize_bicubic(m, H, W)
        yi, xi = np.unravel_index(resized.argmax(), resized.shape)
        out[0][j] = (x1 + (xi + 0.5) * w / W, y1 + (yi + 0.5) * h / H, 1)
        out[1][j] = resized[yi, xi]
    return out


# heatmaps peaked near the target cells, plus noise: what a trained head would give
yy, xx = np.mgrid[0:S, 0:S]
peaks = np.stack([labels[k] % S, labels[k] // S], 1) + rng.normal(0, 1.0, (NK, 2))
maps = -((xx - peaks[:, :1, None]) ** 2 + (yy - peaks[:, 1:, None]) ** 2) / 8 + rng.normal(0, 0.2, (NK, S, S))
maps = maps.astype(np.float32)
xy, scores = decode_by_hand(maps, rois[k].astype(np.float64))
lib_xy, lib_scores = heatmaps_to_keypoints(maps[None], rois[k:k + 1])
assert np.allclose(xy, lib_xy[0], atol=1e-3) and np.allclose(scores, lib_scores[0], atol=1e-5)
print("decoding equals minimaskrcnn's heatmaps_to_keypoints", end="")
if torch is not None:
    tv_xy, tv_scores = tv_roi_heads.heatmaps_to_keypoints(torch.from_numpy(maps[None]), torch.from_numpy(rois[k:k + 1]))
    assert np.allclose(xy, tv_xy.numpy()[0], atol=1e-3) and np.allclose(scores, tv_scores.numpy()[0], atol=1e-4)
    print(" and torchvision's", end="")
print()
error = np.hypot(*(xy[:, :2] - kp[k, :, :2]).T)[valid[k]]
print(f"distance of the decoded keypoints from the truth: mean {error.mean():.2f} px, max {error.max():.2f} px")

j = next(j for j in (5, 6, 11, 12, 0) if valid[k, j])  # a wrist, an ankle or the head
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
shown = dict(cmap="magma", vmin=maps[j].max() - 12, vmax=maps[j].max())  # the top of the map
axes[0].imshow(maps[j], **shown), axes[0].set_title(f"{FIGURE_KEYPOINTS[j]}: 56x56 logits")
W_, H_ = int(np.ceil(x2 - x1)), int(np.ceil(y2 - y1))
axes[1].imshow(resize_bicubic(maps[j], H_, W_), extent=(x1, x1 + W_, y1 + H_, y1), **shown)
axes[1].plot(*xy[j, :2], "c+", ms=14, mew=2), axes[1].set_title(f"resized to the RoI ({W_}x{H_} px), argmax")
axes[2].imshow(image.transpose(1, 2, 0)), axes[2].set_title("decoded keypoints (yellow: truth)")
axes[2].scatter(xy[:, 0], xy[:, 1], c="cyan", s=12), axes[2].scatter(*kp[k, valid[k], :2].T, c="yellow", s=6)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ### Step 4: the head's shapes
# The library's `KeypointRCNNHeads` and `KeypointRCNNPredictor` with torchvision's parameter names, small:
# C = 16 channels, four convs instead of eight.

# %%
mm.nn.init.manual_seed(0)
heads = KeypointRCNNHeads(16, (16,) * 4)
predictor = KeypointRCNNPredictor(16, NK)
x = mm.tensor(rng.standard_normal((5, 16, 14, 14)).astype(np.float32))
h = heads(x)
low = predictor.kps_score_lowres(h)
out = predictor(h)
log("pooled (K, C, 14, 14)", x)
log("after the convs", h)
log("deconv 4x4 s2 (K, NK, 28, 28)", low)
log("2x bilinear (K, NK, 56, 56)", out)
print("parameters:", [name for name, _ in predictor.named_parameters()], "and", len(list(heads.parameters())) // 2, "convs")
