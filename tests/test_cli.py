"""The ``minimaskrcnn`` command: help with examples, and bad input as one line + exit code 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.cli import EXIT_BAD_INPUT, main


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *needles):
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["data"]])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "minimaskrcnn " + (command[0] if command else "train") in out


def test_train_help_lists_the_model_configurations(capsys):
    from minimaskrcnn.models.configs import CONFIGS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in CONFIGS:
        assert name in out
    assert "--resume" in out and "--backend" in out


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = _run([], capsys)
    assert code == EXIT_BAD_INPUT and "train" in err


def test_missing_image_is_one_line_exit_2_without_traceback(tmp_path):
    """In a real process: the message, the exit code, and no traceback on stderr."""
    missing = tmp_path / "missing.jpg"
    proc = subprocess.run(
        [sys.executable, "-m", "minimaskrcnn", "predict", str(tmp_path / "run"), str(missing)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    _assert_one_line_error(proc.returncode, proc.stderr, "missing.jpg", "no such image file")


def test_missing_checkpoint(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, _, err = _run(["predict", str(tmp_path / "nowhere"), str(image)], capsys)
    _assert_one_line_error(code, err, "nowhere", "no such file")
    code, _, err = _run(["evaluate", str(tmp_path / "nowhere")], capsys)
    _assert_one_line_error(code, err, "nowhere")


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = _run(["evaluate", str(bad)], capsys)
    _assert_one_line_error(code, err, "checkpoint.npz")


def _coco_folder(tmp_path, annotations: dict) -> tuple[str, str]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for img in annotations.get("images", []):
        Image.fromarray(np.zeros((img["height"], img["width"], 3), np.uint8)).save(images / img["file_name"])
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(annotations))
    return str(ann), str(images)


def _train_argv(ann, images, tmp_path):
    return ["train", "--dataset", "coco", "--train-annotations", ann, "--train-images", images,
            "--output-dir", str(tmp_path / "runs"), "--steps", "1", "--no-progress"]


def test_bad_annotation_file(tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}],
            "annotations": [{"id": 5, "image_id": 99, "category_id": 1, "bbox": [0, 0, 4, 4],
                             "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0, "area": 8.0}],
            "categories": [{"id": 1, "name": "thing"}]}
    ann, images = _coco_folder(tmp_path, data)
    code, _, err = _run(_train_argv(ann, images, tmp_path), capsys)
    _assert_one_line_error(code, err, "instances.json", "99")


def test_truncated_annotation_file(tmp_path, capsys):
    ann, images = _coco_folder(tmp_path, {})
    with open(ann, "w") as f:
        f.write('{"images": [{"id": 1, "file_na')
    code, _, err = _run(_train_argv(ann, images, tmp_path), capsys)
    _assert_one_line_error(code, err, "instances.json")


def test_empty_data_set(tmp_path, capsys):
    ann, images = _coco_folder(tmp_path, {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    code, _, err = _run(_train_argv(ann, images, tmp_path), capsys)
    _assert_one_line_error(code, err, "instances.json", "no images")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.npz"))


def test_missing_image_of_a_data_set(tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    ann, images = _coco_folder(tmp_path, data)
    os.remove(os.path.join(images, "a.png"))
    code, _, err = _run(_train_argv(ann, images, tmp_path), capsys)
    _assert_one_line_error(code, err, "a.png", "image id 1")


def test_data_shapes_writes_a_coco_folder(tmp_path, capsys):
    code, out, _ = _run(["data", "shapes", str(tmp_path / "shapes"), "--num-images", "3", "--image-size", "64"], capsys)
    assert code == 0
    data = json.loads((tmp_path / "shapes" / "instances.json").read_text())
    assert len(data["images"]) == 3 and data["annotations"]
    assert len(list((tmp_path / "shapes" / "images").iterdir())) == 3
