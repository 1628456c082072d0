"""Benchmark: training steps per second on 1 process and on N MPI ranks, and the allreduce volume.

The same global batch (``--batch`` images of the shapes data) is trained for ``--steps`` steps after
``--warmup`` steps, by one process (with 1 thread and with every core) and by ``mpiexec -n N``
(each rank with cores / N threads); the three runs are repeated ``--repeats`` times, interleaved,
and the medians are compared, so that a busy machine slows all alike. Also prints, for every model
configuration, the bytes each rank sends into the gradient allreduce per step (4 bytes per trainable
float32 parameter) and the fused buffers they go in.

    python benchmarks/bench_distributed.py [--ranks 2] [--steps 10] [--repeats 3] [--batch 4] [--model r18-shapes]

Needs the distributed extra (``pip install -e ".[distributed]"``) for the N-rank run. Timings on a
shared machine are noisy: rerun when another job was busy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    """One training run (inside mpiexec or alone): rank 0 prints {"steps_per_s", "allreduce_s", ...}."""
    from minimaskrcnn import distributed
    from minimaskrcnn.config import TrainConfig
    from minimaskrcnn.train import Trainer

    comm = distributed.init()
    allreduce = {"seconds": 0.0, "bytes": 0, "calls": 0}
    fused = distributed.allreduce_gradients_

    def timed_allreduce(*a, **kw):
        start = time.perf_counter()
        sent = fused(*a, **kw)
        allreduce["seconds"] += time.perf_counter() - start
        allreduce["bytes"] += sent
        allreduce["calls"] += 1
        return sent

    distributed.allreduce_gradients_ = timed_allreduce  # the trainer calls it through the module
    config = TrainConfig(model=args.model, name=f"bench-{comm.size}", output_dir=args.out, data_dir=args.data,
                         num_train_images=max(16, 2 * args.batch), num_val_images=2, batch_size=args.batch,
                         steps=args.warmup + args.steps, warmup_steps=1, progress=False, seed=0,
                         threads=args.threads)
    with distributed.abort_on_error(comm):
        trainer = Trainer(config)
        batches = trainer.loader.forever()
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                comm.barrier()
                start, cpu_start = time.perf_counter(), time.process_time()
                allreduce.update(seconds=0.0, bytes=0, calls=0)
            images, targets = next(batches)
            trainer.train_step(images, targets)
            trainer.step += 1
        cpu = time.process_time() - cpu_start  # before the barrier: its polling is not work
        comm.barrier()
        seconds = time.perf_counter() - start
        cpu = sum(comm.allgather(cpu))  # CPU seconds of all ranks: the work, whatever share of the CPU we got
    if comm.is_root:
        calls = max(allreduce["calls"], 1)
        print(json.dumps({"ranks": comm.size, "threads": args.threads, "steps_per_s": args.steps / seconds,
                          "cpu_s_per_step": cpu / args.steps,
                          "allreduce_s_per_step": allreduce["seconds"] / calls,
                          "allreduce_bytes_per_step": allreduce["bytes"] / calls}))


def run(cmd: list[str]) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def allreduce_volume() -> None:
    from minimaskrcnn.distributed import fusion_buckets
    from minimaskrcnn.models import build_model
    from minimaskrcnn.models.configs import CONFIGS

    print("\ngradient allreduce per step and rank (float32; fusion buffers of up to 64 MiB):")
    print(f"  {'configuration':24s} {'trainable params':>17s} {'bytes':>10s} {'tensors':>8s} {'buffers':>8s}")
    for name in CONFIGS:
        params = [p.data for p in build_model(name).parameters() if p.requires_grad]
        size = sum(p.size for p in params)
        print(f"  {name:24s} {size:17,d} {size * 4 / 1e6:8.1f} MB {len(params):8d} {len(fusion_buckets(params)):8d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="the global batch")
    parser.add_argument("--model", default="r18-shapes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    cores = os.cpu_count() or 1
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    with tempfile.TemporaryDirectory() as tmp:
        common = [__file__, "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
                  str(args.batch), "--model", args.model, "--out", tmp, "--data", os.path.join(tmp, "shapes")]
        commands = [[sys.executable, *common, "--threads", "1"]]
        if cores > 1:
            commands.append([sys.executable, *common, "--threads", str(cores)])
        if mpiexec is None:
            print("no mpiexec: install the distributed extra for the multi-rank run")
        else:
            per_rank = max(1, cores // args.ranks)
            commands.append([mpiexec, "-n", str(args.ranks), sys.executable, *common, "--threads", str(per_rank)])
        runs = [[] for _ in commands]
        for _ in range(args.repeats):  # interleaved: a busy spell slows every variant alike
            for i, cmd in enumerate(commands):
                runs[i].append(run(cmd))
    results = []
    for rs in runs:  # the median run of each variant (by speed)
        rs.sort(key=lambda r: r["steps_per_s"])
        results.append({**rs[len(rs) // 2], "all": [r["steps_per_s"] for r in rs]})
    base = results[0]["steps_per_s"]
    print(f"{args.model}, global batch {args.batch}, {args.steps} steps after {args.warmup}, {cores} cores, "
          f"medians of {args.repeats} interleaved runs:")
    print(f"  {'processes':>9s} {'threads each':>12s} {'steps/s':>8s} {'vs 1x1':>7s} {'CPU s/step':>11s} "
          f"{'allreduce/step':>15s} {'bytes/step':>11s}")
    for r in results:
        print(f"  {r['ranks']:9d} {r['threads']:12d} {r['steps_per_s']:8.3f} {r['steps_per_s'] / base:6.2f}x "
              f"{r['cpu_s_per_step']:11.2f} {r['allreduce_s_per_step'] * 1e3:12.1f} ms "
              f"{r['allreduce_bytes_per_step'] / 1e6:8.1f} MB   "
              f"(runs: {', '.join(f'{v:.3f}' for v in r['all'])} steps/s)")
    print("  (CPU s/step: all processes' CPU time per step, the work done whatever share of a busy machine "
          "each process got)")
    allreduce_volume()


if __name__ == "__main__":
    main()
