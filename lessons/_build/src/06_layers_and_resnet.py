# %% [markdown]
# # 06 · ReLU, pooling, normalisation and ResNet blocks
#
# **Goal.** Write max pooling and batch normalisation with their backward passes, check them against
# `minimaskrcnn` (and PyTorch) with gradient checks, then assemble a ResNet bottleneck block and a whole
# ResNet-50 body from the library's layers and show that, given torchvision's weights, it computes
# the same numbers. You will end with a picture of why residual connections train: the gradient
# reaching the first layer of a deep plain stack versus a residual one.

# %% [markdown]
# ## The idea
#
# Mask R-CNN's backbone is a ResNet (He et al. 2016) with an FPN (lesson 09). Its pieces:
#
# | layer | forward | backward |
# |---|---|---|
# | ReLU | `max(x, 0)` | `dout · [x > 0]` |
# | max pool (3×3, stride 2, pad 1, after the stem conv) | window maximum | `dout` to the window's argmax, adding where windows overlap |
# | batch norm (training) | `x̂ = (x − μ_B) / √(σ²_B + ε)`, `y = γ x̂ + β`, statistics over (N, H, W) per channel | `dx = (γ/σ)(dy − mean(dy) − x̂ · mean(dy · x̂))` |
# | frozen batch norm | `y = x · scale + shift` (ImageNet statistics, fixed) | `dx = dout · scale` |
# | group norm | statistics per image over groups of channels | as batch norm, per (image, group) |
# | bottleneck | `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x)))))) + shortcut(x))` | the engine composes it |
#
# The ResNet's batch norms are **frozen** when a detector is fine-tuned: the statistics computed on
# ImageNet become a fixed per-channel scale and shift. The ResNet paper introduced this for Faster R-CNN
# (He et al. 2016, Appendix A: "the BN layers are fixed during fine-tuning for object detection",
# "mainly for reducing memory consumption"); Detectron, the Mask R-CNN paper's code, and torchvision's
# `FrozenBatchNorm2d` do the same. (The Mask R-CNN paper itself does not discuss it; its §3.1 gives
# the batch: 2 images per GPU.) Such small batches would also make batch statistics too noisy: Group
# Normalization (Wu & He 2018) shows batch norm's error growing quickly as the batch shrinks, and its
# per-image statistics are the alternative when training from scratch, as our small shapes models do.
#
# The shortcut `+ x` gives the gradient a path that skips the block: `∂(f(x) + x)/∂x = f'(x) + 1`.
# Stacking fifty blocks without it, the gradient reaching the first layers is a product of fifty
# factors; with it, it is a sum. That is what made 50- and 101-layer backbones trainable.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minimaskrcnn as mm
from minimaskrcnn import nn
from minimaskrcnn.models.resnet import ResNetBody, make_norm_layer
from minimaskrcnn.nn import functional as F

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

try:
    import torch
    import torchvision
except ImportError:
    torch = torchvision = None
    print("torch/torchvision are not installed: the PyTorch comparisons are skipped")

# %% [markdown]
# ## Build it
# ### Step 1: max pooling, forward and backward
# Pad with −∞ (a padded pixel never wins), keep the flat index of each window's winner.

# %%
def max_pool_loops(x, k=3, stride=2, padding=1):
    N, C, H, W = x.shape
    OH, OW = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)       # flat index into the unpadded H * W
    for i in range(OH):
        for j in range(OW):
            window = x_pad[:, :, i * stride:i * stride + k, j * stride:j * stride + k].reshape(N, C, -1)
            best = window.argmax(axis=2)                     # first maximum in row-major order
            out[:, :, i, j] = np.take_along_axis(window, best[..., None], 2)[..., 0]
            argmax[:, :, i, j] = (i * stride + best // k - padding) * W + (j * stride + best % k - padding)
    return out, argmax


def max_pool_backward_loops(dout, argmax, x_shape):
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            np.add.at(dx[n, c], argmax[n, c].ravel(), dout[n, c].ravel())   # overlapping windows add
    return dx.reshape(x_shape)


class MyMaxPool(mm.Function):
    @staticmethod
    def forward(ctx, x):
        out, argmax = max_pool_loops(x)
        ctx.save_for_backward(argmax)
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        (argmax,) = ctx.saved_tensors
        return max_pool_backward_loops(dout, argmax, ctx.x_shape)


x = rng.standard_normal((2, 3, 9, 8))
out, _ = max_pool_loops(x)
log("x", x)
log("max pool 3x3/2 pad 1", out)

# %% [markdown]
# ### Step 2: batch normalisation, forward and backward
# The backward in one line comes from differentiating through μ_B and σ²_B too: every x in the batch
# moves every x̂.

# %%
class MyBatchNorm(mm.Function):
    """Training-mode batch norm over (N, H, W) for each channel; gamma, beta (C,)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = x.var(axis=(0, 2, 3), keepdims=True)           # biased, as in the paper
        invstd = 1 / np.sqrt(var + eps)
        xhat = (x - mean) * invstd
        ctx.save_for_backward(xhat, invstd, gamma)
        return gamma.reshape(1, -1, 1, 1) * xhat + beta.reshape(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, dout):
        xhat, invstd, gamma = ctx.saved_tensors
        dgamma = (dout * xhat).sum(axis=(0, 2, 3))
        dbeta = dout.sum(axis=(0, 2, 3))
        dxhat = dout * gamma.reshape(1, -1, 1, 1)
        dx = invstd * (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)
                       - xhat * (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True))
        return dx, dgamma, dbeta


xb = rng.standard_normal((4, 3, 5, 5)) * 3 + 2
gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
y = MyBatchNorm.apply(mm.tensor(xb), mm.tensor(gamma), mm.tensor(beta)).numpy()
log("x (mean 2, std 3)", xb)
log("(y - beta) / gamma: mean", ((y - beta.reshape(1, -1, 1, 1)) / gamma.reshape(1, -1, 1, 1)).mean(axis=(0, 2, 3)))
log("(y - beta) / gamma: std", ((y - beta.reshape(1, -1, 1, 1)) / gamma.reshape(1, -1, 1, 1)).std(axis=(0, 2, 3)))

# %% [markdown]
# ## Check it
# Gradient checks, then the library (`F.max_pool2d`, `F.batch_norm`) and PyTorch on the same numbers.

# %%
xt = mm.tensor(x.copy(), requires_grad=True)
r = mm.gradcheck(lambda t: MyMaxPool.apply(t), [xt])
print("max pool:", "passed" if r.passed else "FAILED", f"({r.max_rel_error:.1e})")
assert r.passed
ts = [mm.tensor(a.copy(), requires_grad=True) for a in (xb, gamma, beta)]
# dx sums to zero over each channel, so some of its entries are tiny and their relative error is
# larger: 1e-5 is still ~1000 times below what a wrong formula gives (exercise 2)
r = mm.gradcheck(lambda a, g, b: MyBatchNorm.apply(a, g, b), ts, tol=1e-5)
print("batch norm:", "passed" if r.passed else "FAILED", f"({r.max_rel_error:.1e})")
assert r.passed

lib_pool = F.max_pool2d(mm.tensor(x), 3, 2, 1).numpy()
assert np.array_equal(out, lib_pool)
lib_bn = F.batch_norm(mm.tensor(xb), None, None, mm.tensor(gamma), mm.tensor(beta), training=True).numpy()
assert np.allclose(y, lib_bn, rtol=1e-12, atol=1e-12)
print("forward equal to minimaskrcnn's max_pool2d and batch_norm")

dout_bn = rng.standard_normal(xb.shape)
ours_t = [mm.tensor(a.copy(), requires_grad=True) for a in (xb, gamma, beta)]
MyBatchNorm.apply(*ours_t).backward(dout_bn)
lib_t = [mm.tensor(a.copy(), requires_grad=True) for a in (xb, gamma, beta)]
F.batch_norm(lib_t[0], None, None, lib_t[1], lib_t[2], training=True).backward(dout_bn)
for name, a, b in zip(["dx", "dgamma", "dbeta"], ours_t, lib_t):
    assert np.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), name
print("batch norm backward equal to minimaskrcnn's")

if torch is not None:
    assert np.array_equal(out, torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy())
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (xb, gamma, beta))
    ty = torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True)
    ty.backward(torch.from_numpy(dout_bn))
    assert np.allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, a, b in zip(["dx", "dgamma", "dbeta"], ours_t, (tx, tg, tb)):
        assert np.allclose(a.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12), name
    print("and equal to PyTorch's, forward and backward")

# %% [markdown]
# ### A bottleneck block and a ResNet-50 body, with torchvision's weights
# The library's `Bottleneck` and `ResNetBody` use torchvision's parameter names (`layer1.0.conv1.weight`,
# ...), so a torchvision state dict loads by name. With random (not pretrained) weights copied over,
# both must give the same stage outputs C2 … C5.

# %%
if torch is not None:
    from torchvision.models.resnet import resnet50

    torch.manual_seed(0)
    tv_model = resnet50(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d).eval()
    # random statistics so that the frozen batch norms do something
    for m in tv_model.modules():
        if isinstance(m, torchvision.ops.FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
    state = {k: v.numpy() for k, v in tv_model.state_dict().items() if not k.startswith("fc.")}

    body = ResNetBody(depth=50, norm_layer=make_norm_layer("frozen_bn"))
    missing, unexpected = body.load_state_dict(state, strict=False)
    print("missing keys:", missing, " unexpected keys:", unexpected)

    size = 64 if QUICK else 128
    image = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    t0 = time.perf_counter()
    with mm.no_grad():
        ours_stages = body(mm.tensor(image))
    ours_time = time.perf_counter() - t0
    with torch.no_grad():
        t = torch.from_numpy(image)
        t = tv_model.maxpool(tv_model.relu(tv_model.bn1(tv_model.conv1(t))))
        ref_stages = []
        for layer in (tv_model.layer1, tv_model.layer2, tv_model.layer3, tv_model.layer4):
            t = layer(t)
            ref_stages.append(t.numpy())
    for ours, ref, level in zip(ours_stages.values(), ref_stages, range(2, 6)):
        err = np.abs(ours.numpy() - ref).max() / np.abs(ref).max()
        log(f"C{level} (stride {2 ** level})", ours)
        assert err < 1e-4, (level, err)
    print(f"all four stages equal torchvision's to float32 rounding; our forward took {ours_time:.2f} s")
else:
    print("torchvision is not installed: the ResNet-50 comparison was skipped")

# %% [markdown]
# ## See it
# ### Why residual connections
# Two stacks of 30 blocks of (3×3 conv, group norm, ReLU) on 16 channels, with He-initialised
# weights: a *plain* stack `x ← f(x)` and a *residual* one `x ← x + f(x)`. After one backward pass of
# `mean(output²)`, the size of each block's weight gradient. In the plain stack every block multiplies
# the gradient by a similar factor, so its size drifts geometrically with depth (here it grows towards
# the input; with other scales it vanishes), and one learning rate cannot suit all layers. With
# shortcuts it stays within a small band all the way down.

# %%
depth = 12 if QUICK else 30
nn.init.manual_seed(0)
blocks = [nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.GroupNorm(4, 16), nn.ReLU()) for _ in range(depth)]
for block in blocks:
    nn.init.normal_(block[0].weight, 0.0, 0.5 * np.sqrt(2 / (16 * 9)))
x0 = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
norms = {}
for kind in ("plain", "residual"):
    h = mm.tensor(x0)
    for block in blocks:
        h = block(h) if kind == "plain" else h + block(h)
    (h * h).mean().backward()
    # the gradient of each block's conv weight: what that block would learn from this step
    norms[kind] = np.array([np.abs(b[0].weight.grad).mean() for b in blocks])
    for block in blocks:
        block.zero_grad()

fig, ax = plt.subplots(figsize=(6, 3.2))
for kind, n in norms.items():
    ax.semilogy(np.arange(1, depth + 1), n / n[-1], "o-", ms=3, label=kind)
ax.set_xlabel("block (1 = nearest the input)"), ax.set_ylabel("mean |dW|, relative to the last block")
ax.set_title("gradient reaching each block's weights"), ax.legend()
plt.show()
for kind, n in norms.items():
    print(f"{kind:8s}: largest / smallest block gradient = {n.max() / n.min():.1f}")

# %% [markdown]
# ## Speed
# Max pooling (3×3, stride 2) of a (2, 64, 200, 304) stem output: our loops over output positions,
# the library's NumPy reference and its Numba kernel.

# %%
stem = rng.standard_normal((1 if QUICK else 2, 64, 200, 304)).astype(np.float32)
timings = {}
t0 = time.perf_counter(); max_pool_loops(stem); timings["loops (this notebook)"] = time.perf_counter() - t0
for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        F.max_pool2d(mm.tensor(stem[:, :2, :8, :8]), 3, 2, 1)  # compile
        t0 = time.perf_counter(); F.max_pool2d(mm.tensor(stem), 3, 2, 1); timings[f"minimaskrcnn ({backend})"] = time.perf_counter() - t0
for name, t in timings.items():
    print(f"{name:26s} {t * 1e3:8.1f} ms")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `group_norm_forward(x, num_groups, weight, bias, eps=1e-5)` for x (N, C, H, W):
# statistics per image over each group of C / G consecutive channels (and all H, W), biased variance,
# then the per-channel affine. The check compares it with `F.group_norm`.

# %% tags=exercise-1
def group_norm_forward(x, num_groups, weight, bias, eps=1e-5):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "06_layers_and_resnet"):
    xg, wg, bg = rng.standard_normal((2, 8, 5, 4)), rng.standard_normal(8), rng.standard_normal(8)
    for groups in (1, 2, 8):
        got = group_norm_forward(xg, groups, wg, bg)
        assert np.allclose(got, F.group_norm(mm.tensor(xg), groups, mm.tensor(wg), mm.tensor(bg)).numpy(), atol=1e-10), f"groups={groups}"

# %% [markdown]
# **Exercise 2 (break it on purpose).** A common mistake treats μ_B and σ_B as constants in the backward:
# `dx = dxhat · invstd`. Write `NaiveBatchNorm` (`MyBatchNorm` with that backward). The check expects the
# gradient check to *fail* for x, and to *pass* for gamma and beta. Which of the two mean terms matters
# more? Try removing only one of them.

# %% tags=exercise-2
class NaiveBatchNorm(MyBatchNorm):
    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError  # your code here

# %% tags=check-2
with exercise(2, "06_layers_and_resnet"):
    ts = [mm.tensor(a.copy(), requires_grad=True) for a in (xb, gamma, beta)]
    r = mm.gradcheck(lambda a, g, b: NaiveBatchNorm.apply(a, g, b), ts)
    assert r.per_input[0] > 1e-3, "the naive dx should be wrong"
    assert r.per_input[1] < 1e-6 and r.per_input[2] < 1e-6, "dgamma and dbeta do not involve the statistics' derivatives"
    print(f"naive dx: max relative error {r.per_input[0]:.2f}")

# %% [markdown]
# **Exercise 3 (why).** Mask R-CNN trains with 2 images per GPU. Besides the memory it saves (the ResNet
# paper's reason), why would training the batch norms with batch statistics hurt here? Set `answer_3`:
#
# * (a) with 2 images (and strongly correlated pixels) the batch mean and variance are too noisy to
#   normalise with, and too far from the ImageNet statistics the weights were trained with;
# * (b) frozen batch norm is faster to compute;
# * (c) batch norm cannot be backpropagated through at that batch size.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "06_layers_and_resnet"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
# * Max pooling routes each gradient to its window's winner; batch norm's backward must differentiate
#   through the batch statistics.
# * Frozen batch norm is a fixed per-channel affine map; group norm normalises per image.
# * The library's ResNet body loads torchvision's weights by name and reproduces its outputs.
# * Shortcuts keep the gradient alive through deep stacks.
#
# Next: lesson 07 cuts a fixed-size grid of features out of a feature map for any box (RoIPool); lesson 09
# then combines the ResNet stages C2 … C5 into a feature pyramid.
