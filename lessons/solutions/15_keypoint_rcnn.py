"""Solutions to lesson 15's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def heatmap_target(keypoint, roi, S=56):
    x, y, v = keypoint
    x1, y1, x2, y2 = roi
    # float32 arithmetic, as keypoints_to_heatmap on float32 inputs
    cx = S - 1 if x == x2 else int(np.floor((x - x1) * (np.float32(S) / (x2 - x1))))
    cy = S - 1 if y == y2 else int(np.floor((y - y1) * (np.float32(S) / (y2 - y1))))
    if v <= 0 or not (0 <= cx < S and 0 <= cy < S):
        return None
    return cy * S + cx

# %% exercise-2
def decode_without_offset(maps, roi):
    x1, y1, x2, y2 = roi
    w, h = max(x2 - x1, 1), max(y2 - y1, 1)
    W, H = int(np.ceil(w)), int(np.ceil(h))
    out = np.zeros((len(maps), 2))
    for j, m in enumerate(maps):
        resized = resize_bicubic(m, H, W)
        yi, xi = np.unravel_index(resized.argmax(), resized.shape)
        out[j] = (x1 + xi * w / W, y1 + yi * h / H)                   # the cell's corner, not its centre
    return out


errors = []
for i in range(min(len(held_out), 20)):
    _, t = held_out[i]
    cells, ok = keypoints_to_heatmap(t["keypoints"], t["boxes"], S)
    for kp_i, box_i, c, v in zip(t["keypoints"], t["boxes"], cells, ok):
        one_hot = np.full((NK, S * S), -10.0, np.float32)
        one_hot[np.arange(NK), c] = 10.0
        errors += list(decode_without_offset(one_hot.reshape(NK, S, S), box_i)[v, 0] - kp_i[v, 0])
mean_shift_px = float(np.mean(errors))

# %% exercise-3
answer_3 = "a"
