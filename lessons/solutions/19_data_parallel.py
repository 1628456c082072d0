"""Solutions to lesson 19's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
rank_counts = [512, 384, 0]


def weights_by_hand(rank_counts):
    total = sum(rank_counts)  # the global count: an allreduce of the ranks' counts
    return [n / total if total > 0 else 0.0 for n in rank_counts]


# %% exercise-2
averaged = {n: 0.0 for n in whole}
images, targets = shapes_batch(step=0)  # step 3's batch, forward again (a backward frees its graph)
sizes = [im.shape[-2:] for im in images]
for s, indices in ((slice(0, 2), [0, 1]), (slice(2, 4), [2, 3])):
    rank_losses, _ = part_losses(model, images[s], targets[s], 0, indices, sizes)
    model.zero_grad()
    sum(rank_losses.values()).backward()  # each rank's own mean, unweighted
    for n, p in model.named_parameters():
        averaged[n] = averaged[n] + p.grad / 2
naive_error = max(np.abs(averaged[n] - whole[n]).max() / np.abs(whole[n]).max() for n in whole)
print(f"averaging the ranks' means: largest relative error {naive_error:.2e}")

# %% exercise-3
answer_3 = "a"

# %% exercise-4
# two machines: T(2) = T_c / 2 + S / bw; they pay while this is below T_c, i.e. bw > 2 S / T_c
S = bytes_per_config["maskrcnn_resnet50_fpn"]
break_even_gbps = 2 * S / 0.5 * 8 / 1e9
print(f"a second machine pays above {break_even_gbps:.1f} Gb/s")
