# %% [markdown]
# # 14 · The full Mask R-CNN: train it, then look inside
#
# **Goal.** Put lessons 01-13 together: build a small Mask R-CNN with `minimaskrcnn.models.build_model`,
# train it on the synthetic shapes data with `minimaskrcnn.train.Trainer`, measure it with COCO's AP
# (lesson 13), then run one image through it stage by stage and look at every intermediate result:
# anchors by label, proposals before and after NMS, the RoIs sampled for the heads, mask targets next to
# predicted masks, and the final detections. Last, the same code on real photographs: the COCO sample
# that ships with the package.

# %% [markdown]
# ## The idea: one network, five losses
#
# Mask R-CNN (He et al. 2017, Figure 1 and §3) is Faster R-CNN with a mask branch:
#
# ```
# image ─ transform ─ ResNet ─ FPN ─┬─ RPN: anchors, objectness, deltas ─ NMS ─ proposals ───┐
#                     (04-06)  (09) │      (03, 10)                        (02)              │
#                                   └── features P2-P5 (P6 only for the RPN) ────────────────┤
#                                                                                            ▼
#                                   RoIAlign 7×7   ─ box head  ─ class + box deltas  (08, 11)
#                                   RoIAlign 14×14 ─ mask head ─ 28×28 mask per class (08, 12)
# ```
#
# Training minimises the sum of five losses, one per output: `loss_objectness` and `loss_rpn_box_reg`
# (RPN), `loss_classifier` and `loss_box_reg` (box head), `loss_mask` (mask head). The recipe is
# torchvision's: SGD with momentum 0.9, weight decay 1e-4, a linear warm-up, then the learning rate
# divided by 10 twice.
#
# The model here is the "r18-shapes" configuration: a ResNet-18 of quarter width with group norm,
# an FPN of 64 channels, anchors of 16-256 pixels, trained from scratch on 128×128 images. It is the
# same code as torchvision's ResNet-50 model (`maskrcnn_resnet50_fpn`), only smaller. One consequence
# of the small images (lesson 09): the FPN level rule sends every RoI under 112 pixels to P2, so the
# box and mask heads of this model pool almost everything from P2; the training-mode look below counts it.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import minimaskrcnn as mm
from minimaskrcnn import visualize
from minimaskrcnn.evaluate import format_stats_table
from minimaskrcnn.models import build_model
from minimaskrcnn.models.configs import get_config
from minimaskrcnn.models.poolers import LevelMapper
from minimaskrcnn.runlog import read_log
from minimaskrcnn.train import TrainConfig, Trainer

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)


def show_detections(ax, image, detections, class_names, score_threshold=0.5, fontsize=9):
    """One image's detections drawn with matplotlib: tinted masks, boxes, and "class score" labels whose
    size does not depend on the image's (so they stay readable on small images)."""
    ax.imshow(image.transpose(1, 2, 0))
    keep = np.nonzero(detections["scores"] > score_threshold)[0]
    overlay = np.zeros(image.shape[1:] + (4,))
    for k in keep:
        color = np.array(visualize.color_for(int(detections["labels"][k]))) / 255
        overlay[detections["masks"][k, 0] > 0.5] = (*color, 0.45)
    ax.imshow(overlay)
    for k in keep:
        x1, y1, x2, y2 = detections["boxes"][k]
        color = np.array(visualize.color_for(int(detections["labels"][k]))) / 255
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=1.5))
        name = visualize.class_name(class_names, detections["labels"][k])
        ax.text(x1, y1, f"{name} {detections['scores'][k]:.2f}", fontsize=fontsize, color="white", va="bottom",
                bbox=dict(fc=color, ec="none", pad=1, alpha=0.85))
    ax.set_xlim(0, image.shape[2]), ax.set_ylim(image.shape[1], 0), ax.set_xticks([]), ax.set_yticks([])

# %% [markdown]
# ## The model
# The configuration, stage by stage, and the size of the network it builds.

# %%
config = get_config("r18-shapes")
for stage in ("backbone", "anchors", "rpn", "box", "mask"):
    print(f"{stage:9s}", getattr(config, stage))
model = build_model(config, seed=0)
num_params = sum(p.size for p in model.parameters())
print(f"\n{num_params:,} parameters; torchvision's ResNet-50 Mask R-CNN has 44,401,393")

# %% [markdown]
# ## Train on shapes
# `Trainer` generates the data set (600 training images, 64 held out, from fixed seeds), runs the loop,
# logs every 20 steps and evaluates at the end. Everything is seeded: the same run gives the same numbers.

# %%
shapes_config = TrainConfig(
    model="r18-shapes", name="lesson13-shapes" + ("-quick" if QUICK else ""), output_dir="runs",
    data_dir="runs/data/shapes" + ("-quick" if QUICK else ""),
    steps=6 if QUICK else 1000, batch_size=2 if QUICK else 4, lr=0.02, warmup_steps=2 if QUICK else 100,
    num_train_images=8 if QUICK else 600, num_val_images=4 if QUICK else 64,
    val_loss_images=0 if QUICK else 16, log_every=2 if QUICK else 20, checkpoint_every=0,
    progress=False, seed=0,
)
trainer = Trainer(shapes_config)
start = time.perf_counter()
result = trainer.fit()
print(f"{result['step']} steps of {shapes_config.batch_size} images in {time.perf_counter() - start:.0f} s")

# %%
rows = [r for r in read_log(trainer.run_dir) if "loss" in r]
fig, ax = plt.subplots(figsize=(7, 3.2))
for key in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key, lw=2 if key == "loss" else 1)
ax.set_xlabel("step"), ax.set_ylabel("loss (log scale)"), ax.set_yscale("log"), ax.legend(fontsize=7, ncol=2)
ax.set_title("training losses (averages over 20 steps)")
plt.show()

# %% [markdown]
# ### COCO AP on the held-out images
# `Trainer` evaluated the model on the held-out images when it finished: box and mask AP as in lesson 13.

# %%
stats = result["val"]
print(format_stats_table(stats))
if not QUICK:
    assert stats["segm"]["AP50"] > 0.3, "a trained shapes model should find most shapes"

# %% [markdown]
# ## Look inside, stage by stage
# Inside `with mm.record_intermediates() as inter:` the model records every intermediate array of the
# calls it makes (the keys are listed in docs/INTERMEDIATES.md). First in eval mode, on a held-out image.

# %%
model = trainer.model
model.eval()
val_ds = trainer.val_dataset
class_names = trainer.class_names
image, target = val_ds[1]
with mm.record_intermediates() as inter:
    output = model([image])
for key in ("images", "image_sizes"):
    log(key, inter[key]) if key == "images" else print(key, inter[key])
for name, f in inter["features"].items():
    log(f"P{int(name) + 2 if name != 'pool' else 6} features", f)
for level, obj in enumerate(inter["objectness"]):
    log(f"objectness P{level + 2}", obj)

# %% [markdown]
# ### The RPN's objectness, level by level
# The maximum over the 3 anchors of each cell, as a probability: small objects light up on the fine
# levels, large ones on the coarse levels.

# %%
fig, axes = plt.subplots(1, 6, figsize=(15, 3))
axes[0].imshow(image.transpose(1, 2, 0)), axes[0].set_title("input")
for ax, (level, obj) in zip(axes[1:], enumerate(inter["objectness"])):
    shown = ax.imshow(1 / (1 + np.exp(-obj[0].max(0))), vmin=0, vmax=1, cmap="magma")
    ax.set_title(f"P{level + 2}: {obj.shape[2]}x{obj.shape[3]}")
for ax in axes:
    ax.axis("off")
fig.colorbar(shown, ax=axes, shrink=0.8, label="objectness probability")
plt.show()

# %% [markdown]
# ### Proposals before and after NMS, and the detections
# The ten best boxes before NMS, the ten best after it, and the final detections: before NMS the top of
# the list repeats the same objects; after it the proposals spread over the objects.

# %%
before = inter["proposals_before_nms"][0]
proposals, proposal_scores = inter["proposals"][0], inter["proposal_scores"][0]
print(f"{len(before['boxes'])} candidates after top-n, clipping and tiny-box removal -> {len(proposals)} proposals after NMS")
fig, axes = plt.subplots(1, 3, figsize=(14, 5))
order = np.argsort(-before["scores"], kind="stable")[:10]
panels = [(f"the 10 best of {len(before['boxes'])} candidates, before NMS", before["boxes"][order]),
          (f"the 10 best of {len(proposals)} proposals, after NMS", proposals[:10])]
for ax, (title, boxes) in zip(axes[:2], panels):
    ax.imshow(image.transpose(1, 2, 0))
    for b in boxes:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="yellow", lw=1))
    for b in target["boxes"]:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="cyan", lw=1.5, ls="--"))
    ax.set_title(title, fontsize=11), ax.set_xticks([]), ax.set_yticks([])
axes[0].plot([], [], color="yellow", label="candidate / proposal"), axes[0].plot([], [], color="cyan", ls="--", label="ground truth")
axes[0].legend(fontsize=8, loc="lower left", framealpha=0.9)
show_detections(axes[2], image, output[0], class_names)
axes[2].set_title("detections (score > 0.5)", fontsize=11)
plt.show()

# %% [markdown]
# ### In training mode: anchors by label, sampled RoIs, mask targets against predictions
# The same call in training mode returns the losses, and the intermediates hold the training targets.

# %%
model.train()
train_image, train_target = trainer.train_dataset[3]
with mm.record_intermediates() as tinter:
    losses = model([train_image], [train_target])
print({k: round(v.item(), 4) for k, v in losses.items()})
model.eval()

anchors, labels = tinter["anchors"][0], tinter["rpn_labels"][0]
sampled_neg = tinter["rpn_sampled_neg_idx"]
draw_labels = np.full(len(labels), -1)
draw_labels[labels == 1] = 1
draw_labels[sampled_neg] = 0
rois, roi_labels = tinter["roi_proposals"][0], tinter["roi_labels"][0]
fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
axes[0].imshow(visualize.draw_anchors(train_image, anchors, draw_labels, show_negative=20))
axes[0].set_title(f"anchors: {int((labels == 1).sum())} positive, 20 of the sampled negatives", fontsize=11)
axes[1].imshow(visualize.draw_boxes(train_image, rois[roi_labels > 0], colors=(0, 200, 0), width=1))
axes[1].set_title(f"sampled RoIs: {int((roi_labels > 0).sum())} foreground of {len(roi_labels)}", fontsize=11)
for ax in axes:
    for b in train_target["boxes"]:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="cyan", lw=1.5, ls="--"))
    ax.set_xticks([]), ax.set_yticks([])
handles = [plt.Line2D([], [], color=np.array(visualize.LABEL_COLORS[1]) / 255, label="positive anchor"),
           plt.Line2D([], [], color=np.array(visualize.LABEL_COLORS[0]) / 255, label="sampled negative anchor"),
           plt.Line2D([], [], color=(0, 200 / 255, 0), label="foreground RoI"),
           plt.Line2D([], [], color="cyan", ls="--", label="ground truth")]
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9)
plt.show()
levels = LevelMapper(2, 5)([rois]) + 2            # the FPN level rule of lesson 09, on the sampled RoIs
sides = np.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
print(f"sampled RoIs pooled from each level: { {f'P{k}': int((levels == k).sum()) for k in range(2, 6)} }; "
      f"RoI sides {sides.min():.0f}-{sides.max():.0f} px (P3 starts at 112)")

# %%
targets_28 = tinter["mask_targets"]
mask_labels = tinter["mask_labels"]
picked = tinter["mask_logits"][np.arange(len(mask_labels)), mask_labels]
predicted_28 = 1 / (1 + np.exp(-picked))
n = min(8, len(targets_28))
fig = visualize.show_masks(np.concatenate([targets_28[:n], predicted_28[:n]]),
                           titles=[f"target {class_names[lbl]}" for lbl in mask_labels[:n]] + ["predicted"] * n, cols=n)
plt.show()

# %% [markdown]
# ## A gallery of held-out detections
# Eight images the model never saw, with its detections above a score of 0.5.

# %%
fig, axes = plt.subplots(2, 4, figsize=(14, 7.2))
for ax, i in zip(axes.ravel(), range(8)):
    img, _ = val_ds[i % len(val_ds)]
    show_detections(ax, img, model([img])[0], class_names)
plt.suptitle("held-out images: detections with score > 0.5 (colour = class, label = class and score)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Real photographs: the COCO sample
# The package ships 8 COCO 2017 training images for overfitting checks (`coco-overfit`). A from-scratch
# model will not learn COCO from 8 images, but it can memorise them: that the losses go down and the
# training images are found again is the test that every piece fits together on real data (80 classes,
# images resized to a 256-pixel short side).

# %%
coco_config = TrainConfig(
    model="r18-coco-tiny", name="lesson13-coco-overfit" + ("-quick" if QUICK else ""), output_dir="runs", dataset="coco-overfit",
    steps=2 if QUICK else 200, batch_size=2, lr=0.02, warmup_steps=1 if QUICK else 50, clip_grad_norm=10.0,
    min_size=128 if QUICK else 256, max_size=192 if QUICK else 384,
    val_loss_images=0, log_every=1 if QUICK else 10, checkpoint_every=0, hflip_prob=0.0,
    val_max_images=2 if QUICK else 8, progress=False, seed=0,
)
coco_trainer = Trainer(coco_config)
start = time.perf_counter()
coco_result = coco_trainer.fit()
print(f"{coco_result['step']} steps in {time.perf_counter() - start:.0f} s")
print(format_stats_table(coco_result["val"]))

# %%
coco_rows = [r for r in read_log(coco_trainer.run_dir) if "loss" in r]
coco_model = coco_trainer.model.eval()
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.2, 1, 1]})
axes[0].plot([r["step"] for r in coco_rows], [r["loss"] for r in coco_rows])
axes[0].set_xlabel("step"), axes[0].set_ylabel("total loss"), axes[0].set_title("overfitting 8 COCO images")
names = coco_trainer.class_names
for ax, i in zip(axes[1:], range(2)):
    img, _ = coco_trainer.val_dataset[i]
    show_detections(ax, img, coco_model([img])[0], names, fontsize=10)
    ax.set_title(f"training image {i}: detections with score > 0.5", fontsize=11)
plt.show()

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** How many anchors does the r18-shapes model place on a 128×128 input? Compute
# `num_anchors` from the configuration (levels of stride 4 … 64, three ratios) and check it against
# `tinter["anchors"][0]`.

# %% tags=exercise-1
num_anchors = None

# %% tags=check-1
with exercise(1, "14_mask_rcnn"):
    if num_anchors is None:
        raise NotImplementedError
    assert num_anchors == len(tinter["anchors"][0])

# %% [markdown]
# **Exercise 2.** From the intermediates of the eval-mode call, what fraction of the proposals after NMS
# overlaps some ground-truth object with IoU ≥ 0.5? Set `proposal_precision` (use
# `minimaskrcnn.ops.boxes.box_iou`; the proposals are in the resized input's pixels, which for these
# 128×128 images equal the original ones).

# %% tags=exercise-2
proposal_precision = None

# %% tags=check-2
with exercise(2, "14_mask_rcnn"):
    if proposal_precision is None:
        raise NotImplementedError
    from minimaskrcnn.ops.boxes import box_iou

    expected = float((box_iou(proposals, target["boxes"]).max(1) >= 0.5).mean()) if len(target["boxes"]) else 0.0
    assert abs(proposal_precision - expected) < 1e-9
    print(f"{proposal_precision:.0%} of the proposals cover an object: the box head's job is to sort them out")

# %% [markdown]
# **Exercise 3 (why).** The mask loss of a freshly initialised model is often the largest of the five, and
# it falls fastest. Set `answer_3`:
#
# * (a) the mask head has the most parameters;
# * (b) it is a per-pixel loss averaged over 28×28 pixels of every positive RoI, with targets that are
#   mostly easy (inside or outside the shape), so it has a lot of easy signal to learn from first;
# * (c) the mask head runs before the box head.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "14_mask_rcnn"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b"

# %% [markdown]
# ## Summary
# * `build_model` + `Trainer` train the whole network on the sum of its five losses.
# * `mm.record_intermediates()` exposes every stage: anchors and their labels, proposals before and after
#   NMS, sampled RoIs, mask targets and predictions, detections.
# * The same code runs torchvision's ResNet-50 model, and loads its weights (see the project README).
