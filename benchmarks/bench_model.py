"""Benchmark: maskrcnn_resnet50_fpn on an 800x1066 input, minimaskrcnn against torchvision on the CPU.

Both models hold the same weights: torchvision's seeded random ones (frozen batch norm and
trainable_backbone_layers=3, as with pretrained weights), saved once to an .npz that our process
loads without torch. Every measurement runs in a fresh process of its own (one library, one mode),
so that neither library's memory or thread pools affect the other: the process builds its model,
runs one warm-up call (Numba's kernels load or compile there), then ``--repeats`` timed calls on the
same COCO image (480x640, resized by the model's transform to 800x1066). The processes alternate
(torch, ours, torch, ours, ... for ``--rounds`` rounds), so a machine that gets busier or quieter
slows both alike, and the medians over all timed calls are compared.

- eval: ``model.eval(); model([image])``, detections included (box_score_thresh 0.05), target <= 1.0x;
- train: one step ``sum(model([image], [target]).values()).backward()`` and an SGD step, target <= 1.2x.

Reported per call: wall time and process CPU time (user + sys; on a shared machine CPU time is
the steadier measure, and with one thread it is what a quiet core would take). Memory: the peak
resident set of the whole process (VmHWM, Linux) over its life, model and libraries included, and
its rise over the timed calls (VmHWM reset through /proc/self/clear_refs after the warm-up, minus
VmRSS then). Threads: ``--threads`` (default: every core) for torch (``torch.set_num_threads``) and
for ours as the command line runs it (``--numba-threads``, ``--blas-threads``, default 1 and
``--threads``: the big products on every core, the kernels on one, so that the two thread pools do
not wait on each other's cores); ours also reuses freed memory as the trainer and CLI do
(``backend.reuse_freed_memory``).

    python benchmarks/bench_model.py [--repeats 2] [--rounds 2] [--threads 1] [--skip-train]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

IMAGE_INDEX = 5  # val sample image 135561: 480x640, 8 objects -> an 800x1066 network input
TARGETS = {"eval": 1.0, "train": 1.2}


def load_sample():
    """The benchmark image (3, 480, 640) float32 in [0, 1] and its target (boxes, labels, masks)."""
    from minimaskrcnn.data import sample_dataset

    image, target = sample_dataset("val")[IMAGE_INDEX]
    image = np.ascontiguousarray(image, dtype=np.float32)
    target = {"boxes": np.asarray(target["boxes"], np.float32), "labels": np.asarray(target["labels"], np.int64),
              "masks": np.asarray(target["masks"], np.uint8)}
    return image, target


def build_torch():
    """torchvision's maskrcnn_resnet50_fpn as built with pretrained backbone weights (frozen BN,
    3 trainable stages), but with seeded random weights (no download)."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    return MaskRCNN(backbone, num_classes=91)


def build_ours(state_dict):
    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(seed=0)
    model.load_state_dict(state_dict)
    return model


def torch_state_dict(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_step(model, optimizer, image, target, train: bool):
    import torch

    x = torch.from_numpy(image)
    if not train:
        with torch.no_grad():
            return model([x])
    t = {k: torch.from_numpy(v) for k, v in target.items()}
    losses = model([x], [t])
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def ours_step(model, optimizer, image, target, train: bool):
    if not train:
        return model([image])
    losses = model([image], [target])
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def torch_optimizer(model):
    import torch

    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def ours_optimizer(model):
    from minimaskrcnn.optim import SGD

    return SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Reset the process's peak-RSS mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_child(library: str, mode: str, weights: str, repeats: int, threads: int, numba_threads: int,
              blas_threads: int) -> dict:
    """In a fresh process: build the model, warm up, time ``repeats`` calls; times and memory as a dict."""
    image, target = load_sample()
    train = mode == "train"
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
        model = build_torch()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(weights).items()})
        optimizer = torch_optimizer(model) if train else None
        step = torch_step
    else:
        from minimaskrcnn.backend import limit_threads, reuse_freed_memory

        limit_threads(numba_threads, blas_threads)
        reuse_freed_memory()
        with np.load(weights) as f:
            model = build_ours({k: f[k] for k in f.files})
        optimizer = ours_optimizer(model) if train else None
        step = ours_step
    model.train(train)
    result = step(model, optimizer, image, target, train)  # warm-up
    detections = None if train else len(result[0]["boxes"])
    peak_so_far = _status_mb("VmHWM")  # building the model and the warm-up call
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step(model, optimizer, image, target, train)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    rise = _status_mb("VmHWM") - before
    return {"wall": wall, "cpu": cpu, "rss_rise_mb": rise, "peak_rss_mb": max(_status_mb("VmHWM"), peak_so_far),
            "detections": detections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per library and mode, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--numba-threads", type=int, default=1, help="ours: Numba's kernels")
    parser.add_argument("--blas-threads", type=int, default=None, help="ours: BLAS (default --threads)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("LIBRARY", "MODE", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    blas_threads = args.blas_threads or args.threads
    if args.child:
        print(json.dumps(run_child(*args.child, args.repeats, args.threads, args.numba_threads, blas_threads)))
        return

    os.makedirs(os.path.join("runs", "bench"), exist_ok=True)
    weights = os.path.join("runs", "bench", "maskrcnn_resnet50_fpn_seed0.npz")
    if not os.path.isfile(weights):
        np.savez(weights, **torch_state_dict(build_torch()))
    modes = ["eval"] + ([] if args.skip_train else ["train"])
    print(f"maskrcnn_resnet50_fpn, 480x640 COCO image -> 800x1066 input, float32; torch {args.threads} thread(s), "
          f"ours Numba {args.numba_threads} + BLAS {blas_threads}; fresh process per measurement, "
          f"{args.rounds} alternating rounds x {args.repeats} timed calls after a warm-up")
    results = {}
    for mode in modes:
        for _ in range(args.rounds):
            for library in ("torch", "ours"):
                cmd = [sys.executable, os.path.abspath(__file__), "--child", library, mode, weights,
                       "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--numba-threads", str(args.numba_threads), "--blas-threads", str(blas_threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{library} {mode} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                acc = results.setdefault((library, mode), {"wall": [], "cpu": [], "rise": [], "peak": [], "det": []})
                acc["wall"] += r["wall"]
                acc["cpu"] += r["cpu"]
                acc["rise"].append(r["rss_rise_mb"])
                acc["peak"].append(r["peak_rss_mb"])
                acc["det"].append(r["detections"])
    print()
    print("| mode | torchvision CPU (s) | ours CPU (s) | CPU ratio | torchvision wall (s) | ours wall (s) | wall ratio "
          "| target | torchvision peak RSS (MB) | ours peak RSS (MB) | torchvision rise (MB) | ours rise (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        tv, ours = results[("torch", mode)], results[("ours", mode)]
        c_tv, c_o = statistics.median(tv["cpu"]), statistics.median(ours["cpu"])
        w_tv, w_o = statistics.median(tv["wall"]), statistics.median(ours["wall"])
        print(f"| {mode} | {c_tv:.2f} | {c_o:.2f} | {c_o / c_tv:.2f}x | {w_tv:.2f} | {w_o:.2f} | {w_o / w_tv:.2f}x "
              f"| <= {TARGETS[mode]}x | {max(tv['peak']):.0f} | {max(ours['peak']):.0f} | {max(tv['rise']):.0f} "
              f"| {max(ours['rise']):.0f} |")
        if mode == "eval":
            print(f"  (detections: torchvision {tv['det'][0]}, ours {ours['det'][0]})")


if __name__ == "__main__":
    main()
