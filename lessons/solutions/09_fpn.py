"""Solutions to lesson 09's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
# stem: conv 7x7/2 then max pool 3x3/2 -> stride 4; each later stage halves; P6 keeps every other pixel
pyramid_sizes = [(800 // 4, 1216 // 4), (800 // 8, 1216 // 8), (800 // 16, 1216 // 16), (800 // 32, 1216 // 32)]
pyramid_sizes.append(((pyramid_sizes[-1][0] + 1) // 2, (pyramid_sizes[-1][1] + 1) // 2))  # 25 -> 13 (ceil)

# %% exercise-2
# floor(4 + log2(s / 224)) >= 3  <=>  s >= 224 / 2 = 112;  >= 5  <=>  s >= 2 * 224 = 448
first_p3 = 112
first_p5 = 448

# %% exercise-3
answer_3 = "b"
