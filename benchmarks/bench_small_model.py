"""Benchmark: the default run's small model ("r18-shapes"), minimaskrcnn against torchvision, CPU time per step.

The same architecture is built twice: ours with ``build_model("r18-shapes")``, and torchvision's
``MaskRCNN`` class with a custom backbone (ResNet-18 of torchvision's ``BasicBlock`` at a quarter
width with GroupNorm(gcd(8, C)), ``BackboneWithFPN`` with 64 channels and ``LastLevelMaxPool``), the
same anchors (16-256 px, 3 ratios), RPN and RoI sampling sizes, box head (``TwoMLPHead`` 256),
mask head (``MaskRCNNHeads`` 4 x 64, ``MaskRCNNPredictor`` 64), 128x128 inputs; torchvision's model
then takes our initial weights (the parameter names are the same), so both start equal.

Both train with SGD (momentum 0.9, weight decay 1e-4, the learning rate of ours at each step: the
default run's warm-up to 0.02, and its gradient clipping if any) on the same batches of the default
run (4 shapes images with flips, from the Trainer's own loader), steps interleaved (torch, ours,
torch, ours, ...) after a warm-up. The measure is process CPU time (user + sys) per step, which a
busy machine does not inflate as it does wall time; wall time is printed too. ``--threads 1`` (the
default) gives each library one thread (torch.set_num_threads, Numba and BLAS), the fairest CPU-time
comparison; ``--threads 2`` is torch with two threads against the default run's settings (Numba 2,
BLAS 1). Each library samples its own RoIs, so single steps differ; the medians over many steps compare.
The benchmark stops with an error if torchvision's loss turns NaN/Inf, and prints how many RoIs each
box head got per step: a diverged model has no proposals and does less work per step.

    python benchmarks/bench_small_model.py [--steps 30] [--warmup 5] [--threads 1] [--resume CHECKPOINT]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np


def build_torch(config, num_classes: int):
    """torchvision's MaskRCNN class around a ResNet-18-GN + FPN backbone laid out as ``config`` says."""
    import torch
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import BasicBlock
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    bb, tf, rpn, box, mask = config.backbone, config.transform, config.rpn, config.box, config.mask
    assert bb.depth == 18 and bb.norm == "gn"

    def norm(c):
        return nn.GroupNorm(math.gcd(bb.gn_groups, c), c, eps=bb.norm_eps)

    base = max(1, int(round(64 * bb.width_multiplier)))

    class Body(nn.Module):  # torchvision's ResNet layout (names conv1, bn1, layer1..4) at any width
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.bn1 = norm(base)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = base
            for i, planes in enumerate((base, 2 * base, 4 * base, 8 * base)):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm(planes))
                blocks = [BasicBlock(inplanes, planes, stride, down, norm_layer=norm),
                          BasicBlock(planes, planes, norm_layer=norm)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                inplanes = planes

    body = Body()
    returned = {f"layer{i}": str(k) for k, i in enumerate(bb.returned_layers)}
    in_channels = [base * 2 ** (i - 1) for i in bb.returned_layers]
    backbone = BackboneWithFPN(body, returned, in_channels, bb.fpn_channels, extra_blocks=LastLevelMaxPool())
    C = bb.fpn_channels
    featmaps = [str(k) for k in range(len(bb.returned_layers))]
    from torchvision.ops import MultiScaleRoIAlign

    model = MaskRCNN(
        backbone, num_classes=None, min_size=tf.min_size, max_size=tf.max_size,
        image_mean=list(tf.image_mean), image_std=list(tf.image_std),
        rpn_anchor_generator=AnchorGenerator(config.anchors.sizes, config.anchors.aspect_ratios),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train, rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train, rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.fg_iou_thresh, rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image, rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(featmaps, box.roi_output_size, box.sampling_ratio),
        box_head=TwoMLPHead(C * box.roi_output_size ** 2, box.representation_size),
        box_predictor=FastRCNNPredictor(box.representation_size, num_classes),
        box_score_thresh=box.score_thresh, box_nms_thresh=box.nms_thresh,
        box_detections_per_img=box.detections_per_img, box_fg_iou_thresh=box.fg_iou_thresh,
        box_bg_iou_thresh=box.bg_iou_thresh, box_batch_size_per_image=box.batch_size_per_image,
        box_positive_fraction=box.positive_fraction, bbox_reg_weights=box.bbox_reg_weights,
        mask_roi_pool=MultiScaleRoIAlign(featmaps, mask.roi_output_size, mask.sampling_ratio),
        mask_head=MaskRCNNHeads(C, list(mask.layers), mask.dilation),
        mask_predictor=MaskRCNNPredictor(mask.layers[-1], mask.dim_reduced, num_classes),
    )
    torch.manual_seed(0)
    return model


def count_rois(box_head, counts: list) -> None:
    """Record how many RoIs ``box_head`` (either library's) gets per call, into ``counts``."""
    forward = box_head.forward

    def counted(x):
        counts.append(int(x.shape[0]))
        return forward(x)

    box_head.forward = counted


def load_our_weights(torch_model, ours) -> None:
    """Copy our state_dict into torchvision's model (same names); raises if any name or shape differs."""
    import torch

    ours_sd = ours.state_dict()
    theirs = torch_model.state_dict()
    missing = set(theirs) ^ set(ours_sd)
    if missing:
        raise KeyError(f"parameter names differ: {sorted(missing)[:10]}")
    torch_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours_sd.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2))
    parser.add_argument("--data-dir", default=os.path.join("runs", "data", "shapes"))
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="start both models from this checkpoint of the default run (e.g. a late step, where "
                             "more RoIs are positive and the mask head costs more) instead of the initial weights")
    args = parser.parse_args()

    import torch

    from minimaskrcnn.backend import limit_threads
    from minimaskrcnn.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    config = TrainConfig(progress=False, val_every=0, checkpoint_every=0, data_dir=args.data_dir,
                         output_dir=os.path.join("runs", "bench"), threads=args.threads, blas_threads=1)
    trainer = Trainer(config, resume=args.resume or False)  # our model, optimizer and the default run's loader
    limit_threads(args.threads, 1)
    ours = trainer.model
    tv = build_torch(ours.config, trainer.num_classes)
    load_our_weights(tv, ours)
    tv.train()
    params = [p for p in tv.parameters() if p.requires_grad]
    # the same parameter groups as ours: no weight decay on norm parameters and biases
    decay = [p for n, p in tv.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in tv.named_parameters() if p.requires_grad and p.ndim <= 1]
    assert len(decay) + len(no_decay) == len(params)
    opt_tv = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, momentum=config.momentum)

    torch_losses, last_losses, box_rois = [], {}, {"torch": [], "ours": []}
    count_rois(tv.roi_heads.box_head, box_rois["torch"])
    count_rois(ours.roi_heads.box_head, box_rois["ours"])

    def torch_step(images, targets):
        x = [torch.from_numpy(np.ascontiguousarray(im)) for im in images]
        t = [{"boxes": torch.from_numpy(np.asarray(tg["boxes"], np.float32)),
              "labels": torch.from_numpy(np.asarray(tg["labels"], np.int64)),
              "masks": torch.from_numpy(np.asarray(tg["masks"], np.uint8))} for tg in targets]
        losses = tv(x, t)
        opt_tv.zero_grad()
        loss = sum(losses.values())
        loss.backward()
        if config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        # the learning rate of ours at this step (its warm-up): at a constant 0.02 from the initial
        # weights torchvision's model diverges to NaN within a dozen steps, and a NaN model has no
        # proposals left, so its steps get cheap
        for group in opt_tv.param_groups:
            group["lr"] = trainer.optimizer.param_groups[0]["lr"]
        opt_tv.step()
        torch_losses.append(loss.item())

    def ours_step(images, targets):
        last_losses.update(trainer.train_step(images, targets))

    batches = trainer.loader.forever()
    for _ in range(args.warmup):
        images, targets = next(batches)
        torch_step(images, targets)
        ours_step(images, targets)
    cpu = {"torch": [], "ours": []}
    wall = {"torch": [], "ours": []}
    for _ in range(args.steps):
        images, targets = next(batches)
        for name, fn in (("torch", torch_step), ("ours", ours_step)):
            c0, w0 = time.process_time(), time.perf_counter()
            fn(images, targets)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    if not all(math.isfinite(v) for v in torch_losses):
        raise SystemExit(f"torchvision's model diverged (loss {torch_losses[-1]}): its step times mean nothing")
    med = {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in cpu}
    threads = "1 thread each" if args.threads == 1 else "torch 2 threads, ours Numba 2 + BLAS 1"
    start = f"from step {trainer.step} of {args.resume}" if args.resume else "from the initial weights"
    print(f"r18-shapes training step (batch {config.batch_size}, 128x128 shapes, SGD), {threads}, {start}, "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up steps")
    print()
    print("| | torchvision | ours | ratio (ours / torchvision) | target |")
    print("|---|---|---|---|---|")
    print(f"| CPU time per step (ms) | {med['torch'][0] * 1e3:.0f} | {med['ours'][0] * 1e3:.0f} | "
          f"{med['ours'][0] / med['torch'][0]:.2f}x | <= 1.0x |")
    print(f"| wall time per step (ms) | {med['torch'][1] * 1e3:.0f} | {med['ours'][1] * 1e3:.0f} | "
          f"{med['ours'][1] / med['torch'][1]:.2f}x | |")
    print(f"| RoIs in the box head per step (median) | {statistics.median(box_rois['torch']):.0f} | "
          f"{statistics.median(box_rois['ours']):.0f} | | the same work |")
    print(f"| loss at the last step | {torch_losses[-1]:.3f} | {last_losses['loss']:.3f} | | finite |")


if __name__ == "__main__":
    main()
