"""Solutions to lesson 13's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def ap_11_point(recall, precision):
    total = 0.0
    for r in np.linspace(0, 1, 11):
        reached = recall >= r
        total += precision[reached].max() if reached.any() else 0.0
    return total / 11


voc_ap50 = np.mean([ap_11_point(curves[c][0][0], curves[c][0][1]) for c in curves])

# %% exercise-2
def ap_without_envelope(recall, precision):
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return np.mean([precision[i] if i < len(precision) else 0.0 for i in idx])


ap50_raw = np.mean([ap_without_envelope(curves[c][0][0], curves[c][0][1]) for c in curves])

# %% exercise-3
answer_3 = "a"
