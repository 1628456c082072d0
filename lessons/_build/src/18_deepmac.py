# %% [markdown]
# # 18 · Masks for classes that were never masked
#
# **Goal.** Train Mask R-CNN when only some classes have mask labels and the others have boxes only, and
# ask whether it can segment the classes it never saw a mask of. You will build the three pieces that
# make this possible (box-only instances, the masked mask loss, the choice of crops the mask head trains
# on), meet the deep mask heads of Deep-MAC (Birodkar et al., ICCV 2021), and end with the 2×2
# experiment {proposal crops, ground-truth-box crops} × {4-conv head, hourglass head} in miniature, its
# numbers next to Deep-MAC's, and pictures of the masks each of the four models draws for stars, rings
# and crosses, shapes none of them was ever shown a mask of.

# %% [markdown]
# ## The idea
#
# **The partially supervised setting** (Hu et al. 2018, "Learning to Segment Every Thing"). A box label
# takes a few seconds to draw, a mask label about ten times longer (the Deep-MAC authors quote about 7 s
# against up to 80 s per instance). So many data sets have boxes for every class and masks for a few.
# The COCO benchmark of this setting trains with masks for the 20 PASCAL VOC classes only ("seen") and
# measures mask AP on the 60 others ("unseen"): VOC → non-VOC.
#
# Three things have to change in Mask R-CNN:
#
# 1. **Box-only instances.** An instance without a mask still has a box and a class: it trains the RPN
#    and the box head like any other, and is **left out** of the mask targets and the mask loss.
#    Giving it an all-zero mask instead would teach the mask head that the object is background.
# 2. **A class-agnostic mask head.** Mask R-CNN predicts one mask per class and trains only the channel
#    of the RoI's class; the channel of an unseen class would never receive a gradient. With one channel
#    for all classes, whatever the head learns on seen classes is what it draws for unseen ones.
# 3. **Deep-MAC's two findings** (its abstract). (a) Train the mask head on crops of the
#    *ground-truth boxes* rather than of the positive proposals (Mask R-CNN's default, proposals and gt
#    boxes): this "dramatically improves its performance on novel classes". (b) Then the head's
#    *architecture* matters a great deal for unseen classes, although many architectures perform about
#    the same when every class has masks: deep heads (ResNets, hourglass encoder-decoders, Newell et al.
#    2016) generalise far better than the usual 2-4 convs. In the authors' Mask R-CNN (ResNet-50-FPN, COCO VOC → non-VOC, class-agnostic head on
#    ground-truth boxes; TF model garden, `deepmac_maskrcnn`): **25.9** mask mAP with the default head on
#    14×14 crops, **33.1** with an Hourglass-52 head on 32×32 crops.
#
# **Why would the crops matter?** A positive proposal overlaps its object with IoU ≥ 0.5: it may cut
# the object or hold part of another one, and the head must decide which object the crop is about. A
# hypothesis (which the experiment below can test, not a statement of the paper): a head trained on
# such crops can lean on what it knows of the seen classes' shapes (this arc is part of a circle: close
# it), knowledge that does not transfer to a star; a tight ground-truth crop always holds one whole object
# filling the box, so "the object that fills this box" can be learnt without knowing the class.
#
# **The miniature.** Synthetic shapes of six kinds: circles, squares and triangles have masks; stars,
# rings and crosses have boxes only. The unseen kinds are unlike the seen ones on purpose (concave
# corners, a hole): a head that fills a convex blob inside the box fails on them, a head that segments
# "the pixels of the object in the box" succeeds. Two metrics for the unseen classes: **mask AP** (what a
# user sees, which also depends on detection) and the **mean mask IoU on ground-truth boxes** (the mask
# head alone, given perfect boxes).
#
# Shapes: gt boxes (M, 4), `has_mask` (M,) bool, RoIs (K, 4), crops (K, C, P, P) with P = 14, masks
# (K, 1, 2P, 2P).

# %%
import json
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

import minimaskrcnn as mm
from minimaskrcnn import gradcheck, visualize
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.data.coco import BoxOnlyInstancesWarning
from minimaskrcnn.experiments import deepmac
from minimaskrcnn.models.mask_heads import EncoderDecoder, HourglassMaskHead, ResidualBlock, build_mask_head
from minimaskrcnn.models.roi_heads import maskrcnn_loss, select_mask_training_rois
from minimaskrcnn.ops import boxes as box_ops
from minimaskrcnn.ops.masks import project_masks_on_boxes
from minimaskrcnn.predict import predict_masks_for_boxes

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's note, in a notebook without widgets
rng = np.random.default_rng(0)
SETUP = deepmac.QUICK_SETUP if QUICK else deepmac.Setup()
# the study's folder (python -m minimaskrcnn.experiments.deepmac, run from the repository's root): its
# trained seed-0 models are reused here; without it the four seed-0 runs are trained now (about 30 min)
WORK = "runs/deepmac-quick" if QUICK else "../runs/deepmac"
print(SETUP)

# %% [markdown]
# ## 1. Box-only instances
#
# `CocoDataset(..., mask_categories=[...])` keeps the masks of those categories only (names, ids, or
# `"voc"` for COCO's 20 VOC classes; `minimaskrcnn train --mask-categories` passes it on). An annotation
# without a segmentation (none, `null` or `[]`) is box-only too. Every target gets `has_mask` (M,) bool,
# and the data set says once how many instances are box-only.

# %%
files = deepmac.make_data(SETUP, os.path.join(WORK, "data"))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", BoxOnlyInstancesWarning)
    train = CocoDataset(files["train_annotations"], files["train_images"], mask_categories=SETUP.seen)
print(caught[0].message if caught else "no box-only instance")
val = CocoDataset(files["val_annotations"], files["val_images"])
print("categories:", train.categories, " with masks:", sorted(train.mask_categories))

has_masks = [train[k][1]["has_mask"] for k in range(len(train))]
# an image with a box-only instance and two with masks (the quick mode's few images may have none)
i = next((k for k, h in enumerate(has_masks) if (~h).sum() >= 1 and h.sum() >= 2),
         next((k for k, h in enumerate(has_masks) if (~h).any() and h.any()), 0))
image, target = train[i]
for key in ("boxes", "labels", "has_mask", "masks"):
    log(key, target[key])
print("pixels per mask:", target["masks"].sum(axis=(1, 2)), " (box-only instances keep an all-zero mask, marked False)")

# %%
names = train.class_names


def big(a, f=3):
    """Nearest-neighbour upsampling of the last two axes, so that 96-px images read at notebook width."""
    return np.repeat(np.repeat(a, f, axis=-2), f, axis=-1)


fig, ax = plt.subplots(1, 2, figsize=(10, 5))
ax[0].imshow(visualize.to_uint8_image(image))
ax[0].set_title("a training image", fontsize=10)
has = target["has_mask"]
colors_i = [visualize.color_for(int(c)) for c in target["labels"]]
drawn = visualize.draw_masks(big(image), big(target["masks"][has]), colors=[c for c, h in zip(colors_i, has) if h])
drawn = visualize.draw_boxes(drawn, 3 * target["boxes"], colors=colors_i,
                             texts=[f"{names[c]}{'' if h else ' (box only)'}" for c, h in zip(target["labels"], has)])
ax[1].imshow(drawn)
ax[1].set_title("its labels: every box, masks of seen classes only", fontsize=10)
for a in ax:
    a.axis("off")
plt.show()

# %% [markdown]
# ## 2. The mask loss without the box-only instances
#
# Mask R-CNN's mask loss is the mean binary cross-entropy over the K positive RoIs × S × S pixels,
# read on the RoI's class channel (lesson 12). With box-only instances, the RoIs matched to them are
# dropped **before** the mean: they add nothing to the loss and get no gradient. By hand, on random
# logits, against `maskrcnn_loss(..., gt_has_mask=...)`:

# %%
S = 8
gt_masks = (rng.uniform(size=(3, 40, 40)) > 0.5).astype(np.uint8)
gt_labels, has_mask = np.array([1, 4, 2]), np.array([True, False, True])  # instance 1 (a star) is box-only
rois = np.array([[2, 2, 30, 30], [5, 0, 38, 25], [0, 6, 33, 39], [8, 8, 36, 30]], np.float64)
matched = np.array([0, 1, 2, 1])  # RoIs 1 and 3 cover the box-only star
logits = rng.standard_normal((4, 1, S, S))  # class-agnostic: one channel

keep = has_mask[matched]
t = project_masks_on_boxes(gt_masks, rois[keep], matched[keep], S)  # (K', S, S) targets in [0, 1]
x = logits[keep, 0]
by_hand = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))  # the stable BCE form
x_t = mm.Tensor(logits.copy(), requires_grad=True)
library = maskrcnn_loss(x_t, [rois], [gt_masks], [gt_labels], [matched], gt_has_mask=[has_mask])
library.backward()
log("loss by hand", by_hand)
log("loss, maskrcnn_loss", library.item())
assert abs(by_hand - library.item()) < 1e-12
log("|grad| of the box-only RoIs", np.abs(x_t.grad[~keep]).max())
log("|grad| of the others", np.abs(x_t.grad[keep]).max())
result = gradcheck(lambda z: maskrcnn_loss(z, [rois], [gt_masks], [gt_labels], [matched], gt_has_mask=[has_mask]),
                   [mm.Tensor(rng.standard_normal((4, 1, S, S)), requires_grad=True)])
print(result.report())
assert result.passed

# %% [markdown]
# ## 3. The crops the mask head trains on
#
# In training, Mask R-CNN's mask head sees the **positive proposals** (IoU ≥ 0.5 with a gt box; the gt
# boxes themselves are added to the proposals, so they are among them). Deep-MAC crops the **gt boxes**
# instead. The mask target of a crop is the gt mask cropped by it and resampled to 2P × 2P
# (`project_masks_on_boxes`). Below, for the objects of one image, the target of the gt box and of four
# positive proposals, made here by jittering the gt box until IoU ≥ 0.5:

# %%
def positive_proposals(box, n, rng, min_iou=0.5):
    """n random boxes around ``box`` with IoU >= min_iou (what the RPN hands the heads as positives)."""
    out = []
    w, h = box[2] - box[0], box[3] - box[1]
    while len(out) < n:
        shift = rng.uniform(-0.3, 0.3, 4) * np.array([w, h, w, h])
        cand = (box + shift)[None].astype(np.float32)
        if (cand[0, 2:] > cand[0, :2]).all() and box_ops.box_iou(cand, box[None])[0, 0] >= min_iou:
            out.append(cand[0])
    return np.array(out)


image, target = train[i]
crops, titles = [], []
for m, (box, label) in enumerate(zip(target["boxes"], target["labels"])):
    if not target["has_mask"][m]:
        continue  # a box-only instance has no mask target: it is never cropped for the mask head
    props = positive_proposals(box, 4, rng)
    boxes_m = np.concatenate([box[None], props])
    crops.append(project_masks_on_boxes(target["masks"], boxes_m, np.full(5, m), 28))
    titles += [f"{names[label]}: gt box"] + [f"proposal, IoU {box_ops.box_iou(p[None], box[None])[0, 0]:.2f}" for p in props]
fig = visualize.show_masks(np.concatenate(crops), titles=titles, cols=5, size=1.8)
fig.suptitle("mask targets (28×28) of each seen object's gt box (left) and of four positive proposals",
             fontsize=10, y=1.03)
plt.show()

# %% [markdown]
# The library's `select_mask_training_rois` picks them: `source="proposals"` (every positive RoI, as
# torchvision, or at most `rois_per_object` random ones per object) or `source="gt_boxes"` (each gt box
# once); either way without the box-only instances. The experiment gives both arms **the same number of
# examples per step**: one crop per object with a mask, its gt box or one random positive proposal
# (drawn among all its positives, which include its gt box, as in Mask R-CNN).

# %%
props = [np.concatenate([positive_proposals(b, 3, rng) for b in target["boxes"]] + [target["boxes"]])]
matched_p = [np.concatenate([np.repeat(np.arange(len(target["boxes"])), 3), np.arange(len(target["boxes"]))])]
labels_p = [target["labels"][matched_p[0]]]
for source, per_object in (("proposals", None), ("proposals", 1), ("gt_boxes", None)):
    r, mi = select_mask_training_rois(props, matched_p, labels_p, [target["boxes"]], [target["has_mask"]], source,
                                      per_object, np.random.default_rng(0))
    print(f"{source:9s} rois_per_object={per_object}: {len(r[0])} crops, of instances {mi[0].tolist()}")

# %% [markdown]
# ## 4. The mask heads
#
# Every head maps the (K, C, P, P) crop to (K, C', P, P); the same predictor (a 2×2 transposed conv and
# a 1×1 conv to one channel) makes the (K, 1, 2P, 2P) mask logits.
#
# * **fcn**: Mask R-CNN's four 3×3 convs + ReLU (C' = C).
# * **hourglass**: a 3×3 conv and a residual block (stem), then an encoder-decoder: at each level a
#   residual "skip" branch at full resolution and a branch that halves the resolution (stride 2), goes
#   one level deeper, comes back through residual blocks and is upsampled 2× to be **added** to the
#   skip; a last 3×3 conv. Deep-MAC's sizes are named by their number of conv layers (Hourglass-10, -20,
#   -52, -100); here Hourglass-20 (two halvings) with a narrow stem, to stay cheap on a CPU.
# * **resnet**: residual blocks at full resolution (Deep-MAC's other deep head; in the library, not in
#   the experiment).

# %%
C = 64  # the FPN channels of the "r18-shapes" model
heads = {"fcn": build_mask_head("fcn", C, layers=(C,) * 4),
         "hourglass": build_mask_head("hourglass", C, width=SETUP.hourglass_width, depth=SETUP.hourglass_depth),
         "resnet": build_mask_head("resnet", C, width=32, depth=4)}
for name, head in heads.items():
    n = sum(p.data.size for p in head.parameters())
    convs = sum(1 for mod in head.modules() if isinstance(mod, mm.nn.Conv2d))
    print(f"{name:10s} {n:8,d} parameters, {convs:2d} convolutions")
x = mm.Tensor(rng.standard_normal((2, C, SETUP.crop_size, SETUP.crop_size)).astype(np.float32))
level, h = heads["hourglass"].hourglass, heads["hourglass"].stem(x)
while isinstance(level, EncoderDecoder):
    log("level input (K, C, P, P)", h)
    h = level.down(h)
    level = level.inner
log("bottom of the hourglass", level(h))
log("hourglass output", heads["hourglass"](x))

# %% [markdown]
# **One level by hand.** `out = skip(x) + upsample(decoder(inner(down(x))))`, with nearest 2× upsampling
# to the skip's exact size (7 → 4 → 8 would not fit 7). Written with the library's `ResidualBlock` and
# the weights of a small library hourglass, it must give the same numbers, and pass a gradient check:

# %%
small = HourglassMaskHead(4, width=4, channels=(4, 6), blocks=(1, 1)).double()  # one halving
level = small.hourglass
z = mm.Tensor(np.random.default_rng(3).standard_normal((2, 4, 7, 7)), requires_grad=True)


def my_level(z):
    skip = level.skip(z)                              # residual block(s) at 7 x 7
    deep = level.decoder(level.inner(level.down(z)))  # 4 x 4: down (stride 2), inner, back to 4 channels
    rows = (np.arange(7) * 4) // 7                    # nearest: output pixel i reads floor(i * 4 / 7)
    return skip + deep[:, :, rows][:, :, :, rows]


log("by hand", my_level(z))
assert np.allclose(my_level(z).numpy(), level(z).numpy(), rtol=0, atol=1e-12)
# ReLU kinks and group norm's division make central differences a little noisier: tolerance 1e-5
result = gradcheck(lambda z_, w_: small(z_), [z, small.hourglass.down[0].conv.weight], tol=1e-5)
print(result.report())
assert result.passed
assert isinstance(level.skip[0], ResidualBlock)

# %% [markdown]
# ## 5. The experiment
#
# Four arms, each trained with three seeds (twelve runs of the same "r18-shapes" model, recipe and
# number of steps; class-agnostic heads, the same 14×14 crops, the same number of mask-head examples
# per step). `python -m minimaskrcnn.experiments.deepmac` runs them and writes
# `lessons/results/deepmac.json`; this notebook reads it.

# %%
with open("results/deepmac.json") as f:
    results = json.load(f)
print("made by:", results["command"])
s = results["setup"]
print(f"{s['steps']} steps of {s['batch_size']} images ({s['image_size']} px), seeds {s['seeds']}; "
      f"seen {s['seen']}, unseen {s['unseen']}; {s['num_val_images']} held-out images; "
      f"{s['total_train_and_eval_seconds'] / 60:.0f} min of training and evaluation in all")
print()
print(deepmac.format_table(results))
other = s["other_metrics"]
print("\nalso measured (mean ± std)   seen IoU gt box     seen box AP   unseen box AP  mask crops per step")
for arm in results["arms"]:
    o = other[arm]
    cells = [f"{100 * o[k]['mean']:5.1f} ± {100 * o[k]['std']:4.1f}"
             for k in ("seen_gt_box_mask_IoU", "seen_box_AP", "unseen_box_AP")]
    print(f"{arm:28s} {cells[0]:>16s} {cells[1]:>15s} {cells[2]:>15s} {o['mask_examples_per_step']['mean']:12.2f}")

# %%
arms = list(results["arms"])
metrics = [("unseen_mask_AP", "unseen classes: mask AP"), ("unseen_gt_box_mask_IoU", "unseen: mask IoU on gt boxes"),
           ("seen_mask_AP", "seen classes: mask AP")]
colors = ["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (key, title) in zip(axes, metrics):
    for j, arm in enumerate(arms):
        e = results["arms"][arm][key]
        ax.bar(j, 100 * e["mean"], yerr=100 * e["std"], color=colors[j], capsize=4, label=arm)
        ax.plot([j] * len(e["values"]), [100 * v for v in e["values"]], "k.", ms=5)
    ax.set_xticks(range(len(arms)), [a.replace("_", "\n") for a in arms], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("%")
fig.suptitle("the four arms (proposal / gt-box crops × 4-conv / hourglass head): mean ± std over seeds, dots: "
             "each seed", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### What the numbers say
#
# A difference between two arms counts here only when it exceeds twice the larger of their two
# seed-to-seed standard deviations (three seeds are few; smaller differences are read as "no clear
# difference"). The next cell applies that rule to the comparisons Deep-MAC makes.

# %%
def mean_std(arm, key):
    e = results["arms"][arm][key]
    return 100 * e["mean"], 100 * e["std"]


def compare(a, b, key):
    (ma, sa), (mb, sb) = mean_std(a, key), mean_std(b, key)
    d, noise = ma - mb, 2 * max(sa, sb)
    verdict = "no clear difference" if abs(d) <= noise else (f"{a} better" if d > 0 else f"{b} better")
    return d, noise, verdict


for key in ("unseen_gt_box_mask_IoU", "unseen_mask_AP", "seen_mask_AP"):
    print(key)
    for a, b in (("gtbox_fcn", "proposals_fcn"), ("gtbox_hourglass", "proposals_hourglass"),
                 ("proposals_hourglass", "proposals_fcn"), ("gtbox_hourglass", "gtbox_fcn")):
        d, noise, verdict = compare(a, b, key)
        print(f"   {a:20s} - {b:20s} {d:+6.1f} points (2 x std {noise:4.1f}): {verdict}")
ref = s["deepmac_reference"]["unseen_mask_AP"]
print(f"\nDeep-MAC (COCO VOC -> non-VOC, gt-box crops): hourglass - fcn = {ref['gtbox_hourglass'] - ref['gtbox_fcn']:+.1f} "
      "points of mask mAP; gt-box crops instead of proposals: 'dramatically' better on novel classes (its abstract)")

# %% [markdown]
# ### Reading (the stored results: 3 seeds × 4 arms, 600 steps each)
#
# * **Seen classes, masks on gt boxes:** training on gt-box crops gives clearly better masks with both
#   heads (IoU about 81 against 77): the head is trained on exactly the crops this metric gives it.
# * **Unseen classes, masks on gt boxes (the mask head alone):** gt-box crops are at most slightly
#   better (+1.1 points with the four convs, +0.6 with the hourglass), within twice the seed-to-seed
#   spread. Not every kind agrees (the per-kind means in `setup["gt_box_mask_IoU_per_category"]`):
#   stars and crosses gain 3-6 points, rings lose 4-5. Deep-MAC's first finding is at best faint here.
# * **Head architecture:** the hourglass is *worse* than the four convs on the unseen classes (−1.6
#   and −2.2 points of IoU, beyond the spread). On the seen classes its masks on gt boxes are as good
#   (77.0 against 77.0 with proposal crops, 81.2 against 80.7 with gt-box crops); its seen mask AP is
#   higher with proposal crops (+4.1, just beyond the spread), but so is its box AP (26.0 against
#   23.4): a difference in detection more than in masks. Deep-MAC found the opposite,
#   and large: +7.2 points of mask mAP for its Hourglass-52 over the default head (33.1 vs 25.9). In the
#   pictures of section 6 every head rounds the stars' and crosses' concave corners into blobs, and the
#   gt-box-trained hourglass fills the rings' holes most.
# * **Unseen mask AP** (detected boxes; box AP is 25-26 on the unseen classes in every arm) ranks the
#   arms proposals_fcn > gtbox_fcn ≈ proposals_hourglass > gtbox_hourglass (clearly only for gt-box
#   against proposal crops with the four convs, and fcn against hourglass on gt boxes): heads trained on
#   exact gt crops lose some AP on detected boxes, which are looser (exercise 3). The first of these
#   two verdicts did not survive a re-run (below).
#
# So this miniature does **not** reproduce Deep-MAC's effect. It differs from the paper in ways that
# may matter, none of them tested here: 600 steps from scratch instead of 70k steps from an
# ImageNet-pretrained ResNet-50; a small Hourglass-20 (stem 16) on 14×14 crops instead of an
# Hourglass-52 (width 64) on 32×32; 3 seen classes instead of 20; and flat-coloured synthetic shapes,
# which a local colour rule segments whatever their shape, where COCO's unseen classes are real objects.
# The switches for a longer study are in `deepmac.Setup` (`crop_size=32`, `hourglass_depth=52`,
# `steps`, ...).

# %% [markdown]
# ### Running it again on today's code
#
# The study above ran before data-parallel training came into the library. Since then the trainer
# draws each image's anchor and RoI samples from a generator keyed by (seed, step, image) (lesson 19),
# so the same command with the same seeds now draws other samples: the same experiment, other
# randomness. `results/deepmac_recheck.json` re-ran seed 0 of every arm on today's code. Each value
# is set beside the study's seed 0 and against the study's spread (mean ± 2 std over its seeds):

# %%
with open("results/deepmac_recheck.json") as f:
    recheck = json.load(f)
print("made by:", recheck["command"])
keys = ("unseen_gt_box_mask_IoU", "unseen_mask_AP", "seen_mask_AP")
print(f"{'seed 0: study → today':22s}" + "".join(f"{k.replace('_', ' '):>24s}" for k in keys))
outside = 0
for arm in recheck["arms"]:
    cells = []
    for key in keys:
        old, new = results["arms"][arm][key], recheck["arms"][arm][key]
        lo, hi = old["mean"] - 2 * old["std"], old["mean"] + 2 * old["std"]
        flag = "" if lo <= new["values"][0] <= hi else " *"
        outside += bool(flag)
        cells.append(f"{100 * old['values'][0]:4.1f}→{100 * new['values'][0]:4.1f} "
                     f"({100 * lo:4.1f}–{100 * hi:4.1f}){flag:2s}")
    print(f"{arm:22s}" + "".join(f"{c:>24s}" for c in cells))
print(f"(in brackets the study's mean ± 2 std; * outside it: {outside} of {len(keys) * len(recheck['arms'])})")

# %% [markdown]
# **What the re-run says** (the stored files). Several of today's seed-0 values fall outside the
# study's mean ± 2 std (marked *): three seeds underestimate how much a run varies when its random
# draws change. Read against that, two findings hold in both runs:
#
# * on the **seen** classes, gt-box crops give better masks on gt boxes (IoU 79.9 and 79.5 against
#   76.7 and 77.2 today; 80.7 and 81.2 against 77.0 and 77.0 in the study; `recheck["setup"]["other_metrics"]`);
# * on the **unseen** classes the hourglass head is worse than the four convs (IoU −1.5 and −4.5 points
#   today, −1.6 and −2.2 in the study), and gtbox_hourglass has the lowest unseen mask AP in both.
#
# The effect of the crops on the unseen classes does not hold: with the hourglass, gt-box crops are
# −1.1 points of IoU today against +0.6 in the study, and the study's one "clear" verdict on unseen
# mask AP (proposals_fcn above gtbox_fcn by 1.9 points) is reversed today (12.6 against 13.7). The
# rule "twice the larger of three seeds' std" was not strict enough there; a firmer study needs more
# seeds (`--seeds 0,1,2,3,4,5`: about 2 h 40 min on one core).

# %% [markdown]
# ## 6. See it: masks of the unseen classes, from each arm
#
# Each of the four seed-0 models is loaded from its checkpoint (trained now if the study's folder is not
# there) and asked for the masks of the **ground-truth boxes** of stars, rings and crosses in held-out
# images: the mask head alone, on the same crops for every arm. Each column is one object, cut out of
# its image with a margin; below it the true mask and each arm's mask (probability > 0.5), with its IoU.

# %%
models = {}
for arm in deepmac.ARMS:
    reused = os.path.isfile(os.path.join(WORK, "runs", f"{arm}-seed0", "metrics.json"))
    models[arm], row, val = deepmac.trained_model(arm, 0, SETUP, WORK)
    seed0 = results["arms"][arm]["unseen_gt_box_mask_IoU"]["values"][0] if not QUICK else None
    origin = "the study's run" if reused else "trained now"
    print(f"{arm:20s} seed 0 ({origin}): unseen IoU on gt boxes"
          f" {row['unseen_gt_box_mask_IoU']:.3f}" + ("" if seed0 is None else f" (results file: {seed0:.3f})"))
    if reused and seed0 is not None and all(results["setup"].get(k) == v for k, v in row["setup"].items()):
        assert abs(row["unseen_gt_box_mask_IoU"] - seed0) < 1e-9  # the same run as in the results file

# %%
unseen_ids = [c for c, n in val.categories.items() if n in SETUP.unseen]
objects = []  # (image index, instance index): the larger unseen objects, two of each kind
for c in unseen_ids:
    found = [(k, m) for k in range(len(val)) for m, lbl in enumerate(val[k][1]["labels"])
             if lbl == c and val[k][1]["masks"][m].sum() >= 300]
    objects += found[:2]
predicted = {}  # (image index, arm) -> masks of the image's boxes
for k in sorted({k for k, _ in objects}):
    image, target = val[k]
    for arm, model in models.items():
        predicted[k, arm] = predict_masks_for_boxes(model, [image], [target["boxes"]], [target["labels"]])[0] > 0.5

rows = ["image", "ground truth"] + list(models)
fig, axes = plt.subplots(len(rows), len(objects), figsize=(1.7 * len(objects), 1.8 * len(rows)), squeeze=False)
for col, (k, m) in enumerate(objects):
    image, target = val[k]
    x1, y1, x2, y2 = target["boxes"][m]
    pad = 0.15 * max(x2 - x1, y2 - y1)
    ys = slice(max(int(y1 - pad), 0), int(y2 + pad) + 1)
    xs = slice(max(int(x1 - pad), 0), int(x2 + pad) + 1)
    gt = target["masks"][m].astype(bool)
    axes[0, col].imshow(visualize.to_uint8_image(image)[ys, xs])
    axes[0, col].set_title(val.categories[int(target["labels"][m])], fontsize=9)
    axes[1, col].imshow(gt[ys, xs], cmap="gray", vmin=0, vmax=1)
    for r, arm in enumerate(models, start=2):
        pred = predicted[k, arm][m]
        axes[r, col].imshow(pred[ys, xs], cmap="gray", vmin=0, vmax=1)
        axes[r, col].set_title(f"IoU {(pred & gt).sum() / max((pred | gt).sum(), 1):.2f}", fontsize=8)
for r, name in enumerate(rows):
    axes[r, 0].set_ylabel(name.replace("_", "\n"), fontsize=8)
for a in axes.flat:
    a.set_xticks([]), a.set_yticks([])
fig.suptitle("unseen classes: masks predicted on their ground-truth boxes, seed 0 of each arm", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# And what a user gets: the detections (score ≥ 0.3; the small models are not confident) of each model
# on one held-out image, masks included.

# %%
k = objects[0][0]
image, _ = val[k]
fig, axes = plt.subplots(2, 2, figsize=(10, 10))
for ax, (arm, model) in zip(axes.flat, models.items()):
    det = model([image])[0]
    det = {key: big(v) if key == "masks" else (3 * v if key == "boxes" else v) for key, v in det.items()}
    ax.imshow(visualize.draw_detections(big(image), det, val.class_names, score_threshold=0.3))
    ax.set_title(arm, fontsize=11)
    ax.axis("off")
fig.suptitle(f"detections (score ≥ 0.3) on held-out image {k}, seed 0 of each arm", fontsize=11)
plt.tight_layout()
plt.show()

# %% [markdown]
# On this image (the stored run) every model finds the ring with a score above 0.9, but the star is
# called a "square" (three models) or not found at all (gtbox_hourglass, at this threshold), and the
# circle is called a square or missed: with a box AP of about 25, the unseen **mask AP** measures
# detection as much as masks, which is why the mask IoU on ground-truth boxes is the cleaner measure
# of the mask head.

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (build).** Write `gt_box_crops(target)`: the boxes the Deep-MAC recipe crops for one
# image's target, and the index of each box's instance: the gt boxes of the instances that have a mask,
# in order. It must agree with `select_mask_training_rois(..., source="gt_boxes")`.

# %% tags=exercise-1
def gt_box_crops(target):
    """(boxes (K, 4) float32, instance indices (K,) int64) of the instances with a mask."""
    raise NotImplementedError


# %% tags=check-1
with exercise(1, "18_deepmac"):
    for k in range(min(len(train), 10)):
        _, tk = train[k]
        boxes_k, idx_k = gt_box_crops(tk)
        r, mi = select_mask_training_rois([np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)],
                                          [tk["boxes"]], [tk["has_mask"]], source="gt_boxes")
        assert np.array_equal(np.asarray(idx_k), mi[0]) and np.allclose(np.asarray(boxes_k), r[0])

# %% [markdown]
# **Exercise 2 (break it on purpose).** Treat the box-only star of section 2 as if an all-zero mask were
# its label: copy `gt_masks`, set the star's mask (index 1) to zeros, compute `maskrcnn_loss` over all
# four RoIs *without* `gt_has_mask`, backpropagate, and set `zero_mask_grad_mean` to the mean gradient
# on RoI 1's logits. Its sign says which way gradient descent pushes the star's mask: positive means
# towards "background everywhere".

# %% tags=exercise-2
zero_mask_grad_mean = None

# %% tags=check-2
with exercise(2, "18_deepmac"):
    if zero_mask_grad_mean is None:
        raise NotImplementedError
    zeroed = gt_masks.copy()
    zeroed[1] = 0
    xt = mm.Tensor(logits.copy(), requires_grad=True)
    maskrcnn_loss(xt, [rois], [zeroed], [gt_labels], [matched]).backward()
    assert abs(zero_mask_grad_mean - xt.grad[1].mean()) < 1e-12
    assert zero_mask_grad_mean > 0
    print(f"mean gradient on the star's logits: {zero_mask_grad_mean:+.2e}: descent lowers them, towards background")

# %% [markdown]
# **Exercise 3 (why).** Mask R-CNN's heads are trained on proposals for a reason: at test time the mask
# head sees *detected* boxes, which are never exactly the gt boxes. Which statement is right? Set
# `answer_3`.
#
# * (a) Training on gt boxes cannot work at test time, since detections differ from gt boxes.
# * (b) Gt-box crops give the head one consistent task (segment the object that fills the box); the box
#   head, trained on proposals, makes detections tight enough that the mask head's task stays the same
#   at test time; what gt crops give up is robustness to loose boxes.
# * (c) Proposals and gt boxes give the head exactly the same targets.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "18_deepmac"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "b"

# %% [markdown]
# **Exercise 4 (read the results).** From `results`, set `best_unseen_iou_arm` to the arm with the
# highest mean unseen mask IoU on gt boxes, and `clear_gtbox_effect_hourglass` to whether, by this
# lesson's rule (|difference of means| > 2 × the larger std), gt-box crops beat proposal crops on that
# metric with the hourglass head.

# %% tags=exercise-4
best_unseen_iou_arm = None
clear_gtbox_effect_hourglass = None

# %% tags=check-4
with exercise(4, "18_deepmac"):
    if best_unseen_iou_arm is None:
        raise NotImplementedError
    key = "unseen_gt_box_mask_IoU"
    assert best_unseen_iou_arm == max(results["arms"], key=lambda a: results["arms"][a][key]["mean"])
    d, noise, _ = compare("gtbox_hourglass", "proposals_hourglass", key)
    assert clear_gtbox_effect_hourglass == bool(d > noise)

# %% [markdown]
# ## Summary
#
# * Box-only instances (`has_mask` False) train the RPN and the box head and are left out of the mask
#   loss; a zero mask in their place would teach "background".
# * To segment classes without mask labels the head must be class-agnostic; Deep-MAC trains it on
#   gt-box crops and makes it deep (an hourglass), and reports a large gain on COCO's non-VOC classes.
# * In this miniature (section 5, read with its seed-to-seed spread and a re-run) neither finding
#   reproduced: gt-box crops helped the seen classes' masks clearly and did nothing consistent for the
#   unseen ones, and the hourglass head was worse than the four convs on unseen classes. A miniature can miss an effect that
#   needs scale: this one says only that the effect does not show at this scale.
# * The library's switches: `MaskHeadConfig(head="hourglass", class_agnostic=True, train_rois="gt_boxes",
#   roi_output_size=32)`, or on the command line `minimaskrcnn train --mask-categories voc --model-arg
#   mask.class_agnostic=true --model-arg mask.train_rois=gt_boxes --model-arg mask.head=hourglass ...`.
