"""RoIAlign and RoIPool on the CPU: minimaskrcnn's Numba backend against torchvision.ops.

Both run in the same process with the same number of threads (torch.set_num_threads and
numba.set_num_threads), interleaved, and the table gives the median time of each and the ratio
ours / torchvision (below 1: ours is faster). The case is an FPN P2 level of an 800x1088 image:
features (2, 256, 200, 272) float32, 512 RoIs of realistic sizes, spatial_scale 1/4.

    python benchmarks/bench_roi.py [--repeats 5] [--threads 2] [--rois 512]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def make_rois(rng: np.random.Generator, num_rois: int, num_images: int, image_h: int, image_w: int) -> np.ndarray:
    """(K, 5) float32 [batch_idx, x1, y1, x2, y2]: proposal-like boxes (sides 16 to 512 px, log-uniform,
    aspect ratio 1:2 to 2:1) centred anywhere in the image and clipped to it."""
    side = np.exp(rng.uniform(np.log(16), np.log(512), num_rois))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), num_rois))
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx, cy = rng.uniform(0, image_w, num_rois), rng.uniform(0, image_h, num_rois)
    x1, x2 = np.clip(cx - w / 2, 0, image_w), np.clip(cx + w / 2, 0, image_w)
    y1, y2 = np.clip(cy - h / 2, 0, image_h), np.clip(cy + h / 2, 0, image_h)
    batch_idx = rng.integers(0, num_images, num_rois)
    return np.stack([batch_idx, x1, y1, x2, y2], axis=1).astype(np.float32)


def time_interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time and median process CPU time (all threads) of each function, calling them in
    turn ``repeats`` times after one warm-up. CPU time says how much work each did, which a busy
    machine disturbs less than wall time."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rois", type=int, default=512)
    args = parser.parse_args()

    import numba
    import torch
    import torchvision

    import minimaskrcnn
    from minimaskrcnn.ops.roi_align import roi_align
    from minimaskrcnn.ops.roi_pool import roi_pool

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    minimaskrcnn.set_backend("numba")

    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 256, 200, 272), dtype=np.float32)
    rois = make_rois(rng, args.rois, num_images=2, image_h=800, image_w=1088)
    features_t, rois_t = torch.from_numpy(features), torch.from_numpy(rois)
    scale = 0.25

    rows = []
    for size in (7, 14):
        dout = rng.standard_normal((args.rois, 256, size, size), dtype=np.float32)
        dout_t = torch.from_numpy(dout)

        def ours_forward(size=size):
            with minimaskrcnn.no_grad():
                roi_align(minimaskrcnn.Tensor(features), rois, size, scale, 2, True)

        def tv_forward(size=size):
            with torch.no_grad():
                torchvision.ops.roi_align(features_t, rois_t, size, scale, 2, True)

        def ours_train(size=size, dout=dout):
            x = minimaskrcnn.Tensor(features, requires_grad=True)
            roi_align(x, rois, size, scale, 2, True).backward(dout)

        def tv_train(size=size, dout_t=dout_t):
            x = features_t.clone().requires_grad_()  # the clone costs ~1/100 of the op
            torchvision.ops.roi_align(x, rois_t, size, scale, 2, True).backward(dout_t)

        t = time_interleaved({"ours": ours_forward, "tv": tv_forward}, args.repeats)
        rows.append((f"roi_align {size}x{size} forward", t["ours"], t["tv"], 0.7))
        t = time_interleaved({"ours": ours_train, "tv": tv_train}, args.repeats)
        rows.append((f"roi_align {size}x{size} forward+backward", t["ours"], t["tv"], 0.7))

    def ours_pool():
        with minimaskrcnn.no_grad():
            roi_pool(minimaskrcnn.Tensor(features), rois, 7, scale)

    def tv_pool():
        with torch.no_grad():
            torchvision.ops.roi_pool(features_t, rois_t, 7, scale)

    t = time_interleaved({"ours": ours_pool, "tv": tv_pool}, args.repeats)
    rows.append(("roi_pool 7x7 forward", t["ours"], t["tv"], 0.3))

    print(
        f"features (2, 256, 200, 272) float32, {args.rois} RoIs, spatial_scale 1/4, sampling_ratio 2, "
        f"aligned=True; {args.threads} threads; median of {args.repeats} interleaved runs; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'op':38s} {'ours ms':>8s} {'tv ms':>8s} {'ratio':>6s} {'target':>7s}      {'cpu-time ratio':>14s}")
    for name, (ours, ours_cpu), (tv, tv_cpu), target in rows:
        ratio = ours / tv
        verdict = "ok" if ratio <= target else "MISSED"
        print(
            f"{name:38s} {ours * 1e3:8.1f} {tv * 1e3:8.1f} {ratio:6.2f} {'<=' + str(target):>7s} {verdict:6s} "
            f"{ours_cpu / tv_cpu:8.2f}"
        )


if __name__ == "__main__":
    main()
