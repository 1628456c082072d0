"""Lesson 15's experiment: RoIAlign against RoIPool for keypoints (Mask R-CNN, Table 6), in miniature.

The small Keypoint R-CNN "r18-figures-kp" (and its RoIPool twin "r18-figures-kp-roipool", identical but
for the keypoint branch's RoI layer) trained on the synthetic stick figures with the same recipe and
seeds, then evaluated on held-out figures (COCO keypoint AP, OKS). One run took 25-31 minutes on one
shared core (the stored runs), so run it in the background:

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nohup nice -n 10 \\
        python lessons/_build/experiments/15_keypoint_roi_layer.py --seeds 0 1 2 > runs/15_kp.log 2>&1 &

Each finished run is added to lessons/_build/experiments/15_keypoint_roi_layer.json (with the command,
the git commit and the per-seed numbers) as soon as it ends, so an interrupted experiment keeps what it
has; runs already there are skipped. Lesson 15 reads the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "15_keypoint_roi_layer.json"
VARIANTS = {"RoIAlign": "r18-figures-kp", "RoIPool": "r18-figures-kp-roipool"}
# the paper's Table 6 (ResNet-50-FPN, COCO minival keypoint AP)
PAPER = {"RoIPool": {"AP": 59.8, "AP50": 86.2, "AP75": 66.7}, "RoIAlign": {"AP": 64.2, "AP50": 86.6, "AP75": 69.7}}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(model: str, seed: int, args) -> dict:
    """Train one model and evaluate it on the held-out figures; returns its numbers and timings."""
    from minimaskrcnn.data.figures import FiguresDataset
    from minimaskrcnn.evaluate import evaluate
    from minimaskrcnn.train import TrainConfig, Trainer

    train = FiguresDataset(args.num_train, seed=args.data_seed)
    val = FiguresDataset(args.num_val, seed=args.data_seed + 1)
    config = TrainConfig(model=model, name=f"{model}-seed{seed}", output_dir=args.output_dir, steps=args.steps,
                         batch_size=args.batch_size, seed=seed, val_every=0, checkpoint_every=0, progress=False,
                         val_iou_types=("bbox",), val_loss_images=0, log_every=50)
    trainer = Trainer(config, datasets=(train, val))
    start = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    stats = evaluate(trainer.model, val, iou_types=("bbox", "keypoints"), verbose=False)
    return {"model": model, "seed": seed, "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1),
            "keypoints": {k: round(v, 4) for k, v in stats["keypoints"].items()},
            "bbox": {k: round(v, 4) for k, v in stats["bbox"].items()}}


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1) over seeds, per variant and number."""
    out = {}
    for variant, model in VARIANTS.items():
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        out[variant] = {"seeds": sorted(r["seed"] for r in mine)}
        for kind in ("keypoints", "bbox"):
            for key in ("AP", "AP50", "AP75"):
                values = np.array([r[kind][key] for r in mine]) * 100
                std = round(float(values.std(ddof=1)), 2) if len(values) > 1 else None
                out[variant][f"{kind}_{key}"] = {"mean": round(float(values.mean()), 2), "std": std}
        out[variant]["train_minutes"] = round(float(np.mean([r["train_seconds"] for r in mine])) / 60, 1)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="run only these (two processes, one per variant, each with its own --results)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--data-seed", type=int, default=100, help="train figures from this seed, val from +1")
    parser.add_argument("--output-dir", default=os.path.join("runs", "15_keypoint_roi_layer"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    setting = {k: getattr(args, k) for k in ("steps", "batch_size", "num_train", "num_val", "data_seed")}
    data = json.loads(args.results.read_text()) if args.results.exists() else {}
    if data.get("setting", setting) != setting:
        raise SystemExit(f"{args.results} holds runs of another setting {data['setting']}: move it away first")
    data["setting"] = setting
    data.setdefault("runs", [])
    data["paper_table_6"] = PAPER
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(__file__)] + sys.argv[1:])
    commit = _git_commit()  # the code every run of this invocation uses
    for seed in args.seeds:
        for variant, model in VARIANTS.items():
            if variant not in args.variants or any(r["model"] == model and r["seed"] == seed for r in data["runs"]):
                continue
            result = run_one(model, seed, args)
            result.update(command=command, commit=commit, machine=platform.machine(),
                          threads={k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")})
            data["runs"].append(result)
            data["summary"] = summarise(data["runs"])
            tmp = args.results.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, args.results)
            kp = result["keypoints"]
            print(f"{variant} seed {seed}: keypoint AP {100 * kp['AP']:.1f} (AP50 {100 * kp['AP50']:.1f}, "
                  f"AP75 {100 * kp['AP75']:.1f}), box AP {100 * result['bbox']['AP']:.1f}, "
                  f"trained in {result['train_seconds'] / 60:.1f} min", flush=True)
    print(json.dumps(data.get("summary", {}), indent=1))


if __name__ == "__main__":
    main()
