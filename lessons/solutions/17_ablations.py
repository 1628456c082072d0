"""Solutions to lesson 17's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
box = np.array([70.0, 20.0, 150.0, 101.0])
scaled = box / 32
corners = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # C's round: halves away from zero
moved = corners * 32 - box

# %% exercise-2
diffs = np.array([31.0, 29.5, 30.8, 28.9, 30.1]) - np.array([29.8, 29.9, 29.0, 28.7, 29.4])
mean = float(np.mean(diffs))
std = float(np.std(diffs, ddof=1))
resolved = bool(abs(mean) > 2 * std)

# %% exercise-3
answer_3 = "a"
