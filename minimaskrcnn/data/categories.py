"""From a data set's category ids to the model's class labels, with label 0 kept for the background.

Mask R-CNN's classifier has L = K + 1 outputs, output 0 being the background (torchvision's
convention). COCO numbers its categories 1-90, so its ids can serve as labels directly (L = 91, with
gaps); other files number theirs from 0 (some converters), or use negative numbers. Those ids cannot be
labels: category 0 would be trained as background and the model would never detect it. This module
decides the mapping once, for the data set, training, evaluation and the weights' predictors.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from minimaskrcnn.errors import AnnotationError, PathLike

__all__ = [
    "BACKGROUND_NAME",
    "GAP_NAME",
    "LabelMap",
    "check_category_id",
    "coco_class_names",
    "label_map_for_classes",
    "make_label_map",
]

BACKGROUND_NAME = "__background__"  # class_names[0]
GAP_NAME = "N/A"  # class_names of labels no category uses (gaps in kept ids, as torchvision's COCO list)


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_category_id(value: Any, path: PathLike | None, record: str) -> None:
    """Raise AnnotationError unless ``value`` is an integer category id, saying how to fix it.

    Any integer is accepted (0 and negative ids get contiguous labels, see ``make_label_map``); a
    string, a float (even 3.0), a boolean or null is refused: COCO's format writes ids as integers,
    and evaluation matches results to annotations by id.

    Args:
        value: the ``id`` of a category or the ``category_id`` of an annotation.
        path: the annotation file, for the message.
        record: which entry, e.g. "categories[2]" or "annotation id 7 (image id 3)".

    Raises:
        AnnotationError: naming the file, the record, the value and the fix.
    """
    if _integer(value):
        return
    if isinstance(value, float) and value.is_integer():
        fix = f"write it as {int(value)}"
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        fix = f"write it as the JSON number {int(value)}, without quotes"
    else:
        fix = "number the categories with integers (any integers: 0 and negative ids get contiguous labels)"
    raise AnnotationError(path, f"category id {value!r} is a {type(value).__name__}, not an integer: {fix}",
                          record=record)


class LabelMap(NamedTuple):
    """How a data set's categories become the model's labels (what ``make_label_map`` returns)."""

    label_to_category_id: dict[int, int]  # label 1..L-1 -> category id (labels no category uses are absent)
    class_names: list[str]  # indexed by label: "__background__" at 0, "N/A" where no category is
    contiguous: bool  # labels are 1..K in the order of the sorted ids (else label = category id)

    @property
    def num_classes(self) -> int:
        """L, the classifier's outputs including the background."""
        return len(self.class_names)

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return {cid: label for label, cid in self.label_to_category_id.items()}


def make_label_map(categories: Mapping[int, str], contiguous: bool = False,
                   path: PathLike | None = None) -> LabelMap:
    """The labels of a data set's categories.

    Args:
        categories: category id -> name (ids must be integers, see ``check_category_id``).
        contiguous: False keeps each category id as its label (torchvision's COCO convention: ids
            1-90, L = 91 with gaps); True numbers the categories 1..K by sorted id (L = K + 1).
            Ids of 0 or below always get contiguous labels: kept, category 0 would be the background
            and negative ids no class at all. That switch is announced with a warning that names the
            file and the colliding ids.
        path: the annotation file, for the warning and errors.

    Returns:
        LabelMap(label_to_category_id, class_names, contiguous).

    Raises:
        AnnotationError: a non-integer id.
    """
    for cid in categories:
        check_category_id(cid, path, f"category id {cid!r}")
    ids = sorted(categories)
    colliding = [cid for cid in ids if cid <= 0]
    if colliding and not contiguous:
        shown = ", ".join(str(c) for c in colliding[:10]) + (" ..." if len(colliding) > 10 else "")
        where = f"{Path(path)}: " if path is not None else ""
        warnings.warn(f"{where}category id(s) {shown} cannot be class labels (label 0 is the background): the "
                      f"{len(ids)} categories get contiguous labels 1..{len(ids)} in the order of their ids "
                      f"(label_to_category_id maps them back; results files keep the original ids)", stacklevel=2)
        contiguous = True
    if contiguous:
        label_to_category_id = {label: cid for label, cid in enumerate(ids, start=1)}
    else:
        label_to_category_id = {cid: cid for cid in ids}
    num_classes = max(label_to_category_id, default=0) + 1
    class_names = [BACKGROUND_NAME] + [GAP_NAME] * (num_classes - 1)
    for label, cid in label_to_category_id.items():
        class_names[label] = categories[cid]
    return LabelMap(label_to_category_id, class_names, contiguous)


def _same_name(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def coco_class_names() -> list[str]:
    """COCO's 91 class names indexed by category id, as torchvision's COCO models label them.

    "__background__" at 0 and "N/A" for the 10 ids in 1-90 that COCO 2017 does not use (12, 26, 29, ...); read from
    the categories of the package's COCO sample annotations, which list all 80.
    """
    import json

    from minimaskrcnn.data import SAMPLE_DIR

    with open(SAMPLE_DIR / "annotations" / "instances_val2017.json", encoding="utf-8") as f:
        categories = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    return make_label_map(categories).class_names


def label_map_for_classes(categories: Mapping[int, str], class_names: list[str] | None,
                          path: PathLike | None = None) -> LabelMap | None:
    """The labels under which a data set's categories are a model's classes, or None if they are not.

    A COCO subset (COCO's ids and names, e.g. from ``minimaskrcnn data download --categories``) fits
    a model trained on COCO with its ids kept as labels; a data set numbered 1..K fits a model trained on
    the same categories with contiguous labels. Names are compared without case or surrounding spaces.

    Args:
        categories: the data set's category id -> name.
        class_names: the model's names indexed by label ("__background__" at 0), or None (unknown).
        path: the annotation file, for messages.

    Returns:
        A LabelMap whose ``class_names`` are the model's (all of them, e.g. COCO's 91 for a COCO subset)
        and whose labels send every category to the model's class of that name; None if no such map exists.

    Raises:
        AnnotationError: a non-integer id.
    """
    if not class_names or not categories:
        return None
    for contiguous in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ids <= 0: make_label_map warns; the caller's own map will
            label_map = make_label_map(categories, contiguous=contiguous, path=path)
        if label_map.contiguous != contiguous:
            continue
        if all(label < len(class_names) and _same_name(class_names[label], categories[cid])
               for label, cid in label_map.label_to_category_id.items()):
            return LabelMap(label_map.label_to_category_id, list(class_names), contiguous)
    return None
