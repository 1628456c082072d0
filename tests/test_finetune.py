"""Starting from torchvision's weights on the command line (random torchvision weights, saved with
torch.save, stand in for the COCO file, which cannot be downloaded here): `train --weights` on a
2-category COCO subset (COCO's predictors kept, or re-made for other categories), `--backbone-weights`,
our own checkpoints as `--weights`, and `predict` / `evaluate` on a torchvision file."""
import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.checkpoint import load_model
from minimaskrcnn.cli import main
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.data import sample_files
from minimaskrcnn.pretrained import PREDICTOR_LAYERS, read_weights
from minimaskrcnn.train import Trainer

pytestmark = pytest.mark.slow
# small inputs and few RoIs: the R50-FPN model trains a step in seconds on a CPU
SMALL_R50 = ["--min-size", "64", "--max-size", "96", "--model-arg", "rpn_post_nms_top_n_train=64",
             "--model-arg", "rpn_post_nms_top_n_test=32", "--model-arg", "box_batch_size_per_image=16",
             "--model-arg", "rpn_batch_size_per_image=32", "--model-arg", "box_detections_per_img=5"]
SUBSET = ("person", "bowl")


def coco_subset(folder, split, names=SUBSET, rename=None, max_images=2):
    """A COCO-format subset of the package's sample: the categories ``names``, images holding them."""
    ann_file, image_dir = sample_files(split)
    data = json.loads(ann_file.read_text())
    cats = [dict(c) for c in data["categories"] if c["name"] in names]
    ids = {c["id"] for c in cats}
    anns = [a for a in data["annotations"] if a["category_id"] in ids]
    keep = sorted({a["image_id"] for a in anns})[:max_images]
    for c in cats:
        c["name"] = (rename or {}).get(c["name"], c["name"])
    subset = {"images": [i for i in data["images"] if i["id"] in keep],
              "annotations": [a for a in anns if a["image_id"] in keep], "categories": cats}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.json"
    path.write_text(json.dumps(subset))
    return path, image_dir


def _config(tmp_path, name, weights=None, rename=None, **kw):
    train_ann, train_img = coco_subset(tmp_path / "subset", "train", rename=rename)
    val_ann, val_img = coco_subset(tmp_path / "subset", "val", rename=rename, max_images=1)
    return TrainConfig(model="maskrcnn_resnet50_fpn", name=name, output_dir=str(tmp_path / "runs"), dataset="coco",
                       train_annotations=str(train_ann), train_images=str(train_img), val_annotations=str(val_ann),
                       val_images=str(val_img), weights=None if weights is None else str(weights), min_size=64,
                       max_size=96, steps=1, batch_size=1, lr=0.01, warmup_steps=0, val_loss_images=0,
                       val_iou_types=("bbox",), progress=False, model_kwargs={
                           "rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32,
                           "box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32,
                           "box_detections_per_img": 5}, **kw)


def _check_start_and_training(trainer, file_state, remade):
    """Every loaded tensor equals the file's at the start; after training, frozen ones still do and
    trainable ones have moved; the re-made (or kept) predictors fit the data set."""
    start = trainer.model.state_dict()
    report = trainer.weights_reports[-1][1]
    assert sorted(report.remade_layers) == sorted(PREDICTOR_LAYERS if remade else [])
    for key in report.loaded:
        np.testing.assert_array_equal(start[key], file_state[key], err_msg=key)
    frozen = {name for name, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen == {k for k in start if k.startswith(("backbone.body.conv1.", "backbone.body.layer1."))
                      and not k.endswith(("running_mean", "running_var")) and ".bn" not in k
                      and "downsample.1" not in k}  # conv weights of the stem and layer1 (norms are buffers)
    result = trainer.fit()
    assert np.isfinite(result["losses"]["loss"])
    end = trainer.model.state_dict()
    for key in start:
        if key in frozen or "bn" in key or "downsample.1" in key:  # frozen convs, frozen batch norms
            np.testing.assert_array_equal(end[key], file_state[key], err_msg=key)
    moved = [k for k in ("backbone.body.layer4.2.conv3.weight", "backbone.fpn.layer_blocks.0.0.weight",
                         "roi_heads.box_head.fc6.weight") if not np.array_equal(end[k], start[k])]
    assert len(moved) == 3, moved
    return report


def test_coco_subset_keeps_coco_ids_and_the_91_way_predictors(tmp_path, torchvision_maskrcnn_file):
    file_state = read_weights(torchvision_maskrcnn_file).state_dict
    trainer = Trainer(_config(tmp_path, "subset", torchvision_maskrcnn_file))
    assert trainer.num_classes == 91 and trainer.class_names[1] == "person" and trainer.class_names[51] == "bowl"
    assert trainer.config.class_names[0] == "person" and not trainer.config.contiguous_labels
    assert trainer.config.norm_eps == 0.0 and trainer.config.trainable_backbone_layers == 3
    assert trainer.model.backbone.body.bn1.eps == 0.0  # torchvision's COCO_V1 convention
    assert sorted(set(trainer.train_dataset.label_to_category_id)) == [1, 51]  # COCO's ids are the labels
    report = _check_start_and_training(trainer, file_state, remade=False)
    assert len(report.loaded) == len(file_state)  # every tensor of the file, the predictors included
    # the run rebuilds from its checkpoint alone: same classes, same eps
    model, names = load_model(trainer.run_dir)
    assert names == trainer.class_names and model.backbone.body.layer2[0].bn1.eps == 0.0


def test_other_categories_get_contiguous_labels_and_remade_predictors(tmp_path, torchvision_maskrcnn_file):
    file_state = read_weights(torchvision_maskrcnn_file).state_dict
    trainer = Trainer(_config(tmp_path, "renamed", torchvision_maskrcnn_file,
                              rename={"person": "walker", "bowl": "dish"}))
    assert trainer.class_names == ["__background__", "walker", "dish"] and trainer.config.contiguous_labels
    state = trainer.model.state_dict()
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (3, 1024)
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape == (12, 1024)
    assert state["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (3, 256, 1, 1)
    report = _check_start_and_training(trainer, file_state, remade=True)
    assert len(report.loaded) == len(file_state) - 6  # all but the three predictors' weights and biases
    np.testing.assert_array_equal(state["roi_heads.mask_predictor.conv5_mask.weight"],
                                  file_state["roi_heads.mask_predictor.conv5_mask.weight"])


def test_train_weights_on_the_command_line(tmp_path, torchvision_maskrcnn_file, capsys):
    config = _config(tmp_path, "cli", rename={"person": "walker"})
    argv = ["train", "--model", "maskrcnn_resnet50_fpn", "--weights", str(torchvision_maskrcnn_file),
            "--dataset", "coco", "--train-annotations", config.train_annotations, "--train-images",
            config.train_images, "--val-annotations", config.val_annotations, "--val-images", config.val_images,
            "--output-dir", str(tmp_path / "runs"), "--name", "cli", "--steps", "1", "--batch-size", "1",
            "--val-loss-images", "0", "--val-iou-types", "bbox", "--trainable-backbone-layers", "2",
            "--no-progress", *SMALL_R50]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "loaded 301 of 307 tensors" in err
    assert ("re-made: roi_heads.box_predictor.cls_score, roi_heads.box_predictor.bbox_pred, "
            "roi_heads.mask_predictor.mask_fcn_logits") in err
    assert "frozen at their starting values: conv1, layer1, layer2" in err
    # the wrong model for the file: one line that says which to use
    assert main(argv[:1] + argv[3:] + ["--name", "wrong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--model maskrcnn_resnet50_fpn" in err
    # a classification file given as --weights, and a detection file as --backbone-weights
    assert main(argv[:3] + ["--backbone-weights", str(torchvision_maskrcnn_file)] + argv[5:]) == 2
    assert "pass it as --weights" in capsys.readouterr().err


def test_backbone_weights_load_the_body(tmp_path, torchvision_resnet50_file, capsys):
    resnet = read_weights(torchvision_resnet50_file).state_dict
    trainer = Trainer(_config(tmp_path, "imagenet", backbone_weights=str(torchvision_resnet50_file)))
    assert trainer.config.norm_eps is None and trainer.model.backbone.body.bn1.eps == 1e-5  # ImageNet: 1e-5
    start = trainer.model.state_dict()
    body = [k for k in start if k.startswith("backbone.body.")]
    for key in body:
        np.testing.assert_array_equal(start[key], resnet[key[len("backbone.body."):]], err_msg=key)
    (path, report), = trainer.weights_reports
    assert sorted(report.loaded) == sorted(body) and path == str(torchvision_resnet50_file)
    # labels as without weights: the sample's COCO ids
    assert trainer.num_classes == 52 and trainer.class_names[51] == "bowl"
    trainer.fit()
    end = trainer.model.state_dict()
    np.testing.assert_array_equal(end["backbone.body.layer1.0.conv1.weight"], resnet["layer1.0.conv1.weight"])
    assert not np.array_equal(end["backbone.body.layer3.0.conv1.weight"], resnet["layer3.0.conv1.weight"])


def test_predict_and_evaluate_with_a_torchvision_file(tmp_path, torchvision_maskrcnn_file, capsys):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", str(torchvision_maskrcnn_file), str(photo), "-o", str(tmp_path / "out"),
                 "--score-threshold", "0", *SMALL_R50]) == 0
    with Image.open(tmp_path / "out" / "photo.png") as picture:
        assert picture.size == (96, 72)
    model, names = load_model(torchvision_maskrcnn_file)
    assert len(names) == 91 and names[18] == "dog" and model.backbone.body.layer3[5].bn3.eps == 0.0
    assert load_model(torchvision_maskrcnn_file, norm_eps=1e-5)[0].backbone.body.bn1.eps == 1e-5
    # evaluate on a COCO subset: the labels are COCO's ids, the other 89 classes are left out of the results
    ann, images = coco_subset(tmp_path / "subset", "val", max_images=1)
    code = main(["evaluate", str(torchvision_maskrcnn_file), "--annotations", str(ann), "--images", str(images),
                 "--iou-types", "bbox", "--results-dir", str(tmp_path / "eval"), "--no-progress", *SMALL_R50])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 51}
    # renamed categories are not the file's classes: one line saying so
    ann, images = coco_subset(tmp_path / "renamed", "val", rename={"person": "walker"}, max_images=1)
    code = main(["evaluate", str(torchvision_maskrcnn_file), "--annotations", str(ann), "--images", str(images),
                 "--no-progress", *SMALL_R50])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: ") and "walker" in err


def test_a_classification_file_is_not_a_detector(tmp_path, torchvision_resnet50_file, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert main(["predict", str(torchvision_resnet50_file), str(photo)]) == 2
    assert "--backbone-weights" in capsys.readouterr().err


def test_our_checkpoint_as_weights(tmp_path, capsys):
    """A run of ours starts another: same categories keep every tensor, others re-make the predictors."""
    from minimaskrcnn.data.shapes import make_shapes_dataset

    shapes = make_shapes_dataset(tmp_path / "shapes", num_images=2, image_size=64, seed=0)
    common = ["--dataset", "coco", "--train-annotations", str(shapes.annotation_file), "--train-images",
              str(shapes.image_dir), "--output-dir", str(tmp_path / "runs"), "--steps", "1", "--batch-size", "2",
              "--val-loss-images", "0", "--no-progress", "--min-size", "64", "--max-size", "64"]
    assert main(["train", "--name", "first", *common]) == 0
    first = read_weights(tmp_path / "runs" / "first")
    assert main(["train", "--name", "second", "--weights", str(tmp_path / "runs" / "first"), *common]) == 0
    err = capsys.readouterr().err
    n = len(first.state_dict)
    assert f"loaded {n} of {n} tensors" in err and "re-made" not in err
    second = Trainer(TrainConfig(**{**TrainConfig().to_dict(), "name": "third", "output_dir": str(tmp_path / "runs"),
                                    "dataset": "coco", "train_annotations": str(shapes.annotation_file),
                                    "train_images": str(shapes.image_dir), "weights": str(tmp_path / "runs" / "first"),
                                    "min_size": 64, "max_size": 64, "progress": False}))
    start = second.model.state_dict()
    for key, value in first.state_dict.items():  # every tensor, the frozen stages' and the predictors'
        np.testing.assert_array_equal(start[key], value, err_msg=key)
    # other categories: contiguous labels, predictors re-made
    data = json.loads(shapes.annotation_file.read_text())
    data["categories"] = [{**c, "name": c["name"] + "-ish"} for c in data["categories"]]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    argv = ["train", "--name", "fourth", "--weights", str(tmp_path / "runs" / "first"), *common]
    argv[argv.index("--train-annotations") + 1] = str(other)
    assert main(argv) == 0
    assert "re-made: roi_heads.box_predictor.cls_score" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "predict"])
def test_help_says_how_to_fetch_torchvisions_files(command, capsys):
    """`--help` (and the README) give the commands that fetch the weights on a machine with network access."""
    from pathlib import Path

    from minimaskrcnn.pretrained import TORCHVISION_MASKRCNN_URL, TORCHVISION_RESNET50_URL

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"curl -LO {TORCHVISION_MASKRCNN_URL}" in text
    if command == "train":
        assert f"curl -LO {TORCHVISION_RESNET50_URL}" in text and "--weights maskrcnn_resnet50_fpn_coco" in text
    else:
        assert "predict maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth photo.jpg" in text and "91" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"curl -LO {TORCHVISION_MASKRCNN_URL}" in readme


@pytest.mark.reference
def test_a_torchvision_file_runs_as_torchvision_runs_its_coco_v1_weights(tmp_path, torchvision_maskrcnn_file):
    """`load_model(file)` is torchvision's `maskrcnn_resnet50_fpn(weights="COCO_V1")`: its transform
    (800 / 1333, ImageNet mean and std) and its frozen batch norms with eps 0.0 (torchvision's
    ``overwrite_eps``). Some running variances are made tiny so that eps 0.0 vs 1e-5 shows."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    state = torch.load(torchvision_maskrcnn_file, weights_only=True)
    g = torch.Generator().manual_seed(1)
    for key in ("backbone.body.bn1.running_var", "backbone.body.layer1.0.bn2.running_var"):
        state[key] = 1e-5 * torch.rand(state[key].shape, generator=g) + 1e-7
    path = tmp_path / "coco_v1_like.pth"
    torch.save(state, path)
    # built as maskrcnn_resnet50_fpn(weights="COCO_V1") builds it: frozen batch norms (without weights
    # it would use BatchNorm2d), 3 trainable layers, then the file's tensors and eps 0.0
    body = torchvision.models.resnet50(weights=None, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    tv = torchvision.models.detection.MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91)
    tv.load_state_dict(state)
    tv.eval()

    model, names = load_model(path)
    assert names[1] == "person" and len(names) == 91
    assert model.transform.min_size == tuple(tv.transform.min_size) == (800,)
    assert model.transform.max_size == tv.transform.max_size == 1333
    np.testing.assert_allclose(model.transform.image_mean, tv.transform.image_mean)
    np.testing.assert_allclose(model.transform.image_std, tv.transform.image_std)

    from minimaskrcnn.tensor import Tensor

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    ours = model.backbone(Tensor(x))
    with torch.no_grad():
        default_eps = tv.backbone(torch.from_numpy(x))
        overwrite_eps(tv, 0.0)
        coco_v1 = tv.backbone(torch.from_numpy(x))
    for level in ("0", "3", "pool"):
        got = np.asarray(ours[level].data)
        scale = float(np.abs(coco_v1[level].numpy()).max())
        np.testing.assert_allclose(got, coco_v1[level].numpy(), rtol=0, atol=1e-4 * scale, err_msg=level)
    assert np.abs(np.asarray(ours["0"].data) - default_eps["0"].numpy()).max() > 1e-2 * scale  # eps matters here


@pytest.mark.mpi
def test_weights_on_two_ranks_give_the_weights_of_one_process(tmp_path):
    """`mpiexec -n 2 minimaskrcnn train --weights RUN`: every rank starts from the file, and the
    data-parallel run ends where one process does (float32, as tests/test_distributed_train.py)."""
    import dataclasses

    from test_distributed_train import mpiexec, relative_difference, run_cli, tiny_config, weights

    mpiexec()  # skips without the distributed extra
    first = tiny_config(tmp_path, "first")
    Trainer(first).fit()  # the starting weights: a run of ours on the same data
    one = dataclasses.replace(tiny_config(tmp_path, "one"), weights=first.run_dir)
    trainer = Trainer(one)
    assert trainer.config.trainable_backbone_layers == 3
    trainer.fit()
    two = dataclasses.replace(tiny_config(tmp_path, "two"), weights=first.run_dir)
    out = run_cli(2, two)
    assert out.returncode == 0, out.stdout + out.stderr
    n = len(weights(first))
    assert out.stderr.count(f"loaded {n} of {n} tensors") == 1  # rank 0 speaks for the job
    a, b = weights(one), weights(two)
    assert relative_difference(a, weights(first)) > 1e-3  # the steps moved the weights
    assert relative_difference(a, b) < 1e-4
