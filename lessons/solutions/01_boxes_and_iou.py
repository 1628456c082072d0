"""Solutions to lesson 01's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def xywh_to_xyxy(boxes):
    boxes = np.asarray(boxes)
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([x, y, x + w, y + h], axis=1)

# %% exercise-2
# (w - d)^2 / (2 w^2 - (w - d)^2) = 1/2  <=>  (w - d)^2 = (2/3) w^2  <=>  d = w (1 - sqrt(2/3))
d_half = 32 * (1 - np.sqrt(2 / 3))  # about 5.87 pixels along each axis

# %% exercise-3
def iou_plus_one(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(bottom_right - top_left + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)
