"""Solutions to lesson 18's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def gt_box_crops(target):
    """(boxes (K, 4) float32, instance indices (K,) int64) of the instances with a mask."""
    idx = np.flatnonzero(target["has_mask"]).astype(np.int64)
    return target["boxes"][idx].astype(np.float32), idx

# %% exercise-2
zeroed = gt_masks.copy()
zeroed[1] = 0  # the box-only star as an "all background" label
xt = mm.Tensor(logits.copy(), requires_grad=True)
maskrcnn_loss(xt, [rois], [zeroed], [gt_labels], [matched]).backward()
zero_mask_grad_mean = float(xt.grad[1].mean())

# %% exercise-3
answer_3 = "b"

# %% exercise-4
key = "unseen_gt_box_mask_IoU"
best_unseen_iou_arm = max(results["arms"], key=lambda a: results["arms"][a][key]["mean"])
d, noise, _ = compare("gtbox_hourglass", "proposals_hourglass", key)
clear_gtbox_effect_hourglass = bool(d > noise)
