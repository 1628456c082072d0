"""COCO instance segmentation as (image, target) samples, the way torchvision's detection references
read it: polygons and RLE become binary masks, boxes go from (x, y, w, h) to (x1, y1, x2, y2).
An annotation without a segmentation (none, null or empty) is a box-only instance: it has a box and
a class but no mask (``target["has_mask"]``), for partially supervised training (lesson 18).

The annotation file is checked on load; every problem is reported with the file and the annotation
or image id (``minimaskrcnn.errors``). Lesson: lessons/ (the data pipeline).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from minimaskrcnn.data.categories import LabelMap, check_category_id, make_label_map
from minimaskrcnn.data.image import check_image_size, read_image
from minimaskrcnn.errors import AnnotationError, DataError, PathLike

__all__ = ["VOC_CATEGORY_NAMES", "BoxOnlyInstancesWarning", "CocoDataset", "CocoFiles", "annotation_to_mask",
           "has_segmentation", "load_coco_json", "resolve_categories"]

# COCO's names of the 20 PASCAL VOC categories: the "seen" classes of the partially supervised
# VOC -> non-VOC benchmark (Hu et al. 2018, "Learning to Segment Every Thing"; Deep-MAC)
VOC_CATEGORY_NAMES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
    "horse", "motorcycle", "person", "potted plant", "sheep", "couch", "train", "tv",
)


class BoxOnlyInstancesWarning(UserWarning):
    """A note, once per data set, of how many instances have a box but no mask."""


class CocoFiles(NamedTuple):
    """A COCO-format data set on disk (pass both to CocoDataset)."""

    annotation_file: Path
    image_dir: Path


# at most this many ids are listed in one warning about skipped annotations
_MAX_IDS_IN_WARNING = 10


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ann_record(ann: dict, index: int) -> str:
    """How messages name an annotation: by id (and image id) when it has them, else by position."""
    if _integer(ann.get("id")):
        if "image_id" in ann:
            return f"annotation id {ann['id']} (image id {ann['image_id']!r})"
        return f"annotation id {ann['id']}"
    return f"annotations[{index}]"


def _warn_skipped(path: Path, ids: list, why: str) -> None:
    if not ids:
        return
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_IN_WARNING])
    more = f" and {len(ids) - _MAX_IDS_IN_WARNING} more" if len(ids) > _MAX_IDS_IN_WARNING else ""
    warnings.warn(f"{path}: skipped {len(ids)} annotation(s) {why}: annotation id {shown}{more}", stacklevel=3)


def load_coco_json(annotation_file: PathLike) -> dict:
    """Read and validate a COCO instances file.

    Checks: the JSON parses; ``images``, ``annotations`` and ``categories`` are lists; images have an
    integer ``id``, a ``file_name`` and positive ``width``/``height``; categories an integer ``id``
    (any integer; a string or float id is refused with the fix, see ``categories.check_category_id``)
    and a ``name``; annotations an integer ``id``, an ``image_id`` and ``category_id`` that exist, a
    ``bbox`` of 4 finite numbers with width and height >= 0, a ``segmentation`` (if any) that is a
    list of polygons (even number of finite coordinates) or an RLE whose ``size`` is the image's
    (height, width), ``iscrowd`` 0 or 1. A missing, null or empty segmentation makes a box-only
    instance (see ``has_segmentation``), except for crowd regions, which need one. Ids must be unique.

    Args:
        annotation_file: path of the JSON file.

    Returns:
        The parsed dict (unchanged).

    Raises:
        AnnotationError: naming the file, the record (image id / annotation id / key) and the problem.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise AnnotationError(path, "no such annotation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"not valid JSON (truncated?): {e.msg} at line {e.lineno} "
                                    f"column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(path, f"not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise AnnotationError(path, f"top level is a {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(path, "missing key (not a COCO instances file?)", record=f"key {key!r}")
        if not isinstance(data[key], list):
            raise AnnotationError(path, f"is a {type(data[key]).__name__}, expected a list", record=f"key {key!r}")

    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _integer(img.get("id")):
            raise AnnotationError(path, "image record without an integer 'id'", record=f"images[{i}]")
        record = f"image id {img['id']}"
        if img["id"] in images:
            raise AnnotationError(path, "duplicate image id", record=record)
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise AnnotationError(path, "missing 'file_name'", record=record)
        for key in ("width", "height"):
            if not _integer(img.get(key)) or img[key] <= 0:
                raise AnnotationError(path, f"'{key}' is {img.get(key)!r}, expected a positive integer", record=record)
        images[img["id"]] = img

    categories = set()
    keypoint_counts: dict[int, int] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise AnnotationError(path, "category without an 'id'", record=f"categories[{i}]")
        check_category_id(cat["id"], path, f"categories[{i}]")
        if cat["id"] in categories:
            raise AnnotationError(path, "duplicate category id", record=f"category id {cat['id']}")
        if not isinstance(cat.get("name"), str):
            raise AnnotationError(path, "category without a 'name'", record=f"category id {cat['id']}")
        if "keypoints" in cat:
            names = cat["keypoints"]
            if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
                raise AnnotationError(path, "'keypoints' is not a non-empty list of names",
                                      record=f"category id {cat['id']}")
            keypoint_counts[cat["id"]] = len(names)
        categories.add(cat["id"])

    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise AnnotationError(path, f"annotation is a {type(ann).__name__}, expected an object",
                                  record=f"annotations[{i}]")
        record = _ann_record(ann, i)
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise AnnotationError(path, f"missing key '{key}'", record=record)
        if not _integer(ann["id"]):
            raise AnnotationError(path, f"'id' is {ann['id']!r}, expected an integer", record=record)
        if ann["id"] in ann_ids:
            raise AnnotationError(path, "duplicate annotation id", record=record)
        ann_ids.add(ann["id"])
        if ann["image_id"] not in images:
            raise AnnotationError(path, f"unknown image id {ann['image_id']!r} (not in 'images')", record=record)
        check_category_id(ann["category_id"], path, record)
        if ann["category_id"] not in categories:
            raise AnnotationError(path, f"unknown category id {ann['category_id']!r} (not in 'categories')",
                                  record=record)
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise AnnotationError(path, f"bbox {bbox!r} is not 4 numbers [x, y, width, height]", record=record)
        if not all(math.isfinite(v) for v in bbox):
            raise AnnotationError(path, f"bbox {bbox!r} has a non-finite value", record=record)
        if bbox[2] < 0 or bbox[3] < 0:
            raise AnnotationError(path, f"bbox {bbox!r} has a negative width or height", record=record)
        if ann.get("iscrowd", 0) not in (0, 1):
            raise AnnotationError(path, f"iscrowd is {ann['iscrowd']!r}, expected 0 or 1", record=record)
        if "area" in ann and not (_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise AnnotationError(path, f"area {ann['area']!r} is not a finite number >= 0", record=record)
        image = images[ann["image_id"]]
        if has_segmentation(ann):
            _check_segmentation(ann["segmentation"], image["height"], image["width"], path, record)
        elif ann.get("iscrowd", 0):
            raise AnnotationError(path, "crowd region (iscrowd 1) without a segmentation", record=record)
        if "keypoints" in ann:
            _check_keypoints(ann["keypoints"], keypoint_counts.get(ann["category_id"]), path, record)
    return data


def _check_keypoints(keypoints, count: int | None, path: Path, record: str) -> None:
    """Raise AnnotationError unless keypoints is [x1, y1, v1, ...] with count triples and v in {0, 1, 2}."""
    if not (isinstance(keypoints, list) and all(_number(v) for v in keypoints)):
        raise AnnotationError(path, "'keypoints' is not a list of numbers", record=record)
    if count is None:
        raise AnnotationError(path, "has 'keypoints' but its category names none (no 'keypoints' list)",
                              record=record)
    if len(keypoints) != 3 * count:
        raise AnnotationError(path, f"has {len(keypoints)} keypoint values, expected 3 x {count} (x, y, visibility) "
                              "for its category", record=record)
    if not all(math.isfinite(v) for v in keypoints):
        raise AnnotationError(path, "a keypoint has a non-finite coordinate", record=record)
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        raise AnnotationError(path, f"keypoint visibility {keypoints[2::3]} not all 0, 1 or 2", record=record)


def has_segmentation(ann: dict) -> bool:
    """Whether a COCO annotation has a mask: False when ``segmentation`` is missing, null, [] or {}.

    Such an annotation is a box-only instance (its box and class train the detector, not the mask head).
    """
    seg = ann.get("segmentation")
    return seg is not None and not (isinstance(seg, (list, dict)) and len(seg) == 0)


def resolve_categories(names, categories: dict[int, str], path: PathLike | None = None) -> set[int]:
    """Category ids from a list of names, ids or the word "voc" (the 20 PASCAL VOC categories).

    Args:
        names: a comma-separated string or a sequence of category names (as in ``categories``,
            case-insensitive), integer ids, or "voc".
        categories: {category id: name} of the data set.
        path: the annotation file, to name in errors.

    Returns:
        the set of category ids.

    Raises:
        DataError: a name or id the data set does not have, or "voc" on a data set with none of
            the VOC categories.
    """
    if isinstance(names, str):
        names = names.split(",")
    by_name = {name.strip().lower(): cid for cid, name in categories.items()}
    known = ", ".join(sorted(categories.values()))
    ids: set[int] = set()
    for entry in names:
        if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
            if int(entry) not in categories:
                raise DataError(path, f"mask categories: no category id {int(entry)} in this data set "
                                f"(it has: {known})")
            ids.add(int(entry))
            continue
        name = str(entry).strip().lower()
        if not name:
            continue
        if name == "voc":
            voc = {by_name[n] for n in VOC_CATEGORY_NAMES if n in by_name}
            if not voc:
                raise DataError(path, "mask categories: 'voc' names the 20 PASCAL VOC categories of COCO, and "
                                f"this data set has none of them (it has: {known})")
            ids |= voc
        elif name in by_name:
            ids.add(by_name[name])
        elif name.isdigit() and int(name) in categories:
            ids.add(int(name))
        else:
            raise DataError(path, f"mask categories: no category named {entry!r} in this data set (it has: {known})")
    if not ids:
        raise DataError(path, "mask categories: the list is empty")
    return ids


def _check_segmentation(seg, height: int, width: int, path: Path, record: str) -> None:
    """Raise AnnotationError unless seg is a list of polygons or an RLE of the image's size."""
    if isinstance(seg, list):
        for polygon in seg:
            if not isinstance(polygon, list) or not all(_number(v) for v in polygon):
                raise AnnotationError(path, "segmentation polygon is not a list of numbers", record=record)
            if len(polygon) % 2:
                raise AnnotationError(path, f"segmentation polygon has an odd number ({len(polygon)}) of coordinates",
                                      record=record)
            if not all(math.isfinite(v) for v in polygon):
                raise AnnotationError(path, "segmentation polygon has a non-finite coordinate", record=record)
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2) or counts is None:
            raise AnnotationError(path, "RLE segmentation needs 'size' [height, width] and 'counts'", record=record)
        if list(size) != [height, width]:
            raise AnnotationError(path, f"RLE size {size} differs from the image's [height, width] = "
                                        f"[{height}, {width}]", record=record)
        if isinstance(counts, list):
            if not all(_integer(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise AnnotationError(path, "uncompressed RLE counts are not non-negative integers summing to "
                                      "height * width", record=record)
        elif not isinstance(counts, str):
            raise AnnotationError(path, f"RLE counts is a {type(counts).__name__}, expected a list or a string",
                                  record=record)
    else:
        raise AnnotationError(path, f"segmentation is a {type(seg).__name__}, expected polygons or an RLE",
                              record=record)


def annotation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise one COCO segmentation (polygons, uncompressed or compressed RLE) with pycocotools.

    Args:
        segmentation: the annotation's ``segmentation`` value.
        height, width: the image size in pixels.

    Returns:
        (height, width) uint8 mask, 1 inside the object. Polygons of fewer than 3 points are ignored.
    """
    with warnings.catch_warnings():
        # pycocotools' Cython __array__ predates NumPy 2's copy keyword: silence its DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                return np.zeros((height, width), dtype=np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def _num_labelled(ann: dict) -> int:
    """How many keypoints of an annotation are labelled (visibility > 0)."""
    return sum(1 for v in ann.get("keypoints", [])[2::3] if v > 0)


class CocoDataset:
    """A COCO-format instance segmentation data set: ``ds[i] -> (image, target)``.

    Args:
        annotation_file: COCO instances JSON (``instances_val2017.json`` or one of the same format).
        image_dir: folder holding the images named by ``file_name``.
        transforms: optional ``transforms(image, target) -> (image, target)`` applied to each sample
            (see ``minimaskrcnn.data.transforms``).
        contiguous_labels: False (default) keeps COCO category ids as labels, as torchvision's Mask
            R-CNN does (COCO ids 1..90, ``num_classes=91`` with gaps); True maps the sorted category
            ids to 1..K (``num_classes=K+1``). ``label_to_category_id`` maps back. Ids of 0 or below
            always get contiguous labels (label 0 is the background), with a warning.
        label_map: the labels to use instead, e.g. a model's (``categories.label_map_for_classes``)
            or the training set's for its validation set; every category an annotation uses must be
            in it (else AnnotationError). ``contiguous_labels`` is then ignored.
        exif_transpose: read each image turned by its EXIF orientation, for files whose records
            (width, height) and annotations were made on the image as a viewer shows it. By default
            the stored pixels are read, as COCO's annotations refer to them (see ``data.image``).
        remove_images_without_annotations: drop images that have no usable (non-crowd) annotation,
            as torchvision's reference training does; by default such images are samples with empty
            targets.
        return_crowd: also return crowd regions (``iscrowd=1``) as ``target["crowd_boxes"]`` and
            ``target["crowd_masks"]``, e.g. to ignore detections there. They are never in ``boxes``.
        min_keypoints_per_image: keep only images whose objects have at least this many labelled
            keypoints (visibility > 0) in all, as torchvision's keypoint training does with 10;
            None keeps every image. Only for files with keypoints.
        mask_categories: keep the masks of these categories only (names, ids, or "voc" for the 20
            PASCAL VOC categories; see ``resolve_categories``): the instances of every other category
            become box-only, as in partially supervised training. None keeps every mask.

    A sample is:
        image: (3, H, W) float32 RGB in [0, 1], read by ``data.image.read_image``: intensities kept
            (8-bit / 255, 16-bit / 65535, 1-bit, palette, CMYK, float TIFF in [0, 1]; gray repeated,
            alpha dropped; EXIF orientation ignored unless ``exif_transpose``).
        target: dict with
            boxes: (M, 4) float32, (x1, y1, x2, y2) in pixels, clipped to the image;
            labels: (M,) int64, see ``contiguous_labels``;
            masks: (M, H, W) uint8, 1 inside the instance (all 0 for a box-only instance);
            has_mask: (M,) bool, False for box-only instances (no segmentation, or a category
                outside ``mask_categories``): they take part in the RPN and box losses and are
                left out of the mask targets and the mask loss;
            image_id: int, the COCO image id;
            area: (M,) float32, the annotation's ``area`` (mask area in pixels; box area for a
                box-only instance without one);
            iscrowd: (M,) int64, all 0 (crowd regions are kept out, see ``return_crowd``);
            keypoints (only when the categories name keypoints, as COCO's person keypoints files do):
                (M, NK, 3) float32, (x, y, visibility) in pixels, visibility 0 = not labelled
                (then x = y = 0), 1 = labelled but hidden, 2 = visible; zeros for objects without.

    ``keypoint_names`` (the category's ``keypoints``, or None) and ``skeleton`` (1-based pairs) describe
    the keypoints; the DataLoader's flips use the names to swap left and right.

    Annotations whose box is empty after clipping to the image (width or height <= 0), or whose
    polygons all have fewer than 3 points, are skipped with one warning listing their ids (a polygon
    of fewer than 3 points next to good ones is ignored, with a warning too). Malformed
    input raises ``AnnotationError`` (see ``load_coco_json``); a missing, unreadable or wrongly sized
    image raises ``ImageError`` when its sample is read. When some instances are box-only, one
    ``BoxOnlyInstancesWarning`` says how many (``num_box_only``; their ids in ``box_only_annotation_ids``).
    """

    def __init__(
        self,
        annotation_file: PathLike,
        image_dir: PathLike,
        transforms: Callable | None = None,
        *,
        contiguous_labels: bool = False,
        label_map: LabelMap | None = None,
        remove_images_without_annotations: bool = False,
        return_crowd: bool = False,
        exif_transpose: bool = False,
        min_keypoints_per_image: int | None = None,
        mask_categories=None,
    ):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.return_crowd = return_crowd
        self.exif_transpose = exif_transpose
        data = load_coco_json(self.annotation_file)
        if not data["images"]:
            raise AnnotationError(self.annotation_file, "the data set has no images")

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()

        self.categories: dict[int, str] = {c["id"]: c["name"] for c in data["categories"]}
        if label_map is None:
            label_map = make_label_map(self.categories, contiguous=contiguous_labels, path=self.annotation_file)
        self.set_label_map(label_map)

        keypointed = [c for c in data["categories"] if c.get("keypoints")]
        if len({tuple(c["keypoints"]) for c in keypointed}) > 1:
            raise AnnotationError(self.annotation_file, "categories name different keypoints: one keypoint "
                                  "head needs one list", record=f"category id {keypointed[1]['id']}")
        self.keypoint_names: list[str] | None = list(keypointed[0]["keypoints"]) if keypointed else None
        self.skeleton: list[list[int]] = [list(p) for p in keypointed[0].get("skeleton", [])] if keypointed else []

        self.mask_categories: set[int] | None = None
        if mask_categories is not None:
            self.mask_categories = resolve_categories(mask_categories, self.categories, self.annotation_file)
        self._objects, self._crowds = self._index_annotations(data)
        entries = [e for objs in self._objects.values() for e in objs]
        self.box_only_annotation_ids: set[int] = {ann["id"] for ann, _, has_mask in entries if not has_mask}
        self.num_box_only = len(self.box_only_annotation_ids)
        if self.num_box_only:
            total = len(entries)
            why = ["no segmentation"]
            if self.mask_categories is not None:
                kept = ", ".join(self.categories[c] for c in sorted(self.mask_categories))
                why.append(f"a category outside mask_categories ({kept})")
            warnings.warn(f"{self.annotation_file}: {self.num_box_only} of {total} instances are box-only "
                          f"({' or '.join(why)}): they train the RPN and box head, not the mask head",
                          BoxOnlyInstancesWarning, stacklevel=2)
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if self._objects[i]]
            if not ids:
                raise AnnotationError(self.annotation_file, "no image has a usable (non-crowd) annotation")
        if min_keypoints_per_image is not None:
            if self.keypoint_names is None:
                raise AnnotationError(self.annotation_file, "min_keypoints_per_image given, but no category "
                                      "names keypoints")
            ids = [i for i in ids if sum(_num_labelled(a) for a, _, _ in self._objects[i]) >= min_keypoints_per_image]
            if not ids:
                raise AnnotationError(self.annotation_file,
                                      f"no image has {min_keypoints_per_image} labelled keypoints")
        self.ids: list[int] = ids

    def set_label_map(self, label_map: LabelMap) -> None:
        """Label the categories as ``label_map`` says (e.g. the training set's, or a model's classes).

        Sets ``label_map``, ``label_to_category_id``, ``category_id_to_label``, ``class_names`` and
        ``num_classes`` (= len(class_names), background included).

        Raises:
            AnnotationError: an annotation's category has no label in ``label_map``.
        """
        known = set(label_map.label_to_category_id.values())
        for i, ann in enumerate(self.coco.dataset["annotations"]):
            cid = ann["category_id"]
            if cid not in known:
                shown = ", ".join(f"{c} {label_map.class_names[label]!r}"
                                  for label, c in list(label_map.label_to_category_id.items())[:8])
                raise AnnotationError(self.annotation_file, f"category id {cid!r} ({self.categories[cid]!r}) is not "
                                      f"one of the model's classes (category ids {shown}"
                                      f"{' ...' if len(known) > 8 else ''})", record=_ann_record(ann, i))
        self.label_map = label_map
        self.label_to_category_id = dict(label_map.label_to_category_id)
        self.category_id_to_label = label_map.category_id_to_label
        self.class_names = list(label_map.class_names)
        self.num_classes = len(self.class_names)  # with background 0

    def _index_annotations(self, data: dict) -> tuple[dict[int, list], dict[int, list]]:
        """Per image id: the usable non-crowd annotations and the crowd ones, with clipped boxes."""
        objects: dict[int, list] = {i: [] for i in self.coco.imgs}
        crowds: dict[int, list] = {i: [] for i in self.coco.imgs}
        degenerate_boxes, degenerate_polygons, short_parts = [], [], []
        for ann in data["annotations"]:
            img = self.coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            x1, y1 = min(max(x, 0.0), img["width"]), min(max(y, 0.0), img["height"])
            x2, y2 = min(max(x + w, 0.0), img["width"]), min(max(y + h, 0.0), img["height"])
            if x2 <= x1 or y2 <= y1:
                degenerate_boxes.append(ann["id"])
                continue
            has_mask = has_segmentation(ann)
            seg = ann.get("segmentation")
            if has_mask and isinstance(seg, list) and any(len(p) < 6 for p in seg):
                if not any(len(p) >= 6 for p in seg):
                    degenerate_polygons.append(ann["id"])
                    continue
                short_parts.append(ann["id"])  # kept; annotation_to_mask ignores the short parts
            if self.mask_categories is not None and ann["category_id"] not in self.mask_categories:
                has_mask = False
            entry = (ann, (float(x1), float(y1), float(x2), float(y2)), has_mask)
            (crowds if ann.get("iscrowd", 0) else objects)[ann["image_id"]].append(entry)
        _warn_skipped(self.annotation_file, degenerate_boxes, "whose box is empty after clipping to the image")
        _warn_skipped(self.annotation_file, degenerate_polygons, "whose polygons all have fewer than 3 points")
        if short_parts:
            shown = ", ".join(str(i) for i in short_parts[:_MAX_IDS_IN_WARNING])
            warnings.warn(f"{self.annotation_file}: ignored polygons of fewer than 3 points in "
                          f"{len(short_parts)} annotation(s): annotation id {shown}", stacklevel=2)
        return objects, crowds

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict:
        """The ``images`` record of sample ``index`` (id, file_name, height, width, license, ...)."""
        return dict(self.coco.imgs[self.ids[index]])

    def image_path(self, index: int) -> Path:
        """Where the image of sample ``index`` is read from."""
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> np.ndarray:
        """The image of sample ``index``: (3, H, W) float32 RGB in [0, 1] (``data.image.read_image``).

        Raises:
            ImageError: the file is missing, unreadable, its pixels have no place in [0, 1], or it is
                not the size its record says (the message tells when the record is the EXIF-turned size).
        """
        info = self.coco.imgs[self.ids[index]]
        return read_image(self.image_path(index), exif_transpose=self.exif_transpose,
                          expected_size=(info["width"], info["height"]), record=f"image id {info['id']}")

    def check_images(self, indices: Sequence[int] | None = None) -> None:
        """Fail now, not at step 347: every image exists, is readable and has its record's size.

        Reads only the image headers.

        Args:
            indices: the samples to check (default: all).

        Raises:
            ImageError: naming the file and the image id.
        """
        for index in range(len(self)) if indices is None else indices:
            info = self.coco.imgs[self.ids[index]]
            check_image_size(self.image_path(index), (info["width"], info["height"]),
                             exif_transpose=self.exif_transpose, record=f"image id {info['id']}")

    def load_target(self, index: int) -> dict[str, Any]:
        """The target of sample ``index`` (see the class docstring), without loading the image."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        objects = self._objects[image_id]
        target: dict[str, Any] = {
            "boxes": np.array([box for _, box, _ in objects], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([self.category_id_to_label[a["category_id"]] for a, _, _ in objects], dtype=np.int64),
            "masks": self._masks(objects, height, width),
            "has_mask": np.array([m for _, _, m in objects], dtype=bool),
            "image_id": int(image_id),
            "area": np.array([a["area"] if "area" in a else -1.0 for a, _, _ in objects], dtype=np.float32),
            "iscrowd": np.zeros(len(objects), dtype=np.int64),
        }
        if self.keypoint_names is not None:
            keypoints = np.zeros((len(objects), len(self.keypoint_names), 3), dtype=np.float32)
            for k, (a, _, _) in enumerate(objects):
                if "keypoints" in a:
                    keypoints[k] = np.asarray(a["keypoints"], dtype=np.float32).reshape(-1, 3)
            target["keypoints"] = keypoints
        missing_area = target["area"] < 0
        if missing_area.any():  # no 'area' key: use the mask's, or the box's for a box-only instance
            boxes = target["boxes"]
            box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            mask_area = target["masks"].sum(axis=(1, 2))
            target["area"][missing_area] = np.where(target["has_mask"], mask_area, box_area)[missing_area]
        if self.return_crowd:
            crowds = self._crowds[image_id]
            target["crowd_boxes"] = np.array([box for _, box, _ in crowds], dtype=np.float32).reshape(-1, 4)
            target["crowd_masks"] = self._masks(crowds, height, width)
        return target

    @staticmethod
    def _masks(entries: list, height: int, width: int) -> np.ndarray:
        masks = np.zeros((len(entries), height, width), dtype=np.uint8)
        for k, (ann, _, has_mask) in enumerate(entries):
            if has_mask:  # a box-only instance keeps an all-zero mask, marked by has_mask = False
                masks[k] = annotation_to_mask(ann["segmentation"], height, width)
        return masks

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        index = index % len(self)
        image, target = self.load_image(index), self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDataset({len(self)} images, {len(self.categories)} categories, "
                f"annotations={str(self.annotation_file)!r}, images={str(self.image_dir)!r})")
