"""Where a step's time goes: CPU time by stage (forward and backward), by op, and the engine's overhead.

Profiles one of:

- ``--model r18-shapes`` (default): the README's default run (``minimaskrcnn train`` with no
  arguments): the Trainer's own ``train_step`` on its own batches (data loading and flips, forward,
  backward, gradient norm, SGD), after a few warm-up steps;
- ``--model maskrcnn_resnet50_fpn --mode eval|train``: torchvision's R50-FPN layout at 800x1066
  (the COCO image of ``bench_model.py``), inference or one training step with SGD.

Times are process CPU time (user + sys, ``time.process_time``) so that other jobs on a shared
machine do not inflate them; run it with one thread per pool (``--threads 1``, the default) so that
CPU time is also the time a quiet core would take. The profiler wraps, for the length of the
profile only, each stage module's ``forward`` (exclusive time: a stage's own Python and array code,
its children excluded), ``Function.apply`` and each Function's ``forward``/``backward`` (op work
against the engine's bookkeeping around it), and the engine's backward walk. Backward time is
charged to the stage that created the op.

    python benchmarks/profile_step.py [--model r18-shapes] [--steps 20] [--warmup 5] [--threads 1] [--resume CKPT]
    python benchmarks/profile_step.py --model maskrcnn_resnet50_fpn --mode train --steps 2 --warmup 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np

clock = time.process_time


def _all_functions():
    from minimaskrcnn.function import Function

    out, stack = [], [Function]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            out.append(sub)
            stack.append(sub)
    return out


class StepProfiler:
    """Accumulates CPU seconds by (stage, phase) and by (op, phase) while installed."""

    def __init__(self, stages: dict):
        self.stages = stages  # name -> Module
        self.stack: list[list] = []  # [name, start, child_time]
        self.stage_time = defaultdict(float)  # (stage, "forward") -> exclusive seconds
        self.op_time = defaultdict(float)  # (op, "fwd"|"bwd") -> seconds of its forward/backward body
        self.op_count = defaultdict(int)
        self.op_stack: list[float] = []  # time spent in nested op bodies, per running op body
        self.apply_time = 0.0  # Function.apply, in total (op bodies included)
        self.run_backward_time = 0.0  # run_backward, in total (op bodies included)
        self.backward_time = 0.0  # Tensor.backward, in total
        self.bwd_stage_time = defaultdict(float)  # stage -> backward seconds of its ops
        self.phase_time = defaultdict(float)  # "data", "step", ... -> seconds
        self._undo = []

    # -------------------------------------------------------------------------- install
    def install(self):
        from minimaskrcnn import function as fn_mod

        tensor_mod = sys.modules["minimaskrcnn.tensor"]  # the package's name "tensor" is the function

        prof = self
        for name, module in self.stages.items():
            original = module.forward

            def stage_forward(*args, _orig=original, _name=name, **kwargs):
                prof.stack.append([_name, clock(), 0.0])
                try:
                    return _orig(*args, **kwargs)
                finally:
                    _name, start, child = prof.stack.pop()
                    elapsed = clock() - start
                    prof.stage_time[_name] += elapsed - child
                    if prof.stack:
                        prof.stack[-1][2] += elapsed

            module.forward = stage_forward
            self._undo.append(lambda m=module: m.__dict__.pop("forward", None))

        # every Context remembers the stage that created it, for the backward's accounting
        ctx_init = fn_mod.Context.__init__

        def context_init(ctx, _orig=ctx_init):
            _orig(ctx)
            ctx.stage = prof.stack[-1][0] if prof.stack else "(outside)"

        fn_mod.Context.__init__ = context_init
        self._undo.append(lambda: setattr(fn_mod.Context, "__init__", ctx_init))

        for cls in _all_functions():
            for phase, attr in (("fwd", "forward"), ("bwd", "backward")):
                if attr not in cls.__dict__:
                    continue
                original = cls.__dict__[attr]
                body = original.__func__ if isinstance(original, staticmethod) else original

                def timed(*args, _body=body, _key=(cls.__name__, phase), **kwargs):
                    # exclusive time: a fused op that calls another op's body (Conv2dReLU calls
                    # Conv2d.forward) is charged only for its own part
                    prof.op_stack.append(0.0)
                    start = clock()
                    try:
                        return _body(*args, **kwargs)
                    finally:
                        elapsed = clock() - start
                        inner = prof.op_stack.pop()
                        prof.op_time[_key] += elapsed - inner
                        prof.op_count[_key] += 1
                        if prof.op_stack:
                            prof.op_stack[-1] += elapsed

                setattr(cls, attr, staticmethod(timed))
                self._undo.append(lambda c=cls, a=attr, o=original: setattr(c, a, o))

        apply = fn_mod.Function.__dict__["apply"]

        def timed_apply(cls, *args, **kwargs):
            start = clock()
            try:
                return apply.__func__(cls, *args, **kwargs)
            finally:
                prof.apply_time += clock() - start

        fn_mod.Function.apply = classmethod(timed_apply)
        self._undo.append(lambda: setattr(fn_mod.Function, "apply", apply))

        run_backward = tensor_mod.run_backward

        def timed_run_backward(node, dout):
            start = clock()
            try:
                return run_backward(node, dout)
            finally:
                elapsed = clock() - start
                prof.run_backward_time += elapsed
                prof.bwd_stage_time[getattr(node.ctx, "stage", "(outside)")] += elapsed

        tensor_mod.run_backward = timed_run_backward
        self._undo.append(lambda: setattr(tensor_mod, "run_backward", run_backward))

        backward = tensor_mod.Tensor.backward

        def timed_backward(t, *args, **kwargs):
            start = clock()
            try:
                return backward(t, *args, **kwargs)
            finally:
                prof.backward_time += clock() - start

        tensor_mod.Tensor.backward = timed_backward
        self._undo.append(lambda: setattr(tensor_mod.Tensor, "backward", backward))
        return self

    def uninstall(self):
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def phase(self, name):
        prof = self

        class _Phase:
            def __enter__(self):
                self.start = clock()

            def __exit__(self, *exc):
                prof.phase_time[name] += clock() - self.start

        return _Phase()

    # --------------------------------------------------------------------------- report
    def report(self, steps: int, total: float, title: str) -> str:
        ms = 1000.0 / steps
        lines = [f"## {title}", "",
                 f"CPU time per step: {total * ms:.1f} ms (mean of {steps} steps)", "",
                 "| stage | forward (ms) | backward (ms) | share |", "|---|---|---|---|"]
        names = list(self.stages)
        fwd_total = sum(self.stage_time.values())
        rows = []
        for name in names + ["(outside)"]:
            f, b = self.stage_time.get(name, 0.0), self.bwd_stage_time.get(name, 0.0)
            if f or b:
                rows.append((name, f, b))
        for name, f, b in rows:
            lines.append(f"| {name} | {f * ms:.1f} | {b * ms:.1f} | {(f + b) / total:.0%} |")
        graph_walk = self.backward_time - self.run_backward_time
        lines.append(f"| backward graph walk (topological order, accumulation) | | {graph_walk * ms:.1f} | "
                     f"{graph_walk / total:.0%} |")
        for name, t in self.phase_time.items():
            lines.append(f"| {name} | {t * ms:.1f} | | {t / total:.0%} |")
        accounted = fwd_total + self.backward_time + sum(self.phase_time.values())
        lines.append(f"| rest of the step (loss sum, item(), bookkeeping) | {(total - accounted) * ms:.1f} | | "
                     f"{(total - accounted) / total:.0%} |")

        n_fwd = sum(c for (op, ph), c in self.op_count.items() if ph == "fwd")
        n_bwd = sum(c for (op, ph), c in self.op_count.items() if ph == "bwd")
        body_fwd = sum(t for (op, ph), t in self.op_time.items() if ph == "fwd")
        body_bwd = sum(t for (op, ph), t in self.op_time.items() if ph == "bwd")
        lines += ["", "Engine overhead (CPU time outside the ops' forward/backward bodies):", "",
                  f"- ops per step: {n_fwd / steps:.0f} forwards, {n_bwd / steps:.0f} backwards",
                  f"- Function.apply around the forward bodies: {(self.apply_time - body_fwd) * ms:.1f} ms per step "
                  f"({(self.apply_time - body_fwd) / max(n_fwd, 1) * 1e6:.1f} us per op)",
                  f"- run_backward around the backward bodies: {(self.run_backward_time - body_bwd) * ms:.1f} ms "
                  f"per step ({(self.run_backward_time - body_bwd) / max(n_bwd, 1) * 1e6:.1f} us per op)",
                  f"- backward graph walk: {graph_walk * ms:.1f} ms per step",
                  f"- forward code outside ops (module Python, target/anchor/proposal array code): "
                  f"{(fwd_total - self.apply_time) * ms:.1f} ms per step", ""]
        lines += ["| op | calls/step | forward (ms) | backward (ms) | share |", "|---|---|---|---|---|"]
        ops = defaultdict(lambda: [0, 0.0, 0.0])
        for (op, ph), t in self.op_time.items():
            ops[op][1 if ph == "fwd" else 2] += t
            if ph == "fwd":
                ops[op][0] += self.op_count[(op, ph)]
        for op, (count, f, b) in sorted(ops.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
            if (f + b) * ms < 0.05:
                continue
            lines.append(f"| {op} | {count / steps:.0f} | {f * ms:.1f} | {b * ms:.1f} | {(f + b) / total:.0%} |")
        return "\n".join(lines)


def model_stages(model) -> dict:
    """The stage modules to time, pipeline order (torchvision's attribute names)."""
    rh = model.roi_heads
    stages = {"transform": model.transform, "backbone.body": model.backbone.body, "backbone.fpn": model.backbone.fpn,
              "rpn.head": model.rpn.head, "rpn (anchors, targets, proposals, losses)": model.rpn,
              "roi_heads.box_roi_pool": rh.box_roi_pool, "roi_heads.box_head": rh.box_head,
              "roi_heads.box_predictor": rh.box_predictor}
    if rh.has_mask():
        stages.update({"roi_heads.mask_roi_pool": rh.mask_roi_pool, "roi_heads.mask_head": rh.mask_head,
                       "roi_heads.mask_predictor": rh.mask_predictor})
    stages["roi_heads (sampling, targets, losses, post-processing)"] = rh
    return stages


def profile_default_run(args) -> str:
    from minimaskrcnn.train import TrainConfig, Trainer

    out = args.output_dir
    config = TrainConfig(progress=False, output_dir=out, data_dir=os.path.join(out, "data", "shapes"),
                         threads=args.threads, blas_threads=args.threads, val_every=0, checkpoint_every=0)
    trainer = Trainer(config, resume=args.resume or False)
    batches = trainer.loader.forever()
    for _ in range(args.warmup):
        trainer.train_step(*next(batches))
    prof = StepProfiler(model_stages(trainer.model)).install()
    optimizer_step = trainer.optimizer.step
    trainer.optimizer.step = lambda: _in_phase(prof, "optimizer (SGD step)", optimizer_step)
    start = clock()
    try:
        for _ in range(args.steps):
            with prof.phase("data (loading, flips, batching)"):
                images, targets = next(batches)
            trainer.train_step(images, targets)
    finally:
        total = clock() - start
        prof.uninstall()
        del trainer.optimizer.step
    return prof.report(args.steps, total, f"Default run step (r18-shapes, batch {config.batch_size}, "
                                          f"{config.image_size}x{config.image_size}), {args.threads} thread(s)")


def _in_phase(prof, name, fn):
    with prof.phase(name):
        return fn()


def profile_r50(args) -> str:
    import minimaskrcnn
    from minimaskrcnn.backend import reuse_freed_memory
    from minimaskrcnn.models import maskrcnn_resnet50_fpn
    from minimaskrcnn.optim import SGD

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import load_sample

    minimaskrcnn.set_backend("numba")
    reuse_freed_memory()  # as the trainer and the command line do
    image, target = load_sample()
    model = maskrcnn_resnet50_fpn(seed=0)
    train = args.mode == "train"
    model.train(train)
    opt = SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9) if train else None

    def step():
        if not train:
            return model([image])
        losses = model([image], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        with prof.phase("optimizer (SGD step)"):
            opt.step()

    prof = StepProfiler(model_stages(model))
    for _ in range(args.warmup):
        step()
    prof.install()
    start = clock()
    try:
        for _ in range(args.steps):
            step()
    finally:
        total = clock() - start
        prof.uninstall()
    return prof.report(args.steps, total, f"maskrcnn_resnet50_fpn {args.mode}, 800x1066, {args.threads} thread(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="r18-shapes", choices=("r18-shapes", "maskrcnn_resnet50_fpn"))
    parser.add_argument("--mode", default="train", choices=("train", "eval"), help="R50 only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="Numba and BLAS threads")
    parser.add_argument("--output-dir", default=os.path.join("runs", "profile"))
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="r18-shapes: start from a training checkpoint (late steps have more positive RoIs, "
                             "so a larger mask head batch)")
    args = parser.parse_args()
    from minimaskrcnn.backend import limit_threads

    limit_threads(args.threads, args.threads)
    np.seterr(all="ignore")
    text = profile_default_run(args) if args.model == "r18-shapes" else profile_r50(args)
    print(text)


if __name__ == "__main__":
    main()
