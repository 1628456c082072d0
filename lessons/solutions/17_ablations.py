"""Solutions to lesson 17's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
best_ap75 = max(rows, key=lambda r: r["segm_AP75"])["variant"]

# %% exercise-2
gap_ap75 = 100 * (by["baseline"]["segm_AP75"] - by["RoIPool"]["segm_AP75"])
gap_ap50 = 100 * (by["baseline"]["segm_AP50"] - by["RoIPool"]["segm_AP50"])

# %% exercise-3
answer_3 = "a"
