"""Synthetic shapes: deterministic, learnable by construction, and the same through COCO files."""
import contextlib
import io
import warnings

import numpy as np
import pytest

from minimaskrcnn.data import SHAPE_CLASSES, CocoDataset, ShapesDataset, generate_shapes_image, make_shapes_dataset
from minimaskrcnn.data.shapes import _shape_mask


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    make_shapes_dataset(tmp_path / "a", num_images=6, seed=3)
    make_shapes_dataset(tmp_path / "b", num_images=6, seed=3)
    make_shapes_dataset(tmp_path / "c", num_images=6, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 7 and a == b  # 6 PNGs and instances.json
    assert a["images/000000.png"] != c["images/000000.png"]


def test_samples_do_not_depend_on_the_data_set_length():
    short, long = ShapesDataset(3, seed=5), ShapesDataset(10, seed=5)
    for i in range(3):
        np.testing.assert_array_equal(short.sample(i).image, long.sample(i).image)


def test_coco_files_give_the_in_memory_samples(tmp_path):
    files = make_shapes_dataset(tmp_path, num_images=5, image_size=(96, 128), seed=1)
    from_files = CocoDataset(files.annotation_file, files.image_dir)
    in_memory = ShapesDataset(5, image_size=(96, 128), seed=1)
    assert from_files.categories == in_memory.categories == {1: "circle", 2: "square", 3: "triangle"}
    assert from_files.num_classes == in_memory.num_classes == 4
    for i in range(5):
        image_a, target_a = from_files[i]
        image_b, target_b = in_memory[i]
        assert image_a.shape == (3, 96, 128)
        np.testing.assert_array_equal(image_a, image_b)  # PNG is lossless
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            np.testing.assert_array_equal(target_a[key], target_b[key], err_msg=key)
            assert target_a[key].dtype == target_b[key].dtype, key
        assert target_a["image_id"] == target_b["image_id"] == i + 1


def test_properties_of_the_shapes():
    ds = ShapesDataset(60, seed=0)
    counts = np.zeros(len(SHAPE_CLASSES) + 1, dtype=int)
    overlapping_pairs = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        m = len(s.labels)
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert 1 <= m <= 4 and s.masks.shape == (m, 128, 128)
        # visible masks never share a pixel: an occluded shape loses the occluder's pixels
        assert s.masks.sum(axis=0).max() <= 1
        areas = s.masks.sum(axis=(1, 2))
        assert (areas >= 20).all()
        for k in range(m):
            rows, cols = np.nonzero(s.masks[k].any(axis=1))[0], np.nonzero(s.masks[k].any(axis=0))[0]
            np.testing.assert_array_equal(s.boxes[k], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            assert max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1 <= 61  # shapes fit in a 60 px circle
        x1 = np.maximum(s.boxes[:, None, 0], s.boxes[None, :, 0])
        x2 = np.minimum(s.boxes[:, None, 2], s.boxes[None, :, 2])
        y1 = np.maximum(s.boxes[:, None, 1], s.boxes[None, :, 1])
        y2 = np.minimum(s.boxes[:, None, 3], s.boxes[None, :, 3])
        overlapping_pairs += int(np.triu((x2 > x1) & (y2 > y1), 1).sum())
        np.add.at(counts, s.labels, 1)
    assert counts[0] == 0 and (counts[1:] > 20).all()  # every class is common
    assert overlapping_pairs > 5  # occlusions happen


def test_colour_does_not_give_the_class_away():
    """Mean object colour per class is about the same: only the shape tells classes apart."""
    ds = ShapesDataset(80, seed=2)
    colours = {c: [] for c in range(1, 4)}
    for i in range(len(ds)):
        s = ds.sample(i)
        for mask, label in zip(s.masks, s.labels):
            colours[int(label)].append(s.image[mask.astype(bool)].mean(axis=0))
    means = np.array([np.mean(colours[c], axis=0) for c in range(1, 4)])
    assert np.abs(means - means.mean(axis=0)).max() < 30


def test_shapes_stand_out_from_the_background():
    rng = np.random.default_rng(0)
    for _ in range(10):
        s = generate_shapes_image(rng, 64, min_size=12, max_size=30, noise=0.0)
        for mask in s.masks.astype(bool):
            ring = np.zeros_like(mask)
            rows, cols = np.nonzero(mask)
            ring[max(rows.min() - 2, 0): rows.max() + 3, max(cols.min() - 2, 0): cols.max() + 3] = True
            ring &= ~s.masks.any(axis=0).astype(bool)
            if ring.sum() > 10:
                inside = s.image[mask].mean(axis=0)
                outside = s.image[ring].mean(axis=0)
                assert np.abs(inside - outside).mean() > 40


def test_ground_truth_scores_perfect_ap():
    """The RLE annotations are what the samples show: the targets as detections give AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = ShapesDataset(6, seed=7)
    gt = COCO()
    gt.dataset = ds.coco_dict()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        gt.createIndex()
        detections = [dict(a, score=1.0) for a in gt.dataset["annotations"]]
        for d in detections:
            del d["id"]
        evaluator = COCOeval(gt, gt.loadRes(detections), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)  # AP50


def test_options_and_bad_arguments():
    rng = np.random.default_rng(0)
    s = generate_shapes_image(rng, (40, 60), num_classes=2, min_objects=3, max_objects=3, min_size=10, max_size=12)
    assert s.image.shape == (40, 60, 3) and set(s.labels) <= {1, 2}
    assert ShapesDataset(2, num_classes=2).class_names == ["__background__", "circle", "square"]
    with pytest.raises(ValueError, match="num_classes"):
        generate_shapes_image(rng, 64, num_classes=7)
    with pytest.raises(ValueError, match="max_size"):
        generate_shapes_image(rng, 32, max_size=60)
    with pytest.raises(ValueError):
        ShapesDataset(0)
    with pytest.raises(IndexError):
        ShapesDataset(2)[2]


def test_chosen_classes_draw_other_shapes():
    kinds = ("circle", "triangle", "square", "pentagon", "hexagon")
    ds = ShapesDataset(30, image_size=96, seed=2, classes=kinds, min_size=30, max_size=60, max_objects=5)
    assert ds.categories == dict(enumerate(kinds, start=1)) and ds.num_classes == 6
    labels = np.concatenate([ds.sample(i).labels for i in range(len(ds))])
    assert set(labels.tolist()) == {1, 2, 3, 4, 5}
    # each polygon covers the area of a regular n-gon inscribed in the circle: n/2 r^2 sin(2 pi / n)
    for kind, n in (("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6)):
        area = _shape_mask(kind, 60.0, 60.0, 40.0, 0.3, 120, 120).sum()
        assert abs(area - n / 2 * 40.0**2 * np.sin(2 * np.pi / n)) < 0.01 * area, kind
    with pytest.raises(ValueError, match="distinct shapes"):
        ShapesDataset(2, classes=("circle", "heptagon"))
    with pytest.raises(ValueError, match="distinct shapes"):
        ShapesDataset(2, classes=("circle", "circle"))


# ------------------------------------------- six kinds, for partially supervised experiments (lesson 18)
@pytest.mark.parametrize("kind,area", [
    ("star", 10 * 0.5 * 15 * (0.45 * 15) * np.sin(np.pi / 5)),  # ten triangles centre-point-corner
    ("ring", np.pi * 15**2 * (1 - 0.55**2)),
    ("cross", 2 * (2 * np.sqrt(15**2 - 4.5**2)) * 9 - 9**2),  # two 2L x 9 bars, their 9 x 9 overlap counted once
])
def test_the_extra_kinds_have_their_area_and_fit_their_circle(kind, area):
    from minimaskrcnn.data.shapes import _shape_mask

    tilted = _shape_mask(kind, 20.0, 20.0, 15.0, 0.3, 40, 40)  # tilted: no edge along a row of pixel centres
    assert abs(tilted.sum() - area) / area < 0.05
    mask = _shape_mask(kind, 20.0, 20.0, 15.0, 0.0, 40, 40)
    ys, xs = np.nonzero(mask)
    assert ((xs + 0.5 - 20) ** 2 + (ys + 0.5 - 20) ** 2 <= 15**2 + 1e-9).all()
    # what makes them unlike circles, squares and triangles: a hole, or concave corners
    if kind == "ring":
        assert not mask[19:21, 19:21].any() and mask[19, 20 + 10]
    else:  # angle 0: a point (star) or a bar (cross) along +x; between them, at 0.8 R, background
        between = np.pi / 5 if kind == "star" else np.pi / 4
        assert mask[20, 20 + 12] and not mask[int(20 + 12 * np.sin(between)), int(20 + 12 * np.cos(between))]


def test_six_kinds_when_asked_and_the_default_keeps_three():
    ds = ShapesDataset(40, image_size=96, seed=0, classes=("circle", "square", "triangle", "star", "ring", "cross"),
                       max_objects=5)
    assert ds.categories == {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "ring", 6: "cross"}
    assert ds.num_classes == 7
    labels = np.concatenate([ds.sample(i).labels for i in range(len(ds))])
    assert set(labels.tolist()) == set(range(1, 7))
    assert ShapesDataset(2).categories == {1: "circle", 2: "square", 3: "triangle"}
    assert ds[0][1]["has_mask"].dtype == bool and ds[0][1]["has_mask"].all()
    with pytest.raises(ValueError, match="num_classes must be in 1..3"):
        ShapesDataset(1, num_classes=6)  # the extra kinds are asked for by name
