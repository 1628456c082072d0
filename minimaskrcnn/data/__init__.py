"""Data: COCO-format data sets, synthetic shapes, augmentation and batching, COCO downloads.

``sample_dataset("train" | "val" | "overfit")`` opens the small COCO 2017 sample shipped with the
package (see sample/README.md for its licenses; ``keypoints=True``: its person keypoints);
``ShapesDataset`` / ``make_shapes_dataset`` make a synthetic set a small model learns in minutes, and
``FiguresDataset`` / ``make_figures_dataset`` synthetic stick figures with keypoints (Keypoint R-CNN);
``download_coco`` fetches more of COCO;
``prepare_datasets`` gives the data sets a training configuration names (``prepare.py``), and
``DetectionDataset`` says what a data set must offer the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from minimaskrcnn.data.categories import LabelMap, coco_class_names, make_label_map
from minimaskrcnn.data.coco import CocoDataset, CocoFiles, annotation_to_mask, load_coco_json
from minimaskrcnn.data.figures import (
    FIGURE_KEYPOINTS,
    FIGURE_SIGMAS,
    FIGURE_SKELETON,
    FiguresDataset,
    FiguresFiles,
    FiguresSample,
    generate_figures_image,
    make_figures_dataset,
)
from minimaskrcnn.data.image import array_to_image, read_image
from minimaskrcnn.data.prepare import (
    DATASETS,
    DEFAULT_FIGURES_DIR,
    DEFAULT_SHAPES_DIR,
    DetectionDataset,
    ensure_figures_data,
    ensure_shapes_data,
    prepare_datasets,
)
from minimaskrcnn.data.shapes import (
    SHAPE_CLASSES,
    ShapesDataset,
    ShapesFiles,
    ShapesSample,
    generate_shapes_image,
    make_shapes_dataset,
)
from minimaskrcnn.data.transforms import (
    Compose,
    DataLoader,
    RandomHorizontalFlip,
    Resize,
    collate,
    hflip,
    keypoint_flip_indices,
    resize,
)

__all__ = [
    "DATASETS",
    "DEFAULT_FIGURES_DIR",
    "DEFAULT_SHAPES_DIR",
    "FIGURE_KEYPOINTS",
    "FIGURE_SIGMAS",
    "FIGURE_SKELETON",
    "SAMPLE_DIR",
    "SHAPE_CLASSES",
    "CocoDataset",
    "CocoFiles",
    "Compose",
    "DataLoader",
    "LabelMap",
    "DetectionDataset",
    "FiguresDataset",
    "FiguresFiles",
    "FiguresSample",
    "RandomHorizontalFlip",
    "Resize",
    "ShapesDataset",
    "ShapesFiles",
    "ShapesSample",
    "annotation_to_mask",
    "array_to_image",
    "coco_class_names",
    "collate",
    "download_coco",
    "ensure_figures_data",
    "ensure_shapes_data",
    "generate_figures_image",
    "generate_shapes_image",
    "hflip",
    "keypoint_flip_indices",
    "load_coco_json",
    "make_label_map",
    "make_figures_dataset",
    "make_shapes_dataset",
    "prepare_datasets",
    "read_image",
    "resize",
    "sample_dataset",
    "sample_files",
]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
# split -> (annotation file, image folder) inside SAMPLE_DIR; "overfit" is 8 of the train images
_SAMPLE_SPLITS = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "val": ("annotations/instances_val2017.json", "val2017"),
    "overfit": ("annotations/instances_overfit.json", "train2017"),
}


def __getattr__(name: str):
    # imported on first use, so that ``python -m minimaskrcnn.data.download`` finds it not yet loaded
    if name == "download_coco":
        from minimaskrcnn.data.download import download_coco

        return download_coco
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sample_files(split: str = "val", keypoints: bool = False) -> CocoFiles:
    """(annotation_file, image_dir) of the packaged COCO sample; split is "train", "val" or "overfit".

    With ``keypoints``, COCO's person keypoint annotations of the sample images that have them
    ("train" or "val" only: 19 and 12 images)."""
    if split not in _SAMPLE_SPLITS or (keypoints and split == "overfit"):
        choices = ["train", "val"] if keypoints else sorted(_SAMPLE_SPLITS)
        raise ValueError(f"unknown sample split {split!r}: expected one of {choices}")
    annotations, images = _SAMPLE_SPLITS[split]
    if keypoints:
        annotations = f"annotations/person_keypoints_{images}.json"
    return CocoFiles(SAMPLE_DIR / annotations, SAMPLE_DIR / images)


def sample_dataset(split: str = "val", keypoints: bool = False, **kwargs: Any) -> CocoDataset:
    """The packaged COCO 2017 sample as a CocoDataset (32 train / 32 val images; "overfit": 8 train
    images with 2-8 large objects each; ``keypoints``: the person keypoint annotations of 19 train / 12
    val images). Keyword arguments go to CocoDataset."""
    files = sample_files(split, keypoints)
    return CocoDataset(files.annotation_file, files.image_dir, **kwargs)
