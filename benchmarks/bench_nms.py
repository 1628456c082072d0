"""NMS on the CPU: minimaskrcnn's Numba backend against torchvision.ops.nms.

Both run in the same process on the same boxes, interleaved (ours, torchvision, ours, ...), and the
table gives the median time of each and the ratio ours / torchvision (below 1: ours is faster). The
boxes are realistic detections: clustered around a few centres so that many overlap, random sizes
and random scores; the kept indices are checked to be identical before timing. Both are
single-threaded algorithms.

    python benchmarks/bench_nms.py [--repeats 15] [--sizes 1000 5000 20000] [--threshold 0.5]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np

import minimaskrcnn
from minimaskrcnn.ops.boxes import nms


def clustered_boxes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) float32 boxes in an 800 x 800 image, ~50 per cluster, and (n,) float32 scores."""
    centres = rng.uniform(0, 800, (max(n // 50, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 10, (n, 2))
    wh = rng.uniform(20, 120, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    import torch  # the oracle, only here
    import torchvision

    minimaskrcnn.set_backend("numba")
    rng = np.random.default_rng(0)
    print(f"{'boxes':>7} {'kept':>6} {'ours ms':>9} {'torchvision ms':>15} {'ratio':>6}")
    for n in args.sizes:
        boxes, scores = clustered_boxes(n, rng)
        boxes_t, scores_t = torch.from_numpy(boxes), torch.from_numpy(scores)
        ours = functools.partial(nms, boxes, scores, args.threshold)
        theirs = functools.partial(torchvision.ops.nms, boxes_t, scores_t, args.threshold)
        keep = ours()  # also compiles
        if not np.array_equal(keep, theirs().numpy()):
            raise AssertionError(f"kept indices differ from torchvision's for {n} boxes")
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            ours_s.append(_timed(ours))
            theirs_s.append(_timed(theirs))
        ours_ms, theirs_ms = 1e3 * statistics.median(ours_s), 1e3 * statistics.median(theirs_s)
        print(f"{n:>7} {len(keep):>6} {ours_ms:>9.3f} {theirs_ms:>15.3f} {ours_ms / theirs_ms:>6.2f}")


if __name__ == "__main__":
    main()
