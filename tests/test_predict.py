"""predict.py and visualize.py: images in, PNGs with masks, boxes, names and scores out."""
import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.errors import ImageError
from minimaskrcnn.predict import as_model_image, load_image, predict_files, predict_image
from minimaskrcnn.visualize import (
    LABEL_COLORS,
    color_for,
    draw_anchors,
    draw_boxes,
    draw_detections,
    draw_masks,
    draw_proposals,
    plot_curves,
    show_masks,
    to_uint8_image,
)

H, W = 48, 64


class SquareModel:
    """A stand-in detector: one object, label 2, in a fixed square, plus a low-scoring one."""

    training = True

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def __call__(self, images):
        assert not self.training
        outs = []
        for image in images:
            assert image.dtype == np.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
            h, w = image.shape[1:]
            masks = np.zeros((2, 1, h, w), np.float32)
            masks[0, 0, 10:30, 20:40] = 0.9
            masks[1, 0, 0:5, 0:5] = 0.9
            outs.append({"boxes": np.array([[20, 10, 40, 30], [0, 0, 5, 5]], np.float32),
                         "labels": np.array([2, 1]), "scores": np.array([0.95, 0.1], np.float32), "masks": masks})
        return outs


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def test_image_layouts():
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    chw = as_model_image(rgb)
    assert chw.shape == (3, H, W) and chw.dtype == np.float32
    np.testing.assert_array_equal(to_uint8_image(chw), rgb)
    assert as_model_image(rgb[:, :, 0]).shape == (3, H, W)  # grayscale


def test_load_image_converts_gray_and_rgba(tmp_path):
    gray = _write(tmp_path / "g.png", np.full((H, W), 200, np.uint8))
    rgba = _write(tmp_path / "a.png", np.full((H, W, 4), 100, np.uint8))
    for p in (gray, rgba):
        x = load_image(p)
        assert x.shape == (3, H, W) and x.dtype == np.float32
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_predict_image_from_path_and_array(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    path = _write(tmp_path / "x.png", img)
    model = SquareModel()
    for source in (path, img, str(path)):
        det = predict_image(model, source, score_threshold=0.5)
        assert det["boxes"].shape == (1, 4) and det["masks"].shape == (1, 1, H, W)
        assert det["labels"].tolist() == [2]


def test_predict_files_writes_pngs_with_the_detections_drawn(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a.png", img)
    _write(tmp_path / "in" / "b.jpg", img)
    out = predict_files(SquareModel(), [tmp_path / "in"], tmp_path / "out",
                        class_names=["__background__", "circle", "square"], score_threshold=0.5)
    assert [p.split("/")[-1] for p in out] == ["a.png", "b.png"]
    drawn = np.asarray(Image.open(out[0]))
    assert drawn.shape == (H, W, 3)
    color = np.array(color_for(2))
    # the mask is filled with its class colour (blended), the corner of the low score is not
    inside = drawn[27, 35].astype(int)  # below the caption strip at the top of the box
    assert np.abs(inside - color * 0.45).max() <= 2
    assert (drawn[2, 2] == 0).all()
    # the box outline is drawn in the full colour
    assert (drawn[29, 20] == color).all() or (drawn[30, 20] == color).all()


def test_predict_files_names_a_missing_image(tmp_path):
    with pytest.raises(ImageError, match="nope.jpg"):
        predict_files(SquareModel(), [tmp_path / "nope.jpg"], tmp_path / "out")


def test_draw_detections_threshold_and_caption():
    img = np.zeros((3, H, W), np.float32)
    model = SquareModel()
    model.eval()
    det = model([img])[0]
    none = draw_detections(img, det, score_threshold=0.99)
    assert (none == 0).all()
    one = draw_detections(img, det, class_names=["bg", "circle", "square"], score_threshold=0.5)
    no_text = draw_detections(img, det, class_names=["bg", "circle", "square"], score_threshold=0.5, show_boxes=False)
    # the caption ("square 0.95" on a strip at the box's top) is the only near-white thing drawn
    assert (one.min(axis=-1) > 200).any() and not (no_text.min(axis=-1) > 200).any()


def test_helpers_for_the_lessons():
    img = np.zeros((H, W, 3), np.uint8)
    anchors = np.array([[2, 2, 20, 20], [30, 5, 60, 40], [10, 10, 12, 12]], np.float32)
    labels = np.array([1, 0, -1])
    out = draw_anchors(img, anchors, labels)
    assert (out[2, 10] == LABEL_COLORS[1]).all()  # positive: green
    assert (out[5, 40] == LABEL_COLORS[0]).all()  # negative: red
    assert (out[10, 11] == 0).all()  # ignored: not drawn
    props = draw_proposals(img, anchors, scores=np.array([0.1, 0.9, 0.5]), top_n=1)
    assert (props[5, 40] != 0).any() and (props[2, 10] == 0).all()
    dashed = draw_boxes(img, anchors[:1], colors=(255, 0, 0), dashed=True)
    solid = draw_boxes(img, anchors[:1], colors=(255, 0, 0))
    assert (dashed != 0).sum() < (solid != 0).sum()
    m = np.zeros((1, H, W), bool)
    m[0, 5:15, 5:15] = True
    over = draw_masks(img, m, colors=[(200, 0, 0)], alpha=0.5)
    assert over[10, 10, 0] == 100 and over[0, 0, 0] == 0
    fig = show_masks(np.random.default_rng(0).uniform(size=(5, 1, 14, 14)), titles=list("abcde"), cols=3)
    assert len(fig.axes) == 6


def test_plot_curves_writes_a_png(tmp_path):
    rows = [{"step": s, "loss": 2.0 / s, "loss_mask": 1.0 / s, "lr": 0.01} for s in range(1, 20)]
    rows.append({"step": 19, "val_loss": 0.3, "val_segm_AP50": 0.5})
    plot_curves(rows, tmp_path / "curves.png")
    png = Image.open(tmp_path / "curves.png")
    assert png.size[0] > png.size[1] > 100


def test_predict_command_with_a_trained_checkpoint(tmp_path, capsys):
    """End to end: a (one-step) training run's checkpoint, loaded by the predict command."""
    from minimaskrcnn.checkpoint import load_model
    from minimaskrcnn.cli import main
    from minimaskrcnn.train import TrainConfig, Trainer

    cfg = TrainConfig(name="p", output_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "shapes"),
                      num_train_images=2, num_val_images=1, image_size=64, min_size=64, max_size=64,
                      steps=1, batch_size=1, val_loss_images=0, val_iou_types=("bbox",), progress=False)
    Trainer(cfg).fit()
    model, names = load_model(cfg.run_dir)
    assert names == ["__background__", "circle", "square", "triangle"] and not model.training
    image = tmp_path / "shapes" / "val" / "images" / "000000.png"
    code = main(["predict", cfg.run_dir, str(image), "-o", str(tmp_path / "pred"), "--score-threshold", "0"])
    assert code == 0
    out = tmp_path / "pred" / "000000.png"
    assert str(out) in capsys.readouterr().out
    assert Image.open(out).size == Image.open(image).size


class RecordingModel(SquareModel):
    """SquareModel that keeps the images it was given."""

    def __call__(self, images):
        self.seen = [np.array(image) for image in images]
        return super().__call__(images)


def test_16bit_png_and_array_keep_their_intensities_through_predict(tmp_path):
    raw12 = np.random.default_rng(0).integers(0, 4096, (H, W), dtype=np.uint16)  # a 12-bit camera's values
    raw12[0, 0] = 4095
    Image.fromarray(raw12).save(tmp_path / "cam.png")
    model = RecordingModel()
    predict_files(model, [tmp_path / "cam.png"], tmp_path / "out", score_threshold=0.5)
    seen = model.seen[0]
    assert seen.shape == (3, H, W)
    np.testing.assert_allclose(seen[0], raw12 / 65535.0, rtol=1e-6)  # dark, as stored; never white
    assert (tmp_path / "out" / "cam.png").is_file()
    predict_image(model, raw12)  # the same values given as an array
    np.testing.assert_allclose(model.seen[0][1], raw12 / 65535.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_image(model, raw12.astype(np.float32))  # floats must be intensities in [0, 1]


def test_photos_are_turned_by_their_exif_orientation(tmp_path):
    pixels = np.zeros((H, W, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # shown turned 90 degrees counter-clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    model = RecordingModel()
    out = predict_files(model, [tmp_path / "phone.jpg"], tmp_path / "out")
    assert model.seen[0].shape == (3, W, H)
    assert Image.open(out[0]).size == (H, W)  # the drawing is of the photo as a viewer shows it
