"""Very elongated images: resizing keeps at least one pixel per side, and the model runs on them."""
import numpy as np
import pytest

from minimaskrcnn.data.transforms import resize
from minimaskrcnn.models import build_model
from minimaskrcnn.models.transform import GeneralizedRCNNTransform, resized_size


@pytest.mark.parametrize("height, width, min_size, max_size", [(6, 2000, 128, 128), (2000, 6, 128, 128),
                                                               (5, 300, 32, 32), (1, 100000, 800, 1333)])
def test_resized_size_keeps_one_pixel_per_side(height, width, min_size, max_size):
    (h, w), scale = resized_size(height, width, min_size, max_size)
    assert np.floor(min(height, width) * scale) == 0  # torchvision's rule alone would give 0
    assert min(h, w) == 1 and max(h, w) == int(np.floor(max(height, width) * scale))


def test_resized_size_of_ordinary_images_is_torchvisions():
    assert resized_size(480, 640, 800, 1333) == ((800, 1066), 800 / 480)
    with pytest.raises(ValueError, match="0 x 5"):
        resized_size(0, 5, 800, 1333)


def test_data_resize_and_model_transform_keep_one_pixel():
    image = np.random.default_rng(0).random((3, 5, 300)).astype(np.float32)
    masks = np.zeros((1, 5, 300), np.uint8)
    masks[0, 1:4, 10:60] = 1
    target = {"boxes": np.array([[10, 1, 60, 4]], np.float32), "masks": masks}
    out, t = resize(image, target, 32, 32)
    assert out.shape == (3, 1, 32) and t["masks"].shape == (1, 1, 32)
    transform = GeneralizedRCNNTransform(32, 32, (0.5,) * 3, (0.25,) * 3)
    batch, targets = transform([image], [target])
    assert batch.image_sizes == [(1, 32)] and batch.tensors.shape == (1, 3, 32, 32)
    boxes = targets[0]["boxes"]
    assert (boxes[:, 2:] > boxes[:, :2]).all()  # still a box with a positive height


def test_model_detects_on_a_6x2000_image_and_trains_on_a_5x300_one():
    model = build_model("r18-shapes", seed=0, box_score_thresh=0.0)
    model.eval()
    image = np.random.default_rng(1).random((3, 6, 2000)).astype(np.float32)
    out = model([image])[0]
    assert out["masks"].shape[1:] == (1, 6, 2000) and len(out["boxes"]) == len(out["scores"])
    assert (out["boxes"][:, [0, 2]] <= 2000).all() and (out["boxes"][:, [1, 3]] <= 6).all()

    model = build_model("r18-shapes", seed=0, min_size=32, max_size=32)
    model.train()
    masks = np.zeros((1, 5, 300), np.uint8)
    masks[0, 1:4, 10:60] = 1
    target = {"boxes": np.array([[10, 1, 60, 4]], np.float32), "labels": np.array([1]), "masks": masks}
    losses = model([np.random.default_rng(2).random((3, 5, 300)).astype(np.float32)], [target])
    total = sum(float(v.item()) for v in losses.values())
    assert np.isfinite(total)
