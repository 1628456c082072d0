# %% [markdown]
# # 10 · The region proposal network
#
# **Goal.** Build the RPN's training targets (anchor labels by IoU, a balanced sample), its two losses
# and its proposal selection (top-n per level, clipping, NMS), each checked against
# `minimaskrcnn.models.rpn` (and torchvision's). You will end with a picture of an image's anchors by
# label (positive green, negative red) and of proposals before and after NMS.

# %% [markdown]
# ## The idea
#
# Faster R-CNN §3.1: a small network slides over a feature map and, for each of the A anchors of each
# cell (lesson 03), predicts an **objectness** logit ("is there an object here?") and four **deltas**
# that move the anchor onto the object. With an FPN (lesson 09; FPN §4.1) the same head, a 3×3 conv
# (ReLU) and two 1×1 convs giving (N, A, H, W) logits and (N, 4A, H, W) deltas, runs on every level
# P2-P6, each level with anchors of one size.
#
# **Targets** (no gradient), per image (§3.1.2):
#
# | anchor's best IoU with a gt box | label |
# |---|---|
# | ≥ 0.7 | positive (1) |
# | < 0.3 | negative (0) |
# | in between | ignored (−1) |
# | the highest IoU any anchor has with some gt (ties included) | positive, whatever its value |
#
# The last rule guarantees every object at least one positive anchor, even a small or oddly shaped one.
# (Faster R-CNN's wording is "IoU higher than 0.7"; torchvision's `Matcher`, and so this project, counts
# an IoU of exactly 0.7 as positive.) Then 256 anchors are sampled, at most half positive (Faster
# R-CNN §3.1.3), and two losses are computed on them:
#
# * **objectness**: binary cross-entropy of the logit x against the label t ∈ {0, 1}, averaged over the
#   sampled anchors: −t log σ(x) − (1 − t) log(1 − σ(x)), where σ(x) = 1 / (1 + e^{−x}). Computed as
#   `max(x, 0) − x t + log(1 + e^{−|x|})`, the same value without overflow or log(0) (lesson 12 derives
#   it); its gradient is σ(x) − t.
# * **box regression**, on the positives only: smooth L1 of each delta's error d, summed and divided by
#   the number of sampled anchors. Smooth L1 is 0.5 d²/β for |d| < β and |d| − 0.5 β beyond: quadratic
#   near 0, linear far away, so that a badly placed anchor cannot dominate the gradient (Fast R-CNN
#   §2.3, with β = 1; torchvision uses β = 1/9). Lesson 11 plots it. The box coder's weights are
#   (1, 1, 1, 1) here.
#
# **Proposals** (no gradient): decode every anchor's deltas; on each level keep the `pre_nms_top_n`
# best by objectness (2000 in training, 1000 at test); clip to the image; drop boxes smaller than
# `min_size` and below `score_thresh`; NMS at 0.7 *per level*; keep the best `post_nms_top_n` per image.
#
# Shapes: R anchors per image (Σ_l H_l W_l A); objectness (N·R, 1); deltas (N·R, 4); proposals (P, 4).

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn.data import ShapesDataset
from minimaskrcnn.models.anchors import AnchorGenerator
from minimaskrcnn.models.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from minimaskrcnn.ops import boxes as box_ops
from minimaskrcnn.ops.box_coder import BoxCoder
from minimaskrcnn.ops.matcher import BalancedPositiveNegativeSampler, Matcher

from _helpers import exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)
try:
    import torch
    import torchvision
    from torchvision.models.detection import _utils as tv_utils
except ImportError:
    torch = torchvision = None
    print("torch/torchvision are not installed: the torchvision comparisons are skipped")

# %% [markdown]
# ## An image and its anchors
# A 128×128 shapes image and the anchors of the small "r18-shapes" model: sizes 16 … 256 on levels with
# strides 4 … 64, three ratios each. Note how few anchors reach IoU 0.7 with an object whose size falls
# between two anchor sizes (lesson 03's coverage curve): such objects live on the "best anchor" rule.

# %%
dataset = ShapesDataset(8, 128, seed=3)
shown = max(range(len(dataset)), key=lambda i: len(dataset[i][1]["boxes"]))  # the busiest image
image, target = dataset[shown]
gt_boxes = target["boxes"]
sizes = ((16,), (32,), (64,), (128,), (256,))
generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
grid_sizes = [(128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
anchors = generator((128, 128), grid_sizes)[0]
num_anchors_per_level = [len(a) for a in generator.anchors_per_level((128, 128), grid_sizes)]
log("image", image)
log("gt boxes", gt_boxes)
log("anchors", anchors)
print("anchors per level:", num_anchors_per_level)

# %% [markdown]
# ## Build it
# ### Step 1: anchor labels
# The table above as code: the IoU of every anchor with every object, then the three thresholds
# and the best-anchor rule.

# %%
POSITIVE, NEGATIVE, IGNORE = 1.0, 0.0, -1.0


def anchor_labels(anchors, gt_boxes, fg=0.7, bg=0.3):
    iou = box_ops.box_iou(gt_boxes, anchors)                   # (M, R)
    best_gt = iou.argmax(axis=0)                               # (R,) best gt of each anchor
    best_iou = iou.max(axis=0)
    labels = np.full(len(anchors), IGNORE, dtype=np.float32)
    labels[best_iou < bg] = NEGATIVE
    labels[best_iou >= fg] = POSITIVE
    # every gt's best anchors (ties included) are positive too
    _, best_anchor_of_gt = np.nonzero(iou == iou.max(axis=1, keepdims=True))
    labels[best_anchor_of_gt] = POSITIVE
    return labels, best_gt


labels, best_gt = anchor_labels(anchors, gt_boxes)
print(f"positive {int((labels == 1).sum())}, negative {int((labels == 0).sum())}, ignored {int((labels == -1).sum())}")

rpn = RegionProposalNetwork(generator, RPNHead(8, 3), 0.7, 0.3, 256, 0.5, dict(training=300, testing=200),
                            dict(training=100, testing=50), 0.7, seed=0)
lib_labels, lib_matched = rpn.assign_targets_to_anchors([anchors], [target])
assert np.array_equal(lib_labels[0], labels)
assert np.array_equal(lib_matched[0][labels == 1], gt_boxes[best_gt[labels == 1]])
print("labels equal minimaskrcnn's RegionProposalNetwork.assign_targets_to_anchors")
if torch is not None:
    tv_matcher = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    tv_m = tv_matcher(torch.from_numpy(box_ops.box_iou(gt_boxes, anchors))).numpy()
    tv_labels = np.where(tv_m >= 0, 1.0, 0.0)
    tv_labels[tv_m == -2] = -1.0
    assert np.array_equal(tv_labels, labels)
    print("and torchvision's Matcher")

# %% [markdown]
# ### See it: anchors by label
# Left: the ground-truth objects (thick dashed, one colour each), the positive anchors (green; solid:
# IoU ≥ 0.7, dashed: positive only as some object's best anchor) and a sample of 15 negatives (red).
# Ignored anchors are not drawn. Right: per level, how many positive anchors each object got.

# %%
iou_best = box_ops.box_iou(gt_boxes, anchors).max(0)
object_colors = [f"C{g}" for g in range(len(gt_boxes))]
fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.2]})
axes[0].imshow(image.transpose(1, 2, 0))
for i in rng.choice(np.nonzero(labels == 0)[0], 15, replace=False):
    axes[0].add_patch(Rectangle(anchors[i, :2], *(anchors[i, 2:] - anchors[i, :2]), fill=False, color="tab:red", lw=0.8))
for i in np.nonzero(labels == 1)[0]:
    axes[0].add_patch(Rectangle(anchors[i, :2], *(anchors[i, 2:] - anchors[i, :2]), fill=False, color="lime",
                                lw=1.2, ls="-" if iou_best[i] >= 0.7 else "--"))
for g, (b, color) in enumerate(zip(gt_boxes, object_colors)):
    axes[0].add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color=color, lw=2.5, ls=(0, (4, 2))))
    axes[0].text(b[0] + 1, b[3] - 2, str(g), color=color, fontsize=11, fontweight="bold",
                 bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))
for style, name in [(dict(color="lime"), "positive, IoU ≥ 0.7"), (dict(color="lime", ls="--"), "positive: an object's best anchor"),
                    (dict(color="tab:red", lw=0.8), "negative (15 of them)"), (dict(color="C0", lw=2.5, ls=(0, (4, 2))), "ground truth")]:
    axes[0].plot([], [], **style, label=name)
axes[0].legend(fontsize=8, loc="lower left", framealpha=0.9)
axes[0].set_xlim(-30, 158), axes[0].set_ylim(158, -30)
axes[0].set_xlabel("x (pixels)"), axes[0].set_ylabel("y (pixels)"), axes[0].set_title("anchors by label, with the objects")
level_of_anchor = np.repeat(np.arange(5), num_anchors_per_level)
counts = np.array([[int(((labels == 1) & (best_gt == g) & (level_of_anchor == level)).sum()) for level in range(5)]
                   for g in range(len(gt_boxes))])
for g in range(len(gt_boxes)):
    side = np.sqrt(box_ops.box_area(gt_boxes[g:g + 1])[0])
    axes[1].bar(np.arange(5) + 0.8 * g / len(gt_boxes), counts[g], width=0.8 / len(gt_boxes), color=object_colors[g],
                label=f"object {g} (side ~{side:.0f} px)")
axes[1].set_xticks(np.arange(5) + 0.3, [f"P{level + 2}\n{s[0]} px" for level, s in enumerate(sizes)])
axes[1].set_xlabel("level and its anchor size")
axes[1].set_ylabel("positive anchors"), axes[1].legend(fontsize=8)
axes[1].set_title("positive anchors per object and level")
plt.show()

# %% [markdown]
# ### Step 2: the sample and the losses
# The sampler draws at random; to compare with the library we give both the same seeded sampler.

# %%
head = RPNHead(8, 3)
features = [mm.tensor(rng.standard_normal((1, 8, gh, gw)).astype(np.float32)) for gh, gw in grid_sizes]
objectness_per_level, deltas_per_level = head(features)
objectness, pred_deltas = concat_box_prediction_layers(objectness_per_level, deltas_per_level)
log("objectness (N*R, 1)", objectness)
log("pred deltas (N*R, 4)", pred_deltas)
regression_targets = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt_boxes[best_gt], anchors)


def rpn_losses(objectness, pred_deltas, labels, regression_targets, sampler):
    pos_mask, neg_mask = sampler([labels])
    pos, neg = np.nonzero(pos_mask[0])[0], np.nonzero(neg_mask[0])[0]
    sampled = np.concatenate([pos, neg])
    x, t = objectness.reshape(-1)[sampled], labels[sampled]
    loss_obj = (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean()
    d = pred_deltas[pos] - regression_targets[pos]
    beta = 1 / 9
    loss_box = np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta).sum() / len(sampled)
    return loss_obj, loss_box, len(pos), len(neg)


loss_obj, loss_box, num_pos, num_neg = rpn_losses(objectness.numpy(), pred_deltas.numpy(), labels, regression_targets,
                                                  BalancedPositiveNegativeSampler(256, 0.5, generator=0))
print(f"sampled {num_pos} positives and {num_neg} negatives; loss_objectness {loss_obj:.6f}, loss_rpn_box_reg {loss_box:.6f}")
rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(256, 0.5, generator=0)
lib_obj, lib_box = rpn.compute_loss(objectness, pred_deltas, [labels], [regression_targets])
assert abs(lib_obj.item() - loss_obj) < 1e-6 and abs(lib_box.item() - loss_box) < 1e-6
print("equal to minimaskrcnn's RegionProposalNetwork.compute_loss")

# %% [markdown]
# ### Step 3: proposals
# A freshly initialised head predicts nothing useful. To see what selection does we imitate a
# *trained* RPN with an oracle: objectness = (IoU with the best gt − 0.5) × 10 plus noise, deltas = the
# perfect deltas plus noise. Lesson 14 shows a real trained one.

# %%
oracle_logits = ((iou_best - 0.5) * 10 + rng.normal(0, 1.0, len(anchors))).astype(np.float32)
oracle_deltas = (regression_targets + rng.normal(0, 0.05, regression_targets.shape)).astype(np.float32)
decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(oracle_deltas, anchors)  # (R, 4)


def select_proposals(boxes, logits, num_per_level, pre_nms_top_n=200, post_nms_top_n=50, nms_thresh=0.7, size=(128, 128)):
    levels = np.repeat(np.arange(len(num_per_level)), num_per_level)
    keep, offset = [], 0
    for n in num_per_level:                                          # 1. top-n per level
        order = np.argsort(-logits[offset:offset + n], kind="stable")[:pre_nms_top_n]
        keep.append(order + offset)
        offset += n
    keep = np.concatenate(keep)
    boxes, scores, levels = boxes[keep], 1 / (1 + np.exp(-logits[keep])), levels[keep]
    boxes = box_ops.clip_boxes_to_image(boxes, size)                  # 2. clip
    k = box_ops.remove_small_boxes(boxes, 1e-3)                       # 3. drop tiny boxes
    boxes, scores, levels = boxes[k], scores[k], levels[k]
    before = (boxes, scores)
    k = box_ops.batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_top_n]   # 4. NMS per level, top-n
    return boxes[k], scores[k], before


proposals, scores, (before_boxes, before_scores) = select_proposals(decoded, oracle_logits, num_anchors_per_level)
rpn.eval()
lib_boxes, lib_scores = rpn.filter_proposals(decoded[None], oracle_logits[None], [(128, 128)], num_anchors_per_level)
assert np.allclose(lib_boxes[0], proposals) and np.allclose(lib_scores[0], scores)
print(f"{len(before_boxes)} candidates -> {len(proposals)} proposals, equal to RegionProposalNetwork.filter_proposals")
if torch is not None:
    from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN

    tv_rpn = TVRPN(None, None, 0.7, 0.3, 256, 0.5, dict(training=300, testing=200), dict(training=100, testing=50), 0.7).eval()
    tvb, tvs = tv_rpn.filter_proposals(torch.from_numpy(decoded[None]), torch.from_numpy(oracle_logits[None]),
                                       [(128, 128)], num_anchors_per_level)
    assert np.allclose(tvb[0].numpy(), proposals, atol=1e-4) and np.allclose(tvs[0].numpy(), scores, atol=1e-6)
    print("and torchvision's")

# %% [markdown]
# ### See it: before and after NMS
# The ten best candidates before NMS are mostly near-copies of one another on the best-covered objects;
# after NMS the ten best proposals spread over the objects. Dashed cyan: the ground truth.

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 5))
order_before = np.argsort(-before_scores, kind="stable")
panels = [(f"the 10 best of {len(before_boxes)} candidates, before NMS", before_boxes[order_before[:10]]),
          ("the 10 best proposals, after NMS (0.7)", proposals[:10]),
          (f"all {len(proposals)} proposals after NMS", proposals)]
for ax, (title, boxes_) in zip(axes, panels):
    ax.imshow(image.transpose(1, 2, 0))
    for b in boxes_:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="yellow", lw=1))
    for b in gt_boxes:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="cyan", lw=1.5, ls="--"))
    ax.set_title(title, fontsize=11), ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
axes[0].plot([], [], color="yellow", label="candidate / proposal"), axes[0].plot([], [], color="cyan", ls="--", label="ground truth")
axes[0].legend(fontsize=8, loc="lower left", framealpha=0.9)
plt.show()
covered = lambda boxes_: int((box_ops.box_iou(gt_boxes, boxes_).max(1) >= 0.5).sum())
print(f"objects covered at IoU 0.5 by the 10 best boxes: {covered(before_boxes[order_before[:10]])} of {len(gt_boxes)} "
      f"before NMS, {covered(proposals[:10])} after")
recall = (box_ops.box_iou(gt_boxes, proposals).max(1) >= 0.5).mean()
print(f"recall of the objects at IoU 0.5 by all {len(proposals)} proposals: {recall:.2f}")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (break it on purpose).** Without the "best anchor of each gt" rule
# (`allow_low_quality_matches=False`), how many objects of the first 8 shapes images get *no* positive
# anchor at all? Write `labels_without_low_quality(anchors, gt_boxes)` (the table above without its last
# row) and set `num_without_positive`, counting over `dataset`'s 8 images.

# %% tags=exercise-1
def labels_without_low_quality(anchors, gt_boxes):
    raise NotImplementedError  # your code here


num_without_positive = None

# %% tags=check-1
with exercise(1, "10_rpn"):
    m = Matcher(0.7, 0.3, allow_low_quality_matches=False)
    for i in range(len(dataset)):
        g = dataset[i][1]["boxes"]
        ref = m(box_ops.box_iou(g, anchors))
        ref_labels = np.where(ref >= 0, 1.0, 0.0)
        ref_labels[ref == Matcher.BETWEEN_THRESHOLDS] = -1.0
        assert np.array_equal(labels_without_low_quality(anchors, g), ref_labels), f"labels differ on image {i}"
    assert num_without_positive is not None
    expected = sum(int(((box_ops.box_iou(dataset[i][1]["boxes"], anchors) >= 0.7).sum(1) == 0).sum()) for i in range(len(dataset)))
    assert num_without_positive == expected
    total = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    print(f"{num_without_positive} of {total} objects would have no positive anchor")

# %% [markdown]
# **Exercise 2.** In our image, what fraction of the anchors is negative? Set `negative_fraction`.
# Then explain to yourself why the RPN samples 256 anchors with up to half positives instead of using
# every anchor in the loss.

# %% tags=exercise-2
negative_fraction = None

# %% tags=check-2
with exercise(2, "10_rpn"):
    if negative_fraction is None:
        raise NotImplementedError
    assert abs(negative_fraction - (labels == 0).mean()) < 1e-9
    print(f"{negative_fraction:.1%} negatives: unsampled, the loss would be almost all easy background")

# %% [markdown]
# **Exercise 3 (why).** NMS runs per level (`batched_nms` with the level as the category). Set
# `answer_3` to the letter of the effect: with a single NMS over all levels, ...
#
# * (a) ... nothing would change, it is only faster per level;
# * (b) ... a proposal from one level could suppress an overlapping one from another level; per-level NMS
#   keeps each level's best boxes, and the final top-n picks among them (torchvision's choice);
# * (c) ... the proposals would no longer be sorted.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "10_rpn"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b"

# %% [markdown]
# ## Summary
# * Anchor labels: IoU ≥ 0.7 positive, < 0.3 negative, plus each object's best anchors; 256 sampled,
#   ≤ 50% positive; BCE for objectness and smooth L1 (β = 1/9) for the positives' deltas.
# * Proposals: decode, top-n per level, clip, drop tiny boxes, NMS 0.7 per level, top-n per image.
#
# Next: lessons 11 and 12 turn proposals into classes, boxes and masks on RoIAligned features; lesson 13
# measures detections as COCO does; lesson 14 trains it all.
