"""Solutions to lesson 03's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
proposals = np.repeat(gt_box, 1000, 0)
size = np.tile(gt_box[0, 2:] - gt_box[0, :2], 2)                # (w, h, w, h)
proposals = proposals + rng.normal(0, 0.1, proposals.shape) * size
proposals = proposals[box_ops.box_iou(gt_box, proposals)[0] >= 0.5]  # the box head's foreground
targets = np.repeat(gt_box, len(proposals), 0)
std_unit = encode(targets, proposals, (1.0, 1.0, 1.0, 1.0)).std(axis=0)
std_weighted = encode(targets, proposals, (10.0, 10.0, 5.0, 5.0)).std(axis=0)

# %% exercise-2
def tile_centred(cell, grid_h, grid_w, stride):
    return tile(cell, grid_h, grid_w, stride) + np.float32(stride / 2)

# %% exercise-3
answer_3 = "b"
