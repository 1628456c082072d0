"""Solutions to lesson 17's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
box = np.array([70.0, 20.0, 150.0, 101.0])
scaled = box / 32
corners = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # C's round: halves away from zero
moved = corners * 32 - box

# %% exercise-2
a, b = results.variants["c4_roialign_avg"], results.variants["c4_roipool"]
diffs = [100 * (a["mask_AP75"][a["seeds"].index(s)] - b["mask_AP75"][b["seeds"].index(s)])
         for s in a["seeds"] if s in b["seeds"]]
mean = float(np.mean(diffs))
std = float(np.std(diffs, ddof=1))
resolved = abs(mean) > 2 * std

# %% exercise-3
answer_3 = "a"
