"""Person keypoints in the data pipeline: reading COCO keypoint files, checking them, filtering images by
labelled keypoints, and flips that swap left and right."""
import json

import numpy as np
import pytest

from minimaskrcnn.data import CocoDataset, DataLoader, RandomHorizontalFlip, hflip, sample_dataset
from minimaskrcnn.data.figures import FIGURE_KEYPOINTS, FiguresDataset, make_figures_dataset
from minimaskrcnn.data.transforms import keypoint_flip_indices, resize
from minimaskrcnn.errors import AnnotationError

COCO_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]


def test_sample_person_keypoints_are_read():
    ds = sample_dataset("val", keypoints=True)
    assert ds.keypoint_names == COCO_KEYPOINTS and len(ds.skeleton) == 19
    raw = json.loads(ds.annotation_file.read_text())
    image_id = next(a["image_id"] for a in raw["annotations"] if a["num_keypoints"] >= 10 and not a["iscrowd"])
    index = ds.ids.index(image_id)
    target = ds.load_target(index)
    anns = [a for a in raw["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    assert target["keypoints"].shape == (len(anns), 17, 3) and target["keypoints"].dtype == np.float32
    expected = np.array([a["keypoints"] for a in anns], dtype=np.float32).reshape(-1, 17, 3)
    np.testing.assert_array_equal(np.sort(target["keypoints"].reshape(len(anns), -1), axis=0),
                                  np.sort(expected.reshape(len(anns), -1), axis=0))
    # instance files carry no keypoints, and their samples none either
    assert sample_dataset("val").keypoint_names is None and "keypoints" not in sample_dataset("val").load_target(0)


def test_min_keypoints_per_image_keeps_images_with_enough_labelled_keypoints():
    everything = sample_dataset("train", keypoints=True)
    kept = sample_dataset("train", keypoints=True, min_keypoints_per_image=10)
    assert 0 < len(kept) < len(everything)
    for i in range(len(everything)):
        labelled = int((everything.load_target(i)["keypoints"][..., 2] > 0).sum())
        assert (everything.ids[i] in kept.ids) == (labelled >= 10)
    with pytest.raises(AnnotationError, match="names keypoints"):
        sample_dataset("val", min_keypoints_per_image=1)
    with pytest.raises(ValueError, match="split"):
        sample_dataset("overfit", keypoints=True)


def _write(tmp_path, keypoints, category_keypoints=("a", "left_b", "right_b")):
    data = {"images": [{"id": 1, "file_name": "x.png", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "thing", "keypoints": list(category_keypoints)}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0,
                             "segmentation": [[1, 1, 6, 1, 6, 6]], "keypoints": keypoints, "num_keypoints": 1}]}
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("keypoints, message", [
    ([1, 2, 2, 3, 4], "expected 3 x 3"),
    ([1, 2, 2, 3, 4, 5, 0, 0, 0], r"visibility \[2, 5, 0\]"),
    ([1, 2, 2, "x", 4, 1, 0, 0, 0], "not a list of numbers"),
])
def test_bad_keypoints_name_the_file_and_the_annotation(tmp_path, keypoints, message):
    path = _write(tmp_path, keypoints)
    with pytest.raises(AnnotationError, match=message) as err:
        CocoDataset(path, tmp_path)
    assert str(path) in str(err.value) and "annotation id 7" in str(err.value)


def test_keypoints_without_names_in_the_category_are_refused(tmp_path):
    path = _write(tmp_path, [1, 2, 2, 3, 4, 1, 0, 0, 0])
    data = json.loads(path.read_text())
    del data["categories"][0]["keypoints"]
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="category names none"):
        CocoDataset(path, tmp_path)


def test_flip_indices_swap_left_and_right_by_name():
    # torchvision's references hard-code this permutation for COCO persons
    np.testing.assert_array_equal(keypoint_flip_indices(COCO_KEYPOINTS),
                                  [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
    np.testing.assert_array_equal(keypoint_flip_indices(["head", "tail"]), [0, 1])


def test_hflip_mirrors_keypoints_and_swaps_sides():
    image, target = FiguresDataset(4, seed=3)[1]
    flip = keypoint_flip_indices(FIGURE_KEYPOINTS)
    flipped_image, flipped = hflip(image, target, flip)
    width = image.shape[-1]
    kp, fkp = target["keypoints"], flipped["keypoints"]
    labelled = kp[..., 2] > 0
    # keypoint j of the flipped target is the mirror image of keypoint flip[j] of the original
    np.testing.assert_allclose(fkp[:, :, 0][labelled[:, flip]], (width - kp[:, flip, 0])[labelled[:, flip]])
    np.testing.assert_array_equal(fkp[..., 2], kp[:, flip, 2])
    assert (fkp[~labelled[:, flip]] == 0).all()  # unlabelled stays (0, 0, 0)
    # the flipped figures still face the viewer: left shoulder right of the right shoulder
    ls, rs = FIGURE_KEYPOINTS.index("left_shoulder"), FIGURE_KEYPOINTS.index("right_shoulder")
    both = (fkp[:, ls, 2] > 0) & (fkp[:, rs, 2] > 0)
    assert both.any() and (fkp[both, ls, 0] > fkp[both, rs, 0]).all()
    # and a visible keypoint lands on its figure's flipped mask
    for m, k in zip(flipped["masks"], fkp):
        for x, y, v in k:
            if v == 2:
                assert m[int(y), int(x)] == 1
    np.testing.assert_allclose(hflip(flipped_image, flipped, flip)[1]["keypoints"], kp * labelled[..., None], atol=1e-4)
    with pytest.raises(ValueError, match="keypoint_flip_indices"):
        hflip(image, target)


def test_flips_in_the_loader_and_the_transform_use_the_names():
    ds = FiguresDataset(4, seed=3)
    loader = DataLoader(ds, batch_size=4, hflip_prob=1.0)
    assert loader.keypoint_flip_indices is not None
    _, targets = next(iter(loader))
    flip = keypoint_flip_indices(FIGURE_KEYPOINTS)
    for i, t in enumerate(targets):
        np.testing.assert_array_equal(t["keypoints"], hflip(*ds[i], flip)[1]["keypoints"])
    image, target = ds[0]
    _, t = RandomHorizontalFlip(p=1.0, keypoint_flip_indices=keypoint_flip_indices(FIGURE_KEYPOINTS))(image, target)
    assert t["keypoints"].shape == target["keypoints"].shape


def test_resize_scales_keypoints_like_boxes():
    image, target = FiguresDataset(2, seed=0)[0]
    _, small = resize(image, target, 64, 64)
    labelled = target["keypoints"][..., 2] > 0
    np.testing.assert_allclose(small["keypoints"][..., :2][labelled], target["keypoints"][..., :2][labelled] / 2)
    np.testing.assert_array_equal(small["keypoints"][..., 2], target["keypoints"][..., 2])


def test_written_figures_read_back_with_coco_dataset(tmp_path):
    files = make_figures_dataset(tmp_path, 3, seed=5)
    ds = CocoDataset(files.annotation_file, files.image_dir)
    assert ds.keypoint_names == list(FIGURE_KEYPOINTS) and ds.num_classes == 2
    memory = FiguresDataset(3, seed=5)
    for i in range(3):
        image, target = ds[i]
        np.testing.assert_allclose(image, memory[i][0])
        np.testing.assert_allclose(target["keypoints"], memory[i][1]["keypoints"], atol=1e-3)
        np.testing.assert_array_equal(target["masks"], memory[i][1]["masks"])
