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

__all__ = ["BACKGROUND_NAME", "GAP_NAME", "LabelMap", "check_category_id", "make_label_map"]

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
