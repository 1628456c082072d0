# %% [markdown]
# # 19 · Data parallelism: N processes, one batch
#
# **Goal.** Show that training on N processes, each with B/N images of the batch and a copy of the
# model, whose gradients are summed by an *allreduce*, is the same mathematics as training one model
# on the whole batch of B; build the ring allreduce that does the summing; and predict from a small
# scaling model when adding machines pays. You will end with the loss curves of one process and of two
# simulated processes on top of each other, and the speed-up curves of three models on three networks.

# %% [markdown]
# ## The idea
#
# A batch's loss is a mean over the terms it counts: sampled anchors for the RPN losses, sampled RoIs
# for the box head, the mask pixels of the positive RoIs for the mask loss. With G terms over the whole
# batch, split over N processes (*ranks*) that hold n_r of them each:
#
# $$L = \frac{1}{G}\sum_{i} \ell_i = \sum_{r=1}^{N} \frac{n_r}{G}\, L_r, \qquad
#   L_r = \frac{1}{n_r}\sum_{i \in r} \ell_i, \qquad
#   \nabla L = \sum_r \frac{n_r}{G}\, \nabla L_r .$$
#
# The gradient is linear, so each rank backpropagates its own loss scaled by $n_r / G$, one **allreduce**
# sums the gradients (every rank gets the sum), and every rank takes the same SGD step: the replicas
# stay equal, and the step is the one-process step on the whole batch. This is how Horovod (Sergeev &
# Del Balso, 2018) and PyTorch's DistributedDataParallel scale training; Goyal et al. (2017, *Accurate,
# Large Minibatch SGD*) trained ImageNet in an hour on 256 GPUs this way, and the Mask R-CNN paper's
# models were trained with 8 GPUs of 2 images each (§3.1: "minibatch size 16").
#
# Three things must hold for "the same":
# 1. **Global counts.** The counts differ between ranks (mask pixels follow the number of positive
#    RoIs), so the weights $n_r / G$ need the global count G: one small allreduce of the counts.
# 2. **Keyed randomness.** The anchor and RoI samplers draw at random. Drawn from one generator per
#    process, image 3 would get other draws on rank 1 than in one process. Keyed by
#    *(seed, step, image index in the global batch)*, an image draws the same wherever it is.
# 3. **No batch statistics.** Batch norm in training mode normalises with the statistics of the B/N
#    images it sees; GroupNorm and frozen batch norm look at one image at a time and need nothing.
#
# **Ring allreduce.** N ranks in a ring, each buffer of S bytes cut in N chunks. In N−1
# *reduce-scatter* steps each rank passes one chunk to its right neighbour, which adds it to its own;
# after them each rank holds one fully summed chunk. In N−1 *allgather* steps the summed chunks travel
# round. Each rank sends 2(N−1) chunks of S/N bytes:
#
# $$T_\text{allreduce} \approx 2\,\frac{N-1}{N}\,\frac{S}{\text{bandwidth}} + 2(N-1)\,\alpha,$$
#
# almost independent of N, with α the latency of one message. Sending a hundred small gradients one
# by one pays α a hundred times: Horovod packs them into a few large buffers first (*tensor fusion*).

# %%
import matplotlib.pyplot as plt
import numpy as np
from _helpers import QUICK, exercise, log

from minimaskrcnn import optim
from minimaskrcnn.data.shapes import generate_shapes_image
from minimaskrcnn.distributed import fusion_buckets, loss_weights
from minimaskrcnn.global_batch import global_batch
from minimaskrcnn.models import build_model
from minimaskrcnn.models.configs import CONFIGS
from minimaskrcnn.nn import init

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
# ### Step 1: the mean of means is not the mean
# A toy loss with a different number of terms per image, like mask pixels: a linear model $w$ predicts
# every pixel's value; image i has `counts[i]` pixels. Two ranks hold two images each.

# %%
counts = [30, 5, 12, 40]                                  # terms per image (e.g. mask pixels)
x = [rng.standard_normal((n, 3)) for n in counts]         # features of each term
y = [rng.standard_normal(n) for n in counts]              # targets
w = rng.standard_normal(3)


def loss_and_grad(images):
    """Mean squared error over all the terms of the given images, and its gradient in w."""
    X = np.concatenate([x[i] for i in images])
    Y = np.concatenate([y[i] for i in images])
    r = X @ w - Y
    return (r ** 2).mean(), 2 * X.T @ r / len(r)


L, g = loss_and_grad([0, 1, 2, 3])                        # one process, the whole batch
(L0, g0), (L1, g1) = loss_and_grad([0, 1]), loss_and_grad([2, 3])
n0, n1 = counts[0] + counts[1], counts[2] + counts[3]
G = n0 + n1                                               # the global count: an allreduce of n0, n1

naive = (g0 + g1) / 2                                     # each rank's mean, averaged
weighted = n0 / G * g0 + n1 / G * g1                      # each rank's mean, weighted by its share
log("whole-batch gradient", g)
print(f"mean of the ranks' means:  max error {np.abs(naive - g).max():.3e}")
print(f"weighted by n_r / G:       max error {np.abs(weighted - g).max():.3e}")
assert np.allclose(weighted, g, rtol=1e-13, atol=1e-15)
assert not np.allclose(naive, g, rtol=1e-3)

# %% [markdown]
# ### Step 2: the ring allreduce
# Each rank's buffer is cut in N chunks. In reduce-scatter step s, rank r sends chunk (r − s) mod N to
# rank r + 1, which adds it to its own copy of that chunk. In allgather step s, rank r sends the summed
# chunk (r + 1 − s) mod N on, and the receiver overwrites its copy. We play all ranks in one loop and
# count the bytes each one sends.

# %%
def ring_allreduce(buffers):
    """Sum the N ranks' 1-D buffers with a ring; returns (each rank's result, bytes sent per rank)."""
    N = len(buffers)
    chunks = [np.array_split(b.astype(np.float64), N) for b in buffers]   # chunks[r][c]
    sent = [0] * N
    for s in range(N - 1):                                    # reduce-scatter
        messages = [(r, (r - s) % N, chunks[r][(r - s) % N].copy()) for r in range(N)]
        for r, c, data in messages:                           # all ranks send at once, then receive
            chunks[(r + 1) % N][c] += data
            sent[r] += data.nbytes
    for s in range(N - 1):                                    # allgather: rank r owns chunk (r + 1) % N
        messages = [(r, (r + 1 - s) % N, chunks[r][(r + 1 - s) % N].copy()) for r in range(N)]
        for r, c, data in messages:
            chunks[(r + 1) % N][c] = data
            sent[r] += data.nbytes
    return [np.concatenate(c) for c in chunks], sent


N, S = 4, 1000
buffers = [rng.standard_normal(S) for _ in range(N)]
results, sent = ring_allreduce(buffers)
for r in range(N):
    assert np.allclose(results[r], sum(buffers), rtol=1e-12)
print(f"{N} ranks, {S * 8} bytes each: every rank sent {sent[0]} bytes = 2(N-1)/N x S = {2 * (N - 1) / N * S * 8:.0f}")

# %% [markdown]
# Every rank ends with the sum; the additions happened in a different order on each rank, so the sums
# may differ in their last bit. MPI libraries take care that all ranks get the same bits (the replicas
# must not drift apart), and so does the NCCL library on GPUs.
#
# ### Step 3: the real model, split in two
# `minimaskrcnn.global_batch` carries what the model needs to be part of a bigger batch: the seed, the
# step and each image's index in the global batch (its random draws are keyed by them) and the sizes of
# all the batch's images (every part is padded like the whole). Inside the block, each loss notes the
# count it divides by. We run a batch of four shapes images whole, then as two "ranks" of two images,
# weight each rank's losses by `loss_weights` (local count / global count) and add the gradients.

# %%
TINY = dict(num_classes=4, min_size=64, max_size=64, rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=40,
            rpn_batch_size_per_image=32, box_batch_size_per_image=16, seed=0)


def shapes_batch(step, n=4):
    """n shapes images (3, 64, 64) in [0, 1] and their targets, new for each step."""
    images, targets = [], []
    for i in range(n):
        s = generate_shapes_image(np.random.default_rng([step, i]), 64, min_size=12, max_size=30)
        images.append(s.image.transpose(2, 0, 1).astype(np.float32) / 255)
        targets.append({"boxes": s.boxes, "labels": s.labels, "masks": s.masks})
    return images, targets


def part_losses(model, images, targets, step, indices, sizes):
    """One rank's forward: its losses (Tensors) and the counts they noted."""
    with global_batch(seed=0, step=step, image_indices=indices, image_sizes=sizes) as gb:
        losses = model(images, targets)
    return losses, dict(gb.loss_counts)


init.manual_seed(0)
model = build_model("r18-shapes", **TINY).train().double()     # float64: differences are rounding only
images, targets = shapes_batch(step=0)
sizes = [im.shape[-2:] for im in images]

losses, counts = part_losses(model, images, targets, 0, [0, 1, 2, 3], sizes)
model.zero_grad()
sum(losses.values()).backward()
whole = {n: p.grad.copy() for n, p in model.named_parameters()}

ranks = [part_losses(model, images[:2], targets[:2], 0, [0, 1], sizes),
         part_losses(model, images[2:], targets[2:], 0, [2, 3], sizes)]
global_counts = {k: sum(c[k] for _, c in ranks) for k in counts}     # the counts' allreduce
for name in counts:
    print(f"{name:18s} counts per rank {[c[name] for _, c in ranks]} -> global {global_counts[name]}")
summed = {n: 0.0 for n in whole}
for rank_losses, rank_counts in ranks:
    weights = loss_weights(rank_counts, global_counts)
    model.zero_grad()
    sum(v * weights[k] for k, v in rank_losses.items()).backward()
    for n, p in model.named_parameters():
        summed[n] = summed[n] + p.grad                              # the gradients' allreduce
rel = max(np.abs(summed[n] - whole[n]).max() / np.abs(whole[n]).max() for n in whole)
print(f"largest relative difference of the summed gradients from the whole batch's: {rel:.1e}")
assert rel < 1e-10

# %% [markdown]
# The counts differ between the two ranks, most for the mask loss: the per-rank means averaged with
# weight 1/2 would be off (exercise 2). Weighted by their shares they give the whole batch's gradient
# to within float64 rounding.
#
# ### Step 4: training, two ranks against one process
# Two replicas start from the same weights; at every step each takes its half of a new batch of four
# images, their gradients are summed with `ring_allreduce`, and each takes the SGD step. A third model
# trains on the whole batches in one process. We run it in float64 and in float32.

# %%
def train_both(dtype, steps):
    """Train one process and two replicas side by side; their losses and weight differences per step."""
    def new_model():
        init.manual_seed(0)
        return build_model("r18-shapes", **TINY).train().to_dtype(dtype)

    def sgd(m):
        return optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    single, replicas = new_model(), [new_model(), new_model()]
    opt_single, opt_replicas = sgd(single), [sgd(m) for m in replicas]
    curve_single, curve_ranks, weight_diff = [], [], []
    for step in range(steps):
        images, targets = shapes_batch(step + 1)
        sizes = [im.shape[-2:] for im in images]
        # one process
        losses, _ = part_losses(single, images, targets, step, [0, 1, 2, 3], sizes)
        total = sum(losses.values())
        opt_single.zero_grad()
        total.backward()
        opt_single.step()
        curve_single.append(float(total.item()))
        # two ranks: each its half, its losses weighted by its share of the global counts
        parts = [part_losses(m, images[s], targets[s], step, idx, sizes)
                 for m, s, idx in zip(replicas, (slice(0, 2), slice(2, 4)), ([0, 1], [2, 3]))]
        gcounts = {k: sum(c[k] for _, c in parts) for k in parts[0][1]}
        loss_of_batch = 0.0
        for opt, (rank_losses, rank_counts) in zip(opt_replicas, parts):
            w8 = loss_weights(rank_counts, gcounts)
            scaled = sum(v * w8[k] for k, v in rank_losses.items())
            opt.zero_grad()
            scaled.backward()
            loss_of_batch += float(scaled.item())
        params = [list(m.parameters()) for m in replicas]
        summed, _ = ring_allreduce([np.concatenate([p.grad.ravel() for p in ps]) for ps in params])
        for ps, buf in zip(params, summed):                          # unpack each rank's result
            offset = 0
            for p in ps:
                p.grad = buf[offset: offset + p.data.size].reshape(p.data.shape).astype(p.data.dtype)
                offset += p.data.size
        for opt in opt_replicas:
            opt.step()
        curve_ranks.append(loss_of_batch)
        a, b, c = ([p.data.astype(np.float64).ravel() for p in m.parameters()] for m in (single, *replicas))
        a, b, c = np.concatenate(a), np.concatenate(b), np.concatenate(c)
        assert np.array_equal(b, c)                                   # the replicas stay bit-equal
        weight_diff.append(np.linalg.norm(a - b) / np.linalg.norm(a))
    return curve_single, curve_ranks, weight_diff


steps = 3 if QUICK else 10
runs = {dtype.__name__: train_both(dtype, steps) for dtype in (np.float64, np.float32)}
for name, (curve_single, curve_ranks, weight_diff) in runs.items():
    log(f"{name}: loss, one process", np.array(curve_single))
    log(f"{name}: loss, two ranks", np.array(curve_ranks))
    print(f"{name}: |w_ranks - w_single| / |w_single| per step: {' '.join(f'{d:.0e}' for d in weight_diff)}")
assert max(runs["float64"][2]) < 1e-10

# %% [markdown]
# ## See it
# On the left, the loss of each step in both runs (float64); on the right, how far the two runs' weights
# are apart after each step, in float64 and in float32.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
curve_single, curve_ranks, _ = runs["float64"]
axes[0].plot(range(1, steps + 1), curve_single, "o-", label="one process, batch 4")
axes[0].plot(range(1, steps + 1), curve_ranks, "x--", label="two ranks, 2 images each")
axes[0].set(title="Training loss (float64)", xlabel="step", ylabel="sum of the five losses")
axes[0].legend()
for name, (_, _, weight_diff) in runs.items():
    axes[1].semilogy(range(1, steps + 1), np.maximum(weight_diff, 1e-17), "o-", label=name)
axes[1].set(title="Weights: two ranks vs one process", xlabel="step", ylabel="relative difference")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# In float64 the two trainings are the same to 1e-14: the sums run in another order, nothing else.
# In float32 the difference starts at rounding level too, but it can jump: two proposals whose
# objectness rounds to the same float32 probability are ordered by rounding noise, the RoI sampler then
# draws another subset, and from there the two runs are two trainings as alike as two runs on
# different hardware (torchvision's are no different). The CI test of `mpiexec -n 2 minimaskrcnn train`
# therefore keeps every proposal and samples every RoI, which leaves no room for such a swap, and
# checks float32 to 1e-4 and float64 to 1e-10 (docs/DISTRIBUTED.md).
#
# ### When does adding machines pay?
# A step on N ranks takes the compute of B/N images plus the allreduce; on one process, the compute of
# B. With $T_c$ the compute of a step of B images on one process:
#
# $$T(N) = \frac{T_c}{N} + 2\,\frac{N-1}{N}\,\frac{S}{\text{bw}}, \qquad
#   \text{speed-up}(N) = \frac{T_c}{T(N)}, \qquad \text{2 ranks pay when } T_c > 2\,\frac{S}{\text{bw}} .$$
#
# S is the gradient buffer, 4 bytes per trainable parameter of each model configuration:

# %%
bytes_per_config = {}
for name in CONFIGS:
    m = build_model(name)
    trainable = [p.data for p in m.parameters() if p.requires_grad]
    bytes_per_config[name] = sum(a.nbytes for a in trainable)
    print(f"{name:22s} {bytes_per_config[name] / 1e6:7.1f} MB of gradients per step, {len(trainable)} tensors "
          f"-> {len(fusion_buckets(trainable))} fused buffer(s) of up to 64 MB")

# %% [markdown]
# Two cases, batches of 16 images. **CPUs**: r18-shapes (128×128 images), its compute per image measured
# here. **GPUs**: torchvision's ResNet-50-FPN Mask R-CNN, whose documentation gives 0.27 s per training
# iteration of 16 images on 8 V100 GPUs (2 per GPU), so about 8 × 0.27 ≈ 2.2 s of compute per step on one.

# %%
import time

init.manual_seed(0)
shapes_model = build_model("r18-shapes").train()                # float32, 128x128 images
batch = [generate_shapes_image(np.random.default_rng([7, i]), 128) for i in range(2)]
images = [s.image.transpose(2, 0, 1).astype(np.float32) / 255 for s in batch]
targets = [{"boxes": s.boxes, "labels": s.labels, "masks": s.masks} for s in batch]
sum(shapes_model(images, targets).values()).backward()          # a first step compiles the kernels
start = time.perf_counter()
sum(shapes_model(images, targets).values()).backward()
t_image = (time.perf_counter() - start) / 2
print(f"r18-shapes: {t_image:.2f} s of compute per 128x128 image on this machine")

cases = {"r18-shapes on CPUs (measured)": (16 * t_image, bytes_per_config["r18-shapes"]),
         "ResNet-50-FPN on V100 GPUs (torchvision)": (8 * 0.2728, bytes_per_config["maskrcnn_resnet50_fpn"])}
networks = {"1 Gb/s Ethernet": 0.125e9, "10 Gb/s Ethernet": 1.25e9, "100 Gb/s InfiniBand": 12.5e9}
ranks_axis = np.arange(1, 33)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, (title, (Tc, S)) in zip(axes, cases.items()):
    for net, bw in networks.items():
        T = Tc / ranks_axis + 2 * (ranks_axis - 1) / ranks_axis * S / bw
        ax.plot(ranks_axis, Tc / T, label=net)
    ax.plot(ranks_axis, ranks_axis, "k:", label="ideal")
    ax.set(title=f"{title}\nT_c = {Tc:.1f} s, S = {S / 1e6:.0f} MB", xlabel="ranks N", ylim=(0, 33))
axes[0].set_ylabel("speed-up over one process")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# On CPUs a step's compute is seconds and the gradients a few megabytes: 10 Gb/s Ethernet keeps the
# speed-up near ideal up to 32 machines, 1 Gb/s up to a handful. The ResNet-50 model sends 177 MB per
# step while a GPU computes it in about 2 s: on 1 Gb/s Ethernet the allreduce alone (2.8 s) is longer
# than the compute and a second GPU machine makes training *slower*; 10 Gb/s gives about 4× at 8
# machines; fast interconnects (InfiniBand, NVLink inside a machine) are what multi-GPU training uses.
# Frameworks also hide the allreduce behind the backward pass (they send the last layers' gradients
# while the first layers' are still being computed), which this library does not do.
#
# ## Exercises
# **Exercise 1.** Three ranks noted the counts `rank_counts` for one loss. Write `weights_by_hand`,
# the list of the weights of the three ranks' losses, so that the weighted sum of the ranks' means is the
# mean over all terms.

# %% tags=exercise-1
rank_counts = [512, 384, 0]       # the third rank had no terms of this loss at this step


def weights_by_hand(rank_counts):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "19_data_parallel"):
    w3 = weights_by_hand(rank_counts)
    terms = [rng.standard_normal(n) for n in rank_counts]
    means = [t.mean() if len(t) else 0.0 for t in terms]
    assert np.isclose(sum(wi * m for wi, m in zip(w3, means)), np.concatenate(terms).mean())
    assert list(w3) == [loss_weights({"l": n}, {"l": sum(rank_counts)})["l"] for n in rank_counts]

# %% [markdown]
# **Exercise 2 (break it).** Take the two ranks of step 3 and average their gradients with weight 1/2
# each, as if every rank's mean were as good as another's. Set `naive_error` to the largest relative
# difference from the whole batch's gradient, as in step 3.

# %% tags=exercise-2
naive_error = None

# %% tags=check-2
with exercise(2, "19_data_parallel"):
    if naive_error is None:
        raise NotImplementedError
    assert naive_error > 1e-3, "the counts differ: averaging the means must be visibly wrong"

# %% [markdown]
# **Exercise 3 (why).** Why does the library draw each image's anchor sample from a generator keyed by
# (seed, step, image index in the global batch) instead of from one generator per process? Set `answer_3`:
#
# * (a) so that an image gets the same sample on whichever rank holds it, and two ranks do the same as
#   one process;
# * (b) because NumPy generators cannot be shared between processes;
# * (c) so that every image of the batch gets the same sample.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "19_data_parallel"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# **Exercise 4.** torchvision's `maskrcnn_resnet50_fpn` sends `bytes_per_config["maskrcnn_resnet50_fpn"]`
# bytes per step. Say a GPU computes a step in 0.5 s. Below which bandwidth (in Gb/s, 1 Gb = 1e9 bits)
# does a second machine make training slower? Set `break_even_gbps`.

# %% tags=exercise-4
break_even_gbps = None

# %% tags=check-4
with exercise(4, "19_data_parallel"):
    if break_even_gbps is None:
        raise NotImplementedError
    S = bytes_per_config["maskrcnn_resnet50_fpn"]
    assert np.isclose(0.5 / 2 + S / (break_even_gbps * 1e9 / 8), 0.5, rtol=1e-6)

# %% [markdown]
# ## Summary
# * A batch's loss over N ranks is $\sum_r (n_r / G) L_r$: each rank scales its loss by its share of the
#   global count, an allreduce sums the gradients, and every rank takes the same step.
# * Randomness keyed by image and padding to the whole batch make the ranks' parts the same as the whole.
# * The ring allreduce sends 2(N−1)/N × S per rank: adding ranks pays while the compute of a step is
#   large against the time to send its gradients.
# * The same recipe pays on one machine: `minimaskrcnn train` runs one process per core on the CPU
#   (`--processes N`, `minimaskrcnn/local_parallel.py`), the gradients summed through shared memory
#   instead of MPI. On two cores the small model's step runs 1.5-1.8x faster in two processes than in one
#   process with two threads (`benchmarks/bench_processes.py`): its products are too small to split
#   over threads, while two processes split the whole step.
