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


def test_evaluate_command_prints_the_table_and_saves_results(tmp_path, capsys):
    from minimaskrcnn.train import TrainConfig, Trainer

    cfg = TrainConfig(name="e", output_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "shapes"),
                      num_train_images=2, num_val_images=2, image_size=64, min_size=64, max_size=64,
                      steps=1, batch_size=1, val_loss_images=0, val_iou_types=("bbox",), progress=False)
    Trainer(cfg).fit()
    code, out, _ = _run(["evaluate", cfg.run_dir, "--results-dir", str(tmp_path / "eval"), "--no-progress"], capsys)
    assert code == 0
    for name in ("AP50", "AR100", "bbox", "segm"):
        assert name in out
    assert (tmp_path / "eval" / "results_segm.json").is_file()
    # another data set given by its files
    ann = tmp_path / "shapes" / "val" / "instances.json"
    code, out, _ = _run(["evaluate", cfg.run_dir, "--annotations", str(ann), "--images", str(ann.parent / "images"),
                         "--iou-types", "segm", "--results-dir", str(tmp_path / "eval2"), "--no-progress"], capsys)
    assert code == 0 and (tmp_path / "eval2" / "results_segm.json").is_file()
    assert not (tmp_path / "eval2" / "results_bbox.json").exists()


def test_data_coco_sample_copies_the_sample(tmp_path, capsys):
    code, _, _ = _run(["data", "coco-sample", str(tmp_path / "sample")], capsys)
    assert code == 0
    for name in ("README.md", "annotations/instances_val2017.json", "annotations/instances_overfit.json"):
        assert (tmp_path / "sample" / name).is_file()
    assert len(list((tmp_path / "sample" / "val2017").iterdir())) == 32


@pytest.fixture
def coco_server(tmp_path):
    """A local HTTP server with a COCO-like tree: annotations JSON and two val2017 images."""
    import functools
    import http.server
    import threading

    root = tmp_path / "server"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 20, "width": 30} for i in (1, 2)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 18, "iscrowd": 0, "bbox": [2, 2, 10, 10], "area": 100.0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]} for i in (1, 2)]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 18, "name": "dog"}]}))
    for img in images:
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "val2017" / img["file_name"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_data_download_from_a_local_server(coco_server, tmp_path, capsys):
    argv = ["data", "download", str(tmp_path / "coco"), "--base-url", coco_server,
            "--annotations-url", coco_server + "/annotations/instances_val2017.json", "--no-progress"]
    code, out, _ = _run(argv + ["--num-images", "1"], capsys)
    assert code == 0 and "instances_val2017.json" in out
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_val2017.json").read_text())
    assert len(data["images"]) == 1 and len(list((tmp_path / "coco" / "val2017").iterdir())) == 1
    # an unknown category and a server without the file: one line each, exit 2
    code, _, err = _run(argv + ["--categories", "unicorn"], capsys)
    _assert_one_line_error(code, err, "unicorn")
    code, _, err = _run(["data", "download", str(tmp_path / "other"), "--base-url", coco_server + "/nothing",
                         "--no-progress"], capsys)
    _assert_one_line_error(code, err, "nothing")


def test_image_size_differs_from_its_record(tmp_path, capsys):
    data = {"images": [{"id": 7, "file_name": "a.png", "height": 16, "width": 16}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    ann, images = _coco_folder(tmp_path, data)
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(os.path.join(images, "a.png"))
    code, _, err = _run(_train_argv(ann, images, tmp_path), capsys)
    _assert_one_line_error(code, err, "a.png", "image id 7", "20x16")


def test_resume_without_a_checkpoint(tmp_path, capsys):
    code, _, err = _run(["train", "--output-dir", str(tmp_path / "runs"), "--name", "none", "--resume"], capsys)
    _assert_one_line_error(code, err, "checkpoint.npz")


# ------------------------------------------------------------------ train options from TrainConfig
def _config_parser(config_class):
    import argparse

    from minimaskrcnn.cli import add_config_options

    parser = argparse.ArgumentParser(prog="t")
    add_config_options(parser, config_class)
    return parser


def test_every_train_config_field_is_an_option_with_help(capsys):
    import dataclasses

    from minimaskrcnn.backend import BACKENDS
    from minimaskrcnn.config import TrainConfig
    from minimaskrcnn.models.configs import CONFIGS

    actions = {a.dest: a for a in _config_parser(TrainConfig)._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(actions) == set(fields)
    for name, action in actions.items():
        assert action.help.startswith(fields[name].metadata["help"].replace("%", "%%")), name
        assert action.default is None, name  # given on the command line == not None
    assert list(actions["backend"].choices) == list(BACKENDS)
    assert list(actions["model"].choices) == list(CONFIGS)
    # and `minimaskrcnn train --help` shows them all
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for action in actions.values():
        assert action.option_strings[0] in out


def test_train_options_parse_to_the_field_types():
    from minimaskrcnn.cli import config_overrides
    from minimaskrcnn.config import TrainConfig

    parser = _config_parser(TrainConfig)
    assert config_overrides(parser.parse_args([]), TrainConfig) == {}  # nothing given: the defaults hold
    args = parser.parse_args(["--lr-milestones", "1000,1300", "--model-arg", "box_batch_size_per_image=128",
                              "--model-arg", "rpn_fg_iou_thresh=0.6", "--model-arg", "name=x", "--no-progress",
                              "--detect-anomaly", "--val-iou-types", "segm", "--backend", "numpy", "--steps", "7",
                              "--lr", "0.5", "--data-dir", "d", "--norm-weight-decay", "1e-5"])
    given = config_overrides(args, TrainConfig)
    assert given == {"lr_milestones": (1000, 1300), "progress": False, "detect_anomaly": True,
                     "model_kwargs": {"box_batch_size_per_image": 128, "rpn_fg_iou_thresh": 0.6, "name": "x"},
                     "val_iou_types": ("segm",), "backend": "numpy", "steps": 7, "lr": 0.5, "data_dir": "d",
                     "norm_weight_decay": 1e-5}
    config = TrainConfig(**given)
    assert config.milestones() == (1000, 1300) and config.seed == 0
    for bad in (["--backend", "tpu"], ["--val-iou-types", "masks"], ["--lr-milestones", "a,b"],
                ["--model", "resnet9000"], ["--model-arg", "no-equals-sign"], ["--steps", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2, bad


def test_a_new_config_field_is_a_new_option():
    import dataclasses

    from minimaskrcnn.cli import config_overrides
    from minimaskrcnn.config import TrainConfig

    @dataclasses.dataclass
    class Extended(TrainConfig):
        weights: str | None = dataclasses.field(default=None, metadata={"help": "initial weights (.pth)"})
        mask_categories: tuple[str, ...] | None = dataclasses.field(
            default=None, metadata={"group": "data", "help": "categories with mask labels"})
        freeze: bool = dataclasses.field(default=False, metadata={"group": "model", "help": "freeze the backbone"})

    parser = _config_parser(Extended)
    args = parser.parse_args(["--weights", "w.pth", "--mask-categories", "circle,square", "--freeze"])
    assert config_overrides(args, Extended) == {"weights": "w.pth", "mask_categories": ("circle", "square"),
                                                "freeze": True}

    @dataclasses.dataclass
    class WithoutHelp(TrainConfig):
        secret: int = 3

    with pytest.raises(TypeError, match="secret"):
        _config_parser(WithoutHelp)


def test_resume_keeps_the_saved_configuration_but_the_options_given(tmp_path, capsys):
    from minimaskrcnn.checkpoint import load_training_config

    run = ["--output-dir", str(tmp_path / "runs"), "--name", "r"]
    tiny = ["--data-dir", str(tmp_path / "shapes"), "--num-train-images", "2", "--num-val-images", "1",
            "--image-size", "64", "--min-size", "64", "--max-size", "64", "--batch-size", "1",
            "--val-loss-images", "0", "--val-iou-types", "bbox", "--lr", "0.005", "--no-progress"]
    assert main(["train", *run, *tiny, "--steps", "1"]) == 0
    assert main(["train", *run, "--resume", "--steps", "2", "--seed", "5"]) == 0
    config = load_training_config(tmp_path / "runs" / "r")
    assert config.steps == 2 and config.seed == 5  # given again: changed
    assert config.lr == 0.005 and config.image_size == 64 and config.val_iou_types == ("bbox",)  # kept
    assert config.progress  # the progress bar is a matter of the command line at hand
    assert "done: step 2" in capsys.readouterr().out


def test_train_with_mask_categories_on_the_coco_sample(tmp_path, capsys):
    """--mask-categories voc end to end: the non-VOC instances of the COCO sample train boxes only."""
    from minimaskrcnn.data.coco import BoxOnlyInstancesWarning

    argv = ["train", "--dataset", "coco-sample", "--model", "r18-coco-tiny", "--mask-categories", "voc",
            "--min-size", "96", "--max-size", "128", "--steps", "2", "--batch-size", "1", "--train-max-images", "2",
            "--val-max-images", "1", "--val-loss-images", "0", "--output-dir", str(tmp_path), "--name", "voc",
            "--model-arg", "mask.class_agnostic=true", "--model-arg", "mask.train_rois=gt_boxes", "--no-progress"]
    with pytest.warns(BoxOnlyInstancesWarning, match=r"instances are box-only .*outside mask_categories \(person"):
        code, out, _ = _run(argv, capsys)
    assert code == 0 and "mask AP" in out
    config = json.loads((tmp_path / "voc" / "config.json").read_text())
    assert config["mask_categories"] == "voc"
    assert config["model_kwargs"] == {"mask.class_agnostic": True, "mask.train_rois": "gt_boxes"}
    # a category the data set does not have: one line, exit code 2, nothing trained
    code, _, err = _run(argv[:6] + ["unicorn"] + argv[7:-7] + ["--name", "bad", "--no-progress"], capsys)
    _assert_one_line_error(code, err, "no category named 'unicorn'", "instances_train2017.json")
    assert not (tmp_path / "bad" / "checkpoint.npz").exists()
