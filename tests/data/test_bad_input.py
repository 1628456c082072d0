"""Bad data gives an error (or, for degenerate shapes, a warning) that names the file and the record."""
import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.data import CocoDataset
from minimaskrcnn.errors import AnnotationError, DataError, ImageError


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _set(ann_id, key, value):
    def mutate(data):
        _ann(data, ann_id)[key] = value
    return mutate


def _drop(ann_id, key):
    def mutate(data):
        del _ann(data, ann_id)[key]
    return mutate


def _drop_top(key):
    def mutate(data):
        del data[key]
    return mutate


def _set_image(image_id, key, value):
    def mutate(data):
        next(i for i in data["images"] if i["id"] == image_id)[key] = value
    return mutate


def _duplicate_annotation(data):
    data["annotations"].append(dict(_ann(data, 11)))


# (mutation, the record the message must name, a fragment of the problem)
ANNOTATION_ERRORS = {
    "unknown image id": (_set(11, "image_id", 99), "annotation id 11", "unknown image id 99"),
    "unknown category id": (_set(10, "category_id", 2), "annotation id 10", "unknown category id 2"),
    "missing key": (_drop(12, "bbox"), "annotation id 12", "missing key 'bbox'"),
    "crowd region without segmentation": (_drop(13, "segmentation"), "annotation id 13", "without a segmentation"),
    "missing top-level key": (_drop_top("annotations"), "key 'annotations'", "missing key"),
    "NaN in bbox": (_set(10, "bbox", [5, float("nan"), 15, 10]), "annotation id 10", "non-finite"),
    "infinite bbox": (_set(10, "bbox", [5, 5, float("inf"), 10]), "annotation id 10", "non-finite"),
    "negative bbox width": (_set(11, "bbox", [22, 2, -10, 20]), "annotation id 11", "negative width"),
    "bbox of 3 numbers": (_set(11, "bbox", [22, 2, 10]), "annotation id 11", "not 4 numbers"),
    "bbox with a string": (_set(11, "bbox", [22, 2, "10", 20]), "annotation id 11", "not 4 numbers"),
    "odd polygon": (_set(10, "segmentation", [[5, 5, 20, 5, 20]]), "annotation id 10", "odd number"),
    "polygon with NaN": (_set(10, "segmentation", [[5, 5, 20, 5, 20, float("nan")]]), "annotation id 10", "non-finite"),
    "RLE of another size": (_set(11, "segmentation", {"size": [29, 40], "counts": [1160]}), "annotation id 11",
                            "RLE size"),
    "RLE counts do not add up": (_set(11, "segmentation", {"size": [30, 40], "counts": [5, 3]}), "annotation id 11",
                                 "summing to height * width"),
    "segmentation is a string": (_set(10, "segmentation", "polygon"), "annotation id 10", "expected polygons"),
    "iscrowd 2": (_set(10, "iscrowd", 2), "annotation id 10", "iscrowd"),
    "negative area": (_set(10, "area", -1.0), "annotation id 10", "area"),
    "duplicate annotation id": (_duplicate_annotation, "annotation id 11", "duplicate annotation id"),
    "image without width": (_set_image(2, "width", None), "image id 2", "'width'"),
    "image with zero height": (_set_image(1, "height", 0), "image id 1", "'height'"),
    "image without file name": (_set_image(3, "file_name", ""), "image id 3", "file_name"),
}


@pytest.mark.parametrize("case", list(ANNOTATION_ERRORS))
def test_annotation_errors_name_file_and_record(make_coco, case):
    mutate, record, problem = ANNOTATION_ERRORS[case]
    ann_file, image_dir = make_coco(mutate)
    with pytest.raises(AnnotationError) as err:
        CocoDataset(ann_file, image_dir)
    message = str(err.value)
    assert str(ann_file) in message and record in message and problem in message, message
    assert err.value.path == str(ann_file) and isinstance(err.value, DataError) and isinstance(err.value, ValueError)


def test_truncated_json(make_coco):
    ann_file, image_dir = make_coco()
    text = ann_file.read_text()
    ann_file.write_text(text[: len(text) // 2])
    with pytest.raises(AnnotationError) as err:
        CocoDataset(ann_file, image_dir)
    assert str(ann_file) in str(err.value) and "not valid JSON" in str(err.value) and "line 1" in str(err.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="no such annotation file") as err:
        CocoDataset(tmp_path / "absent.json", tmp_path)
    assert "absent.json" in str(err.value)


def test_not_an_object(make_coco):
    ann_file, image_dir = make_coco()
    ann_file.write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="top level is a list"):
        CocoDataset(ann_file, image_dir)


def test_empty_data_set(make_coco):
    ann_file, image_dir = make_coco(lambda d: (d["images"].clear(), d["annotations"].clear()))
    with pytest.raises(AnnotationError, match="no images") as err:
        CocoDataset(ann_file, image_dir)
    assert str(ann_file) in str(err.value)
    only_crowd = make_coco(lambda d: d["annotations"].__setitem__(slice(None), [_ann(d, 13)]), name="crowd.json")
    with pytest.raises(AnnotationError, match="no image has a usable"):
        CocoDataset(*only_crowd, remove_images_without_annotations=True)


# ------------------------------------------------------------------ degenerate shapes: skipped with a warning
def test_box_outside_the_image_is_skipped_with_a_warning(make_coco):
    ann_file, image_dir = make_coco(_set(10, "bbox", [45, 5, 10, 10]))  # image 1 is 40 wide
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(ann_file, image_dir)
    message = str(record[0].message)
    assert str(ann_file) in message and "annotation id 10" in message and "empty after clipping" in message
    assert ds[0][1]["labels"].tolist() == [3]


def test_zero_width_box_is_skipped_with_a_warning(make_coco):
    ann_file, image_dir = make_coco(_set(11, "bbox", [22, 2, 0, 20]))
    with pytest.warns(UserWarning, match=r"annotation id 11"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds[0][1]["labels"].tolist() == [1]


def test_polygon_of_two_points(make_coco):
    # the only polygon has 2 points: the annotation is skipped
    ann_file, image_dir = make_coco(_set(10, "segmentation", [[5, 5, 20, 15]]))
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(ann_file, image_dir)
    message = str(record[0].message)
    assert str(ann_file) in message and "annotation id 10" in message and "fewer than 3 points" in message
    assert ds[0][1]["labels"].tolist() == [3]
    # a short part next to a good polygon: the part is ignored, the annotation kept
    ann_file, image_dir = make_coco(_set(10, "segmentation", [[5, 5, 20, 5, 20, 15, 5, 15], [1, 1, 2, 2]]),
                                    name="part.json")
    with pytest.warns(UserWarning, match="annotation id 10"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds[0][1]["masks"][0].sum() == 150


# ------------------------------------------------------------------------------------------ image errors
def test_missing_image_file(make_coco):
    ann_file, image_dir = make_coco()
    (image_dir / "b.png").unlink()
    ds = CocoDataset(ann_file, image_dir)
    ds[0]  # other images still load
    with pytest.raises(ImageError) as err:
        ds[1]
    assert str(image_dir / "b.png") in str(err.value) and "image id 2" in str(err.value)
    assert "not found" in str(err.value)


def test_image_of_another_size(make_coco):
    ann_file, image_dir = make_coco()
    Image.fromarray(np.zeros((31, 40, 3), dtype=np.uint8)).save(image_dir / "a.png")
    with pytest.raises(ImageError) as err:
        CocoDataset(ann_file, image_dir)[0]
    message = str(err.value)
    assert str(image_dir / "a.png") in message and "image id 1" in message and "40x31" in message and "40x30" in message


def test_corrupt_image_file(make_coco):
    ann_file, image_dir = make_coco()
    data = (image_dir / "c.png").read_bytes()
    (image_dir / "c.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError) as err:
        CocoDataset(ann_file, image_dir)[2]
    assert str(image_dir / "c.png") in str(err.value) and "image id 3" in str(err.value)
    (image_dir / "c.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read the image"):
        CocoDataset(ann_file, image_dir)[2]


def test_error_messages_are_one_line(make_coco):
    ann_file, image_dir = make_coco(_set(11, "image_id", 99))
    with pytest.raises(AnnotationError) as err:
        CocoDataset(ann_file, image_dir)
    assert "\n" not in str(err.value)
    assert json.loads(ann_file.read_text())  # the file itself is left alone


# ------------------------------------------------------------------------ inputs from the wild
def _set_category(index, key, value):
    def mutate(data):
        data["categories"][index][key] = value
    return mutate


def test_non_integer_category_ids_are_refused_with_the_fix(make_coco):
    ann_file, image_dir = make_coco(_set_category(1, "id", "3"))
    with pytest.raises(AnnotationError) as err:
        CocoDataset(ann_file, image_dir)
    message = str(err.value)
    assert str(ann_file) in message and "categories[1]" in message and "'3'" in message and "without quotes" in message
    ann_file, image_dir = make_coco(_set(10, "category_id", 1.0), name="float.json")
    with pytest.raises(AnnotationError, match=r"annotation id 10.*1\.0.*write it as 1"):
        CocoDataset(ann_file, image_dir)


@pytest.mark.parametrize("ids", [(0, 3), (-1, 3), (0, -5)])
def test_category_ids_colliding_with_the_background_get_contiguous_labels(make_coco, ids):
    def renumber(data):
        old_to_new = {1: ids[0], 3: ids[1]}
        for cat in data["categories"]:
            cat["id"] = old_to_new[cat["id"]]
        for ann in data["annotations"]:
            ann["category_id"] = old_to_new[ann["category_id"]]

    ann_file, image_dir = make_coco(renumber)
    with pytest.warns(UserWarning, match="background"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds.class_names[0] == "__background__" and ds.num_classes == 3
    cat_label = ds.category_id_to_label[ids[0]]
    dog_label = ds.category_id_to_label[ids[1]]
    assert {cat_label, dog_label} == {1, 2}
    assert ds.class_names[cat_label] == "cat" and ds.class_names[dog_label] == "dog"
    assert ds[0][1]["labels"].tolist() == [cat_label, dog_label]  # no object is labelled background
    assert ds.label_to_category_id[cat_label] == ids[0]


def test_16bit_png_keeps_its_intensities_in_the_data_set(make_coco):
    ann_file, image_dir = make_coco()
    raw12 = np.random.default_rng(0).integers(0, 4096, (30, 40), dtype=np.uint16)
    raw12[0, 0] = 4095
    Image.fromarray(raw12).save(image_dir / "a.png")
    image, _ = CocoDataset(ann_file, image_dir)[0]
    assert image.shape == (3, 30, 40)
    np.testing.assert_allclose(image[0], raw12 / 65535.0, rtol=1e-6)
    assert image.max() < 0.07  # Pillow's convert("RGB") would have made it white


def test_record_of_the_exif_rotated_size_says_so(make_coco):
    ann_file, image_dir = make_coco(_set_image(1, "file_name", "phone.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(image_dir / "phone.jpg", exif=exif)  # stored 30 x 40
    with pytest.raises(ImageError) as err:
        CocoDataset(ann_file, image_dir)[0]
    message = str(err.value)
    assert "phone.jpg" in message and "image id 1" in message and "EXIF orientation 6" in message
    assert "--exif-transpose" in message
    ds = CocoDataset(ann_file, image_dir, exif_transpose=True)
    assert ds[0][0].shape == (3, 30, 40)
    ds.check_images()


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# every bad input the data tests know: name -> make(make_coco) -> (annotation file, image folder);
# the data set, training, evaluation and prediction must each refuse them with a DataError
# (one "error:" line and exit code 2 on the command line: tests/data/test_cli_bad_input.py)
def _with_annotations(mutate):
    return lambda make_coco: make_coco(mutate)


def _with_image(change):
    def make(make_coco):
        ann_file, image_dir = make_coco()
        change(image_dir)
        return ann_file, image_dir
    return make


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


BAD_DATA_SETS = {
    **{f"annotations: {name}": _with_annotations(case[0]) for name, case in ANNOTATION_ERRORS.items()},
    "annotations: missing file": _with_image(lambda d: (d.parent / "instances.json").unlink()),
    "annotations: truncated JSON": _with_image(lambda d: _truncate(d.parent / "instances.json")),
    "annotations: not an object": _with_image(lambda d: (d.parent / "instances.json").write_text("[1, 2]")),
    "annotations: no images": _with_annotations(lambda d: (d["images"].clear(), d["annotations"].clear())),
    "annotations: category id is a string": _with_annotations(_set_category(1, "id", "3")),
    "annotations: category id 2.5": _with_annotations(_set(10, "category_id", 2.5)),
    "image: missing": _with_image(lambda d: (d / "b.png").unlink()),
    "image: another size": _with_image(lambda d: Image.fromarray(np.zeros((31, 40, 3), np.uint8)).save(d / "a.png")),
    "image: truncated": _with_image(lambda d: _truncate(d / "c.png")),
    "image: not an image": _with_image(lambda d: (d / "c.png").write_text("not an image")),
    "image: float TIFF outside [0, 1]": _with_image(
        lambda d: Image.fromarray(np.full((32, 32), 200.0, np.float32)).save(d / "c.png", format="TIFF")),
    "image: EXIF-rotated record": _with_image(
        lambda d: Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(d / "a.png", exif=_exif(6))),
}


@pytest.mark.parametrize("case", list(BAD_DATA_SETS))
def test_every_bad_data_set_is_refused_with_a_data_error(make_coco, case):
    ann_file, image_dir = BAD_DATA_SETS[case](make_coco)
    with pytest.raises(DataError) as err:
        ds = CocoDataset(ann_file, image_dir)
        ds.check_images()
        for i in range(len(ds)):
            ds[i]
    assert "\n" not in str(err.value) and (str(ann_file) in str(err.value) or str(image_dir) in str(err.value))
