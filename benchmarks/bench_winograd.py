"""Benchmark: 3x3 stride-1 conv2d by im2col + GEMM and by Winograd F(2x2, 3x3), against torch, on the CPU.

For each layer shape of the small model (the default run) and of R50-FPN, the CPU time of one
forward + backward (dx and dw) of ``ops.conv.Conv2d`` with each algorithm (im2col: Winograd turned
off, ``WINOGRAD_MIN_CHANNELS = None``; Winograd: on for every size), and of torch's conv2d, on the
same float32 arrays, interleaved, medians of the repeats. The last column is what ops.conv chooses
with its default thresholds. One thread each by default (``--threads``).

    python benchmarks/bench_winograd.py [--repeats 7] [--threads 1] [--forward-only]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if "--threads" in sys.argv:  # before NumPy's BLAS and Numba start their thread pools
    _threads = sys.argv[sys.argv.index("--threads") + 1]
else:
    _threads = "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _threads

import numpy as np  # noqa: E402

from minimaskrcnn.ops import conv as conv_module  # noqa: E402

# (what, N, C_in, H, W, C_out): 3x3 stride-1 "same" convs
SHAPES = [
    ("small model: layer1 (16 ch, 32x32)", 4, 16, 32, 32, 16),
    ("small model: layer2 (32 ch, 16x16)", 4, 32, 16, 16, 32),
    ("small model: FPN/RPN P2 (64 ch, 32x32)", 4, 64, 32, 32, 64),
    ("small model: FPN/RPN P3 (64 ch, 16x16)", 4, 64, 16, 16, 64),
    ("small model: layer3 (64 ch, 8x8)", 4, 64, 8, 8, 64),
    ("small model: layer4 (128 ch, 4x4)", 4, 128, 4, 4, 128),
    ("small model: mask head, early (14 RoIs, 64 ch, 14x14)", 14, 64, 14, 14, 64),
    ("small model: mask head, late (64 RoIs, 64 ch, 14x14)", 64, 64, 14, 14, 64),
    ("R50: layer1 (64 ch, 200x272)", 1, 64, 200, 272, 64),
    ("R50: layer2 (128 ch, 100x136)", 1, 128, 100, 136, 128),
    ("R50: layer3 (256 ch, 50x68)", 1, 256, 50, 68, 256),
    ("R50: layer4 (512 ch, 25x34)", 1, 512, 25, 34, 512),
    ("R50: FPN/RPN P2 (256 ch, 200x272)", 1, 256, 200, 272, 256),
    ("R50: FPN/RPN P6 (256 ch, 13x17)", 1, 256, 13, 17, 256),
    ("R50: mask head (100 RoIs, 256 ch, 14x14)", 100, 256, 14, 14, 256),
]


class _Context:
    """The bits of a Function's context that Conv2d's forward and backward use."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays


def ours(x, w, dout, forward_only: bool) -> None:
    ctx = _Context((True, True, False))
    conv_module.Conv2d.forward(ctx, x, w, None, (1, 1), (1, 1), (1, 1), 1)
    if not forward_only:
        conv_module.Conv2d.backward(ctx, dout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--forward-only", action="store_true", help="time the forward alone")
    args = parser.parse_args()
    import torch  # the oracle, only here

    from minimaskrcnn.backend import limit_threads

    torch.set_num_threads(args.threads)
    limit_threads(args.threads, args.threads)
    defaults = conv_module.WINOGRAD_MIN_CHANNELS, conv_module.WINOGRAD_MIN_TILES
    rng = np.random.default_rng(0)
    what = "forward" if args.forward_only else "forward + backward (dx, dw)"
    print(f"3x3 stride-1 conv2d, float32, {what}, CPU time in ms, {args.threads} thread(s), median of {args.repeats}")
    print()
    print("| layer | im2col | Winograd | torch | im2col / torch | Winograd / torch | default |")
    print("|---|---|---|---|---|---|---|")
    for name, N, C, H, W, C_out in SHAPES:
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = (rng.standard_normal((C_out, C, 3, 3), dtype=np.float32) / np.sqrt(9 * C)).astype(np.float32)
        dout = rng.standard_normal((N, C_out, H, W), dtype=np.float32)
        xt, wt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(w).requires_grad_(True)
        doutt = torch.from_numpy(dout)

        def torch_step(xt=xt, wt=wt, doutt=doutt):
            out = torch.nn.functional.conv2d(xt, wt, padding=1)
            if not args.forward_only:
                out.backward(doutt)

        def with_settings(min_channels, min_tiles, x=x, w=w, dout=dout):
            def run():
                conv_module.WINOGRAD_MIN_CHANNELS, conv_module.WINOGRAD_MIN_TILES = min_channels, min_tiles
                try:
                    ours(x, w, dout, args.forward_only)
                finally:
                    conv_module.WINOGRAD_MIN_CHANNELS, conv_module.WINOGRAD_MIN_TILES = defaults
            return run

        fns = {"im2col": with_settings(None, 0), "winograd": with_settings(1, 1), "torch": torch_step}
        times = {k: [] for k in fns}
        for fn in fns.values():  # warm-up (compilation, scratch buffers)
            fn()
        for _ in range(args.repeats):
            for k, fn in fns.items():
                start = time.process_time()
                fn()
                times[k].append(time.process_time() - start)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        chosen = conv_module._winograd_applies((N, C, H, W), C_out, (3, 3), (1, 1), (1, 1), (1, 1), 1, x)
        print(f"| {name} | {ms['im2col']:.2f} | {ms['winograd']:.2f} | {ms['torch']:.2f} | "
              f"{ms['im2col'] / ms['torch']:.2f}x | {ms['winograd'] / ms['torch']:.2f}x | "
              f"{'Winograd' if chosen else 'im2col'} |")


if __name__ == "__main__":
    main()
