"""Keypoint R-CNN from the command line: train on the stick figures, evaluate keypoint AP, draw skeletons,
and one-line errors for keypoint models given data without keypoints."""
import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.checkpoint import load_keypoint_info
from minimaskrcnn.cli import EXIT_BAD_INPUT, main
from minimaskrcnn.data.figures import FIGURE_KEYPOINTS


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def keypoint_run(tmp_path_factory):
    """One step of r18-figures-kp on 4 generated figures images (validated on 2), through the CLI."""
    root = tmp_path_factory.mktemp("kp")
    argv = ["train", "--model", "r18-figures-kp", "--dataset", "figures", "--data-dir", str(root / "data"),
            "--num-train-images", "4", "--num-val-images", "2", "--steps", "1", "--batch-size", "2",
            "--val-loss-images", "0", "--output-dir", str(root / "runs"), "--name", "kp", "--no-progress"]
    code = main(argv)
    return code, root


def test_train_validates_keypoint_ap_and_keeps_the_skeleton(keypoint_run):
    code, root = keypoint_run
    assert code == 0
    run = root / "runs" / "kp"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_keypoints_AP" in r]
    assert val and "val_bbox_AP" in val[-1] and "val_segm_AP" not in val[-1]  # no mask head, no mask AP
    assert (run / "results_keypoints.json").is_file()
    names, skeleton = load_keypoint_info(run)
    assert names == list(FIGURE_KEYPOINTS) and len(skeleton) == 14
    meta = json.loads((root / "data" / "train" / "meta.json").read_text())
    assert meta["params"]["data"] == "figures"


def test_evaluate_prints_keypoint_ap(keypoint_run, capsys):
    _, root = keypoint_run
    code, out, _ = _run(["evaluate", str(root / "runs" / "kp"), "--results-dir", str(root / "eval"), "--no-progress"],
                        capsys)
    assert code == 0 and "OKS=0.50:0.95" in out and "keypoints" in out
    assert (root / "eval" / "results_keypoints.json").is_file()
    code, _, err = _run(["evaluate", str(root / "runs" / "kp"), "--iou-types", "segm", "--no-progress"], capsys)
    assert code == EXIT_BAD_INPUT and "predicts no segm" in err and "Traceback" not in err


def test_predict_draws_the_skeleton(keypoint_run, capsys, tmp_path):
    _, root = keypoint_run
    image = np.asarray(Image.open(next((root / "data" / "val" / "images").iterdir())).convert("RGB"))
    path = tmp_path / "figure.png"
    Image.fromarray(image).save(path)
    code, out, _ = _run(["predict", str(root / "runs" / "kp"), str(path), "-o", str(tmp_path / "out"),
                         "--score-threshold", "0"], capsys)
    assert code == 0 and out.strip().endswith("figure.png")
    assert np.asarray(Image.open(tmp_path / "out" / "figure.png")).shape == image.shape


def test_keypoint_model_on_data_without_keypoints_is_one_line(tmp_path, capsys):
    code, _, err = _run(["train", "--model", "r18-figures-kp", "--data-dir", str(tmp_path / "shapes"),
                         "--num-train-images", "2", "--num-val-images", "1", "--steps", "1",
                         "--output-dir", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert code == EXIT_BAD_INPUT
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "predicts keypoints" in line and "--dataset figures" in line


def test_data_figures_writes_a_keypoints_file(tmp_path, capsys):
    code, out, _ = _run(["data", "figures", str(tmp_path / "f"), "--num-images", "2", "--seed", "3"], capsys)
    assert code == 0
    data = json.loads((tmp_path / "f" / "keypoints.json").read_text())
    assert len(data["images"]) == 2 and data["categories"][0]["keypoints"] == list(FIGURE_KEYPOINTS)


def test_min_keypoints_per_image_option_filters_the_training_images(tmp_path):
    from minimaskrcnn.config import TrainConfig
    from minimaskrcnn.data import prepare_datasets, sample_files

    files = sample_files("train", keypoints=True)
    config = TrainConfig(dataset="coco", train_annotations=str(files.annotation_file),
                         train_images=str(files.image_dir),
                         min_keypoints_per_image=10)
    train, val, _ = prepare_datasets(config)
    assert 0 < len(train) < len(val)  # the same file: the filter applies to training only
    assert all((train.load_target(i)["keypoints"][..., 2] > 0).sum() >= 10 for i in range(len(train)))
