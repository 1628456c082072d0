"""Every bad input the data tests know, through `train`, `evaluate` and `predict`: one `error:` line
naming the file, exit code 2, never a traceback. Also what used to break silently now works: category
id 0, a 16-bit PNG, a 6x2000 image through predict and a 5x300 one through training."""
import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.cli import EXIT_BAD_INPUT, main

from .conftest import tiny_coco_dict
from .test_bad_input import BAD_DATA_SETS

# the cases whose image file itself cannot be read (predict has no records, so a size is no error there)
UNREADABLE_IMAGE = {"image: missing": "b.png", "image: truncated": "c.png", "image: not an image": "c.png",
                    "image: float TIFF outside [0, 1]": "c.png"}
SMALL = ["--min-size", "32", "--max-size", "32"]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_error(code, err, *needles):
    assert code == EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]


def _write_coco(folder, data=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    data = data or tiny_coco_dict()
    rng = np.random.default_rng(0)
    for img in data["images"]:
        pixels = rng.integers(0, 256, size=(img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / img["file_name"])
    (folder / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json", folder / "images"


def _train_argv(ann, images, out, *more):
    return ["train", "--dataset", "coco", "--train-annotations", ann, "--train-images", images, "--output-dir", out,
            "--steps", "1", "--batch-size", "3", "--val-loss-images", "0", "--no-progress", *SMALL, *more]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of the small model trained for one step on the good tiny data set."""
    root = tmp_path_factory.mktemp("cli")
    ann, images = _write_coco(root / "good")
    assert main([str(a) for a in _train_argv(ann, images, root / "runs", "--name", "good")]) == 0
    return root / "runs" / "good"


@pytest.mark.parametrize("case", list(BAD_DATA_SETS))
def test_bad_data_set_through_train_evaluate_and_predict(case, make_coco, run_dir, tmp_path, capsys):
    ann, images = BAD_DATA_SETS[case](make_coco)
    code, _, err = _run(_train_argv(ann, images, tmp_path / "runs"), capsys)
    _assert_error(code, err)
    assert str(ann) in err or str(images) in err
    code, _, err = _run(["evaluate", run_dir, "--annotations", ann, "--images", images, "--results-dir",
                         tmp_path / "eval", "--no-progress"], capsys)
    _assert_error(code, err)
    assert str(ann) in err or str(images) in err
    if case in UNREADABLE_IMAGE:
        bad = images / UNREADABLE_IMAGE[case]
        code, _, err = _run(["predict", run_dir, images / "a.png", bad, "-o", tmp_path / "out"], capsys)
        _assert_error(code, err, str(bad))
        assert not (tmp_path / "out" / bad.with_suffix(".png").name).exists() or bad.name == "a.png"


@pytest.mark.parametrize("argv", [["predict", "{run}", "{missing}"], ["predict", "{missing}", "{image}"],
                                  ["evaluate", "{missing}"], ["train", "--weights", "{missing}"],
                                  ["train", "--backbone-weights", "{missing}"]])
def test_missing_files(argv, run_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    argv = [a.format(run=run_dir, missing=tmp_path / "nowhere.pth", image=image) for a in argv]
    if argv[0] == "train":
        argv += ["--output-dir", str(tmp_path / "runs"), "--no-progress"]
    code, _, err = _run(argv, capsys)
    _assert_error(code, err, "nowhere.pth")


def test_category_id_0_trains_and_evaluates_as_a_class(tmp_path, capsys):
    data = tiny_coco_dict()
    for cat in data["categories"]:
        cat["id"] -= 1  # cat 0, dog 2
    for a in data["annotations"]:
        a["category_id"] -= 1
    ann, images = _write_coco(tmp_path / "zero", data)
    code, _, err = _run(_train_argv(ann, images, tmp_path / "runs", "--name", "zero"), capsys)
    assert code == 0, err
    from minimaskrcnn.checkpoint import load_model

    _, class_names = load_model(tmp_path / "runs" / "zero")
    assert class_names == ["__background__", "cat", "dog"]  # category 0 is a class, not the background
    code, out, err = _run(["evaluate", tmp_path / "runs" / "zero", "--results-dir", tmp_path / "eval", "--no-progress"],
                          capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert {r["category_id"] for r in results} <= {0, 2}  # the file's own ids, 0 included


def test_elongated_images_through_predict_and_training(run_dir, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 2000, 3), dtype=np.uint8)).save(wide)
    code, out, err = _run(["predict", run_dir, wide, "-o", tmp_path / "out", *SMALL], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "out" / "wide.png") as picture:
        assert picture.size == (2000, 6)
    data = {"images": [{"id": 1, "file_name": "strip.png", "width": 300, "height": 5}],
            "categories": [{"id": 1, "name": "line"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 1, 200, 3], "area": 600.0,
                             "iscrowd": 0, "segmentation": [[10, 1, 210, 1, 210, 4, 10, 4]]}]}
    ann, images = _write_coco(tmp_path / "strip", data)
    # 32 / 300 of 5 pixels is 0.53: torchvision's rule alone would make it 0 pixels high
    code, _, err = _run(_train_argv(ann, images, tmp_path / "runs", "--name", "strip"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("arg, needle", [("foo=1", "unknown model argument 'foo'"),
                                         ("box.nothing=2", "no field 'nothing'")])
def test_an_unknown_model_argument_is_one_line(arg, needle, tmp_path, capsys):
    code, _, err = _run(["train", "--model-arg", arg, "--output-dir", tmp_path / "runs", "--no-progress"], capsys)
    _assert_error(code, err, "--model-arg", needle)
    assert not (tmp_path / "runs").exists()  # refused before any data were prepared
