"""Keypoint AP (OKS) through pycocotools: results in COCO's format, the data set's sigmas, the edge cases."""
import numpy as np
import pytest

from minimaskrcnn.data import sample_dataset
from minimaskrcnn.data.figures import FIGURE_SIGMAS, FiguresDataset
from minimaskrcnn.evaluate import (
    COCO_PERSON_SIGMAS,
    KEYPOINT_STAT_NAMES,
    coco_evaluate,
    detections_to_coco_results,
    evaluate_detections,
    format_stats_table,
    keypoint_sigmas_of,
)


def _perfect_detections(ds, jitter=0.0, seed=0):
    """One detection per labelled object, its keypoints (perhaps jittered) and box, scored 0.9."""
    rng = np.random.default_rng(seed)
    detections, image_ids = [], []
    for i in range(len(ds)):
        target = ds[i][1] if not hasattr(ds, "load_target") else ds.load_target(i)
        kp = target["keypoints"].copy()
        kp[..., :2] += rng.normal(0, jitter, kp[..., :2].shape) if jitter else 0
        kp[..., 2] = 1
        detections.append({"boxes": target["boxes"], "labels": target["labels"],
                           "scores": np.full(len(kp), 0.9, np.float32), "keypoints": kp})
        image_ids.append(int(target["image_id"]))
    return detections, image_ids


def test_keypoint_results_are_cocos_format():
    det = {"boxes": np.array([[1, 2, 5, 9]], np.float32), "labels": np.array([1]), "scores": np.array([0.5]),
           "keypoints": np.array([[[1.5, 2.25, 1], [3, 4, 1]]], np.float32)}
    (res,) = detections_to_coco_results([det], [42], {1: 7}, iou_type="keypoints")
    assert res == {"keypoints": [1.5, 2.25, 1.0, 3.0, 4.0, 1.0], "image_id": 42, "category_id": 7, "score": 0.5}
    with pytest.raises(ValueError, match="iou_type"):
        detections_to_coco_results([det], [42], iou_type="oks")


def test_sigmas_come_from_the_ground_truth():
    np.testing.assert_array_equal(keypoint_sigmas_of(FiguresDataset(2).coco), FIGURE_SIGMAS)
    np.testing.assert_array_equal(keypoint_sigmas_of(sample_dataset("val", keypoints=True).coco), COCO_PERSON_SIGMAS)
    coco = FiguresDataset(2).coco
    del coco.dataset["categories"][0]["keypoint_sigmas"]
    with pytest.raises(ValueError, match="13"):
        keypoint_sigmas_of(coco)


def test_exact_keypoints_score_ap_1_and_noise_lowers_it():
    ds = FiguresDataset(12, seed=4)
    stats = evaluate_detections(ds.coco, *_perfect_detections(ds), iou_types=("keypoints",), verbose=False)
    assert set(stats["keypoints"]) == set(KEYPOINT_STAT_NAMES)
    assert stats["keypoints"]["AP"] == pytest.approx(1.0)
    noisy = evaluate_detections(ds.coco, *_perfect_detections(ds, jitter=2.0), iou_types=("keypoints",), verbose=False)
    assert 0.05 < noisy["keypoints"]["AP"] < 0.95 and noisy["keypoints"]["AP50"] > noisy["keypoints"]["AP75"]


def test_coco_person_keypoints_use_pycocotools_sigmas():
    ds = sample_dataset("val", keypoints=True)
    detections, image_ids = _perfect_detections(ds, jitter=3.0)
    results = detections_to_coco_results(detections, image_ids, iou_type="keypoints")
    ours = coco_evaluate(ds.coco, results, "keypoints")

    # pycocotools on its own, with its default (COCO person) sigmas
    import contextlib
    import copy
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(ds.coco, ds.coco.loadRes(copy.deepcopy(results)), iouType="keypoints")
        E.evaluate(), E.accumulate(), E.summarize()
    assert [ours[k] for k in KEYPOINT_STAT_NAMES] == pytest.approx(list(E.stats))


def test_no_detection_gives_zero_where_there_is_ground_truth():
    ds = FiguresDataset(4, seed=1)
    stats = coco_evaluate(ds.coco, [], "keypoints")
    assert stats["AP"] == 0.0 and set(stats) == set(KEYPOINT_STAT_NAMES)
    table = format_stats_table({"bbox": coco_evaluate(ds.coco, [], "bbox"), "keypoints": stats})
    assert "OKS=0.50:0.95" in table and "keypoints" in table and "bbox" in table


def test_evaluate_runs_a_keypoint_model_on_stick_figures():
    """evaluate() takes the figures data set as it takes a CocoDataset (lesson 15's validation path)."""
    from minimaskrcnn.evaluate import evaluate
    from minimaskrcnn.models import build_model

    model = build_model("r18-figures-kp", num_classes=2)
    model.eval()
    stats = evaluate(model, FiguresDataset(2, seed=5), iou_types=("bbox", "keypoints"), verbose=False)
    assert set(stats) == {"bbox", "keypoints"}
    assert all(0.0 <= stats[t]["AP"] <= 1.0 or stats[t]["AP"] == -1.0 for t in stats)
