"""data/prepare.py: the data sets a training configuration names, and what the trainer needs of one."""
import json

import pytest

from minimaskrcnn.config import TrainConfig
from minimaskrcnn.data import CocoDataset, DetectionDataset, ShapesDataset, ensure_shapes_data, prepare_datasets
from minimaskrcnn.errors import DataError, ImageError


def test_shapes_are_generated_once_and_regenerated_when_a_setting_changes(tmp_path):
    files = ensure_shapes_data(str(tmp_path), num_train=3, num_val=2, image_size=64)
    train_ann, train_img, val_ann, val_img = files
    assert len(json.loads(open(train_ann).read())["images"]) == 3
    assert len(json.loads(open(val_ann).read())["images"]) == 2
    meta = tmp_path / "train" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    assert ensure_shapes_data(str(tmp_path), 3, 2, 64) == files and meta.stat().st_mtime_ns == stamp  # reused
    ensure_shapes_data(str(tmp_path), 4, 2, 64)
    assert len(json.loads(open(train_ann).read())["images"]) == 4 and meta.stat().st_mtime_ns != stamp


def test_prepare_datasets_by_name(tmp_path):
    config = TrainConfig(data_dir=str(tmp_path), num_train_images=2, num_val_images=1, image_size=64)
    train, val, names = prepare_datasets(config)
    assert (len(train), len(val)) == (2, 1) and names == ["__background__", "circle", "square", "triangle"]
    train, val, names = prepare_datasets(TrainConfig(dataset="coco-overfit"))
    assert train.annotation_file == val.annotation_file and len(train) == 8 and names[1] == "person"
    with pytest.raises(DataError, match="needs train annotations"):
        prepare_datasets(TrainConfig(dataset="coco"))
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_datasets(TrainConfig(dataset="imagenet"))


def test_both_data_set_types_are_detection_datasets(tmp_path):
    train_ann, train_img, _, _ = ensure_shapes_data(str(tmp_path), 2, 1, 64)
    coco = CocoDataset(train_ann, train_img)
    shapes = ShapesDataset(2, 64)
    for ds in (coco, shapes):
        assert isinstance(ds, DetectionDataset)
        assert ds.num_classes == len(ds.class_names) == 4
        ds.check_images([0, 1])
    (tmp_path / "train" / "images" / "000001.png").write_bytes(b"not a png")
    coco.check_images([0])  # only the samples asked for are read
    with pytest.raises(ImageError, match=r"000001\.png: image id 2: cannot read the image"):
        coco.check_images()
