# %% [markdown]
# # 11 · The box head: classification and smooth-L1 regression
#
# **Goal.** Build the box head's training targets (match, sample, encode), its two losses and its
# post-processing by hand, check each against `minimaskrcnn.models.roi_heads` (and torchvision's), and
# train a small box head on RoIAlign crops of the shapes data. You will end with a picture of proposals
# (dashed) refined into labelled detections (solid).

# %% [markdown]
# ## The idea
#
# Given proposals (lesson 10) and pooled 7×7 features for each (lessons 08 and 09), the box head of the
# FPN models is the FPN paper's "2-fc MLP head" (§4.2; Mask R-CNN Figure 4, right): two fully connected
# layers (fc6, fc7, 1024 wide, ReLU) and two outputs per RoI, as in Fast R-CNN (§2): L class logits
# (background included) and 4·L box deltas, one set per class.
#
# **Training targets** (no gradient):
#
# 1. add the ground-truth boxes to the proposals (so that early in training there are positives);
# 2. match each RoI to the gt box of highest IoU: IoU ≥ 0.5 → that box's class, else background (0);
# 3. sample 512 RoIs per image, at most 25% foreground (Mask R-CNN §3.1: "a ratio of 1:3 of positive
#    to negatives", N = 512 for FPN);
# 4. encode the matched gt box relative to each RoI with weights (10, 10, 5, 5) (lesson 03).
#
# **Losses** (Fast R-CNN §2.3, as torchvision computes them). Cross-entropy over the L classes for every
# sampled RoI, and smooth L1 on the deltas of the **ground-truth class only**, for foreground RoIs only,
# summed and divided by the number of sampled RoIs:
#
# $$\mathrm{smooth}_{L1}(d) = \begin{cases} 0.5\,d^2/\beta & |d| < \beta \\ |d| - 0.5\,\beta & \text{otherwise}\end{cases}$$
#
# quadratic near 0 (a smooth minimum), linear far away (outliers cannot dominate the gradient). Fast
# R-CNN used β = 1; torchvision (and so this project) uses β = 1/9 in both the RPN and the box head.
#
# **Inference.** Softmax over classes; decode each class's deltas against the RoI; clip to the image;
# every (RoI, class ≠ background) pair with score > 0.05 is a candidate; drop tiny boxes; per-class NMS at
# 0.5 (lesson 02); keep the best 100 (the paper's "highest scoring 100 detection boxes", §3.1).
#
# Shapes: RoIs (K, 4); features (K, C, 7, 7); class_logits (K, L); box_regression (K, 4L).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn import nn, optim
from minimaskrcnn.data import SHAPE_CLASSES, ShapesDataset
from minimaskrcnn.models.roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead, fastrcnn_loss
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops import boxes as box_ops
from minimaskrcnn.ops.box_coder import BoxCoder
from minimaskrcnn.ops.roi_align import roi_align
from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)
try:
    import torch
    import torchvision
    from torchvision.models.detection import roi_heads as tv_roi_heads
except ImportError:
    torch = torchvision = None
    print("torch/torchvision are not installed: the torchvision comparisons are skipped")

# %% [markdown]
# ## Data: shapes, and proposals around them
# The synthetic shapes data set (circles, squares, triangles on noisy gradients). Real proposals come
# from the RPN; here we make them by jittering the ground-truth boxes and adding random boxes, which
# gives a realistic mix of good, poor and background RoIs.

# %%
CLASSES = ("background",) + SHAPE_CLASSES
L = len(CLASSES)
dataset = ShapesDataset(160 if QUICK else 2000, 96, seed=0, max_objects=3)
held_out = ShapesDataset(24, 96, seed=1, max_objects=3)


def make_proposals(gt_boxes, rng, per_gt=12, num_random=12, size=96):
    wh = np.tile(gt_boxes[:, 2:] - gt_boxes[:, :2], 2)
    jittered = np.repeat(gt_boxes, per_gt, 0) + rng.normal(0, 0.15, (len(gt_boxes) * per_gt, 4)) * np.repeat(wh, per_gt, 0)
    xy = rng.uniform(0, size - 20, (num_random, 2))
    random_boxes = np.concatenate([xy, xy + rng.uniform(10, 50, (num_random, 2))], 1)
    boxes = box_ops.clip_boxes_to_image(np.concatenate([jittered, random_boxes]), (size, size))
    return boxes[box_ops.remove_small_boxes(boxes, 4.0)].astype(np.float32)


image, target = dataset[0]
proposals = make_proposals(target["boxes"], rng)
log("image", image)
log("gt boxes", target["boxes"])
log("gt labels", target["labels"])
log("proposals", proposals)

# %% [markdown]
# ## Build it
# ### Step 1: targets, by hand
# The four steps of the idea section, for one image, and the library's version of the same.

# %%
def assign_and_encode(proposals, gt_boxes, gt_labels, fg_iou=0.5, weights=(10.0, 10.0, 5.0, 5.0)):
    rois = np.concatenate([proposals, gt_boxes])              # 1. the gt boxes join the proposals
    iou = box_ops.box_iou(gt_boxes, rois)                     # (M, K)
    matched = iou.argmax(axis=0)                              # 2. best gt per RoI
    labels = np.where(iou.max(axis=0) >= fg_iou, gt_labels[matched], 0)
    targets = BoxCoder(weights).encode_single(gt_boxes[matched], rois)   # 4. (K, 4)
    return rois, matched, labels, targets


rois, matched, labels, reg_targets = assign_and_encode(proposals, target["boxes"], target["labels"])
print("foreground RoIs per class:", {CLASSES[c]: int((labels == c).sum()) for c in range(L)})

heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100, seed=0)
lib_matched, lib_labels = heads.assign_targets_to_proposals([rois], [target["boxes"]], [target["labels"]])
fg = labels > 0  # the library sets the match of background RoIs to 0 (their box target is never used)
assert np.array_equal(lib_labels[0], labels) and np.array_equal(lib_matched[0][fg], matched[fg])
print("labels and matches equal minimaskrcnn's RoIHeads.assign_targets_to_proposals")

# %% [markdown]
# ### Step 2: the two losses, with their gradients
# Written with NumPy, gradients by hand: `dlogits = (softmax − onehot) / K` and, for the picked deltas,
# `clip(d / β, −1, 1) / K`.

# %%
def box_head_loss(class_logits, box_regression, labels, reg_targets, beta=1 / 9):
    K = len(labels)
    shifted = class_logits - class_logits.max(1, keepdims=True)
    prob = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    loss_cls = -np.log(prob[np.arange(K), labels]).mean()
    fg = np.nonzero(labels > 0)[0]
    deltas = box_regression.reshape(K, -1, 4)[fg, labels[fg]]          # the gt class's 4 deltas
    d = deltas - reg_targets[fg]
    loss_box = np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta).sum() / K
    dlogits = prob.copy()
    dlogits[np.arange(K), labels] -= 1
    dreg = np.zeros_like(box_regression).reshape(K, -1, 4)
    dreg[fg, labels[fg]] = np.clip(d / beta, -1, 1) / K
    return loss_cls, loss_box, dlogits / K, dreg.reshape(K, -1)


logits = rng.standard_normal((len(rois), L))
regression = rng.standard_normal((len(rois), 4 * L)) * 0.3
loss_cls, loss_box, dlogits, dreg = box_head_loss(logits, regression, labels, reg_targets)
print(f"loss_classifier {loss_cls:.6f}, loss_box_reg {loss_box:.6f}")

lt, rt = mm.tensor(logits, requires_grad=True), mm.tensor(regression, requires_grad=True)
lib_cls, lib_box = fastrcnn_loss(lt, rt, [labels], [reg_targets])
(lib_cls + lib_box).backward()
assert abs(lib_cls.item() - loss_cls) < 1e-10 and abs(lib_box.item() - loss_box) < 1e-10
assert np.allclose(lt.grad, dlogits) and np.allclose(rt.grad, dreg)
print("losses and gradients equal minimaskrcnn's fastrcnn_loss")

def total_loss(a, b):
    loss_a, loss_b = fastrcnn_loss(a, b, [labels], [reg_targets])
    return loss_a + loss_b


result = mm.gradcheck(total_loss, [mm.tensor(logits, requires_grad=True), mm.tensor(regression, requires_grad=True)])
print("gradcheck of fastrcnn_loss:", "passed" if result.passed else "FAILED")
assert result.passed

if torch is not None:
    tv_cls, tv_box = tv_roi_heads.fastrcnn_loss(torch.from_numpy(logits), torch.from_numpy(regression),
                                                [torch.from_numpy(labels)], [torch.from_numpy(reg_targets)])
    assert abs(tv_cls.item() - loss_cls) < 1e-10 and abs(tv_box.item() - loss_box) < 1e-10
    print("and torchvision's fastrcnn_loss")

# %% [markdown]
# ### See it: L2, L1 and smooth L1
# Over ±3 both pieces of smooth L1 show: the parabola inside |d| < β and the straight lines outside it.
# β = 1 is Fast R-CNN's (its Eq. 3); torchvision uses β = 1/9 in both the RPN and the box head. The
# gradient (right) is bounded by 1, where L2's keeps growing with the error.

# %%
d = np.linspace(-3, 3, 601)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for beta, style in [(1.0, "-"), (1 / 9, "--")]:
    loss = np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta)
    axes[0].plot(d, loss, style, lw=2, label=f"smooth L1, β = {beta:.3g}")
    axes[1].plot(d, np.clip(d / beta, -1, 1), style, lw=2, label=f"smooth L1, β = {beta:.3g}")
axes[0].plot(d, 0.5 * d**2, ":", label="L2 / 2"), axes[0].plot(d, np.abs(d), ":", label="L1")
axes[1].plot(d, d, ":", label="L2 / 2")
for ax in axes:
    ax.axvspan(-1, 1, color="gray", alpha=0.08)
axes[0].set_ylim(0, 3.5), axes[1].set_ylim(-3, 3)
axes[0].set_title("loss (shaded: |d| < 1, the quadratic part for β = 1)"), axes[1].set_title("gradient: bounded by 1 in size")
axes[0].set_ylabel("loss"), axes[1].set_ylabel("d loss / d d")
for ax in axes:
    ax.set_xlabel("d = predicted - target delta"), ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### Step 3: post-processing, by hand
# From logits and deltas to at most 100 labelled boxes, in the order of the idea section.

# %%
def postprocess(class_logits, box_regression, rois, image_size, score_thresh=0.05, nms_thresh=0.5, top_k=100):
    K = len(rois)
    e = np.exp(class_logits - class_logits.max(1, keepdims=True))
    scores = e / e.sum(1, keepdims=True)                                        # (K, L)
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(box_regression, rois).reshape(K, -1, 4)
    boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    cls = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    boxes, scores, cls = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].ravel(), cls[:, 1:].ravel()   # no background
    keep = np.nonzero(scores > score_thresh)[0]
    boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    keep = box_ops.remove_small_boxes(boxes, 1e-2)
    boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    keep = box_ops.batched_nms(boxes, scores, cls, nms_thresh)[:top_k]
    return boxes[keep], scores[keep], cls[keep]


ours = postprocess(logits * 3, regression, rois, (96, 96))
lib = heads.postprocess_detections(logits * 3, regression, [rois], [(96, 96)])
for a, b in zip(ours, lib):
    assert np.allclose(a, b[0])
print(f"{len(ours[0])} detections, equal to RoIHeads.postprocess_detections")
if torch is not None:
    tv_heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    tvb, tvs, tvl = tv_heads.postprocess_detections(torch.from_numpy(logits * 3), torch.from_numpy(regression),
                                                    [torch.from_numpy(rois)], [(96, 96)])
    assert np.allclose(tvb[0].numpy(), ours[0], atol=1e-4) and np.array_equal(tvl[0].numpy(), ours[2])
    print("and torchvision's")

# %% [markdown]
# ## Train a small box head
# A real box head reads RoIAlign features of a trained backbone (lesson 14). Here a small backbone is
# trained together with the head: five 3×3 convolutions with group norm and ReLU, two of them with
# stride 2, turn the normalised RGB image into a 32-channel feature map of stride 4, like the FPN's P2.
# RoIAlign pools 7×7 from it for each RoI, and the library's `TwoMLPHead` (256 wide) and
# `FastRCNNPredictor` name the shape and correct the box. All of it learns from `fastrcnn_loss` with
# SGD, on this lesson's proposals and targets and the library's sampler. Each feature sees a 17-pixel
# window of the image (its receptive field): enough for edges, corners and curvature, the cues that
# tell a circle from a square from a triangle whatever their colours.

# %%
def make_backbone(channels=32):
    """Five 3x3 convs with GroupNorm and ReLU, strides 1, 2, 1, 2, 1: (1, 3, H, W) -> (1, channels, H/4, W/4)."""
    layers, c_in = [], 3
    for c_out, stride in [(16, 1), (channels, 2), (channels, 1), (channels, 2), (channels, 1)]:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(4, c_out), nn.ReLU()]
        c_in = c_out
    return nn.Sequential(*layers)


def pooled_features(backbone, image, rois, size=7):
    """(K, C, size, size): RoIAlign from the backbone's stride-4 map of one image (3, H, W) in [0, 1]."""
    features = backbone(mm.tensor(((image - 0.5) / 0.25)[None].astype(np.float32)))   # about zero-mean input
    return roi_align(features, [rois], size, 1 / 4, 2)


nn.init.manual_seed(0)
backbone = make_backbone()
box_head = TwoMLPHead(32 * 7 * 7, 256)
predictor = FastRCNNPredictor(256, L)
params = list(backbone.parameters()) + list(box_head.parameters()) + list(predictor.parameters())
optimizer = optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
sampler_heads = RoIHeads(None, None, None, 0.5, 0.5, 64, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100, seed=0)
num_steps = 100 if QUICK else 4000
history = []
start = time.perf_counter()
for step in range(num_steps):
    image, target = dataset[step % len(dataset)]
    props = make_proposals(target["boxes"], rng)
    sampled, matched_s, labels_s, targets_s = sampler_heads.select_training_samples([props], [target])
    class_logits, box_regression = predictor(box_head(pooled_features(backbone, image, sampled[0])))
    loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels_s, targets_s)
    optimizer.zero_grad()
    (loss_cls + loss_box).backward()
    optimizer.step()
    history.append((loss_cls.item(), loss_box.item()))
    if step == int(num_steps * 0.7):
        for group in optimizer.param_groups:
            group["lr"] *= 0.1
print(f"{num_steps} steps in {time.perf_counter() - start:.1f} s; last 50 steps: "
      f"loss_classifier {np.mean([h[0] for h in history[-50:]]):.3f}, loss_box_reg {np.mean([h[1] for h in history[-50:]]):.3f}")
fig, ax = plt.subplots(figsize=(6.5, 3))
window = 20 if QUICK else 100
smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")
ax.plot(smooth([h[0] for h in history]), label="loss_classifier"), ax.plot(smooth([h[1] for h in history]), label="loss_box_reg")
ax.axvline(int(num_steps * 0.7), color="gray", ls=":", label="learning rate / 10")
ax.set_xlabel("step"), ax.set_ylabel(f"loss (mean of {window} steps)"), ax.legend(fontsize=8)
ax.set_title("training the backbone and the box head together")
plt.show()

# %% [markdown]
# ### Did it learn? Held-out images
# On images it never saw: how often a foreground RoI gets the right shape, how often background RoIs are
# called background, which classes it confuses, and the IoU of each foreground RoI with its object
# before and after applying the predicted deltas of the true class.

# %%
correct, total, bg_correct, bg_total, iou_before, iou_after = 0, 0, 0, 0, [], []
confusion = np.zeros((L, L), dtype=np.int64)                  # rows: true class, columns: predicted
with mm.no_grad():
    for i in range(len(held_out)):
        image, target = held_out[i]
        props = make_proposals(target["boxes"], np.random.default_rng(100 + i))
        rois_i, matched_i, labels_i, _ = assign_and_encode(props, target["boxes"], target["labels"])
        logits_i, reg_i = predictor(box_head(pooled_features(backbone, image, rois_i)))
        predicted = logits_i.numpy().argmax(1)
        np.add.at(confusion, (labels_i, predicted), 1)
        fg = labels_i > 0
        correct += int((predicted[fg] == labels_i[fg]).sum())
        total += int(fg.sum())
        bg_correct += int((predicted[~fg] == 0).sum())
        bg_total += int((~fg).sum())
        deltas = reg_i.numpy().reshape(-1, L, 4)[np.nonzero(fg)[0], labels_i[fg]]
        refined = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(deltas, rois_i[fg])
        gt = target["boxes"][matched_i[fg]]
        iou_before += list(np.diag(box_ops.box_iou(rois_i[fg], gt)))
        iou_after += list(np.diag(box_ops.box_iou(refined, gt)))
print(f"foreground RoIs given the right shape: {correct / total:.3f} (guessing: 1/3)")
print(f"background RoIs called background:     {bg_correct / bg_total:.3f}")
print(f"mean IoU with the object: {np.mean(iou_before):.3f} before, {np.mean(iou_after):.3f} after the deltas")
print("confusion (rows: true, columns: predicted):")
print(" " * 11 + "".join(f"{name:>11s}" for name in CLASSES))
for name, row in zip(CLASSES, confusion):
    print(f"{name:>11s}" + "".join(f"{v:11d}" for v in row))
if not QUICK:
    assert correct / total > 0.6 and np.mean(iou_after) > np.mean(iou_before) + 0.05

# %% [markdown]
# The backbone is tiny and trained from scratch for a few minutes on one core, yet it names the shape of
# about three foreground RoIs in four (guessing would get one in three), calls most background RoIs
# background, and the deltas of the true class move the RoIs clearly closer to their objects. The
# confusion matrix shows what is left: mostly circles taken for squares (at 7×7 a small rotated square
# and a circle differ in a few cells), and foreground RoIs called background. Lesson 14's full model
# learns a ResNet-FPN backbone on whole images and does better.
#
# ### See it: from proposals to detections

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 4.2))
colors = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
with mm.no_grad():
    for ax, i in zip(axes, range(4)):
        image, target = held_out[i]
        props = make_proposals(target["boxes"], np.random.default_rng(200 + i), per_gt=6, num_random=6)
        logits_i, reg_i = predictor(box_head(pooled_features(backbone, image, props)))
        boxes_d, scores_d, cls_d = postprocess(logits_i.numpy(), reg_i.numpy(), props, (96, 96), score_thresh=0.5)
        ax.imshow(image.transpose(1, 2, 0))
        for b in props:
            ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="white", ls="--", lw=0.7, alpha=0.7))
        for b, s, c in zip(boxes_d, scores_d, cls_d):
            ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color=colors[int(c)], lw=2))
            ax.text(b[0], b[1] - 1, f"{CLASSES[c]} {s:.2f}", color=colors[int(c)], fontsize=9, backgroundcolor="white")
        ax.set_xlim(0, 96), ax.set_ylim(96, 0), ax.set_xticks([]), ax.set_yticks([])
axes[0].plot([], [], color="white", ls="--", label="proposal")
for c, color in colors.items():
    axes[0].plot([], [], color=color, lw=2, label=f"detected {CLASSES[c]}")
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9, facecolor="0.85")
plt.suptitle("held-out images: proposals (dashed) and detections after the box head and NMS (score > 0.5)")
plt.show()

# ## Exercises
#
# **Exercise 1.** Write `SmoothL1(mm.Function)` with `forward(ctx, d, beta)` returning the summed
# smooth-L1 loss of the array `d` (a 0-d array) and `backward` returning `(dd, None)`. The check runs a
# gradient check and compares with `F.smooth_l1_loss(..., reduction="sum")`.

# %% tags=exercise-1
class SmoothL1(mm.Function):
    @staticmethod
    def forward(ctx, d, beta):
        raise NotImplementedError  # your code here

    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "11_box_head"):
    dd = mm.tensor(rng.standard_normal((6, 4)) * 0.3, requires_grad=True)
    ref = F.smooth_l1_loss(dd, np.zeros((6, 4)), reduction="sum", beta=1 / 9).item()
    assert abs(SmoothL1.apply(dd, 1 / 9).item() - ref) < 1e-10, "forward differs from F.smooth_l1_loss"
    r = mm.gradcheck(lambda t: SmoothL1.apply(t, 1 / 9), [dd])
    assert r.passed, r.report()

# %% [markdown]
# **Exercise 2 (break it on purpose).** Train the regression on *every* RoI instead of the foreground
# ones: write `loss_box_all(box_regression, labels, reg_targets)` that applies smooth L1 (β = 1/9, sum,
# divided by K) to the deltas of class `labels[k]` for every k, background rows included (class 0's
# deltas against targets computed from a gt box the RoI barely touches). The check shows that on our
# example the background rows contribute most of that loss: regressing from them would teach the head
# to move boxes towards objects they do not contain.

# %% tags=exercise-2
def loss_box_all(box_regression, labels, reg_targets):
    raise NotImplementedError  # your code here

# %% tags=check-2
with exercise(2, "11_box_head"):
    total_all = loss_box_all(regression, labels, reg_targets)
    fg_only = box_head_loss(logits, regression, labels, reg_targets)[1]
    assert total_all > fg_only, "including background rows must add to the loss"
    bg = labels == 0
    share = 1 - fg_only / total_all
    print(f"background rows: {bg.mean():.0%} of the RoIs, {share:.0%} of the all-RoI box loss")

# %% [markdown]
# **Exercise 3 (why).** Step 1 of the targets adds the ground-truth boxes to the proposals. Why? Set
# `answer_3`:
#
# * (a) to make the batch larger;
# * (b) early in training the RPN's proposals are random, so without the gt boxes there might be no
#   foreground RoI at all to train the classifier and regressor on;
# * (c) because torchvision cannot handle images without proposals.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "11_box_head"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b"

# %% [markdown]
# ## Summary
# * Targets: gt boxes join the proposals; IoU ≥ 0.5 → the gt's class; 512 sampled at ≤ 25% foreground;
#   deltas encoded with (10, 10, 5, 5).
# * Losses: cross-entropy on all sampled RoIs; smooth L1 (β = 1/9) on the gt class's deltas of the
#   foreground RoIs, divided by the number of sampled RoIs.
# * Inference: softmax, per-class decoding, threshold 0.05, per-class NMS 0.5, top 100.
#
# Next: lesson 12 adds the mask branch next to this head.
