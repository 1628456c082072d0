"""The ``minimaskrcnn`` command: train, evaluate, predict, data, ablate.

``minimaskrcnn train`` with no arguments is the README's main command: it generates the built-in
shapes data, trains the small "r18-shapes" model on the CPU and writes a progress bar, a log, the
curves and a checkpoint into runs/r18-shapes/. Bad input ends with one line ``error: ...`` on
stderr and exit code 2, never a traceback.

``minimaskrcnn train`` runs data-parallel on the CPU, one process per core where the batch splits
evenly (``--processes N``; ``local_parallel``); ``mpiexec -n N minimaskrcnn train ...`` (or
``python -m mpi4py -m minimaskrcnn train ...``) trains on N MPI processes (``distributed``). Either
way rank 0 prints and writes, and a process that fails ends the whole run with its error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from minimaskrcnn.backend import BACKENDS, limit_threads, reuse_freed_memory
from minimaskrcnn.config import OPTION_GROUPS
from minimaskrcnn.pretrained import TORCHVISION_MASKRCNN_URL, TORCHVISION_RESNET50_URL

EXIT_BAD_INPUT = 2

MAIN_EXAMPLES = """\
examples:
  minimaskrcnn train                                  # shapes data, r18-shapes, ~5 min on 2 cores
  minimaskrcnn evaluate runs/r18-shapes               # COCO AP of that run on its validation set
  minimaskrcnn predict runs/r18-shapes photo.jpg -o out/
  minimaskrcnn predict maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth photo.jpg   # torchvision's COCO weights
  minimaskrcnn data shapes runs/data/shapes/train --num-images 200
  minimaskrcnn train --model r18-figures-kp --dataset figures   # Keypoint R-CNN on stick figures
  minimaskrcnn data coco-sample my_coco/              # copy the COCO sample out of the package
  minimaskrcnn data download coco/ --num-images 500   # more COCO 2017 (needs network)
  minimaskrcnn ablate table2 --quick --seeds 0        # the paper's Table 2 in miniature (tiny)

run `minimaskrcnn <command> --help` for each command's options and examples."""

ABLATE_EXAMPLES = """\
examples:
  minimaskrcnn ablate table2 --quick --seeds 0 --out runs/ablate/quick     # a tiny run, a minute
  minimaskrcnn ablate table2 --seeds 0,1,2                                 # the full study (1-2 h on 2 cores)
  minimaskrcnn ablate table2 --seeds 0 --only c5_roipool,c5_roialign       # two variants and their trunk
  minimaskrcnn ablate table2 --seeds 0,1,2 --set head_steps=400 --set num_val_images=100

Each (seed, run) keeps its files in <out>/seed_<s>/<run>/; running the same command again skips
what is done (an interrupted study resumes). Writes the results (JSON: the command, the setup and
per variant the seeds and every metric per seed) and a markdown table (mean ± std over the seeds,
the paper's figures beside, the verdict of each comparison)."""

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
  minimaskrcnn train --processes 1                    # one process (default: one per core, here 2)
  mpiexec -n 2 minimaskrcnn train --batch-size 4      # data-parallel over MPI: 2 processes of 2 images
  minimaskrcnn train --model r18-figures-kp --dataset figures --num-train-images 1000 \\
      --num-val-images 200 --steps 600 --val-every 0     # Keypoint R-CNN on stick figures (lesson 15)
  minimaskrcnn train --model maskrcnn_resnet50_fpn --weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth \\
      --dataset coco --train-annotations train.json --train-images train/ --min-size 320 --max-size 512 \\
      --batch-size 2 --lr 0.005 --steps 150 --lr-milestones 120   # fine-tune COCO's weights (docs/FINETUNE.md)

starting weights (--weights, --backbone-weights): torchvision's files are fetched on a machine with
network access (minimaskrcnn never downloads weights):
  curl -LO {maskrcnn_url}
  curl -LO {resnet_url}     # ImageNet ResNet-50, for --backbone-weights

model configurations (--model): {configs}

writes into <output-dir>/<name>/: log.jsonl (losses, lr, speed; val_* rows), curves.png,
checkpoint.npz (everything needed to resume bit for bit), config.json and the last
validation's COCO results (results_bbox.json, results_segm.json, results_keypoints.json)."""

EVALUATE_EXAMPLES = """\
examples:
  minimaskrcnn evaluate runs/r18-shapes               # on the run's own validation data
  minimaskrcnn evaluate runs/r18-shapes/checkpoint.npz --annotations val.json --images val/
  minimaskrcnn evaluate runs/r18-shapes --max-images 20 --results-dir eval/
  minimaskrcnn evaluate maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --annotations val.json --images val/
  minimaskrcnn evaluate runs/r18-figures-kp --iou-types keypoints   # keypoint AP (OKS)

prints the 12 COCO numbers (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) for bbox and segm, and
COCO's 10 keypoint numbers for a keypoint model, and saves the detections as COCO results JSON
(results_bbox.json, results_segm.json, results_keypoints.json)."""

PREDICT_EXAMPLES = """\
examples:
  minimaskrcnn predict runs/r18-shapes image.png                  # writes predictions/image.png
  minimaskrcnn predict runs/r18-shapes photos/ -o out/ --score-threshold 0.7
  minimaskrcnn predict maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth photo.jpg --min-size 480

torchvision's Mask R-CNN weights (COCO_V1, box AP 37.9, mask AP 34.6; 170 MB) are one file, fetched on a
machine with network access (minimaskrcnn never downloads weights; docs/FINETUNE.md):
  curl -LO {maskrcnn_url}
A torchvision state_dict (or a reference-script checkpoint holding one as {{"model": ...}}) becomes
torchvision's maskrcnn_resnet50_fpn with COCO's 91 category names and frozen batch-norm eps 0.0,
as torchvision sets it for those weights. Photos are turned by their EXIF orientation, as viewers
show them; the drawings are of the turned photo."""

DATA_EXAMPLES = """\
examples:
  minimaskrcnn data shapes runs/data/shapes/train --num-images 600 --seed 0
  minimaskrcnn data figures runs/data/figures/train --num-images 1000 --seed 100
  minimaskrcnn data coco-sample my_coco/
  minimaskrcnn data download coco/ --num-images 500
  minimaskrcnn data download coco/ --categories person,dog --split val2017"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``minimaskrcnn`` and its subcommands."""
    from minimaskrcnn.config import TrainConfig
    from minimaskrcnn.models.configs import CONFIGS

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="minimaskrcnn",
        description="Mask R-CNN from scratch in NumPy: train, evaluate, predict, and get data.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from minimaskrcnn import __version__

    parser.add_argument("--version", action="version", version=f"minimaskrcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,predict,data,ablate}")

    # ---------------------------------------------------------------------------------- train
    p = sub.add_parser("train", help="train a model (no arguments: the README's shapes run)",
                       description="Train Mask R-CNN with SGD; log, curves and checkpoints go to <output-dir>/<name>/.",
                       epilog=TRAIN_EXAMPLES.format(configs=", ".join(CONFIGS), maskrcnn_url=TORCHVISION_MASKRCNN_URL,
                                                    resnet_url=TORCHVISION_RESNET50_URL),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_config_options(p, TrainConfig)
    groups["run"].add_argument(
        "--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
        help="continue the run from its checkpoint (or from CHECKPOINT); the saved configuration "
             "holds except for the options given")
    p.set_defaults(func=cmd_train)

    # ------------------------------------------------------------------------------- evaluate
    p = sub.add_parser("evaluate", help="COCO AP of a trained model", epilog=EVALUATE_EXAMPLES,
                       description="Run a trained model on a COCO-format data set and compute COCO AP/AR.",
                       formatter_class=_Formatter)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.npz, or a torchvision Mask R-CNN .pth")
    p.add_argument("--annotations", default=None, help="COCO instances JSON (default: the run's validation data)")
    p.add_argument("--images", default=None, help="image folder of those annotations")
    p.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--iou-types", default=None, type=_comma_list(str, ("bbox", "segm", "keypoints")),
                   help="bbox, segm, keypoints or a comma list (default: all the model predicts)")
    p.add_argument("--results-dir", default=None, help="where results_*.json go (default: the run folder)")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--threads", type=int, default=d.threads, help="threads of the Numba kernels (default: every core)")
    p.add_argument("--blas-threads", type=int, default=d.blas_threads, help="threads of NumPy's matrix products")
    p.add_argument("--no-progress", action="store_true")
    _add_model_options(p)
    p.set_defaults(func=cmd_evaluate)

    # -------------------------------------------------------------------------------- predict
    p = sub.add_parser("predict", help="draw detections on images",
                       epilog=PREDICT_EXAMPLES.format(maskrcnn_url=TORCHVISION_MASKRCNN_URL),
                       description="Run a trained model on image files and write PNGs with masks, boxes, "
                                   "classes and scores.",
                       formatter_class=_Formatter)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.npz, or a torchvision Mask R-CNN .pth "
                                      "(see below)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--output-dir", default="predictions", help="where the PNGs go")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--threads", type=int, default=d.threads, help="threads of the Numba kernels (default: every core)")
    p.add_argument("--blas-threads", type=int, default=d.blas_threads, help="threads of NumPy's matrix products")
    _add_model_options(p)
    p.set_defaults(func=cmd_predict)

    # ----------------------------------------------------------------------------------- data
    p = sub.add_parser("data", help="generate shapes or figures, copy the COCO sample, download COCO",
                       epilog=DATA_EXAMPLES,
                       description="Get data sets in COCO format.", formatter_class=_Formatter)
    dsub = p.add_subparsers(dest="data_command", metavar="{shapes,figures,coco-sample,download}")
    q = dsub.add_parser("shapes", help="generate the synthetic shapes data set", formatter_class=_Formatter,
                        epilog="example:\n  minimaskrcnn data shapes runs/data/shapes/train --num-images 600 --seed 0")
    q.add_argument("out_dir", help="folder to write (annotations JSON and images)")
    q.add_argument("--num-images", type=int, default=600)
    q.add_argument("--image-size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_shapes)
    q = dsub.add_parser("figures", help="generate the synthetic stick figures with keypoints",
                        formatter_class=_Formatter,
                        epilog="example:\n  minimaskrcnn data figures runs/data/figures/train --num-images 1000 "
                               "--seed 100")
    q.add_argument("out_dir", help="folder to write (keypoints JSON and images)")
    q.add_argument("--num-images", type=int, default=600)
    q.add_argument("--image-size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_figures)
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
    q.add_argument("--annotations-url", default=None,
                   help="annotations zip or JSON (default: <base-url>/annotations/...)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_data_download)
    p.set_defaults(func=lambda args: _help_and_fail(p))

    # --------------------------------------------------------------------------------- ablate
    from minimaskrcnn.experiments import STUDIES

    p = sub.add_parser("ablate", help="train the variants of a study for several seeds and tabulate them",
                       description="An ablation study: every variant of the study trained for each seed (trunks "
                                   "trained once per seed, or once for every seed where the study shares them), then "
                                   "mean and standard deviation over the seeds with the paper's figures beside.",
                       epilog=ABLATE_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("study", choices=sorted(STUDIES), help="the study (table2: Mask R-CNN's Table 2, lesson 17)")
    p.add_argument("--seeds", type=_int_list, default=(0, 1, 2), help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--out", default=os.path.join("runs", "ablate"), help="folder of the runs (<out>/<study>/...)")
    p.add_argument("--data-dir", default=None, help="where the study's data is generated (default <out>/data)")
    p.add_argument("--results", default=None, help="results JSON to write (default <out>/<study>/results.json)")
    p.add_argument("--table", default=None, help="markdown table to write (default <out>/<study>/table.md)")
    p.add_argument("--only", type=_name_list, default=None, metavar="NAME,...",
                   help="run just these variants (and the trunks they need)")
    p.add_argument("--quick", action="store_true", help="the study's tiny version (a minute; numbers meaningless)")
    p.add_argument("--set", action="append", default=[], type=_key_value_text, metavar="FIELD=VALUE",
                   help="change one of the study's settings, e.g. head_steps=400 (repeatable)")
    p.set_defaults(func=cmd_ablate)
    return parser


# ------------------------------------------------------------------- options from a configuration
def add_config_options(parser: argparse.ArgumentParser, config_class: type) -> dict[str, argparse._ArgumentGroup]:
    """Add one option per field of ``config_class``, a dataclass such as ``TrainConfig``.

    The option is ``--<field-name>`` (dashes for underscores) or metadata "flag"; its help is
    metadata "help" (required) followed by the field's default; it is listed under metadata
    "group" (``config.OPTION_GROUPS`` first, in that order). The field's type says what it reads:

    - ``int``, ``float``, ``str`` (also ``... | None``): one value; metadata "choices" (a sequence
      or a function returning one) limits it;
    - ``tuple[int, ...]``, ``tuple[str, ...]``: comma-separated values, e.g. ``--lr-milestones 1000,1300``;
    - ``dict``: repeatable ``KEY=VALUE``, the value read as JSON when it parses;
    - ``bool``: a switch, ``--name`` when the default is False, ``--no-name`` when it is True.

    Every option defaults to None: ``config_overrides`` then keeps only the options given.

    Returns:
        the argument groups by name, to add more options to them.

    Raises:
        TypeError: a field without help, or of a type that has no option form.
    """
    hints = typing.get_type_hints(config_class)
    groups = {name: parser.add_argument_group(name) for name in OPTION_GROUPS}
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            raise TypeError(f"{config_class.__name__}.{f.name} has no metadata 'help': every field is an option")
        group_name = f.metadata.get("group", "options")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        flags, kwargs = _option(f, _without_none(hints[f.name]))
        groups[group_name].add_argument(*flags, dest=f.name, default=None, **kwargs)
    return groups


def config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The fields of ``config_class`` given on the command line (not None), as field values."""
    given = {}
    for f in dataclasses.fields(config_class):
        value = getattr(args, f.name)
        if value is not None:
            given[f.name] = dict(value) if isinstance(value, list) else value  # KEY=VALUE pairs -> dict
    return given


def _without_none(annotation):
    """``X | None`` -> ``X``; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def _option(f: dataclasses.Field, annotation) -> tuple[list[str], dict[str, Any]]:
    """The option strings and ``add_argument`` keywords of one configuration field."""
    meta = f.metadata
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    choices = meta.get("choices")
    choices = list(choices()) if callable(choices) else choices
    flag = meta.get("flag", "--" + f.name.replace("_", "-"))
    text = meta["help"]
    kwargs: dict[str, Any] = {}
    if annotation is bool:
        if default:
            flag = meta.get("flag", "--no-" + f.name.replace("_", "-"))
            text += " (on by default: this turns it off)"
        kwargs.update(action="store_const", const=not default)
    else:
        if default is not None:
            text += f" (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"
        origin = typing.get_origin(annotation) or annotation
        if origin is tuple:
            kwargs["type"] = _comma_list(typing.get_args(annotation)[0], choices)
        elif origin is dict:
            kwargs.update(action="append", type=_key_value, metavar="KEY=VALUE")
        elif annotation in (int, float, str):
            kwargs.update(type=annotation, choices=choices)
        else:
            raise TypeError(f"field {f.name!r} of type {annotation!r} has no command-line form")
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    kwargs["help"] = text.replace("%", "%%")  # argparse formats help with %
    return [flag], kwargs


def _comma_list(item_type: type, choices: Sequence | None = None):
    """The argparse type of a comma-separated list, e.g. "1000,1300" -> (1000, 1300)."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(item_type(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item_type.__name__} values, "
                                             f"got {text!r}") from None
        if choices is not None and (not values or any(v not in choices for v in values)):
            raise argparse.ArgumentTypeError(f"expected comma-separated values among {', '.join(choices)}, "
                                             f"got {text!r}")
        return values

    parse.__name__ = f"comma-separated {item_type.__name__} list"  # what argparse's messages call it
    return parse


def _key_value(text: str) -> tuple[str, object]:
    """"key=value" -> (key, value), the value read as JSON when it parses (numbers, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _key_value_text(text: str) -> tuple[str, str]:
    """"key=value" -> (key, value) with the value kept as text (the study reads it as its field's type)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options of evaluate and predict that change how the trained model runs."""
    parser.add_argument("--min-size", type=int, default=None,
                        help="short side of the model's input (default: the run's; 800 for a torchvision file); "
                             "smaller is faster and coarser")
    parser.add_argument("--max-size", type=int, default=None, help="cap on the long side of the model's input")
    parser.add_argument("--norm-eps", type=float, default=None, metavar="EPS",
                        help="eps of the backbone's frozen batch norms (default: the run's; 0.0 for a torchvision "
                             "file, as torchvision sets it for COCO_V1; 1e-5 for a model torchvision trained from "
                             "ImageNet backbone weights only)")
    parser.add_argument("--model-arg", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                        help="a torchvision-style model argument, e.g. box_score_thresh=0.3 (repeatable)")


def _load_model(args: argparse.Namespace):
    from minimaskrcnn.checkpoint import load_model

    return load_model(args.checkpoint, backend=args.backend, min_size=args.min_size, max_size=args.max_size,
                      norm_eps=args.norm_eps, model_kwargs=dict(args.model_arg))


def _help_and_fail(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------ commands
def _train_config(args: argparse.Namespace):
    """The run ``minimaskrcnn train`` was asked for: (TrainConfig, resume: False or a checkpoint path)."""
    from minimaskrcnn.checkpoint import CHECKPOINT_NAME, checkpoint_file, load_training_config
    from minimaskrcnn.config import TrainConfig

    given = config_overrides(args, TrainConfig)
    config = TrainConfig(**given)
    resume = args.resume
    if resume:
        # the run's saved configuration holds, except for what was given on the command line
        resume = checkpoint_file(resume) if isinstance(resume, str) else os.path.join(config.run_dir, CHECKPOINT_NAME)
        config = dataclasses.replace(load_training_config(resume), **{**given, "progress": config.progress})
    return config, resume


def _local_processes(args: argparse.Namespace) -> int:
    """How many processes ``minimaskrcnn train`` runs on this machine: ``--processes`` (or a resumed
    run's), else ``local_parallel.default_processes``; 1 when the run's settings cannot be read (the
    run then reports why).

    Raises:
        ValueError: fewer than 1 process asked for.
        DistributedError: more than one asked for, but the batch does not split evenly over them or
            the model normalises with batch statistics (said once, before any process starts).
    """
    from minimaskrcnn import distributed
    from minimaskrcnn.local_parallel import default_processes, uses_batch_statistics

    if args.processes is not None and args.processes < 1:
        raise ValueError(f"--processes {args.processes}: at least 1")
    try:
        args.train_run = _train_config(args)  # read once (on resume, from the checkpoint): cmd_train reuses it
    except Exception:
        return 1 if args.processes is None else int(args.processes)
    config = args.train_run[0]
    if config.processes is None:
        return default_processes(config)  # chosen so that neither check below can fail
    processes = int(config.processes)
    if processes > 1:
        distributed.check_batch_split(config.batch_size, processes)
        if uses_batch_statistics(config):
            raise distributed.DistributedError(
                f"{processes} processes: the model normalises with batch statistics (norm 'bn'), which differ when "
                "each process sees part of the batch; use --processes 1, or GroupNorm ('gn')")
    return processes


def cmd_train(args: argparse.Namespace) -> int:
    from minimaskrcnn.checkpoint import model_config
    from minimaskrcnn.errors import DataError
    from minimaskrcnn.train import Trainer

    config, resume = getattr(args, "train_run", None) or _train_config(args)
    try:  # a bad --model-arg is bad input: one line, before any data are prepared
        model_config(config, num_classes=2)
    except (KeyError, TypeError) as e:
        raise DataError(None, f"--model-arg: {one_line(e)}") from None
    trainer = Trainer(config, resume=resume)
    if not trainer.is_root:  # rank 0 speaks for the job
        trainer.fit()
        return 0
    per_process = config.batch_size // trainer.comm.size
    ranks = f", {trainer.comm.size} processes of {per_process} image{'s' * (per_process != 1)} per step" \
        if trainer.comm.size > 1 else ""
    print(f"run folder: {trainer.run_dir}  ({len(trainer.train_indices)} training images, "
          f"{len(trainer.val_indices)} validation images, {trainer.num_classes - 1} classes{ranks})", file=sys.stderr)
    for path, report in trainer.weights_reports:
        print(f"weights {path}: {report.summary()}", file=sys.stderr)
    if trainer.weights_reports:
        frozen = 5 - int(trainer.config.trainable_backbone_layers)
        stages = ["conv1", "layer1", "layer2", "layer3", "layer4"][:frozen]
        print(f"trainable backbone layers: {trainer.config.trainable_backbone_layers} "
              f"(frozen at their starting values: {', '.join(stages) or 'none'})", file=sys.stderr)
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
    keypoints = result["val"].get("keypoints")
    if keypoints:
        print(f"keypoint AP50 {keypoints['AP50']:.3f}, keypoint AP {keypoints['AP']:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from minimaskrcnn.checkpoint import checkpoint_file, load_training_config
    from minimaskrcnn.data import CocoDataset, prepare_datasets
    from minimaskrcnn.evaluate import evaluate, iou_types_of
    from minimaskrcnn.pretrained import is_minimaskrcnn_checkpoint

    path = checkpoint_file(args.checkpoint)
    if args.annotations and not args.images:
        raise FileNotFoundError("--annotations needs --images (the folder of its images)")
    if not args.annotations and os.path.isfile(path) and not is_minimaskrcnn_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a run of ours, so it has no validation data: give --annotations "
                                f"and --images")
    limit_threads(args.threads, args.blas_threads)
    reuse_freed_memory()
    model, class_names = _load_model(args)
    if args.annotations:
        dataset = CocoDataset(args.annotations, args.images)
        dataset.set_label_map(_model_labels(dataset, class_names))
    else:
        _, dataset, _ = prepare_datasets(load_training_config(path))
    if len(dataset) == 0:
        from minimaskrcnn.errors import DataError

        raise DataError(args.annotations, "the data set holds no images")
    indices = list(range(len(dataset)))[: args.max_images]
    iou_types = args.iou_types or iou_types_of(model)
    missing = set(iou_types) - set(iou_types_of(model))
    if missing:
        from minimaskrcnn.errors import DataError

        raise DataError(path, f"the model predicts no {', '.join(sorted(missing))} (it has no such head)")
    if "keypoints" in iou_types and not dataset.keypoint_names:
        from minimaskrcnn.errors import DataError

        raise DataError(args.annotations, "keypoint AP needs annotations with keypoints (a person_keypoints file)")
    results_dir = args.results_dir or os.path.dirname(path)
    evaluate(model, dataset, iou_types=iou_types, indices=indices, results_dir=results_dir,
             verbose=True, progress=not args.no_progress)
    print(f"results: {', '.join(os.path.join(results_dir, f'results_{t}.json') for t in iou_types)}")
    return 0


def _model_labels(dataset, class_names: list[str]):
    """The labels of ``dataset`` under which its categories are the model's classes."""
    from minimaskrcnn.data.prepare import model_label_map
    from minimaskrcnn.pretrained import generic_class_names

    if list(class_names) == generic_class_names(len(class_names)) and dataset.num_classes <= len(class_names):
        return dataset.label_map  # a torchvision file of unknown classes: its labels are taken as the data set's
    return model_label_map(dataset, class_names)


def cmd_predict(args: argparse.Namespace) -> int:
    from minimaskrcnn.checkpoint import load_keypoint_info
    from minimaskrcnn.predict import collect_image_paths, predict_files

    collect_image_paths(args.images)  # bad inputs fail before the model is loaded
    limit_threads(args.threads, args.blas_threads)
    reuse_freed_memory()
    model, class_names = _load_model(args)
    # a keypoint model is one of our checkpoints (torchvision files load as Mask R-CNN): it names its keypoints
    keypoint_names, skeleton = (load_keypoint_info(args.checkpoint) if model.roi_heads.has_keypoint()
                                else (None, None))
    written = predict_files(model, args.images, args.output_dir, class_names, score_threshold=args.score_threshold,
                            skeleton=skeleton, keypoint_names=keypoint_names)
    for path in written:
        print(path)
    return 0


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from minimaskrcnn.data.shapes import make_shapes_dataset

    made = make_shapes_dataset(args.out_dir, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    print(f"annotations: {made.annotation_file}\nimages:      {made.image_dir}")
    return 0


def cmd_data_figures(args: argparse.Namespace) -> int:
    from minimaskrcnn.data.figures import make_figures_dataset

    made = make_figures_dataset(args.out_dir, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
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
def cmd_ablate(args: argparse.Namespace) -> int:
    from minimaskrcnn.experiments import STUDIES, run_study, training_order, write_json_atomic
    from minimaskrcnn.experiments.runner import report_markdown
    from minimaskrcnn.io import atomic_write

    out = os.path.join(args.out, args.study)
    if not args.seeds:
        print("error: --seeds: give at least one seed", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # bad settings or names fail here, before any training
        study = STUDIES[args.study](quick=args.quick, overrides=dict(args.set),
                                    data_dir=args.data_dir or os.path.join(args.out, "data"))
        training_order(study.runs, args.only)
    except ValueError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = " ".join(["minimaskrcnn", *args._argv])
    try:
        results = run_study(study, args.seeds, out, command=command, only=args.only)
    except ValueError as e:  # e.g. finished runs on disk made with other settings
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results_path = args.results or os.path.join(out, "results.json")
    table_path = args.table or os.path.join(out, "table.md")
    write_json_atomic(results_path, results.to_json())
    report = report_markdown(results, study)
    with atomic_write(table_path, "w") as f:
        f.write(report)
    print(report)
    print(f"results: {results_path}\ntable: {table_path}")
    return 0


def one_line(error: BaseException) -> str:
    """An exception as a single line (messages with newlines are joined)."""
    text = str(error)
    if isinstance(error, FileNotFoundError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or error.__class__.__name__


def _expected_errors() -> tuple[type[BaseException], ...]:
    from minimaskrcnn.distributed import DistributedError
    from minimaskrcnn.errors import DataError, DownloadError
    from minimaskrcnn.function import AnomalyError

    return (DataError, AnomalyError, DownloadError, DistributedError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``minimaskrcnn`` (and ``python -m minimaskrcnn``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv  # the command as given, recorded in results files
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    from minimaskrcnn import distributed

    try:
        # under mpiexec, a failing rank must end every rank (the others would wait for it forever)
        comm = distributed.init() if args.command == "train" else distributed.Communicator()
        if args.command == "train" and comm.size == 1:  # not under mpiexec: one process per core
            processes = _local_processes(args)
            if processes > 1:
                from minimaskrcnn import local_parallel

                comm = distributed._world = local_parallel.launch(processes, argv)
        elif args.command == "train" and args.processes not in (None, comm.size):
            raise distributed.DistributedError(f"--processes {args.processes} under mpiexec, which started "
                                               f"{comm.size}: give mpiexec -n the number instead")
    except (distributed.DistributedError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rank = f"[rank {comm.rank} of {comm.size}] " if comm.size > 1 else ""
    launched = comm.is_root and hasattr(comm, "finish")  # local processes started here (local_parallel)
    try:
        with distributed.abort_on_error(comm):
            try:
                code = int(args.func(args) or 0)
                if launched and code == 0:  # wait for the workers to end
                    code = comm.finish()
            except _expected_errors() as e:
                print(f"error: {rank}{one_line(e)}", file=sys.stderr)
                code = EXIT_BAD_INPUT
            except KeyboardInterrupt:  # Ctrl-C reaches every process: rank 0 speaks for them
                if comm.is_root:
                    print("error: interrupted (resume with --resume from the last checkpoint)", file=sys.stderr)
                code = 130
            if code != 0 and comm.size > 1:
                comm.abort(code)
            return code
    finally:
        if launched:
            distributed._world = None  # a later call in this process starts afresh


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
