"""The default run's wall time per step in one process and in N local data-parallel processes.

Runs ``minimaskrcnn train --steps S --processes P`` (the README's run, cut short, without
validation or checkpoints) for each P, in a scratch folder that shares one copy of the shapes
data, from the initial weights and, with ``--resume CHECKPOINT``, from a late checkpoint of a
default run (where the mask head works on many more RoIs). The wall time per step is read from
the run's log (``time`` column, rank 0) between its first and last rows, so start-up and the
first steps' compilation are left out. One process uses Numba's threads on every core and BLAS
on one (the default ``--threads``/``--blas-threads``); P processes one core each.

    python benchmarks/bench_processes.py [--steps 60] [--processes 1,2] [--resume CHECKPOINT]

Wall times need a quiet machine: run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def seconds_per_step(run_dir: str) -> tuple[float, int]:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    rows = [r for r in rows if "loss" in r and "time" in r]
    first, last = rows[0], rows[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"]), last["step"] - first["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="start from this checkpoint of a default run")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("MINIMASKRCNN_PROCESSES", "NUMBA_NUM_THREADS",
                                                             "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="bench_processes-") as scratch:
        data = os.path.join(scratch, "data", "shapes")
        start = f"from {args.resume}" if args.resume else "from the initial weights"
        print(f"default run, {args.steps} steps {start}, {os.cpu_count()} cores")
        print("| processes | wall per step (ms) | speed-up over the first row | steps timed |")
        print("|---|---|---|---|")
        base = None
        for p in [int(v) for v in args.processes.split(",")]:
            name = f"p{p}"
            cmd = [sys.executable, "-m", "minimaskrcnn", "train", "--name", name, "--output-dir", scratch,
                   "--data-dir", data, "--val-every", "0", "--checkpoint-every", "0", "--log-every", "5",
                   "--no-progress", "--processes", str(p)]
            if args.resume:
                cmd += ["--resume", args.resume]
                from minimaskrcnn.io import load_checkpoint

                start = int(load_checkpoint(args.resume).extra["step"])
                cmd += ["--steps", str(start + args.steps)]
            else:
                cmd += ["--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
            per_step, timed = seconds_per_step(os.path.join(scratch, name))
            base = base or per_step
            print(f"| {p} | {per_step * 1e3:.0f} | {base / per_step:.2f}x | {timed} |")


if __name__ == "__main__":
    main()
