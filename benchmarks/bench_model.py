"""Benchmark: maskrcnn_resnet50_fpn on an 800x1066 input, minimaskrcnn against torchvision on the CPU.

Both models hold the same weights (torchvision's random ones, frozen batch norm and
trainable_backbone_layers=3 as with pretrained weights), run in the same process on the same COCO
image (480x640, resized by the model's transform to 800x1066), interleaved (torch, ours, torch,
ours, ...) after a warm-up, and the medians are compared; a busy machine slows both alike. torch
gets as many threads as there are cores; Numba and the BLAS behind NumPy use every core by default.

- eval: ``model.eval(); model([image])``, detections included (box_score_thresh 0.05), target <= 1.5x;
- train: one step ``sum(model([image], [target]).values()).backward()`` and an SGD step, target <= 2x.

Peak memory is measured in a fresh process per (library, mode) after the model is built: the rise
of the process's peak resident set over one call (Linux: the peak mark VmHWM is reset through
/proc/self/clear_refs just before the call and read after it, minus VmRSS before), for both; for
ours also tracemalloc's peak of traced allocations (NumPy arrays) during the call.

    python benchmarks/bench_model.py [--repeats 3] [--skip-train] [--skip-memory]
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


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


def measure_memory(library: str, mode: str) -> dict:
    """Run in a fresh process: peak memory of one call after the model is built (see module doc)."""
    import tracemalloc

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    image, target = load_sample()
    tv = build_torch()
    train = mode == "train"
    if library == "torch":
        model = tv.train(train)
        opt = torch_optimizer(model) if train else None
        step = torch_step
    else:
        model = build_ours(torch_state_dict(tv)).train(train)
        del tv
        opt = ours_optimizer(model) if train else None
        step = ours_step
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    result = {}
    if library == "ours":
        tracemalloc.start()
        step(model, opt, image, target, train)
        result["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        step(model, opt, image, target, train)
    result["rss_rise_mb"] = _status_mb("VmHWM") - before
    return result


def memory_table(modes) -> dict:
    out = {}
    for mode in modes:
        for library in ("torch", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--memory", library, mode], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            out[(library, mode)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory", nargs=2, metavar=("LIBRARY", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(measure_memory(*args.memory)))
        return

    import torch

    import minimaskrcnn

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    minimaskrcnn.set_backend("numba")
    image, target = load_sample()
    tv = build_torch()
    ours = build_ours(torch_state_dict(tv))
    print(f"maskrcnn_resnet50_fpn, 480x640 COCO image -> 800x1066 input, float32, {cores} threads, "
          f"median of {args.repeats} interleaved repeats after a warm-up")

    modes = ["eval"] + ([] if args.skip_train else ["train"])
    times = {}
    for mode in modes:
        train = mode == "train"
        tv.train(train), ours.train(train)
        opt_tv, opt_ours = (torch_optimizer(tv), ours_optimizer(ours)) if train else (None, None)
        run_tv = lambda: torch_step(tv, opt_tv, image, target, train)  # noqa: E731
        run_ours = lambda: ours_step(ours, opt_ours, image, target, train)  # noqa: E731
        run_tv(), run_ours()  # warm-up (numba kernels load or compile here)
        t_tv, t_ours = [], []
        for _ in range(args.repeats):
            t_tv.append(_timed(run_tv))
            t_ours.append(_timed(run_ours))
        times[mode] = (statistics.median(t_tv), statistics.median(t_ours))
        if not train:
            n_tv, n_ours = len(run_tv()[0]["boxes"]), len(run_ours()[0]["boxes"])
            print(f"  detections: torchvision {n_tv}, ours {n_ours}")

    memory = {} if args.skip_memory else memory_table(modes)
    targets = {"eval": 1.5, "train": 2.0}
    print()
    print("| mode | torchvision (s) | ours (s) | ratio | target | torchvision peak RSS rise (MB) | ours peak RSS rise (MB) | ours tracemalloc peak (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        t_tv, t_ours = times[mode]
        m_tv = memory.get(("torch", mode), {})
        m_ours = memory.get(("ours", mode), {})

        def fmt(d, key):
            return f"{d[key]:.0f}" if key in d else "-"

        print(f"| {mode} | {t_tv:.2f} | {t_ours:.2f} | {t_ours / t_tv:.2f}x | <= {targets[mode]}x | "
              f"{fmt(m_tv, 'rss_rise_mb')} | {fmt(m_ours, 'rss_rise_mb')} | {fmt(m_ours, 'traced_peak_mb')} |")


if __name__ == "__main__":
    main()
