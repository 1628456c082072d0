"""minimaskrcnn's "cuda" backend against torchvision on the same GPU, in the same run.

Ours runs on CuPy arrays with the Numba-CUDA kernels (kernels/<op>/cuda.py) and cuBLAS products;
torchvision runs its CUDA ops. Both get the same data (and, for the model, the same weights). Each
case is timed as the median of interleaved repeats after warm-up, with the device synchronised
(cupy and torch) before and after every call, and the table gives ours / torchvision.

Cases and targets (ours / torchvision):
    roi_align 7x7 and 14x14, forward and forward+backward   <= 1.5
    roi_pool 7x7, forward and forward+backward               <= 1.5
    nms, 5,000 clustered boxes, IoU 0.7                      <= 1.5
    conv2d 3x3 256->256, (2, 256, 100, 136), forward+backward <= 1.5
    maskrcnn_resnet50_fpn inference, 800x1066                 <= 3
    maskrcnn_resnet50_fpn training step (SGD), 800x1066       <= 3

Needs an NVIDIA GPU, CuPy and numba-cuda (``pip install ".[gpu]"``) and a CUDA build of torch with
torchvision; without them it says so and exits with status 2.

    python benchmarks/bench_gpu.py [--repeats 10] [--model-repeats 5] [--batch-size 2] [--only nms conv2d]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

CASES = ("roi_align", "roi_pool", "nms", "conv2d", "model_inference", "model_training")
OP_TARGET = 1.5  # ours / torchvision, each op
MODEL_TARGET = 3.0  # ours / torchvision, the whole model
EXIT_NO_GPU = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (CPU-side only: nothing here touches a GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index("Cases and"):__doc__.index("Needs an")])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each op (after 2 warm-up runs)")
    parser.add_argument("--model-repeats", type=int, default=5, help="timed runs of each model case")
    parser.add_argument("--batch-size", type=int, default=2, help="images per model call")
    parser.add_argument("--image-size", type=_size, default=(800, 1066), help="HxW of the model's images")
    parser.add_argument("--rois", type=int, default=512, help="RoIs for roi_align / roi_pool")
    parser.add_argument("--boxes", type=int, default=5000, help="boxes for nms")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.model_repeats < 1 or args.batch_size < 1:
        parser.error("--repeats, --model-repeats and --batch-size must be >= 1")
    return args


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1066, got {text!r}") from None
    return h, w


def require_gpu():
    """(cupy, torch) when both can use a GPU; otherwise say what is missing and exit with status 2."""
    from minimaskrcnn.backend import cupy_or_none

    cupy = cupy_or_none()
    if cupy is None:
        _refuse("CuPy with a visible GPU (pip install '.[gpu]')")
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError:
        _refuse("torch and torchvision (a CUDA build; pip install '.[reference]')")
    if not torch.cuda.is_available():
        _refuse("a CUDA build of torch that sees the GPU")
    return cupy, torch


def _refuse(missing: str) -> None:
    print(f"bench_gpu.py times minimaskrcnn's cuda backend against torchvision on the same GPU and needs "
          f"{missing}. Nothing was measured.", file=sys.stderr)
    sys.exit(EXIT_NO_GPU)


def time_interleaved(fns: dict[str, Callable], repeats: int, sync: Callable, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each function, called in turn ``repeats`` times after ``warmup`` calls,
    with ``sync()`` (all GPU work finished) before and after each call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------ data
def make_rois(rng: np.random.Generator, num_rois: int, num_images: int, image_h: int, image_w: int) -> np.ndarray:
    """(K, 5) float32 [batch_idx, x1, y1, x2, y2]: proposal-like boxes, sides 16-512 px (log-uniform)."""
    side = np.exp(rng.uniform(np.log(16), np.log(512), num_rois))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), num_rois))
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx, cy = rng.uniform(0, image_w, num_rois), rng.uniform(0, image_h, num_rois)
    x1, x2 = np.clip(cx - w / 2, 0, image_w), np.clip(cx + w / 2, 0, image_w)
    y1, y2 = np.clip(cy - h / 2, 0, image_h), np.clip(cy + h / 2, 0, image_h)
    return np.stack([rng.integers(0, num_images, num_rois), x1, y1, x2, y2], axis=1).astype(np.float32)


def make_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n detection-like boxes jittered around n / 50 centres in a 1000x1000 image, and their scores."""
    centres = rng.uniform(0, 1000, (max(n // 50, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 10, (n, 2))
    wh = rng.uniform(20, 100, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def make_batch(rng: np.random.Generator, batch_size: int, size: tuple[int, int], objects: int = 4):
    """Images (3, H, W) in [0, 1] with a few filled rectangles, and their targets (host NumPy)."""
    h, w = size
    images, targets = [], []
    for _ in range(batch_size):
        image = rng.random((3, h, w)).astype(np.float32) * 0.2
        boxes, masks = [], np.zeros((objects, h, w), dtype=np.uint8)
        for i in range(objects):
            bw, bh = rng.integers(w // 10, w // 3), rng.integers(h // 10, h // 3)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            image[:, y1 : y1 + bh, x1 : x1 + bw] += rng.random((3, 1, 1)).astype(np.float32) * 0.8
            masks[i, y1 : y1 + bh, x1 : x1 + bw] = 1
            boxes.append([x1, y1, x1 + bw, y1 + bh])
        images.append(np.clip(image, 0, 1))
        targets.append({"boxes": np.asarray(boxes, dtype=np.float32),
                        "labels": rng.integers(1, 91, objects).astype(np.int64), "masks": masks})
    return images, targets


# ------------------------------------------------------------------------------------ cases
def bench_roi_ops(args, cupy, torch, sync, rows: list) -> None:
    import torchvision

    import minimaskrcnn
    from minimaskrcnn.ops.roi_align import roi_align
    from minimaskrcnn.ops.roi_pool import roi_pool

    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 256, 200, 272), dtype=np.float32)  # P2 of an 800x1088 batch
    rois = make_rois(rng, args.rois, 2, 800, 1088)
    x_cp, rois_cp = cupy.asarray(features), cupy.asarray(rois)
    x_t, rois_t = torch.from_numpy(features).cuda(), torch.from_numpy(rois).cuda()
    scale = 0.25
    cases = []
    if "roi_align" in args.only:
        cases += [("roi_align", size, roi_align, torchvision.ops.roi_align, (size, scale, 2, False))
                  for size in (7, 14)]
    if "roi_pool" in args.only:
        cases += [("roi_pool", 7, roi_pool, torchvision.ops.roi_pool, (7, scale))]
    for name, size, ours_op, tv_op, op_args in cases:
        dout = rng.standard_normal((args.rois, 256, size, size), dtype=np.float32)
        dout_cp, dout_t = cupy.asarray(dout), torch.from_numpy(dout).cuda()

        def ours_forward(ours_op=ours_op, op_args=op_args):
            with minimaskrcnn.no_grad():
                ours_op(minimaskrcnn.Tensor(x_cp), rois_cp, *op_args)

        def tv_forward(tv_op=tv_op, op_args=op_args):
            with torch.no_grad():
                tv_op(x_t, rois_t, *op_args)

        def ours_train(ours_op=ours_op, op_args=op_args, dout_cp=dout_cp):
            x = minimaskrcnn.Tensor(x_cp, requires_grad=True)
            ours_op(x, rois_cp, *op_args).backward(minimaskrcnn.Tensor(dout_cp))

        def tv_train(tv_op=tv_op, op_args=op_args, dout_t=dout_t):
            x = x_t.detach().requires_grad_()
            tv_op(x, rois_t, *op_args).backward(dout_t)

        t = time_interleaved({"ours": ours_forward, "tv": tv_forward}, args.repeats, sync)
        rows.append((f"{name} {size}x{size} forward", t["ours"], t["tv"], OP_TARGET))
        t = time_interleaved({"ours": ours_train, "tv": tv_train}, args.repeats, sync)
        rows.append((f"{name} {size}x{size} forward+backward", t["ours"], t["tv"], OP_TARGET))


def bench_nms(args, cupy, torch, sync, rows: list) -> None:
    import torchvision

    from minimaskrcnn.ops.boxes import nms

    boxes, scores = make_boxes(np.random.default_rng(1), args.boxes)
    boxes_cp, scores_cp = cupy.asarray(boxes), cupy.asarray(scores)
    boxes_t, scores_t = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    t = time_interleaved({"ours": lambda: nms(boxes_cp, scores_cp, 0.7),
                          "tv": lambda: torchvision.ops.nms(boxes_t, scores_t, 0.7)}, args.repeats, sync)
    rows.append((f"nms {args.boxes} boxes", t["ours"], t["tv"], OP_TARGET))


def bench_conv2d(args, cupy, torch, sync, rows: list) -> None:
    import minimaskrcnn
    from minimaskrcnn.nn import functional as F

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 256, 100, 136), dtype=np.float32)  # P3 of an 800x1088 batch
    w = (rng.standard_normal((256, 256, 3, 3)) * 0.02).astype(np.float32)
    b = np.zeros(256, np.float32)
    dout = rng.standard_normal((2, 256, 100, 136), dtype=np.float32)
    x_cp, w_cp, b_cp, dout_cp = (cupy.asarray(a) for a in (x, w, b, dout))
    x_t, w_t, b_t, dout_t = (torch.from_numpy(a).cuda() for a in (x, w, b, dout))

    def ours():
        xs = minimaskrcnn.Tensor(x_cp, requires_grad=True)
        ws = minimaskrcnn.Tensor(w_cp, requires_grad=True)
        bs = minimaskrcnn.Tensor(b_cp, requires_grad=True)
        F.conv2d(xs, ws, bs, padding=1).backward(minimaskrcnn.Tensor(dout_cp))

    def tv():
        xs, ws, bs = (a.detach().requires_grad_() for a in (x_t, w_t, b_t))
        torch.nn.functional.conv2d(xs, ws, bs, padding=1).backward(dout_t)

    t = time_interleaved({"ours": ours, "tv": tv}, args.repeats, sync)
    rows.append(("conv2d 3x3 256->256 (2,256,100,136) fwd+bwd", t["ours"], t["tv"], OP_TARGET))


def build_models(torch, device: str = "cuda"):
    """torchvision's maskrcnn_resnet50_fpn (frozen batch norm, trainable layers 3, as with its COCO
    weights) with random weights, and ours with the same weights; box_score_thresh 0 in both so that
    inference always keeps 100 detections per image and runs the mask head. ``device="cpu"`` keeps
    both on the host (to check the set-up without a GPU)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops

    from minimaskrcnn.models import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
    tv_model = MaskRCNN(backbone, num_classes=91, box_score_thresh=0.0).to(device)
    ours = maskrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.0)
    ours.load_state_dict({k: v.detach().cpu().numpy() for k, v in tv_model.state_dict().items()})
    ours.to_device(device)
    return ours, tv_model


def bench_model(args, cupy, torch, sync, rows: list) -> None:
    from minimaskrcnn import optim

    ours, tv_model = build_models(torch)
    images, targets = make_batch(np.random.default_rng(3), args.batch_size, args.image_size)
    # torchvision's reference scripts move the batch to the GPU before calling the model; ours takes
    # host arrays (the data loader's) and its transform moves them, so that copy is in our time
    images_t = [torch.from_numpy(im).cuda() for im in images]
    targets_t = [{k: torch.from_numpy(v).cuda() for k, v in t.items()} for t in targets]
    shape = f"{args.batch_size}x3x{args.image_size[0]}x{args.image_size[1]}"

    if "model_inference" in args.only:
        ours.eval()
        tv_model.eval()

        def tv_infer():
            with torch.no_grad():
                tv_model(images_t)

        t = time_interleaved({"ours": lambda: ours(images), "tv": tv_infer}, args.model_repeats, sync, warmup=1)
        rows.append((f"maskrcnn_resnet50_fpn inference {shape}", t["ours"], t["tv"], MODEL_TARGET))

    if "model_training" in args.only:
        ours.train()
        tv_model.train()
        ours_params = [p for p in ours.parameters() if p.requires_grad]
        tv_params = [p for p in tv_model.parameters() if p.requires_grad]
        ours_opt = optim.SGD(ours_params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        tv_opt = torch.optim.SGD(tv_params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

        def ours_step():
            loss = sum(ours(images, targets).values())
            ours_opt.zero_grad()
            loss.backward()
            ours_opt.step()

        def tv_step():
            loss = sum(tv_model(images_t, targets_t).values())
            tv_opt.zero_grad()
            loss.backward()
            tv_opt.step()

        t = time_interleaved({"ours": ours_step, "tv": tv_step}, args.model_repeats, sync, warmup=1)
        rows.append((f"maskrcnn_resnet50_fpn training step {shape}", t["ours"], t["tv"], MODEL_TARGET))


def print_table(rows: list, device_name: str, args) -> None:
    print(f"GPU: {device_name}; median of {args.repeats} (ops) / {args.model_repeats} (model) interleaved "
          "runs after warm-up, device synchronised around each")
    print(f"{'case':52s} {'ours ms':>9s} {'tv ms':>9s} {'ratio':>6s} {'target':>7s}")
    for name, ours, tv, target in rows:
        ratio = ours / tv
        verdict = "ok" if ratio <= target else "MISSED"
        print(f"{name:52s} {ours * 1e3:9.2f} {tv * 1e3:9.2f} {ratio:6.2f} {'<=' + str(target):>7s} {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cupy, torch = require_gpu()

    import minimaskrcnn

    minimaskrcnn.set_backend("cuda")

    def sync():
        cupy.cuda.Device().synchronize()  # CuPy's and Numba's kernels (one device, default stream)
        torch.cuda.synchronize()

    rows: list = []
    if "roi_align" in args.only or "roi_pool" in args.only:
        bench_roi_ops(args, cupy, torch, sync, rows)
    if "nms" in args.only:
        bench_nms(args, cupy, torch, sync, rows)
    if "conv2d" in args.only:
        bench_conv2d(args, cupy, torch, sync, rows)
    if "model_inference" in args.only or "model_training" in args.only:
        bench_model(args, cupy, torch, sync, rows)
    print_table(rows, torch.cuda.get_device_name(), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
