# %% [markdown]
# # 16 · GPU kernels: RoIAlign in CUDA
#
# **Goal.** Write RoIAlign's forward as a CUDA kernel with Numba (one GPU thread per output element)
# and its backward with atomic additions, run them, in Numba's CUDA *simulator* when this machine has no
# GPU, check them against the NumPy reference and `minimaskrcnn`'s own `kernels/roi_align/cuda.py`, and
# time the library's CUDA kernel against the CPU kernels when a GPU is present. You will end with a
# picture of how threads map to the output tensor.

# %% [markdown]
# ## The idea
#
# A GPU runs thousands of threads at once, grouped in *blocks*. A kernel is the body of one thread; it
# finds out which piece of work is its own from its index `i = blockIdx.x * blockDim.x + threadIdx.x`
# (`cuda.grid(1)` in Numba). RoIAlign's output (K, C, PH, PW) has no dependency between elements, so the
# natural mapping is **one thread per output element**:
#
# ```
# i = ((k * C + c) * PH + ph) * PW + pw        pw = i % PW,  ph = (i // PW) % PH,
#                                              c = (i // (PW * PH)) % C,  k = i // (PW * PH * C)
# ```
#
# Each thread recomputes its RoI's geometry (cheap) and averages its bin's bilinear samples exactly as the
# reference loop does (lesson 08). Threads next to each other in `i` read neighbouring `pw`, so their
# memory reads are close together (coalesced).
#
# The **backward** inverts the direction: each dout element scatters into 4 pixels per sample, and other
# threads (neighbouring bins, overlapping RoIs) write the same pixels at the same time. A plain `+=`
# (read, add, write) loses updates when two threads interleave; `cuda.atomic.add` makes each addition
# indivisible. The order of the additions is then up to the hardware: float sums can differ in their
# last bits from run to run (the backward is not bit-for-bit deterministic, as in torchvision).
#
# Without a GPU, `NUMBA_ENABLE_CUDASIM=1` runs the same kernels in Python, one Python thread per CUDA
# thread: slow, but it checks indexing and logic. CI runs the library's CUDA kernels this way on tiny
# inputs.

# %%
import os
import shutil

HAS_GPU = shutil.which("nvidia-smi") is not None
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # must be set before numba.cuda is imported

import math
import time

import matplotlib.pyplot as plt
import numpy as np
from minimaskrcnn.kernels._cuda import launch_shape
from minimaskrcnn.kernels.roi_align import cuda as lib_cuda
from minimaskrcnn.kernels.roi_align import reference
from numba import cuda

import minimaskrcnn as mm

from _helpers import QUICK, exercise

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)
print("GPU present:", HAS_GPU, "| simulator:", os.environ.get("NUMBA_ENABLE_CUDASIM") == "1")

# %% [markdown]
# ## Build it
# ### Step 1: the thread mapping
# Thread i computes output element i: unravel i into (k, c, ph, pw), row-major.

# %%
def thread_to_output(i, C, PH, PW):
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    return k, c, ph, pw


K, C, PH, PW = 3, 2, 2, 2
for i in [0, 1, 2, 5, 8, 23]:
    ours = thread_to_output(i, C, PH, PW)
    assert ours == tuple(int(v) for v in np.unravel_index(i, (K, C, PH, PW)))
    print(f"thread {i:2d} -> (k, c, ph, pw) = {ours}")
print("the mapping is NumPy's row-major unravel_index: threads walk the output in memory order")

# %% [markdown]
# ### Step 2: the forward kernel
# Device functions (`@cuda.jit(device=True)`) are called from kernels; the kernel (`@cuda.jit`) is
# launched as `kernel[blocks, threads_per_block](arguments)`. Numba compiles the same Python for the GPU;
# the simulator just runs it.

# %%
@cuda.jit(device=True)
def bilinear_dev(input, b, c, y, x):
    H, W = input.shape[2], input.shape[3]
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = H - 1
        y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = W - 1
        x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * input[b, c, y0, x0] + hy * lx * input[b, c, y0, x1]
            + ly * hx * input[b, c, y1, x0] + ly * lx * input[b, c, y1, x1])


@cuda.jit
def roi_align_kernel(input, rois, spatial_scale, sampling_ratio, output):
    i = cuda.grid(1)                                  # this thread's output element
    K, C, PH, PW = output.shape
    if i >= K * C * PH * PW:                          # the last block may have spare threads
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    b = int(rois[k, 0])
    start_w, start_h = rois[k, 1] * spatial_scale, rois[k, 2] * spatial_scale
    roi_w = max(rois[k, 3] * spatial_scale - start_w, 1.0)   # aligned=False, as the model
    roi_h = max(rois[k, 4] * spatial_scale - start_h, 1.0)
    bin_w, bin_h = roi_w / PW, roi_h / PH
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / PH))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / PW))
    total = 0.0
    for iy in range(grid_h):
        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(grid_w):
            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            total += bilinear_dev(input, b, c, y, x)
    output[k, c, ph, pw] = total / max(grid_h * grid_w, 1)


def my_roi_align(features, rois, PH, PW, spatial_scale, sampling_ratio, threads_per_block=64):
    out = np.zeros((len(rois), features.shape[1], PH, PW), dtype=features.dtype)
    blocks = (out.size + threads_per_block - 1) // threads_per_block
    roi_align_kernel[blocks, threads_per_block](features, rois, spatial_scale, sampling_ratio, out)
    return out

# %% [markdown]
# ## Check it
# Tiny inputs (the simulator runs one Python thread per CUDA thread), float64, against the NumPy
# reference kernel and the library's CUDA kernel.

# %%
features = rng.standard_normal((2, 3, 10, 12))
rois = np.array([[0, 10.3, 8.1, 90.7, 70.2], [1, -20.0, 5.0, 60.0, 150.0], [0, 30.0, 30.0, 31.0, 33.0]])
for sampling_ratio in (2, -1):
    start = time.perf_counter()
    ours = my_roi_align(features, rois, 3, 3, 1 / 16, sampling_ratio)
    seconds = time.perf_counter() - start
    ref = reference.roi_align_forward(features, rois, 1 / 16, 3, 3, sampling_ratio, False)
    lib = lib_cuda.roi_align_forward(features, rois, 1 / 16, 3, 3, sampling_ratio, False)
    print(f"sampling_ratio {sampling_ratio:2d}: max |kernel - reference| = {np.abs(ours - ref).max():.1e}, "
          f"|library cuda - reference| = {np.abs(lib - ref).max():.1e}  ({ours.size} threads, {seconds:.2f} s)")
    assert np.allclose(ours, ref, rtol=1e-12, atol=1e-12) and np.allclose(lib, ref, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ### The backward, through the library, under the engine
# With the "cuda" backend every `roi_align` call runs `kernels/roi_align/cuda.py`, forward and backward
# (atomics); a gradient check in float64 confirms the backward.

# %%
x = mm.tensor(features[:, :1, :6, :7].copy(), requires_grad=True)
small_rois = rois[:2]
with mm.use_backend("cuda"):
    from minimaskrcnn.ops.roi_align import roi_align

    result = mm.gradcheck(lambda t: roi_align(t, small_rois, 2, 1 / 16, 2), [x])
print(result.report())
assert result.passed

# %% [markdown]
# ## See it: threads and blocks
# Each square is one output element of a (K=3, C=2, PH=3, PW=3) RoIAlign, 54 elements in all, computed
# with 8 threads per block: 7 blocks, the last with 2 spare threads (they return at once). Its colour
# is the block (`blockIdx.x`), its number the thread inside the block (`threadIdx.x`). Blocks know
# nothing of RoIs or channels: one block can finish one channel and start the next, or cross from one
# RoI to the next, and every panel holds pieces of two or three blocks.

# %%
K, C, PH, PW, tpb = 3, 2, 3, 3, 8
num_blocks = (K * C * PH * PW + tpb - 1) // tpb
fig, axes = plt.subplots(K, C, figsize=(6.5, 8))
cmap = plt.get_cmap("tab10")
for i in range(K * C * PH * PW):
    k, c, ph, pw = thread_to_output(i, C, PH, PW)
    ax = axes[k, c]
    ax.add_patch(plt.Rectangle((pw, ph), 1, 1, facecolor=cmap(i // tpb), alpha=0.6, edgecolor="white", lw=2))
    ax.text(pw + 0.5, ph + 0.5, str(i % tpb), ha="center", va="center", fontsize=11)
for k in range(K):
    for c in range(C):
        ax = axes[k, c]
        ax.set_xlim(0, PW), ax.set_ylim(PH, 0), ax.set_aspect("equal")
        ax.set_xticks(np.arange(PW) + 0.5, range(PW)), ax.set_yticks(np.arange(PH) + 0.5, range(PH))
        ax.set_title(f"RoI k={k}, channel c={c}", fontsize=10)
        ax.set_xlabel("pw", fontsize=9), ax.set_ylabel("ph", fontsize=9)
handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(b), alpha=0.6, label=f"block {b}") for b in range(num_blocks)]
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9)
plt.suptitle(f"{K * C * PH * PW} output elements, {tpb} threads per block: {num_blocks} blocks\n"
             "colour = blockIdx.x, number = threadIdx.x", fontsize=11)
plt.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

# %% [markdown]
# ## Speed
# On a GPU: the library's CUDA kernel (CuPy arrays) against its Numba CPU kernel and the NumPy reference,
# forward, 512 RoIs at 7×7 on a (1, 256, 200, 272) map (the box head's load on P2 for one COCO-sized
# image). Without a GPU the simulator is no measure of speed, so the GPU part is skipped.

# %%
big = rng.standard_normal((1, 256, 200 if not QUICK else 50, 272 if not QUICK else 68)).astype(np.float32)
xy = rng.uniform(0, 700 if not QUICK else 150, (512, 2))
big_rois = np.concatenate([np.zeros((512, 1)), xy, xy + rng.uniform(16, 300, (512, 2))], 1).astype(np.float32)
timings = {}
with mm.use_backend("numba"):
    roi_align(mm.tensor(big), big_rois[:2], 7, 1 / 4, 2)
    t0 = time.perf_counter(); roi_align(mm.tensor(big), big_rois, 7, 1 / 4, 2); timings["numba (CPU)"] = time.perf_counter() - t0
n_ref = 16
t0 = time.perf_counter(); reference.roi_align_forward(big, big_rois[:n_ref], 1 / 4, 7, 7, 2, False)
timings["numpy reference (CPU)"] = (time.perf_counter() - t0) * 512 / n_ref
cupy = mm.backend.cupy_or_none() if HAS_GPU else None
if cupy is not None:
    gpu_big, gpu_rois = cupy.asarray(big), cupy.asarray(big_rois)
    lib_cuda.roi_align_forward(gpu_big, gpu_rois, 1 / 4, 7, 7, 2, False)
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        lib_cuda.roi_align_forward(gpu_big, gpu_rois, 1 / 4, 7, 7, 2, False)
    cuda.synchronize()
    timings["numba-cuda (GPU)"] = (time.perf_counter() - t0) / 10
else:
    print("no GPU (or no CuPy) here: the GPU timing is skipped")
for name, t in timings.items():
    print(f"{name:24s} {t * 1e3:9.2f} ms for 512 RoIs")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write the backward kernel `roi_align_backward_kernel(dout, rois, spatial_scale,
# sampling_ratio, dx)`: one thread per dout element (the same mapping), each adding `dout / count` times
# the bilinear weights into the 4 pixels of each of its samples with `cuda.atomic.add(dx, (b, c, y, x),
# value)`. Use `aligned=False` geometry as in `roi_align_kernel`. The check launches it on the simulator
# (or the GPU) and compares with the reference backward.

# %% tags=exercise-1
@cuda.jit
def roi_align_backward_kernel(dout, rois, spatial_scale, sampling_ratio, dx):
    pass  # your code here


roi_align_backward_kernel_written = False  # set to True when written

# %% tags=check-1
with exercise(1, "16_gpu_kernels"):
    if not roi_align_backward_kernel_written:
        raise NotImplementedError
    dout = rng.standard_normal((len(rois), 3, 3, 3))
    dx = np.zeros_like(features)
    roi_align_backward_kernel[(dout.size + 63) // 64, 64](dout, rois, 1 / 16, 2, dx)
    ref = reference.roi_align_backward(dout, rois, 1 / 16, 3, 3, 2, False, features.shape)
    assert np.allclose(dx, ref, rtol=1e-10, atol=1e-12), f"max difference {np.abs(dx - ref).max():.2e}"

# %% [markdown]
# **Exercise 2.** How many blocks of 256 threads does the library launch for the forward of 512 RoIs of
# 256 channels at 7×7? Set `num_blocks`.

# %% tags=exercise-2
num_blocks = None

# %% tags=check-2
with exercise(2, "16_gpu_kernels"):
    if num_blocks is None:
        raise NotImplementedError
    assert num_blocks == launch_shape(512 * 256 * 7 * 7)[0]  # the launch of every cuda.py in kernels/

# %% [markdown]
# **Exercise 3 (why).** The forward needs no atomics, the backward does. Set `answer_3`:
#
# * (a) each forward thread writes only its own output element, while backward threads of neighbouring
#   bins and overlapping RoIs add into the same input pixels;
# * (b) atomics are only available for float64;
# * (c) the backward runs more threads than the forward.

# %% tags=exercise-3
answer_3 = None

# %% tags=check-3
with exercise(3, "16_gpu_kernels"):
    if answer_3 is None:
        raise NotImplementedError
    assert answer_3 == "a"

# %% [markdown]
# ## Summary
# * One thread per output element, the index unravelled row-major: the forward is embarrassingly parallel.
# * The backward scatters: `cuda.atomic.add`, and a summation order the hardware chooses.
# * The simulator runs the very same kernels on the CPU: slow, but enough to test them.
