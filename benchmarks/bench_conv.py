"""Benchmark: conv2d forward + backward, minimaskrcnn (Numba backend) against torch on the CPU.

Both run in the same process on the same data, interleaved (ours, torch, ours, torch, ...), and
the medians are compared, so that a busy machine slows both alike. torch's thread count is set to
the machine's cores (numba and the BLAS behind NumPy use every core by default).

    python benchmarks/bench_conv.py [--repeats 15] [--batch 2] [--channels 256] [--size 64] [--threads T]

Prints the time ratio ours/torch, our achieved GFLOP/s and a large float32 NumPy matmul's GFLOP/s
(the practical ceiling: every FLOP of an im2col convolution is in such products).
``--threads 1`` compares single-threaded code, which a machine busy with other jobs distorts less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if "--threads" in sys.argv:  # before NumPy's BLAS and Numba start their thread pools
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402

import minimaskrcnn  # noqa: E402
from minimaskrcnn import Tensor  # noqa: E402
from minimaskrcnn.ops.conv import conv2d  # noqa: E402


def conv_flops(N: int, C_in: int, C_out: int, K: int, OH: int, OW: int) -> float:
    """Multiply-adds x 2 of one forward (the backward's dx and dw products cost the same each)."""
    return 2.0 * N * C_out * C_in * K * K * OH * OW


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The best float32 GFLOP/s of an (n, n) @ (n, n) NumPy product."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of both (default: all cores)")
    args = parser.parse_args()
    import torch  # the oracle, only here

    cores = args.threads
    torch.set_num_threads(cores)
    minimaskrcnn.set_backend("numba")
    N, C, S, K = args.batch, args.channels, args.size, 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, S, S), dtype=np.float32)
    w = (rng.standard_normal((C, C, K, K), dtype=np.float32) * 0.02).astype(np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    dout = rng.standard_normal((N, C, S, S), dtype=np.float32)

    xs, ws, bs = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    dout_t = torch.from_numpy(dout)

    def ours():
        xs.grad = ws.grad = bs.grad = None
        conv2d(xs, ws, bs, padding=1).backward(dout)

    def theirs():
        xt.grad = wt.grad = bt.grad = None
        torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(dout_t)

    # same numbers first (float32: relative to the gradient's size)
    ours(), theirs()
    for name, mine, ref in (("dx", xs.grad, xt.grad), ("dw", ws.grad, wt.grad), ("db", bs.grad, bt.grad)):
        ref = ref.numpy()
        err = np.abs(mine - ref).max() / np.abs(ref).max()
        assert err < 1e-4, f"{name} differs from torch: {err:.2e}"
    for _ in range(2):  # warm-up: compilation, allocator, BLAS threads
        ours(), theirs()
    times_ours, times_torch = [], []
    for _ in range(args.repeats):
        times_ours.append(_timed(ours))
        times_torch.append(_timed(theirs))
    t_ours, t_torch = statistics.median(times_ours), statistics.median(times_torch)
    flops = 3 * conv_flops(N, C, C, K, S, S)  # forward, dx, dw
    ceiling = matmul_gflops()

    print(f"conv2d forward+backward, N={N}, {C}->{C} channels, {K}x{K}, padding 1, {S}x{S}, float32, "
          f"{cores} threads, median of {args.repeats} interleaved repeats")
    print(f"{'':28s}{'time (ms)':>12s}{'GFLOP/s':>10s}")
    print(f"{'minimaskrcnn (numba)':28s}{t_ours * 1e3:12.1f}{flops / t_ours / 1e9:10.1f}")
    print(f"{'torch':28s}{t_torch * 1e3:12.1f}{flops / t_torch / 1e9:10.1f}")
    print(f"{'numpy sgemm 2048^3 (ceiling)':28s}{'':12s}{ceiling:10.1f}")
    print(f"ratio ours/torch: {t_ours / t_torch:.2f}x")


if __name__ == "__main__":
    main()
