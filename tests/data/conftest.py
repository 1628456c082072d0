"""A tiny COCO-format data set written to tmp_path, for the data tests."""
import copy
import json

import numpy as np
import pytest
from PIL import Image


def _rect_rle(height, width, x1, y1, x2, y2):
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros) of a filled rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [height, width], "counts": counts}


def tiny_coco_dict():
    """3 images (40x30, 50x40, 32x32), categories cat=1 and dog=3, image 3 without annotations."""
    return {
        "info": {"description": "tiny test set"},
        "licenses": [{"id": 1, "name": "test", "url": ""}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30, "license": 1},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 40, "license": 1},
            {"id": 3, "file_name": "c.png", "width": 32, "height": 32, "license": 1},
        ],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                       {"id": 3, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 15, 10], "area": 150.0, "iscrowd": 0,
             "segmentation": [[5, 5, 20, 5, 20, 15, 5, 15]]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [22, 2, 10, 20], "area": 200.0, "iscrowd": 0,
             "segmentation": _rect_rle(30, 40, 22, 2, 32, 22)},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [30, 20, 30, 30], "area": 400.0, "iscrowd": 0,
             "segmentation": [[30, 20, 50, 20, 50, 40, 30, 40]]},  # box reaches past the right edge
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 1,
             "segmentation": _rect_rle(40, 50, 0, 0, 10, 10)},
        ],
    }


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(mutate=None, name="instances.json") -> (annotation file, image folder).

    ``mutate(data)`` edits a fresh copy of tiny_coco_dict() before it is written.
    """
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for img in tiny_coco_dict()["images"]:
        pixels = rng.integers(0, 256, size=(img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / img["file_name"])

    def make(mutate=None, name="instances.json"):
        data = copy.deepcopy(tiny_coco_dict())
        if mutate is not None:
            mutate(data)
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path, image_dir

    return make
