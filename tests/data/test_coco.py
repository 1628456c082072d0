"""CocoDataset: targets as torchvision's detection references build them, on the packaged sample
and on a tiny hand-made set."""
import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.data import SAMPLE_DIR, CocoDataset, sample_dataset, sample_files
from minimaskrcnn.data.coco import VOC_CATEGORY_NAMES, BoxOnlyInstancesWarning, resolve_categories
from minimaskrcnn.data.transforms import RandomHorizontalFlip
from minimaskrcnn.errors import DataError


@pytest.fixture(scope="module")
def val_sample():
    return sample_dataset("val")


def test_sample_splits_and_metadata():
    train, val, overfit = sample_dataset("train"), sample_dataset("val"), sample_dataset("overfit")
    assert (len(train), len(val), len(overfit)) == (32, 32, 8)
    assert set(overfit.ids) <= set(train.ids)
    assert len(val.categories) == 80 and val.categories[1] == "person" and val.categories[90] == "toothbrush"
    assert val.num_classes == 91 and val.class_names[0] == "__background__" and val.class_names[12] == "N/A"
    info = val.image_info(0)
    assert info["id"] == val.ids[0] and "license" in info and "file_name" in info
    assert val.coco.getImgIds() and sorted(val.ids) == val.ids
    # the sample's README carries the attribution and license table
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "CC BY 4.0" in readme and "cocodataset.org" in readme and "license" in readme
    total_bytes = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total_bytes < 18e6
    with pytest.raises(ValueError, match="unknown sample split"):
        sample_files("test")


def test_sample_targets_are_consistent(val_sample):
    """Every sample: image matches its record, boxes inside, masks of roughly the annotated area."""
    ratios = []
    for i in range(len(val_sample)):
        image, target = val_sample[i]
        info = val_sample.image_info(i)
        height, width = info["height"], info["width"]
        assert image.dtype == np.float32 and image.shape == (3, height, width)
        assert 0.0 <= image.min() and image.max() <= 1.0
        boxes, masks, labels = target["boxes"], target["masks"], target["labels"]
        m = len(labels)
        assert boxes.shape == (m, 4) and boxes.dtype == np.float32
        assert masks.shape == (m, height, width) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        assert labels.dtype == np.int64 and set(labels) <= set(val_sample.categories)
        assert target["iscrowd"].dtype == np.int64 and not target["iscrowd"].any()
        assert target["image_id"] == info["id"] and target["area"].shape == (m,)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for k in range(m):
            rows, cols = np.nonzero(masks[k].any(axis=1))[0], np.nonzero(masks[k].any(axis=0))[0]
            # the mask lies inside its box (1 pixel of rasterisation slack)
            assert cols[0] >= boxes[k, 0] - 1 and cols[-1] + 1 <= boxes[k, 2] + 1
            assert rows[0] >= boxes[k, 1] - 1 and rows[-1] + 1 <= boxes[k, 3] + 1
        ratios.extend(masks.sum(axis=(1, 2)) / target["area"])
    ratios = np.array(ratios)
    assert len(ratios) > 100
    assert abs(np.median(ratios) - 1) < 0.05 and ratios.min() > 0.75 and ratios.max() < 1.3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' __array__ under NumPy 2
def test_masks_equal_pycocotools(val_sample):
    _, target = val_sample[3]
    anns = [a for a in val_sample.coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
    assert len(anns) == len(target["labels"]) > 0
    for k, ann in enumerate(anns):
        np.testing.assert_array_equal(target["masks"][k], val_sample.coco.annToMask(ann))
        x, y, w, h = ann["bbox"]
        np.testing.assert_allclose(target["boxes"][k], [x, y, x + w, y + h], rtol=0, atol=1e-4)
        assert target["labels"][k] == ann["category_id"]


def test_contiguous_labels(val_sample):
    contiguous = sample_dataset("val", contiguous_labels=True)
    assert contiguous.num_classes == 81 and contiguous.class_names[1:] == [
        val_sample.categories[c] for c in sorted(val_sample.categories)]
    for i in range(4):
        coco_labels = val_sample[i][1]["labels"]
        labels = contiguous.load_target(i)["labels"]
        assert labels.min(initial=1) >= 1 and labels.max(initial=80) <= 80
        assert [contiguous.label_to_category_id[int(v)] for v in labels] == coco_labels.tolist()


def test_crowd_regions_kept_out_or_returned(make_coco):
    ann_file, image_dir = make_coco()
    ds = CocoDataset(ann_file, image_dir)
    _, target = ds[1]  # image 2: one object and one crowd region
    assert target["labels"].tolist() == [1]
    assert "crowd_boxes" not in target
    np.testing.assert_array_equal(target["boxes"], [[30, 20, 50, 40]])  # clipped at the right edge
    _, target = CocoDataset(ann_file, image_dir, return_crowd=True)[1]
    np.testing.assert_array_equal(target["crowd_boxes"], [[0, 0, 10, 10]])
    assert target["crowd_masks"].shape == (1, 40, 50) and target["crowd_masks"].sum() == 100


def test_tiny_set_targets_exactly(make_coco):
    ds = CocoDataset(*make_coco())
    image, target = ds[0]
    assert image.shape == (3, 30, 40)
    np.testing.assert_array_equal(target["boxes"], [[5, 5, 20, 15], [22, 2, 32, 22]])
    assert target["labels"].tolist() == [1, 3]
    assert target["masks"][0].sum() == 150 and target["masks"][0, 5:15, 5:20].all()  # polygon
    assert target["masks"][1].sum() == 200 and target["masks"][1, 2:22, 22:32].all()  # RLE
    assert ds[-1][1]["image_id"] == 3
    with pytest.raises(IndexError):
        ds[3]


def test_image_without_annotations_is_a_valid_sample(make_coco):
    ds = CocoDataset(*make_coco())
    image, target = ds[2]
    assert image.shape == (3, 32, 32)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == np.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == np.int64
    assert target["masks"].shape == (0, 32, 32) and target["masks"].dtype == np.uint8
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    assert len(CocoDataset(*make_coco(), remove_images_without_annotations=True)) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_images_are_converted_to_rgb(make_coco, mode):
    ann_file, image_dir = make_coco()
    rgb = (np.random.default_rng(1).integers(0, 256, size=(30, 40, 3))).astype(np.uint8)
    converted = Image.fromarray(rgb).convert(mode)
    converted.save(image_dir / ("a.jpg" if mode == "CMYK" else "a.png"))
    if mode == "CMYK":
        data = json.loads(ann_file.read_text())
        data["images"][0]["file_name"] = "a.jpg"
        ann_file.write_text(json.dumps(data))
    image, _ = CocoDataset(ann_file, image_dir)[0]
    assert image.shape == (3, 30, 40) and image.dtype == np.float32
    if mode in ("L", "LA"):
        np.testing.assert_array_equal(image[0], image[1])
        np.testing.assert_array_equal(image[0], image[2])
    if mode == "RGBA":
        np.testing.assert_allclose(image, rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_transforms_are_applied(make_coco):
    ann_file, image_dir = make_coco()
    plain = CocoDataset(ann_file, image_dir)[0]
    flipped = CocoDataset(ann_file, image_dir, transforms=RandomHorizontalFlip(p=1.0))[0]
    np.testing.assert_array_equal(flipped[0], plain[0][:, :, ::-1])
    np.testing.assert_array_equal(flipped[1]["boxes"], [[20, 5, 35, 15], [8, 2, 18, 22]])


# ------------------------------------------------------------------ box-only instances (lesson 18)
def _without_segmentation(ann_id, how):
    def mutate(data):
        ann = next(a for a in data["annotations"] if a["id"] == ann_id)
        if how == "missing":
            del ann["segmentation"]
            del ann["area"]
        else:
            ann["segmentation"] = how
    return mutate


@pytest.mark.parametrize("how", ["missing", [], None], ids=["missing", "empty", "null"])
def test_an_annotation_without_segmentation_is_box_only(make_coco, how):
    with pytest.warns(BoxOnlyInstancesWarning, match="1 of 3 instances are box-only"):
        ds = CocoDataset(*make_coco(_without_segmentation(11, how)))
    assert ds.num_box_only == 1 and ds.box_only_annotation_ids == {11}
    _, target = ds[0]
    assert target["has_mask"].dtype == bool and target["has_mask"].tolist() == [True, False]
    np.testing.assert_array_equal(target["boxes"], [[5, 5, 20, 15], [22, 2, 32, 22]])  # the box is kept
    assert target["labels"].tolist() == [1, 3]
    assert target["masks"][0].sum() == 150 and target["masks"][1].sum() == 0
    assert target["area"][1] == (200.0 if how != "missing" else 10 * 20)  # box area when no "area" is given
    # a flip keeps has_mask with its instance
    with pytest.warns(BoxOnlyInstancesWarning):
        flipped_ds = CocoDataset(*make_coco(_without_segmentation(11, how)), transforms=RandomHorizontalFlip(1.0))
    _, flipped = flipped_ds[0]
    assert flipped["has_mask"].tolist() == [True, False]


def test_full_masks_give_has_mask_true_and_no_warning(make_coco):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BoxOnlyInstancesWarning)
        ds = CocoDataset(*make_coco())
    assert ds.num_box_only == 0
    assert ds[0][1]["has_mask"].tolist() == [True, True] and ds[2][1]["has_mask"].shape == (0,)


def test_mask_categories_turn_other_categories_box_only(make_coco):
    with pytest.warns(BoxOnlyInstancesWarning, match=r"2 of 3 instances .*mask_categories \(dog\)"):
        ds = CocoDataset(*make_coco(), mask_categories=["dog"])
    assert ds.mask_categories == {3}
    assert ds[0][1]["has_mask"].tolist() == [False, True]  # cat (id 1) lost its mask, dog kept it
    assert ds[0][1]["masks"][0].sum() == 0 and ds[0][1]["masks"][1].sum() == 200
    assert CocoDataset(*make_coco(), mask_categories="cat,3").mask_categories == {1, 3}  # all kept: no warning
    with pytest.raises(DataError, match="no category named 'horse'.*it has: cat, dog"):
        CocoDataset(*make_coco(), mask_categories=["horse"])
    assert CocoDataset(*make_coco(), mask_categories="voc").mask_categories == {1, 3}  # cat and dog are VOC classes

    def rename(data):
        data["categories"] = [{"id": 1, "name": "circle"}, {"id": 3, "name": "star"}]

    with pytest.raises(DataError, match="none of them"):
        CocoDataset(*make_coco(rename), mask_categories="voc")


def test_voc_names_the_20_pascal_categories_of_coco(val_sample):
    voc = resolve_categories("voc", val_sample.categories)
    assert len(VOC_CATEGORY_NAMES) == 20 and len(voc) == 20
    # COCO's ids of the VOC classes, as the partially supervised benchmark (and Deep-MAC's config) lists them
    assert voc == {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}
    assert resolve_categories(["VOC", "zebra"], val_sample.categories) == voc | {24}
