"""evaluate.py: COCO results conversion and COCOeval numbers, checked against pycocotools itself."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.evaluate import (
    STAT_NAMES,
    coco_evaluate,
    detections_to_coco_results,
    encode_masks,
    evaluate,
    evaluate_detections,
    format_stats_table,
)
from minimaskrcnn.ops.boxes import box_convert

H, W = 64, 80
# two images; category ids 3 and 7 (not contiguous, as in COCO); boxes (x1, y1, x2, y2)
GT = {
    1: [(3, (4, 6, 30, 40)), (7, (40, 10, 70, 50))],
    2: [(7, (10, 10, 50, 30))],
}


def _gt_json() -> dict:
    images = [{"id": i, "file_name": f"{i:03d}.png", "height": H, "width": W} for i in GT]
    anns = []
    for image_id, objs in GT.items():
        for cat, (x1, y1, x2, y2) in objs:
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })
    return {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]}


def _coco(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _perfect_detections(coco: COCO, labels_of=lambda c: c):
    dets, ids = [], []
    for image_id in sorted(GT):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32)
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(np.float32)[:, None] * 0.9
        dets.append({"boxes": boxes, "labels": np.array([labels_of(a["category_id"]) for a in anns]),
                     "scores": np.linspace(0.9, 0.8, len(anns)).astype(np.float32), "masks": masks})
        ids.append(image_id)
    return dets, ids


def test_box_conversion_and_rle_roundtrip():
    np.testing.assert_allclose(box_convert(np.array([[1, 2, 4, 8]]), "xyxy", "xywh"), [[1, 2, 3, 6]])
    probs = np.zeros((2, 1, 5, 6), np.float32)
    probs[0, 0, 1:3, 2:5] = 0.7
    probs[1, 0, 4, 0] = 0.5  # exactly at the threshold: background
    rles = encode_masks(probs)
    import pycocotools.mask as mask_utils

    assert isinstance(rles[0]["counts"], str)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), probs[:, 0] > 0.5)


def test_perfect_detections_give_ap_one():
    coco = _coco(_gt_json())
    dets, ids = _perfect_detections(coco)
    stats = evaluate_detections(coco, dets, ids, verbose=False)
    for t in ("bbox", "segm"):
        assert stats[t]["AP"] == pytest.approx(1.0)
        assert stats[t]["AP50"] == pytest.approx(1.0)
        assert stats[t]["AR100"] == pytest.approx(1.0)


def test_category_ids_are_mapped_from_labels():
    coco = _coco(_gt_json())
    to_label = {3: 1, 7: 2}
    dets, ids = _perfect_detections(coco, labels_of=lambda c: to_label[c])
    right = evaluate_detections(coco, dets, ids, {1: 3, 2: 7}, iou_types=("bbox",), verbose=False)
    wrong = evaluate_detections(coco, dets, ids, {1: 7, 2: 3}, iou_types=("bbox",), verbose=False)
    assert right["bbox"]["AP"] == pytest.approx(1.0)
    assert wrong["bbox"]["AP"] < 0.5
    results = detections_to_coco_results(dets, ids, {1: 3, 2: 7}, "bbox")
    assert sorted({r["category_id"] for r in results}) == [3, 7]


def test_shifted_box_lowers_ap75_not_ap50():
    coco = _coco(_gt_json())
    dets, ids = _perfect_detections(coco)
    # image 2's box is 40x20; a shift of 8 px in x gives IoU 32*20 / (48*20) = 0.667: >= 0.5, < 0.75
    dets[1]["boxes"] = dets[1]["boxes"] + np.array([8, 0, 8, 0], np.float32)
    stats = evaluate_detections(coco, dets, ids, iou_types=("bbox",), verbose=False)["bbox"]
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] < 0.75
    assert stats["AP"] < 1.0


def test_numbers_equal_pycocotools_on_the_saved_results(tmp_path, capsys):
    gt = _gt_json()
    coco = _coco(gt)
    rng = np.random.default_rng(0)
    dets, ids = _perfect_detections(coco)
    for d in dets:  # noisy boxes and masks, random scores, plus false positives
        n = len(d["boxes"])
        d["boxes"] = np.concatenate([d["boxes"] + rng.normal(0, 3, (n, 4)).astype(np.float32),
                                     np.array([[0, 0, 20, 20], [30, 30, 60, 60]], np.float32)])
        d["labels"] = np.concatenate([d["labels"], [3, 7]])
        d["scores"] = rng.uniform(0.1, 1.0, n + 2).astype(np.float32)
        noise = rng.uniform(0, 1, (n, 1, H, W)) > 0.9
        extra = np.zeros((2, 1, H, W), np.float32)
        extra[0, 0, 0:20, 0:20] = 0.8
        extra[1, 0, 30:60, 30:60] = 0.8
        d["masks"] = np.concatenate([np.abs(d["masks"] - noise * 0.9), extra]).astype(np.float32)
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(gt))
    ours = evaluate_detections(coco, dets, ids, results_dir=tmp_path, verbose=True)
    table = capsys.readouterr().out
    for name in STAT_NAMES:
        assert f"\n{name} " in "\n" + table
    # pycocotools on its own, from the files alone
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt_coco = COCO(str(ann_file))
            dt = gt_coco.loadRes(str(tmp_path / f"results_{iou_type}.json"))
            e = COCOeval(gt_coco, dt, iouType=iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
        np.testing.assert_array_equal([ours[iou_type][k] for k in STAT_NAMES], e.stats)
        assert 0.0 < ours[iou_type]["AP"] < 1.0  # a real, non-trivial case
        assert f"{ours[iou_type]['AP']:.3f}" in table


def test_no_detections_is_zero_not_a_crash():
    coco = _coco(_gt_json())
    empty = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0),
              "masks": np.zeros((0, 1, H, W))} for _ in GT]
    stats = evaluate_detections(coco, empty, sorted(GT), verbose=False)
    assert stats["bbox"]["AP"] == 0.0 and stats["segm"]["AR100"] == 0.0
    assert stats["bbox"]["APs"] == 0.0  # areas 884 and 800 px are "small" (< 32**2)
    assert stats["bbox"]["APl"] == -1.0  # no large objects in this ground truth: -1, as COCOeval says
    assert coco_evaluate(coco, [], "bbox")["APm"] == 0.0


def test_evaluate_runs_a_model_over_a_coco_dataset(tmp_path):
    from minimaskrcnn.data import CocoDataset

    gt = _gt_json()
    for img in gt["images"]:
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path / img["file_name"])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ds = CocoDataset(tmp_path / "gt.json", tmp_path)

    class Oracle:
        """A 'model' that returns the ground truth of the image it is given (looked up by call order)."""

        training = True

        def __init__(self):
            self.calls = 0

        def eval(self):
            self.training = False

        def train(self):
            self.training = True

        def __call__(self, images):
            assert not self.training and images[0].shape == (3, H, W)
            outs = []
            for _ in images:
                _, target = ds[self.calls]
                self.calls += 1
                m = len(target["boxes"])
                outs.append({"boxes": target["boxes"], "labels": target["labels"], "scores": np.ones(m, np.float32),
                             "masks": target["masks"][:, None].astype(np.float32)})
            return outs

    model = Oracle()
    stats = evaluate(model, ds, batch_size=2, results_dir=tmp_path, verbose=False)
    assert model.training  # put back in its mode
    assert stats["bbox"]["AP"] == pytest.approx(1.0) and stats["segm"]["AP"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "results_segm.json").read_text())[0]["segmentation"]["size"] == [H, W]
    assert "segm" in format_stats_table(stats)


# ------------------------------------------------------------- box-only annotations (lesson 18)
def _without_mask(gt: dict, ann_ids) -> dict:
    gt = json.loads(json.dumps(gt))
    for a in gt["annotations"]:
        if a["id"] in ann_ids:
            del a["segmentation"]
    return gt


def test_mask_ap_ignores_box_only_annotations_and_says_so():
    from minimaskrcnn.data.coco import BoxOnlyInstancesWarning

    full = _coco(_gt_json())
    dets, ids = _perfect_detections(full)  # masks for every object, the box-only one included
    partial = _coco(_without_mask(_gt_json(), {2}))  # image 1's "seven" has a box and no mask
    with pytest.warns(BoxOnlyInstancesWarning, match=r"1 box-only annotation\(s\) \(seven\) are ignored regions"):
        stats = evaluate_detections(partial, dets, ids, verbose=False)
    # its detection is neither a hit nor a false positive; the other "seven" still counts
    assert stats["segm"]["AP"] == pytest.approx(1.0) and stats["bbox"]["AP"] == pytest.approx(1.0)
    # a false positive of "seven" away from every box still costs mask AP
    fp = [dict(d) for d in dets]
    fp[0] = {k: np.concatenate([v, extra]) for (k, v), extra in zip(fp[0].items(), (
        np.array([[60, 45, 78, 62]], np.float32), np.array([7]), np.array([0.95], np.float32),
        np.pad(np.ones((1, 1, 17, 18), np.float32), ((0, 0), (0, 0), (45, 2), (60, 2)))))}
    with pytest.warns(BoxOnlyInstancesWarning):
        assert evaluate_detections(partial, fp, ids, iou_types=("segm",), verbose=False)["segm"]["AP"] < 0.9


def test_a_category_without_any_mask_drops_out_of_mask_ap():
    from minimaskrcnn.data.coco import BoxOnlyInstancesWarning
    from minimaskrcnn.evaluate import segm_ground_truth

    full = _coco(_gt_json())
    dets, ids = _perfect_detections(full)
    partial = _coco(_without_mask(_gt_json(), {2, 3}))  # both "seven"s
    gt, left_out = segm_ground_truth(partial)
    assert left_out == {"num_annotations": 2, "categories": ["seven"], "without_any_mask": ["seven"]}
    assert all(a["iscrowd"] == 1 for a in gt.loadAnns([2, 3])) and partial.loadAnns([2])[0]["iscrowd"] == 0
    assert segm_ground_truth(full) == (full, {})
    # "seven" as box-only by id, as a data set's mask_categories gives them
    assert segm_ground_truth(full, box_only_ids=[2, 3])[1]["without_any_mask"] == ["seven"]
    with pytest.warns(BoxOnlyInstancesWarning, match="categories without any mask are left out of mask AP: seven"):
        stats = evaluate_detections(partial, dets, ids, iou_types=("segm",), verbose=False)
    assert stats["segm"]["AP"] == pytest.approx(1.0)


def test_mask_iou_on_gt_boxes(monkeypatch):
    """Per-instance IoU of the masks predicted on the gt boxes: 1 for the gt mask, hand-computed for a shifted one."""
    from minimaskrcnn import predict
    from minimaskrcnn.evaluate import mask_iou_on_gt_boxes

    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 2:6, 2:6] = 1  # 16 pixels
    masks[1, 5:9, 6:11] = 1  # 20 pixels
    target = {"boxes": np.array([[2, 2, 6, 6], [6, 5, 11, 9]], np.float32), "labels": np.array([1, 2]),
              "masks": masks, "has_mask": np.array([True, True])}
    dataset = [(np.zeros((3, 10, 12), np.float32), target),
               (np.zeros((3, 10, 12), np.float32), dict(target, has_mask=np.array([False, True])))]

    def oracle(model, images, boxes, labels=None):
        keep = len(boxes[0])
        probs = np.stack([masks[0], np.roll(masks[1], 1, axis=1)])[-keep:].astype(np.float32)  # object 2 one px right
        return [probs * 0.9]

    monkeypatch.setattr(predict, "predict_masks_for_boxes", oracle)
    ious = mask_iou_on_gt_boxes(None, dataset)
    assert ious[1] == [1.0]  # the box-only instance of image 2 is not measured
    np.testing.assert_allclose(ious[2], [16 / 24, 16 / 24])  # 4x5 shifted by one column: 16 shared of 24


def test_predicted_masks_for_the_detections_boxes_are_the_detections_masks():
    from minimaskrcnn.data import ShapesDataset
    from minimaskrcnn.models import build_model
    from minimaskrcnn.predict import predict_masks_for_boxes

    model = build_model("r18-shapes", box_score_thresh=0.0, seed=0).eval()
    image, _ = ShapesDataset(1, image_size=128, seed=0)[0]
    det = model([image])[0]
    masks = predict_masks_for_boxes(model, [image], [det["boxes"][:5]], [det["labels"][:5]])[0]
    assert masks.shape == (5, 128, 128)
    np.testing.assert_allclose(masks, det["masks"][:5, 0], atol=1e-5)
