"""Solutions to lesson 02's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def batched_nms_loop(boxes, scores, idxs, iou_threshold):
    kept = []
    for cls in np.unique(idxs):
        members = np.nonzero(idxs == cls)[0]                 # indices of this class
        kept.append(members[nms_loop(boxes[members], scores[members], iou_threshold)])
    kept = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")]  # equal scores: lower index first

# %% exercise-2
def nms_geq(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(i)
        later = order[rank + 1:]
        suppressed[rank + 1:] |= iou_one_to_many(boxes[i], boxes[later]) >= iou_threshold
    return np.array(keep, dtype=np.int64)


pair = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], dtype=np.float64)  # overlap 2, union 4: IoU exactly 0.5

# %% exercise-3
answer_3 = "b"  # IoU 0.6 > 0.5 suppresses a neighbour; only a threshold above 0.6 keeps it
