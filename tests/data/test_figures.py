"""Synthetic stick figures: deterministic from the seed, COCO person-keypoints semantics, readable by pycocotools."""
import json

import numpy as np
import pytest

from minimaskrcnn.data.figures import (
    FIGURE_KEYPOINTS,
    FIGURE_SIGMAS,
    FIGURE_SKELETON,
    FiguresDataset,
    generate_figures_image,
    make_figures_dataset,
)

NK = len(FIGURE_KEYPOINTS)


def test_same_seed_same_sample_other_seed_other_sample():
    a, b = FiguresDataset(3, seed=5), FiguresDataset(3, seed=5)
    for i in range(3):
        for x, y in zip(a.sample(i), b.sample(i)):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample(0).image, FiguresDataset(3, seed=6).sample(0).image)


def test_sample_shapes_and_types():
    ds = FiguresDataset(8, image_size=(96, 128), seed=1)
    image, target = ds[3]
    m = len(target["boxes"])
    assert image.shape == (3, 96, 128) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert target["keypoints"].shape == (m, NK, 3) and target["keypoints"].dtype == np.float32
    assert target["masks"].shape == (m, 96, 128) and target["labels"].tolist() == [1] * m
    assert target["boxes"].dtype == np.float32 and target["area"].shape == (m,)
    assert ds.num_classes == 2 and ds.keypoint_names == list(FIGURE_KEYPOINTS)
    assert len(FIGURE_SIGMAS) == NK and all(1 <= a <= NK and 1 <= b <= NK for a, b in FIGURE_SKELETON)


def test_keypoint_visibility_follows_coco():
    rng = np.random.default_rng(0)
    seen = {0: 0, 1: 0, 2: 0}
    for _ in range(30):
        s = generate_figures_image(rng, 128)
        height, width = s.image.shape[:2]
        for mask, box, kp in zip(s.masks, s.boxes, s.keypoints):
            v = kp[:, 2]
            for flag in seen:
                seen[flag] += int((v == flag).sum())
            # not labelled: outside the image, stored as (0, 0, 0)
            assert (kp[v == 0, :2] == 0).all()
            inside = kp[v > 0]
            assert ((inside[:, 0] >= 0) & (inside[:, 0] < width) & (inside[:, 1] >= 0) & (inside[:, 1] < height)).all()
            # visible keypoints sit on their figure's visible pixels (and so inside its box)
            for x, y, _ in kp[v == 2]:
                assert mask[int(y), int(x)] == 1
                assert box[0] <= x <= box[2] and box[1] <= y <= box[3]
            # occluded ones on pixels the figure no longer shows
            for x, y, _ in kp[v == 1]:
                assert mask[int(y), int(x)] == 0
    assert all(count > 0 for count in seen.values()), seen  # every flag occurs


def test_figures_face_the_viewer():
    # the figure's left shoulder and hip are on the image's right: what makes left and right learnable
    ds = FiguresDataset(20, seed=2)
    left = [FIGURE_KEYPOINTS.index(n) for n in ("left_shoulder", "left_hip")]
    right = [FIGURE_KEYPOINTS.index(n) for n in ("right_shoulder", "right_hip")]
    for i in range(len(ds)):
        for kp in ds.sample(i).keypoints:
            both = (kp[left, 2] > 0) & (kp[right, 2] > 0)
            assert (kp[left, 0][both] > kp[right, 0][both]).all()


def test_coco_dict_is_person_keypoints_format_and_loads_in_pycocotools():
    from pycocotools.coco import COCO

    ds = FiguresDataset(6, seed=3)
    data = ds.coco_dict()
    category = data["categories"][0]
    assert category["keypoints"] == list(FIGURE_KEYPOINTS) and category["keypoint_sigmas"] == list(FIGURE_SIGMAS)
    assert category["skeleton"] == [list(p) for p in FIGURE_SKELETON]
    count = 0
    for i in range(len(ds)):
        kp = ds.sample(i).keypoints
        anns = [a for a in data["annotations"] if a["image_id"] == i + 1]
        assert len(anns) == len(kp)
        for a, k in zip(anns, kp):
            assert len(a["keypoints"]) == 3 * NK and a["num_keypoints"] == int((k[:, 2] > 0).sum())
            np.testing.assert_allclose(np.reshape(a["keypoints"], (NK, 3)), k, atol=1e-3)
            count += 1
    assert len(ds.coco.getAnnIds()) == count
    assert isinstance(ds.coco, COCO)


def test_make_figures_dataset_writes_the_same_bytes(tmp_path):
    a = make_figures_dataset(tmp_path / "a", 3, seed=4)
    b = make_figures_dataset(tmp_path / "b", 3, seed=4)
    assert a.annotation_file.read_bytes() == b.annotation_file.read_bytes()
    assert sorted(p.name for p in a.image_dir.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert json.loads(a.annotation_file.read_text())["categories"][0]["name"] == "figure"


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        FiguresDataset(0)
    with pytest.raises(ValueError, match="min_size"):
        generate_figures_image(np.random.default_rng(0), 64, min_size=50, max_size=40)
    with pytest.raises(IndexError):
        FiguresDataset(2).sample(2)
