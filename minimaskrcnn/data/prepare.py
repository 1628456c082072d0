"""The data sets a training run names: the built-in shapes and stick figures (generated once, cached),
the package's COCO sample, or any COCO-format files; and ``DetectionDataset``, what the trainer needs of
a data set.

``prepare_datasets(config)`` turns the data fields of a ``TrainConfig`` into (train, val, class
names); ``ensure_shapes_data`` / ``ensure_figures_data`` generate the synthetic splits unless the same
ones are already there.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from minimaskrcnn.data.categories import BACKGROUND_NAME, GAP_NAME, LabelMap, label_map_for_classes, make_label_map
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.errors import AnnotationError, DataError
from minimaskrcnn.io import atomic_write

if TYPE_CHECKING:
    from minimaskrcnn.config import TrainConfig

__all__ = ["DATASETS", "DEFAULT_FIGURES_DIR", "DEFAULT_SHAPES_DIR", "FIGURES_TRAIN_SEED", "FIGURES_VAL_SEED",
           "SHAPES_TRAIN_SEED", "SHAPES_VAL_SEED", "DetectionDataset", "check_keypoints", "ensure_figures_data",
           "ensure_shapes_data", "model_label_map", "prepare_datasets", "relabel_datasets"]

DATASETS = ("shapes", "figures", "coco-sample", "coco-overfit", "coco")
DEFAULT_SHAPES_DIR = os.path.join("runs", "data", "shapes")
SHAPES_TRAIN_SEED = 0  # the built-in shapes data: fixed seeds, so that val never overlaps train
SHAPES_VAL_SEED = 1
DEFAULT_FIGURES_DIR = os.path.join("runs", "data", "figures")
FIGURES_TRAIN_SEED = 100  # the stick figures (keypoints): fixed seeds too, other than the shapes'
FIGURES_VAL_SEED = 101


@runtime_checkable
class DetectionDataset(Protocol):
    """What the trainer needs of a data set: CocoDataset and ShapesDataset are both one.

    ``ds[i]`` is ``(image (3, H, W) float32 in [0, 1], target)`` with the target dict of
    CocoDataset (boxes (M, 4) float32 (x1, y1, x2, y2), labels (M,) int64, masks (M, H, W) uint8,
    image_id, area, iscrowd; and keypoints (M, NK, 3) float32 when the data has keypoints).
    ``class_names`` is indexed by label ("__background__" at 0, "N/A" in gaps), so ``num_classes ==
    len(class_names)``. ``keypoint_names`` names the NK keypoints (None without keypoints; flips swap
    "left_*" and "right_*"). ``check_images(indices)`` raises ImageError for a missing or unreadable
    image (a no-op where images are generated).
    """

    class_names: list[str]
    num_classes: int
    keypoint_names: list[str] | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]: ...

    def check_images(self, indices: Sequence[int] | None = None) -> None: ...


def prepare_datasets(config: TrainConfig) -> tuple[CocoDataset, CocoDataset, list[str]]:
    """The training and validation data sets named in ``config`` (generating shapes if needed).

    The training set's categories are labelled by their ids, or 1..K (``config.contiguous_labels``,
    and always for ids <= 0), or as the model's classes (``config.class_names``); the validation set
    gets the same labels.

    Returns:
        (train_dataset, val_dataset, class_names): CocoDatasets without transforms (the loader
        flips), and names indexed by label with "__background__" at 0.

    Raises:
        DataError: unreadable or empty data.
    """
    if config.dataset == "shapes":
        train_ann, train_img, val_ann, val_img = ensure_shapes_data(
            config.data_dir or DEFAULT_SHAPES_DIR, config.num_train_images, config.num_val_images, config.image_size
        )
    elif config.dataset == "figures":
        train_ann, train_img, val_ann, val_img = ensure_figures_data(
            config.data_dir or DEFAULT_FIGURES_DIR, config.num_train_images, config.num_val_images, config.image_size
        )
    elif config.dataset in ("coco-sample", "coco-overfit"):
        from minimaskrcnn.data import sample_files

        # the package's COCO sample: train on its train split and validate on its val split, or
        # ("coco-overfit") train and validate on the same 8 images, to check that a model can overfit
        train_split, val_split = ("train", "val") if config.dataset == "coco-sample" else ("overfit", "overfit")
        train_ann, train_img = (os.fspath(p) for p in sample_files(train_split))
        val_ann, val_img = (os.fspath(p) for p in sample_files(val_split))
        train_ann = config.train_annotations or train_ann
        train_img = config.train_images or train_img
        val_ann = config.val_annotations or val_ann
        val_img = config.val_images or val_img
    elif config.dataset == "coco":
        if not (config.train_annotations and config.train_images):
            raise DataError(None, "dataset 'coco' needs train annotations and an image folder")
        train_ann, train_img = config.train_annotations, config.train_images
        val_ann = config.val_annotations or train_ann
        val_img = config.val_images or (train_img if val_ann == train_ann else None)
        if val_img is None:
            raise DataError(val_ann, "validation annotations given without their image folder")
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}: expected one of {DATASETS}")
    train_ds = CocoDataset(train_ann, train_img, contiguous_labels=config.contiguous_labels,
                           exif_transpose=config.exif_transpose,
                           min_keypoints_per_image=config.min_keypoints_per_image,
                           mask_categories=config.mask_categories)
    # the validation set is labelled as the training set, whatever ids or order its own file has
    val_ds = CocoDataset(val_ann, val_img, label_map=train_ds.label_map, exif_transpose=config.exif_transpose)
    relabel_datasets(config, train_ds, val_ds)
    if len(train_ds) == 0:
        raise DataError(train_ann, "the training data set holds no images")
    if len(val_ds) == 0:
        raise DataError(val_ann, "the validation data set holds no images")
    return train_ds, val_ds, list(train_ds.class_names)


def relabel_datasets(config: TrainConfig, train_ds: CocoDataset, val_ds: CocoDataset) -> None:
    """Label both data sets as the model's classes when ``config.class_names`` names them, or
    contiguously when ``config.contiguous_labels`` asks and they are not yet (see ``categories``).

    Raises:
        AnnotationError: a category that is not one of the model's classes.
    """
    if config.class_names is not None:
        label_map = model_label_map(train_ds, config.class_names)
    elif config.contiguous_labels and not train_ds.label_map.contiguous:
        label_map = make_label_map(train_ds.categories, contiguous=True, path=train_ds.annotation_file)
    else:
        return
    train_ds.set_label_map(label_map)
    val_ds.set_label_map(label_map)


def check_keypoints(model, dataset: DetectionDataset, model_name: str | None = None) -> None:
    """A keypoint head needs data with as many keypoints (NK) as it predicts; nothing to check without one.

    Args:
        model: a built Mask R-CNN (its ``roi_heads`` say whether it has a keypoint branch).
        dataset: the training data set (``keypoint_names``: its NK names, or None).
        model_name: the model's configuration name, for the message (``TrainConfig.model``).

    Raises:
        DataError: the model has a keypoint head and the data has no keypoints, or another number
            of them (naming the annotation file of a CocoDataset).
    """
    heads = model.roi_heads
    if not heads.has_keypoint():
        return
    names = dataset.keypoint_names
    source = getattr(dataset, "annotation_file", None)  # CocoDataset names its file
    if not names:
        raise DataError(source, f"model {model_name!r} predicts keypoints but the training data has none "
                                "(no category names keypoints): use --dataset figures, or a person_keypoints file")
    if len(names) != heads.keypoint_predictor.out_channels:
        raise DataError(source, f"the data has {len(names)} keypoints per object but model {model_name!r} "
                                f"predicts {heads.keypoint_predictor.out_channels}")


def model_label_map(dataset: CocoDataset, class_names: Sequence[str]) -> LabelMap:
    """The labels under which ``dataset``'s categories are the classes ``class_names`` of a model.

    Args:
        dataset: a CocoDataset.
        class_names: the model's names by label, from label 1 or with "__background__" at 0.

    Raises:
        AnnotationError: a category of the data set is not one of those classes (naming it).
    """
    names = list(class_names)
    if not names or names[0] != BACKGROUND_NAME:
        names = [BACKGROUND_NAME, *names]
    label_map = label_map_for_classes(dataset.categories, names, dataset.annotation_file)
    if label_map is None:
        missing = [f"{cid} {name!r}" for cid, name in sorted(dataset.categories.items())
                   if name.strip().lower() not in {n.strip().lower() for n in names[1:]}]
        detail = (f"categories {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} are not among them"
                  if missing else "the ids do not follow the model's labels (neither equal to them nor numbered "
                                  "1..K in the model's order)")
        raise AnnotationError(dataset.annotation_file, f"its categories are not the model's {len(names) - 1} "
                              f"classes ({', '.join(n for n in names[1:6] if n != GAP_NAME)} ...): {detail}")
    return label_map


def ensure_shapes_data(data_dir: str, num_train: int, num_val: int, image_size: int) -> tuple[str, str, str, str]:
    """Generate the shapes train and val splits into ``data_dir`` unless they are already there.

    A split is reused only if it was made with the same number of images, size and seed (kept
    in ``<split>/meta.json``), so changing a setting regenerates it.

    Returns:
        (train annotation file, train image folder, val annotation file, val image folder).
    """
    from minimaskrcnn.data.shapes import make_shapes_dataset

    return _ensure_generated(make_shapes_dataset, data_dir, num_train, num_val, image_size,
                             (SHAPES_TRAIN_SEED, SHAPES_VAL_SEED), {})


def ensure_figures_data(data_dir: str, num_train: int, num_val: int, image_size: int) -> tuple[str, str, str, str]:
    """Generate the stick-figures (person keypoints) train and val splits into ``data_dir`` unless they
    are already there, as ``ensure_shapes_data`` (``data/figures.py``).

    Returns:
        (train annotation file, train image folder, val annotation file, val image folder).
    """
    from minimaskrcnn.data.figures import make_figures_dataset

    return _ensure_generated(make_figures_dataset, data_dir, num_train, num_val, image_size,
                             (FIGURES_TRAIN_SEED, FIGURES_VAL_SEED), {"data": "figures"})


def _ensure_generated(make, data_dir: str, num_train: int, num_val: int, image_size: int,
                      seeds: tuple[int, int], kind: dict) -> tuple[str, str, str, str]:
    """Each split made by ``make(split_dir, num_images, image_size, seed)`` unless ``meta.json`` says the
    folder already holds it (``kind`` tells the generators apart in the meta data)."""
    out: list[str] = []
    for split, n, seed in (("train", num_train, seeds[0]), ("val", num_val, seeds[1])):
        split_dir = os.path.join(data_dir, split)
        meta_path = os.path.join(split_dir, "meta.json")
        params = {"num_images": int(n), "image_size": int(image_size), "seed": seed, **kind}
        done = None
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                done = json.load(f)
        if done is None or done.get("params") != params:
            made = make(split_dir, num_images=int(n), image_size=int(image_size), seed=seed)
            # names relative to the split folder, so that the folder can move
            names = {"annotations": os.path.relpath(made.annotation_file, split_dir),
                     "images": os.path.relpath(made.image_dir, split_dir)}
            with atomic_write(meta_path, "w") as f:
                json.dump({"params": params, **names}, f)
        else:
            names = done
        out += [os.path.join(split_dir, names["annotations"]), os.path.join(split_dir, names["images"])]
    return tuple(out)
