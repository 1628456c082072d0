# %% [markdown]
# # 17 · The paper's ablations, in miniature
#
# **Goal.** Re-run, on the synthetic shapes data, the experiments by which the Mask R-CNN paper justified
# its design (§4.2, Table 2): RoIAlign against RoIPool, a per-pixel sigmoid against a per-pixel softmax
# over classes, class-specific against class-agnostic masks; and one later finding, on masks for classes
# that had no mask labels in training (Deep-MAC, Birodkar et al. 2021: train the mask head on
# ground-truth boxes instead of proposals). You will end with a table of box and mask AP, AP50 and AP75
# per variant, and a few sentences on what it shows.

# %% [markdown]
# ## The idea
#
# Each variant changes one piece of the same small model ("r18-shapes" on 96×96 images) and is trained
# with the same recipe, seed and number of steps:
#
# | variant | what changes | the paper says |
# |---|---|---|
# | baseline | RoIAlign, per-pixel sigmoid, one mask per class | |
# | RoIPool | both heads pool with RoIPool (lesson 07) | Table 2c: RoIAlign +3 mask AP, +5 AP75 (more with stride 32) |
# | softmax | the mask loss is a per-pixel softmax over classes (lesson 12) | Table 2b: sigmoid +5.5 mask AP |
# | class-agnostic | one mask for all classes | §4.2: 29.7 vs 30.3 mask AP, "nearly as effective" |
# | partial, proposals | class-agnostic; no mask loss for triangles; mask head on positive proposals | |
# | partial, gt boxes | the same, but the mask head trains on ground-truth boxes | Deep-MAC: better masks for the unseen class |
#
# The last two ask: can the mask head segment triangles although it never saw a triangle mask? Their
# mask AP is reported for triangles only (the boxes still learn all three classes).
#
# **Caveat.** A small model, 96-pixel synthetic images and a short schedule make these *miniatures*:
# differences of a point or two are within the noise of a single seed. The notebook prints what it finds
# and does not force the paper's conclusions on it.

# %%
import contextlib
import dataclasses
import io
import time

import matplotlib.pyplot as plt
import numpy as np
from _helpers import QUICK, exercise
from pycocotools.cocoeval import COCOeval

import minimaskrcnn as mm
from minimaskrcnn import nn, visualize
from minimaskrcnn.evaluate import detections_to_coco_results, run_model
from minimaskrcnn.models import (
    GeneralizedRCNNTransform,
    MaskRCNN,
    RegionProposalNetwork,
    get_config,
    resnet_fpn_backbone,
)
from minimaskrcnn.models.poolers import MergeLevels, MultiScaleRoIAlign, convert_to_roi_format, setup_scales
from minimaskrcnn.models.roi_heads import (
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    fastrcnn_loss,
    maskrcnn_loss,
)
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops.masks import project_masks_on_boxes
from minimaskrcnn.ops.roi_pool import roi_pool
from minimaskrcnn.train import TrainConfig, Trainer

plt.rcParams["figure.dpi"] = 80

# %% [markdown]
# ## The variants, as small replacements of library parts
# ### RoIPool on every FPN level
# The library's `MultiScaleRoIAlign` with `roi_pool` in place of `roi_align` (same level mapping).

# %%
class MultiScaleRoIPool(MultiScaleRoIAlign):
    def forward(self, features, boxes, image_shapes):
        x_filtered = [v for k, v in features.items() if k in self.featmap_names]
        scales, mapper = setup_scales([tuple(x.shape[-2:]) for x in x_filtered], image_shapes)
        rois = convert_to_roi_format(boxes)
        levels = mapper(boxes) if len(rois) else np.zeros(0, dtype=np.int64)
        pooled, idx_per_level = [], []
        for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
            idx = np.nonzero(levels == level)[0]
            if len(idx) == 0 and len(rois) > 0:
                continue
            pooled.append(roi_pool(feature, rois[idx], self.output_size, scale))
            idx_per_level.append(idx)
        if len(pooled) == 1:
            return pooled[0]
        return MergeLevels.apply(*pooled, idx_per_level=idx_per_level, num_rois=len(rois))

# %% [markdown]
# ### Mask predictors: class-agnostic, and softmax at inference
# A class-agnostic predictor has one output channel, repeated for every class so that the rest of the
# code (which picks the channel of the class) is unchanged: every class reads, and trains, the same mask.
# A softmax-trained predictor decides per pixel which class wins the softmax; the library thresholds
# the sigmoid of the picked channel at 0.5, so we hand it `log p_k − log max_{j≠k} p_j`, whose sigmoid
# passes 0.5 exactly where class k wins.

# %%
class ClassAgnosticMaskPredictor(nn.Module):
    def __init__(self, in_channels, dim_reduced, num_classes):
        super().__init__()
        self.inner = MaskRCNNPredictor(in_channels, dim_reduced, 1)
        self.num_classes = num_classes

    def forward(self, x):
        single = self.inner(x)                                  # (K, 1, S, S)
        return mm.cat([single] * self.num_classes, dim=1)       # (K, L, S, S), all channels equal


class SoftmaxMaskPredictor(MaskRCNNPredictor):
    def forward(self, x):
        logits = super().forward(x)
        if self.training:
            return logits
        # a pixel belongs to class k's mask where k wins the softmax (the multinomial decision): hand the
        # library z_k = log p_k - log max_{j != k} p_j, whose sigmoid is above 0.5 exactly there
        z = logits.numpy().astype(np.float64)
        log_p = z - z.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        L = z.shape[1]
        best_other = np.stack([np.delete(log_p, k, axis=1).max(1) for k in range(L)], axis=1)
        return mm.tensor((log_p - best_other).astype(logits.dtype))


# %% [markdown]
# ### The heads' training step, with the variant's choices
# The library's `RoIHeads.forward` in training mode, written out, with three switches: which loss the
# masks get, which RoIs the mask head trains on, and which classes have mask labels. Inference is the
# library's own.

# %%
@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    pool: str = "align"            # "align" or "pool"
    mask_loss: str = "sigmoid"     # "sigmoid" or "softmax"
    agnostic: bool = False         # one mask for all classes
    mask_classes: tuple | None = None  # labels that have mask labels (None: all)
    mask_rois: str = "proposals"   # "proposals" (positive RoIs) or "gt" (ground-truth boxes)


class AblationRoIHeads(RoIHeads):
    def __init__(self, *args, variant, **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        v = self.variant
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)

        gt_masks = [np.asarray(t["masks"]) for t in targets]
        gt_labels = [np.asarray(t["labels"]) for t in targets]
        if v.mask_rois == "gt":                                  # Deep-MAC: crops of the gt boxes
            mask_rois = [np.asarray(t["boxes"]).astype(p.dtype) for t, p in zip(targets, proposals)]
            mask_matched = [np.arange(len(t["boxes"])) for t in targets]
        else:                                                    # the paper: positive proposals
            positive = [np.nonzero(lbl > 0)[0] for lbl in labels]
            mask_rois = [p[pos] for p, pos in zip(proposals, positive)]
            mask_matched = [m[pos] for m, pos in zip(matched_idxs, positive)]
        if v.mask_classes is not None:                           # only these classes have mask labels
            keep = [np.isin(g[m], v.mask_classes) for g, m in zip(gt_labels, mask_matched)]
            mask_rois = [r[k] for r, k in zip(mask_rois, keep)]
            mask_matched = [m[k] for m, k in zip(mask_matched, keep)]

        if sum(len(r) for r in mask_rois) == 0:
            loss_mask = next(iter(self.mask_predictor.parameters())).sum() * 0
        else:
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_rois, image_shapes)))
            if v.mask_loss == "sigmoid":
                loss_mask = maskrcnn_loss(mask_logits, mask_rois, gt_masks, gt_labels, mask_matched)
            else:                                                # per-pixel softmax over the classes
                S = mask_logits.shape[-1]
                t = np.concatenate([project_masks_on_boxes(g, r, m, S) for g, r, m in zip(gt_masks, mask_rois, mask_matched)])
                cls = np.concatenate([g[m] for g, m in zip(gt_labels, mask_matched)])
                loss_mask = F.cross_entropy(mask_logits, np.where(t >= 0.5, cls[:, None, None], 0))
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}

# %% [markdown]
# ### Building and training one variant
# A model, the variant's replacements, and the library's training loop with the shared recipe.

# %%
STEPS = 3 if QUICK else 500
base_config = TrainConfig(
    model="r18-shapes", output_dir="runs", data_dir="runs/data/shapes96" + ("-quick" if QUICK else ""),
    image_size=96, min_size=96, max_size=96,
    steps=STEPS, batch_size=2 if QUICK else 4, lr=0.02, warmup_steps=1 if QUICK else 100,
    num_train_images=6 if QUICK else 600, num_val_images=4 if QUICK else 64, val_loss_images=0,
    log_every=1 if QUICK else 50, checkpoint_every=0, progress=False, seed=0,
)


def build_variant(variant, config):
    """The r18-shapes model with the variant's parts, assembled from parts in the pipeline's order, so that
    every variant starts from the same weights wherever it has the same layers."""
    model_config = get_config(config.model, num_classes=4, seed=config.seed, min_size=config.min_size,
                              max_size=config.max_size)
    b, m, levels = model_config.box, model_config.mask, ["0", "1", "2", "3"]
    nn.init.manual_seed(config.seed)
    backbone = resnet_fpn_backbone(model_config.backbone)
    C = backbone.out_channels
    rpn = RegionProposalNetwork.from_config(model_config, C)
    Pool = MultiScaleRoIPool if variant.pool == "pool" else MultiScaleRoIAlign
    MaskPredictor = (ClassAgnosticMaskPredictor if variant.agnostic
                     else SoftmaxMaskPredictor if variant.mask_loss == "softmax" else MaskRCNNPredictor)
    roi_heads = AblationRoIHeads.from_config(
        model_config, C, variant=variant,
        box_roi_pool=Pool(levels, b.roi_output_size, b.sampling_ratio),
        box_head=TwoMLPHead(C * b.roi_output_size ** 2, b.representation_size),
        box_predictor=FastRCNNPredictor(b.representation_size, 4),
        mask_roi_pool=Pool(levels, m.roi_output_size, m.sampling_ratio),
        mask_head=MaskRCNNHeads(C, m.layers, m.dilation),
        mask_predictor=MaskPredictor(m.layers[-1], m.dim_reduced, 4),
    )
    transform = GeneralizedRCNNTransform.from_config(model_config.transform, seed=model_config.seed)
    return MaskRCNN(backbone, rpn, roi_heads, transform, config=model_config)


def segm_ap_for(model, dataset, category_ids):
    """Mask AP, AP50, AP75 counting only objects (and detections) of the given categories."""
    detections, image_ids = run_model(model, dataset)
    results = detections_to_coco_results(detections, image_ids, dataset.label_to_category_id, "segm")
    results = [r for r in results if r["category_id"] in category_ids]
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(dataset.coco, dataset.coco.loadRes(results), "segm")
        coco_eval.params.catIds = list(category_ids)
        coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
    return dict(zip(["AP", "AP50", "AP75"], coco_eval.stats[:3]))


def run_variant(variant):
    config = dataclasses.replace(base_config, name=f"ablation-{variant.name}" + ("-quick" if QUICK else ""))
    model = build_variant(variant, config)
    trainer = Trainer(config, model=model)
    start = time.perf_counter()
    result = trainer.fit()
    row = {"variant": variant.name, "seconds": time.perf_counter() - start}
    for iou_type in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            row[f"{iou_type}_{k}"] = result["val"][iou_type][k]
    if variant.mask_classes is not None:               # mask AP on the classes without mask labels
        unseen = [c for c in (1, 2, 3) if c not in variant.mask_classes]
        for k, value in segm_ap_for(trainer.model, trainer.val_dataset, unseen).items():
            row[f"unseen_segm_{k}"] = value
    return row, trainer

# %% [markdown]
# ## Run them
# Six trainings of the same length. Each prints its row when it is done.

# %%
TRIANGLE = 3
variants = [
    Variant("baseline"),
    Variant("RoIPool", pool="pool"),
    Variant("softmax", mask_loss="softmax"),
    Variant("class-agnostic", agnostic=True),
    Variant("partial, proposals", agnostic=True, mask_classes=(1, 2)),
    Variant("partial, gt boxes", agnostic=True, mask_classes=(1, 2), mask_rois="gt"),
]
rows, trainers = [], {}
for variant in variants:
    row, trainer = run_variant(variant)
    rows.append(row)
    trainers[variant.name] = trainer
    print(f"{variant.name:20s} done in {row['seconds']:.0f} s: box AP {row['bbox_AP']:.3f}, mask AP {row['segm_AP']:.3f}")

# %% [markdown]
# ## The table
# Box and mask AP of every variant on the held-out images.

# %%
def fmt(v):
    return f"{100 * v:5.1f}" if v >= 0 else "   - "


header = f"{'variant':20s} | {'box AP':>6s} {'AP50':>5s} {'AP75':>5s} | {'mask AP':>7s} {'AP50':>5s} {'AP75':>5s} | {'triangle mask AP':>16s} {'AP50':>5s} {'AP75':>5s}"
print(header)
print("-" * len(header))
for r in rows:
    unseen = (f"{fmt(r['unseen_segm_AP']):>16s} {fmt(r['unseen_segm_AP50'])} {fmt(r['unseen_segm_AP75'])}"
              if "unseen_segm_AP" in r else f"{'':>16s} {'':5s} {'':5s}")
    print(f"{r['variant']:20s} | {fmt(r['bbox_AP']):>6s} {fmt(r['bbox_AP50'])} {fmt(r['bbox_AP75'])} | "
          f"{fmt(r['segm_AP']):>7s} {fmt(r['segm_AP50'])} {fmt(r['segm_AP75'])} | {unseen}")
print(f"\n({STEPS} steps of {base_config.batch_size} images each, {base_config.num_val_images} held-out images; numbers are percent)")

# %%
names = [r["variant"] for r in rows[:4]]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
for ax, iou_type in zip(axes, ("bbox", "segm")):
    for j, k in enumerate(("AP", "AP50", "AP75")):
        ax.bar(np.arange(4) + 0.27 * (j - 1), [100 * r[f"{iou_type}_{k}"] for r in rows[:4]], width=0.27, label=k)
    ax.set_xticks(np.arange(4), names), ax.set_title(f"{'box' if iou_type == 'bbox' else 'mask'} AP (%)")
axes[0].legend()
plt.show()

# %% [markdown]
# ### What the masks look like: RoIAlign against RoIPool, and an unseen class
# The same held-out images through the baseline and the RoIPool model; then triangles segmented by the two
# partially supervised models, which never saw a triangle mask.

# %%
val_ds = trainers["baseline"].val_dataset
class_names = trainers["baseline"].class_names
fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
for col, i in enumerate(range(4)):
    image, _ = val_ds[i % len(val_ds)]
    for row_idx, name in enumerate(("baseline", "RoIPool")):
        model = trainers[name].model.eval()
        axes[row_idx, col].imshow(visualize.draw_detections(image, model([image])[0], class_names, score_threshold=0.5))
        axes[row_idx, col].set_title(name, fontsize=9), axes[row_idx, col].axis("off")
plt.show()

with_triangles = [i for i in range(len(val_ds)) if TRIANGLE in val_ds[i][1]["labels"]][:4]
fig, axes = plt.subplots(2, max(len(with_triangles), 1), figsize=(13, 6.6), squeeze=False)
for col, i in enumerate(with_triangles):
    image, _ = val_ds[i]
    for row_idx, name in enumerate(("partial, proposals", "partial, gt boxes")):
        model = trainers[name].model.eval()
        out = model([image])[0]
        keep = out["labels"] == TRIANGLE
        axes[row_idx, col].imshow(visualize.draw_detections(image, {k: v[keep] for k, v in out.items()}, class_names, score_threshold=0.5))
        axes[row_idx, col].set_title(f"{name}: triangles", fontsize=9), axes[row_idx, col].axis("off")
plt.show()

# %% [markdown]
# ### What we found
# The next cell states the comparisons the paper made, from the numbers above, and says whether each
# went the paper's way here. Read them with the caveat from the top: one seed, a small model, a short
# schedule; differences of a point or two are noise.

# %%
by = {r["variant"]: r for r in rows}


def points(a, b, key):
    return 100 * (by[a][key] - by[b][key])


def direction(d, noise=2.0):
    return "no clear difference" if abs(d) < noise else ("better" if d > 0 else "worse")


d75, d_all = points("baseline", "RoIPool", "segm_AP75"), points("baseline", "RoIPool", "segm_AP")
print(f"RoIAlign vs RoIPool: mask AP {d_all:+.1f}, mask AP75 {d75:+.1f}, box AP75 {points('baseline', 'RoIPool', 'bbox_AP75'):+.1f} points "
      f"-> RoIAlign {direction(d75)} at AP75 (paper: better, most at AP75)")
d = points("baseline", "softmax", "segm_AP")
print(f"sigmoid vs softmax masks: mask AP {d:+.1f} points -> sigmoid {direction(d)} (paper: +5.5)")
d = points("baseline", "class-agnostic", "segm_AP")
print(f"class-specific vs class-agnostic masks: mask AP {d:+.1f} points -> {direction(d)} (paper: +0.6, 'nearly as effective')")
d = points("partial, gt boxes", "partial, proposals", "unseen_segm_AP")
print(f"triangles without mask labels, mask head on gt boxes vs on proposals: mask AP {d:+.1f} points -> gt boxes {direction(d)} "
      f"(Deep-MAC: better, with a much stronger mask head)")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Which variant has the best mask AP75 in your table? Set `best_ap75` to its name.

# %% tags=exercise-1
best_ap75 = None

# %% tags=check-1
with exercise(1, "17_ablations"):
    if best_ap75 is None:
        raise NotImplementedError
    assert best_ap75 == max(rows, key=lambda r: r["segm_AP75"])["variant"]

# %% [markdown]
# **Exercise 2.** For the RoIPool variant, by how many points (percent) does mask AP75 differ from the
# baseline, and how does that compare with the difference at AP50? Set `gap_ap75` and `gap_ap50`
# (baseline minus RoIPool, in points).

# %% tags=exercise-2
gap_ap75 = None
gap_ap50 = None

# %% tags=check-2
with exercise(2, "17_ablations"):
    if gap_ap75 is None:
        raise NotImplementedError
    assert abs(gap_ap75 - points("baseline", "RoIPool", "segm_AP75")) < 1e-6
    assert abs(gap_ap50 - points("baseline", "RoIPool", "segm_AP50")) < 1e-6
    print(f"baseline - RoIPool: {gap_ap50:+.1f} points at AP50, {gap_ap75:+.1f} at AP75")

# %% [markdown]
# **Exercise 3 (why).** Why might training the mask head on ground-truth boxes help it segment a class it
# has no masks for? Set `answer_3`:
#
# * (a) ground-truth boxes are tight and centred on whole objects, so the head learns a generic
#   "segment the object that fills this box" rather than cues tied to the proposals of the seen classes;
# * (b) ground-truth boxes are more numerous than proposals;
# * (c) the box head then learns the unseen class better.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "17_ablations"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
# * Each ablation is a small swap of one library part: the pooler, the mask predictor, the mask loss,
#   the RoIs the mask head trains on.
# * The table above is this notebook's own evidence; the paper's numbers come from COCO with ResNet-50
#   and 160k iterations, and small-scale miniatures need several seeds before they can confirm them.
