"""The ``minimaskrcnn`` command: train, evaluate, predict, data.

``minimaskrcnn train`` with no arguments is the README's main command: it generates the built-in
shapes data, trains the small "r18-shapes" model on the CPU and writes a progress bar, a log, the
curves and a checkpoint into runs/r18-shapes/. Bad input ends with one line ``error: ...`` on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

EXIT_BAD_INPUT = 2

MAIN_EXAMPLES = """\
examples:
  minimaskrcnn train                                  # shapes data, r18-shapes, ~10 min on 2 cores
  minimaskrcnn evaluate runs/r18-shapes               # COCO AP of that run on its validation set
  minimaskrcnn predict runs/r18-shapes photo.jpg -o out/
  minimaskrcnn data shapes runs/data/shapes/train --num-images 200
  minimaskrcnn data coco-sample my_coco/              # copy the COCO sample out of the package
  minimaskrcnn data download coco/ --num-images 500   # more COCO 2017 (needs network)

run `minimaskrcnn <command> --help` for each command's options and examples."""

TRAIN_EXAMPLES = """\
examples:
  minimaskrcnn train                                  # the README's run: shapes, r18-shapes
  minimaskrcnn train --steps 200 --name quick         # a shorter run in runs/quick/
  minimaskrcnn train --resume                         # continue runs/r18-shapes/ where it stopped
  minimaskrcnn train --dataset coco-overfit --name overfit --min-size 192 --max-size 288 \\
      --steps 450 --lr-milestones 400 --clip-grad-norm 10 --hflip-prob 0   # learn 8 COCO images by heart
  minimaskrcnn train --dataset coco --train-annotations ann/train.json --train-images img/ \\
      --val-annotations ann/val.json --val-images img_val/
  minimaskrcnn train --backend numpy --detect-anomaly # readable kernels, NaN hunting

model configurations (--model): {configs}

writes into <output-dir>/<name>/: log.jsonl (losses, lr, speed; val_* rows), curves.png,
checkpoint.npz (everything needed to resume bit for bit), config.json and the last
validation's COCO results (results_bbox.json, results_segm.json)."""

EVALUATE_EXAMPLES = """\
examples:
  minimaskrcnn evaluate runs/r18-shapes               # on the run's own validation data
  minimaskrcnn evaluate runs/r18-shapes/checkpoint.npz --annotations val.json --images val/
  minimaskrcnn evaluate runs/r18-shapes --max-images 20 --results-dir eval/

prints the 12 COCO numbers (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) for bbox and segm
and saves the detections as COCO results JSON (results_bbox.json, results_segm.json)."""

PREDICT_EXAMPLES = """\
examples:
  minimaskrcnn predict runs/r18-shapes image.png                  # writes predictions/image.png
  minimaskrcnn predict runs/r18-shapes photos/ -o out/ --score-threshold 0.7"""

DATA_EXAMPLES = """\
examples:
  minimaskrcnn data shapes runs/data/shapes/train --num-images 600 --seed 0
  minimaskrcnn data coco-sample my_coco/
  minimaskrcnn data download coco/ --num-images 500
  minimaskrcnn data download coco/ --categories person,dog --split val2017"""


def _config_names() -> list[str]:
    try:
        from minimaskrcnn.models import configs

        for attr in ("CONFIGS", "MODEL_CONFIGS", "NAMED_CONFIGS"):
            table = getattr(configs, attr, None)
            if table:
                return sorted(table)
        if hasattr(configs, "list_configs"):
            return list(configs.list_configs())
    except Exception:  # the help must work even if the model package cannot be imported
        pass
    return ["r18-shapes", "r18-coco-tiny", "maskrcnn_resnet50_fpn"]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``minimaskrcnn`` and its subcommands."""
    from minimaskrcnn.train import DATASETS, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="minimaskrcnn",
        description="Mask R-CNN from scratch in NumPy: train, evaluate, predict, and get data.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from minimaskrcnn import __version__

    parser.add_argument("--version", action="version", version=f"minimaskrcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,predict,data}")

    # ---------------------------------------------------------------------------------- train
    p = sub.add_parser("train", help="train a model (no arguments: the README's shapes run)",
                       description="Train Mask R-CNN with SGD; log, curves and checkpoints go to <output-dir>/<name>/.",
                       epilog=TRAIN_EXAMPLES.format(configs=", ".join(_config_names())), formatter_class=_Formatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, choices=_config_names(), help="named model configuration")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                   help="a torchvision-style model argument, e.g. box_batch_size_per_image=128 (repeatable)")
    g.add_argument("--min-size", type=int, default=None, help="override the model's input min_size")
    g.add_argument("--max-size", type=int, default=None, help="override the model's input max_size")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="built-in shapes, the package's COCO sample (or its 8 overfitting images), or your COCO-format files")
    g.add_argument("--data-dir", default=None, help=f"shapes cache folder (default {os.path.join('runs', 'data', 'shapes')})")
    g.add_argument("--num-train-images", type=int, default=d.num_train_images, help="shapes: training images")
    g.add_argument("--num-val-images", type=int, default=d.num_val_images, help="shapes: held-out images")
    g.add_argument("--image-size", type=int, default=d.image_size, help="shapes: image side in pixels")
    g.add_argument("--train-annotations", default=None, help="COCO instances JSON for training")
    g.add_argument("--train-images", default=None, help="folder of the training images")
    g.add_argument("--val-annotations", default=None, help="COCO instances JSON for validation")
    g.add_argument("--val-images", default=None, help="folder of the validation images")
    g.add_argument("--train-max-images", type=int, default=None, help="train on the first N images only")
    g.add_argument("--val-max-images", type=int, default=None, help="validate on the first N images only")
    g.add_argument("--hflip-prob", type=float, default=d.hflip_prob, help="horizontal flip probability")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--lr-milestones", type=_int_list, default=None, help="steps where lr drops, e.g. 1000,1300 (default 70%%,90%%)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="lr factor at each milestone")
    g.add_argument("--clip-grad-norm", type=float, default=None, help="clip the gradient norm to this")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("run")
    g.add_argument("--name", default=None, help="run name (default: the model configuration's)")
    g.add_argument("--output-dir", default=d.output_dir, help="parent folder of the runs")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run from its checkpoint (or from CHECKPOINT)")
    g.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (0: at the end)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None, help="kernels to run (default numba)")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="threads of the Numba kernels (default: every core)")
    g.add_argument("--blas-threads", type=int, default=d.blas_threads,
                   help="threads of NumPy's matrix products; 1 is fastest for the small models on few cores, "
                        "where both thread pools spinning on the same cores slow a step down 2x")
    g.add_argument("--detect-anomaly", action="store_true", help="run every step in anomaly mode (slow)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    # ------------------------------------------------------------------------------- evaluate
    p = sub.add_parser("evaluate", help="COCO AP of a trained model", epilog=EVALUATE_EXAMPLES,
                       description="Run a trained model on a COCO-format data set and compute COCO AP/AR.",
                       formatter_class=_Formatter)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.npz")
    p.add_argument("--annotations", default=None, help="COCO instances JSON (default: the run's validation data)")
    p.add_argument("--images", default=None, help="image folder of those annotations")
    p.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--iou-types", default=("bbox", "segm"), type=_iou_types, help="bbox, segm or bbox,segm")
    p.add_argument("--results-dir", default=None, help="where results_*.json go (default: the run folder)")
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None)
    p.add_argument("--threads", type=int, default=d.threads, help="threads of the Numba kernels (default: every core)")
    p.add_argument("--blas-threads", type=int, default=d.blas_threads, help="threads of NumPy's matrix products")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    # -------------------------------------------------------------------------------- predict
    p = sub.add_parser("predict", help="draw detections on images", epilog=PREDICT_EXAMPLES,
                       description="Run a trained model on image files and write PNGs with masks, boxes, classes and scores.",
                       formatter_class=_Formatter)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.npz")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--output-dir", default="predictions", help="where the PNGs go")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None)
    p.add_argument("--threads", type=int, default=d.threads, help="threads of the Numba kernels (default: every core)")
    p.add_argument("--blas-threads", type=int, default=d.blas_threads, help="threads of NumPy's matrix products")
    p.set_defaults(func=cmd_predict)

    # ----------------------------------------------------------------------------------- data
    p = sub.add_parser("data", help="generate shapes, copy the COCO sample, download COCO", epilog=DATA_EXAMPLES,
                       description="Get data sets in COCO format.", formatter_class=_Formatter)
    dsub = p.add_subparsers(dest="data_command", metavar="{shapes,coco-sample,download}")
    q = dsub.add_parser("shapes", help="generate the synthetic shapes data set", formatter_class=_Formatter,
                        epilog="example:\n  minimaskrcnn data shapes runs/data/shapes/train --num-images 600 --seed 0")
    q.add_argument("out_dir", help="folder to write (annotations JSON and images)")
    q.add_argument("--num-images", type=int, default=600)
    q.add_argument("--image-size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_shapes)
    q = dsub.add_parser("coco-sample", help="copy the package's COCO sample (with its licence notes)",
                        formatter_class=_Formatter, epilog="example:\n  minimaskrcnn data coco-sample my_coco/")
    q.add_argument("out_dir", help="folder to copy into")
    q.set_defaults(func=cmd_data_coco_sample)
    q = dsub.add_parser("download", help="download COCO 2017 images and annotations (needs network)",
                        formatter_class=_Formatter,
                        epilog="examples:\n  minimaskrcnn data download coco/ --num-images 500\n"
                               "  minimaskrcnn data download coco/ --categories person,dog --split val2017")
    q.add_argument("out_dir", help="folder to write")
    q.add_argument("--split", default="val2017", help="train2017 or val2017")
    q.add_argument("--num-images", type=int, default=None, help="how many images (default: all that match)")
    q.add_argument("--categories", default=None, help="comma-separated category names to keep")
    q.add_argument("--seed", type=int, default=0, help="which images are picked")
    q.add_argument("--base-url", default=None, help="image server (default: COCO's, http://images.cocodataset.org)")
    q.add_argument("--annotations-url", default=None, help="annotations zip or JSON (default: <base-url>/annotations/...)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_data_download)
    p.set_defaults(func=lambda args: _help_and_fail(p))
    return parser


def _key_value(text: str) -> tuple[str, object]:
    """"key=value" -> (key, value), the value read as JSON when it parses (numbers, lists), else a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _iou_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    if not types or any(t not in ("bbox", "segm") for t in types):
        raise argparse.ArgumentTypeError(f"expected bbox, segm or bbox,segm, got {text!r}")
    return types


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _help_and_fail(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    from minimaskrcnn.train import TrainConfig, Trainer

    config = TrainConfig(
        model=args.model, name=args.name, output_dir=args.output_dir, min_size=args.min_size, max_size=args.max_size,
        model_kwargs=dict(args.model_arg) or None, threads=args.threads, blas_threads=args.blas_threads,
        dataset=args.dataset, data_dir=args.data_dir, num_train_images=args.num_train_images,
        num_val_images=args.num_val_images, image_size=args.image_size,
        train_annotations=args.train_annotations, train_images=args.train_images,
        val_annotations=args.val_annotations, val_images=args.val_images,
        train_max_images=args.train_max_images, val_max_images=args.val_max_images, hflip_prob=args.hflip_prob,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_milestones=args.lr_milestones,
        gamma=args.gamma, clip_grad_norm=args.clip_grad_norm, seed=args.seed,
        log_every=args.log_every, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        backend=args.backend, detect_anomaly=args.detect_anomaly, progress=not args.no_progress,
    )
    if args.resume:
        config = _resumed_config(config, args)
    trainer = Trainer(config, resume=args.resume)
    print(f"run folder: {trainer.run_dir}  ({len(trainer.train_indices)} training images, "
          f"{len(trainer.val_indices)} validation images, {trainer.num_classes - 1} classes)", file=sys.stderr)
    result = trainer.fit()
    if result["val"]:
        from minimaskrcnn.evaluate import format_stats_table

        print(f"validation at step {result['step']} ({len(trainer.val_indices)} images):")
        print(format_stats_table(result["val"]))
    print(f"done: step {result['step']} in {result['seconds']:.0f} s; wrote {trainer.run_dir}/ "
          f"(log.jsonl, curves.png, checkpoint.npz)")
    segm = result["val"].get("segm")
    if segm:
        print(f"mask AP50 {segm['AP50']:.3f}, mask AP {segm['AP']:.3f}")
    return 0


def _resumed_config(config, args: argparse.Namespace):
    """On --resume, the run's saved configuration wins except for what was given on the command line."""
    from minimaskrcnn import io as mio
    from minimaskrcnn.train import CHECKPOINT_NAME, config_from_checkpoint_extra

    path = args.resume if isinstance(args.resume, str) else os.path.join(config.run_dir, CHECKPOINT_NAME)
    saved = config_from_checkpoint_extra(mio.load_checkpoint(path).extra or {}, path)
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (args._argv or []) if a.startswith("--")}
    renames = {"no_progress": "progress", "model_arg": "model_kwargs"}
    given = {renames.get(g, g) for g in given}
    kept = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in given}
    kept["progress"] = config.progress
    return dataclasses.replace(saved, **kept)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from minimaskrcnn import io as mio
    from minimaskrcnn.data import CocoDataset
    from minimaskrcnn.evaluate import evaluate
    from minimaskrcnn.predict import load_model
    from minimaskrcnn.train import CHECKPOINT_NAME, config_from_checkpoint_extra, prepare_datasets

    path = args.checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    _limit_threads(args.threads, args.blas_threads)
    model, _ = load_model(path, backend=args.backend)
    if args.annotations:
        if not args.images:
            raise FileNotFoundError("--annotations needs --images (the folder of its images)")
        dataset = CocoDataset(args.annotations, args.images)
    else:
        config = config_from_checkpoint_extra(mio.load_checkpoint(path).extra or {}, path)
        _, dataset, _ = prepare_datasets(config)
    if len(dataset) == 0:
        from minimaskrcnn.errors import DataError

        raise DataError(args.annotations, "the data set holds no images")
    indices = list(range(len(dataset)))[: args.max_images]
    iou_types = args.iou_types
    results_dir = args.results_dir or os.path.dirname(path)
    evaluate(model, dataset, iou_types=iou_types, indices=indices, results_dir=results_dir,
             verbose=True, progress=not args.no_progress)
    print(f"results: {', '.join(os.path.join(results_dir, f'results_{t}.json') for t in iou_types)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from minimaskrcnn.predict import collect_image_paths, load_model, predict_files

    collect_image_paths(args.images)  # bad inputs fail before the model is loaded
    _limit_threads(args.threads, args.blas_threads)
    model, class_names = load_model(args.checkpoint, backend=args.backend)
    written = predict_files(model, args.images, args.output_dir, class_names, score_threshold=args.score_threshold)
    for path in written:
        print(path)
    return 0


def _limit_threads(threads: int | None, blas_threads: int | None) -> None:
    from minimaskrcnn.train import limit_threads

    limit_threads(threads, blas_threads)


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from minimaskrcnn.data.shapes import make_shapes_dataset

    made = make_shapes_dataset(args.out_dir, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    print(f"annotations: {made.annotation_file}\nimages:      {made.image_dir}")
    return 0


def cmd_data_coco_sample(args: argparse.Namespace) -> int:
    from minimaskrcnn.data import download

    download.copy_sample(args.out_dir)
    print(f"copied the COCO sample (annotations/, train2017/, val2017/, README.md with its licences) to {args.out_dir}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from minimaskrcnn.data import download
    from minimaskrcnn.errors import DataError

    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    try:
        extra = {"base_url": args.base_url} if args.base_url else {}
        made = download.download_coco(args.out_dir, split=args.split, num_images=args.num_images,
                                      categories=categories, seed=args.seed, annotations_url=args.annotations_url,
                                      progress=not args.no_progress, **extra)
    except ValueError as e:  # e.g. an unknown category name
        raise DataError(None, str(e)) from None
    print(f"annotations: {made.annotation_file}\nimages:      {made.image_dir}")
    return 0


# ---------------------------------------------------------------------------------------- main
def one_line(error: BaseException) -> str:
    """An exception as a single line (messages with newlines are joined)."""
    text = str(error)
    if isinstance(error, FileNotFoundError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or error.__class__.__name__


def _expected_errors() -> tuple[type[BaseException], ...]:
    from minimaskrcnn.errors import DataError, DownloadError
    from minimaskrcnn.function import AnomalyError

    return (DataError, AnomalyError, DownloadError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``minimaskrcnn`` (and ``python -m minimaskrcnn``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except _expected_errors() as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted (resume with --resume from the last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
