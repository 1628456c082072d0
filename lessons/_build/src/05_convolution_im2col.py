# %% [markdown]
# # 05 · Convolution by im2col, forward and backward
#
# **Goal.** Write a 2-D convolution three ways (seven nested loops; im2col and one matrix product;
# a `Function` with its own backward), derive the backward, gradcheck it and show that it equals
# `minimaskrcnn.ops.conv.conv2d` (and PyTorch's). You will end with a picture of an image unfolded
# into columns, and the timing that explains why every convolution in the project is a matrix product.

# %% [markdown]
# ## The idea
#
# A convolution layer (really a cross-correlation) slides C_out filters of shape (C, KH, KW) over an
# (N, C, H, W) input:
#
# $$\text{out}[n, o, i, j] = b[o] + \sum_{c, k_h, k_w} w[o, c, k_h, k_w]\; x_{pad}[n, c,\; i S_H + k_h D_H,\; j S_W + k_w D_W]$$
#
# with output size $OH = \lfloor (H + 2P_H - D_H (K_H - 1) - 1) / S_H \rfloor + 1$ (likewise OW).
# Every layer of the ResNet-FPN backbone, the RPN head and the mask head is one of these.
#
# **im2col** copies every input patch the filters see into one column of a matrix
# `cols` of shape (C·KH·KW, OH·OW) per image. The convolution is then one matrix product, which BLAS
# runs at close to the machine's peak:
#
# $$\underbrace{\text{out}[n]}_{(C_{out},\,OH\cdot OW)} = \underbrace{W}_{(C_{out},\,C K_H K_W)} \underbrace{\text{cols}[n]}_{(C K_H K_W,\,OH\cdot OW)} + b$$
#
# **Backward.** From `out = W cols + b`, with `dout` of the output's shape:
# `dW = Σ_n dout[n] cols[n]ᵀ`, `db = Σ_{n,i,j} dout`, `dcols = Wᵀ dout[n]`, and `dx = col2im(dcols)`:
# col2im puts every column entry back on the pixel it was copied from, **adding** where patches
# overlap (a pixel is seen by up to KH·KW patches, so its gradient is the sum of all of them).
# col2im is the adjoint (transpose) of im2col.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from minimaskrcnn.kernels.im2col import conv_output_size
from minimaskrcnn.kernels.im2col import reference as im2col_reference

import minimaskrcnn as mm
from minimaskrcnn.ops.conv import conv2d

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
# ### Step 1: the definition, as loops
# Seven loops, straight from the equation (with stride S and padding P; dilation 1 to keep it short).

# %%
def conv_loops(x, w, b, stride=1, padding=0):
    N, C, H, W = x.shape
    C_out, _, KH, KW = w.shape
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((N, C_out, OH, OW), dtype=x.dtype)
    for n in range(N):
        for o in range(C_out):
            for i in range(OH):
                for j in range(OW):
                    total = b[o]
                    for c in range(C):
                        for kh in range(KH):
                            for kw in range(KW):
                                total += w[o, c, kh, kw] * x_pad[n, c, i * stride + kh, j * stride + kw]
                    out[n, o, i, j] = total
    return out


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
out_loops = conv_loops(x, w, b, stride=2, padding=1)
log("x", x)
log("out_loops (stride 2, pad 1)", out_loops)

# %% [markdown]
# ### Step 2: im2col
# Row `(c·KH + kh)·KW + kw` of `cols` holds what tap (c, kh, kw) sees at every output position; column
# `i·OW + j` holds the whole patch of output position (i, j). The library's layout is the same.

# %%
def im2col_loops(x, KH, KW, stride=1, padding=0):
    N, C, H, W = x.shape
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.zeros((N, C * KH * KW, OH * OW), dtype=x.dtype)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                row = (c * KH + kh) * KW + kw
                for i in range(OH):
                    for j in range(OW):
                        cols[:, row, i * OW + j] = x_pad[:, c, i * stride + kh, j * stride + kw]
    return cols


def conv_im2col(x, w, b, stride=1, padding=0):
    N, C, H, W = x.shape
    C_out, _, KH, KW = w.shape
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    cols = im2col_loops(x, KH, KW, stride, padding)           # (N, C*KH*KW, OH*OW)
    out = w.reshape(C_out, -1) @ cols + b[None, :, None]      # (N, C_out, OH*OW): one product per image
    return out.reshape(N, C_out, OH, OW)


cols = im2col_loops(x, 3, 3, stride=2, padding=1)
log("cols", cols)
print("max |loops - im2col| =", np.abs(conv_im2col(x, w, b, 2, 1) - out_loops).max())
print("cols equal the library's reference im2col:",
      np.array_equal(cols, im2col_reference.im2col(x, (3, 3), stride=2, padding=1)))

# %% [markdown]
# ### See it: an image as columns
# A 5×5 image with pixel values 0…24 and a 3×3 kernel with padding 1: 25 output positions, so 25
# columns of 9 taps. Each pixel appears up to 9 times, in different rows: im2col trades memory
# (KH·KW copies) for speed.

# %%
tiny = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
tiny_cols = im2col_loops(tiny, 3, 3, padding=1)[0]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 4]})
axes[0].imshow(tiny[0, 0], cmap="viridis")
for (i, j), v in np.ndenumerate(tiny[0, 0]):
    axes[0].text(j, i, int(v), ha="center", va="center", color="w", fontsize=8)
axes[0].set_title("x (5x5), value = 5 i + j"), axes[0].set_xlabel("column j"), axes[0].set_ylabel("row i")
axes[1].imshow(tiny_cols, cmap="viridis")
for (r, c), v in np.ndenumerate(tiny_cols):
    axes[1].text(c, r, int(v), ha="center", va="center", color="w", fontsize=6)
axes[1].set_xlabel("output position i*OW + j"), axes[1].set_ylabel("tap kh*KW + kw")
axes[1].set_title("cols (9 x 25): column = one output position's 3x3 patch; the zero padding shows as 0")
plt.show()

# %% [markdown]
# ### Step 3: the backward, as a `Function`
# Save the input (not `cols`: they are KH·KW times larger; recompute them in backward, as PyTorch
# and the library do), then the three products of the idea section and col2im.

# %%
def col2im_loops(cols, x_shape, KH, KW, stride=1, padding=0):
    N, C, H, W = x_shape
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    dx_pad = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                row = (c * KH + kh) * KW + kw
                for i in range(OH):
                    for j in range(OW):
                        dx_pad[:, c, i * stride + kh, j * stride + kw] += cols[:, row, i * OW + j]  # overlaps add
    return dx_pad[:, :, padding:padding + H, padding:padding + W]  # gradients of the padding are dropped


class MyConv2d(mm.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride=1, padding=0):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        return conv_im2col(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, dout):
        x, w = ctx.saved_tensors
        N, C_out, OH, OW = dout.shape
        KH, KW = w.shape[2:]
        cols = im2col_loops(x, KH, KW, ctx.stride, ctx.padding)      # recomputed
        dout_mat = dout.reshape(N, C_out, OH * OW)
        dw = (dout_mat @ cols.transpose(0, 2, 1)).sum(0).reshape(w.shape)
        db = dout.sum(axis=(0, 2, 3))
        dcols = w.reshape(C_out, -1).T @ dout_mat                    # (N, C*KH*KW, OH*OW)
        dx = col2im_loops(dcols, x.shape, KH, KW, ctx.stride, ctx.padding)
        return dx, dw, db

# %% [markdown]
# ## Check it
# The gradient check (float64, small shapes) for stride 1 and 2, then the library's `conv2d` and
# PyTorch's on the same numbers, forward and backward. Finally the adjoint identity
# ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩, which is what "col2im is im2col's transpose" means.

# %%
xt = mm.tensor(rng.standard_normal((2, 2, 5, 4)), requires_grad=True)
wt = mm.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
bt = mm.tensor(rng.standard_normal(3), requires_grad=True)
for stride, padding in [(1, 0), (1, 1), (2, 1)]:
    result = mm.gradcheck(lambda x, w, b: MyConv2d.apply(x, w, b, stride=stride, padding=padding), [xt, wt, bt])
    print(f"stride {stride}, padding {padding}: gradcheck {'passed' if result.passed else 'FAILED'}, max rel error {result.max_rel_error:.1e}")
    assert result.passed, result.report()

# %%
dout = rng.standard_normal((2, 4, 4, 3))
x_in, w_in, b_in = (mm.tensor(a, requires_grad=True) for a in (x, w, b))
ours = MyConv2d.apply(x_in, w_in, b_in, stride=2, padding=1)
ours.backward(dout)
x_lib, w_lib, b_lib = (mm.tensor(a, requires_grad=True) for a in (x, w, b))
lib = conv2d(x_lib, w_lib, b_lib, stride=2, padding=1)
lib.backward(dout)
for name, a, c in [("out", ours, lib), ("dx", x_in.grad, x_lib.grad), ("dw", w_in.grad, w_lib.grad), ("db", b_in.grad, b_lib.grad)]:
    a, c = (t.numpy() if isinstance(t, mm.Tensor) else t for t in (a, c))
    print(f"{name}: max |ours - minimaskrcnn| = {np.abs(a - c).max():.1e}")
    assert np.allclose(a, c, rtol=1e-10, atol=1e-10)

try:
    import torch

    xs, ws, bs = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ref = torch.nn.functional.conv2d(xs, ws, bs, stride=2, padding=1)
    ref.backward(torch.from_numpy(dout))
    for name, a, c in [("out", ours.data, ref.detach()), ("dx", x_in.grad, xs.grad), ("dw", w_in.grad, ws.grad), ("db", b_in.grad, bs.grad)]:
        print(f"{name}: max |ours - torch| = {np.abs(a - c.numpy()).max():.1e}")
        assert np.allclose(a, c.numpy(), rtol=1e-10, atol=1e-10)
except ImportError:
    print("torch is not installed: the PyTorch comparison was skipped")

c_rand = rng.standard_normal(cols.shape)
lhs = (cols * c_rand).sum()
rhs = (x * col2im_loops(c_rand, x.shape, 3, 3, stride=2, padding=1)).sum()
print(f"<im2col(x), c> = {lhs:.10f}, <x, col2im(c)> = {rhs:.10f}")
assert abs(lhs - rhs) < 1e-9

# %% [markdown]
# ## See it: filters at work, and where the gradient goes
# Two hand-made filters (horizontal and vertical Sobel) on a picture of a disc and a square; then the
# gradient `dx` of "the sum of the vertical-edge response in a small window": only pixels inside
# that window's receptive field receive any.

# %%
yy, xx = np.mgrid[0:64, 0:64]
picture = ((xx - 20) ** 2 + (yy - 24) ** 2 < 12**2).astype(np.float64)
picture[36:56, 34:58] = 0.6
sobel = np.array([[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]], dtype=np.float64)
filters = np.stack([sobel, sobel.transpose(0, 2, 1)])           # (2, 1, 3, 3): d/dx and d/dy
img = mm.tensor(picture[None, None], requires_grad=True)
edges = conv2d(img, mm.tensor(filters), padding=1)               # (1, 2, 64, 64)
window = np.zeros(edges.shape)
window[0, 0, 20:28, 30:40] = 1.0                                 # d/dx response in a window
(edges * mm.tensor(window)).sum().backward()

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, data, title in zip(axes, [picture, edges.numpy()[0, 0], edges.numpy()[0, 1], img.grad[0, 0]],
                           ["input", "d/dx filter", "d/dy filter", "dx of the window's sum"]):
    limit = np.abs(data).max()
    ax.imshow(data, cmap="gray") if title == "input" else ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title), ax.axis("off")
axes[3].add_patch(plt.Rectangle((29.5, 19.5), 10, 8, fill=False, color="tab:green", label="the window"))
axes[3].legend(loc="lower right", fontsize=8)
plt.suptitle("64 x 64 pixels; red positive, blue negative, white 0: only pixels near the window get a gradient")
plt.show()

# %% [markdown]
# ## Speed
# One 3×3 convolution with 32 → 32 channels on 2 × 64 × 64 (a small backbone layer): the loops (on a
# crop, then scaled up), our im2col with Python loops, the library's im2col + matrix product with the
# NumPy reference kernel and with the Numba kernel, and PyTorch.

# %%
xb = rng.standard_normal((2, 32, 64, 64)).astype(np.float32)
wb = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
bb = np.zeros(32, dtype=np.float32)
timings = {}
crop = 4 if QUICK else 8
t0 = time.perf_counter(); conv_loops(xb[:1, :, :crop, :crop], wb, bb, padding=1)
timings["7 loops (estimated)"] = (time.perf_counter() - t0) * 2 * (64 / crop) ** 2
t0 = time.perf_counter(); conv_im2col(xb, wb, bb, padding=1); timings["im2col loops + matmul"] = time.perf_counter() - t0
def best_of(fn, repeat=3):
    fn()  # warm-up (Numba compiles on the first call)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


for backend in ("numpy", "numba"):
    with mm.use_backend(backend):
        timings[f"minimaskrcnn ({backend})"] = best_of(lambda: conv2d(mm.tensor(xb), mm.tensor(wb), mm.tensor(bb), padding=1))
try:
    import torch

    with torch.no_grad():
        timings["torch"] = best_of(lambda: torch.nn.functional.conv2d(torch.from_numpy(xb), torch.from_numpy(wb), torch.from_numpy(bb), padding=1))
except ImportError:
    pass
for name, t in timings.items():
    print(f"{name:26s} {t * 1e3:10.1f} ms")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `out_size(H, K, S, P, D)`, the output length of a convolution with kernel K,
# stride S, padding P and dilation D. The check compares it with the library's `conv_output_size` on
# many combinations.

# %% tags=exercise-1
def out_size(H, K, S, P, D):
    raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "05_convolution_im2col"):
    for H, K, S, P, D in [(7, 3, 1, 0, 1), (7, 3, 2, 1, 1), (8, 3, 2, 1, 1), (800, 7, 2, 3, 1), (5, 3, 1, 2, 2), (9, 1, 2, 0, 1)]:
        assert out_size(H, K, S, P, D) == conv_output_size(H, K, S, P, D), f"wrong for H={H} K={K} S={S} P={P} D={D}"

# %% [markdown]
# **Exercise 2 (break it on purpose).** Replace `+=` with `=` in a copy of `col2im_loops` (name it
# `col2im_overwrite`) and put it in a copy of the backward (`BrokenConv2d`, whose forward is
# `MyConv2d`'s). Where do the wrong gradients show up? The check expects the gradcheck to *fail* for
# `dx` with a 3×3 kernel at stride 1 (patches overlap) and to *pass* with stride 3 (no overlaps).

# %% tags=exercise-2
def col2im_overwrite(cols, x_shape, KH, KW, stride=1, padding=0):
    raise NotImplementedError  # your code here


class BrokenConv2d(MyConv2d):
    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError  # your code here: MyConv2d.backward with col2im_overwrite

# %% tags=check-2
with exercise(2, "05_convolution_im2col"):
    x6 = mm.tensor(rng.standard_normal((1, 1, 6, 6)), requires_grad=True)
    w3 = mm.tensor(rng.standard_normal((1, 1, 3, 3)))
    b1 = mm.tensor(np.zeros(1))
    overlapping = mm.gradcheck(lambda t: BrokenConv2d.apply(t, w3, b1, stride=1), [x6])
    disjoint = mm.gradcheck(lambda t: BrokenConv2d.apply(t, w3, b1, stride=3), [x6])
    assert not overlapping.passed, "with overlapping patches, overwriting must give wrong gradients"
    assert disjoint.passed, "without overlaps, = and += agree"
    print(f"stride 1: max rel error {overlapping.max_rel_error:.2f}; stride 3: {disjoint.max_rel_error:.1e}")

# %% [markdown]
# **Exercise 3 (why).** `Conv2d.backward` recomputes `cols` from the saved input instead of saving
# them in forward. For the first 3×3 convolution of ResNet-50's layer1 on an 800×1216 image
# (64 channels at stride 4: a 64 × 200 × 304 input, float32), compute in MiB the memory of the input
# (`input_mib`) and of its cols (`cols_mib`).

# %% tags=exercise-3
input_mib = None
cols_mib = None

# %% tags=check-3
with exercise(3, "05_convolution_im2col"):
    if input_mib is None:
        raise NotImplementedError
    assert abs(input_mib - 64 * 200 * 304 * 4 / 2**20) < 0.1, "input: C*H*W*4 bytes"
    assert abs(cols_mib - 9 * input_mib) < 0.5, "cols hold each pixel KH*KW times"
    print(f"input {input_mib:.1f} MiB, cols {cols_mib:.1f} MiB: saving cols for every layer would not fit")

# %% [markdown]
# ## Summary
# * im2col turns a convolution into one matrix product per image; the layout of `cols` makes the
#   product's result already NCHW.
# * Backward: `dW = dout colsᵀ`, `db = Σ dout`, `dx = col2im(Wᵀ dout)`; col2im adds where patches
#   overlap. It is the adjoint of im2col.
# * Save the input, not the columns.
#
# Next: lesson 06 stacks convolutions with ReLU, pooling and normalisation into ResNet blocks.
