"""Solutions to lesson 14's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
# levels of stride 4, 8, 16, 32, 64 on 128 x 128: 32^2 + 16^2 + 8^2 + 4^2 + 2^2 cells, 3 anchors each
num_anchors = 3 * sum((128 // s) ** 2 for s in (4, 8, 16, 32, 64))

# %% exercise-2
from minimaskrcnn.ops.boxes import box_iou

proposal_precision = float((box_iou(proposals, target["boxes"]).max(1) >= 0.5).mean())

# %% exercise-3
answer_3 = "b"
