"""GeneralizedRCNNTransform: the resize rule, bit-exact bilinear resizing, padding, and parity with torchvision."""
import numpy as np
import pytest

from minimaskrcnn.models.transform import (
    GeneralizedRCNNTransform,
    resize_bilinear,
    resize_boxes,
    resize_nearest,
    resized_size,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_resize_rule():
    # short side to 800 ...
    assert resized_size(480, 640, 800, 1333) == ((800, 1066), 800 / 480)
    # ... unless the long side would pass max_size
    (h, w), scale = resized_size(300, 1000, 800, 1333)
    assert scale == pytest.approx(1333 / 1000) and (h, w) == (399, 1333)


def test_resize_bilinear_identity_and_constant():
    x = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(x, (5, 7)), x)
    c = np.full((1, 6, 9), 0.25, np.float32)
    np.testing.assert_allclose(resize_bilinear(c, (13, 20)), 0.25, rtol=0, atol=1e-7)


def test_resize_bilinear_by_hand():
    # 2 -> 4 columns: source positions (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
    x = np.array([[[0.0, 1.0]]], np.float64)
    np.testing.assert_allclose(resize_bilinear(x, (1, 4))[0, 0], [0.0, 0.25, 0.75, 1.0])


def test_batch_pads_to_multiple_of_32():
    t = GeneralizedRCNNTransform(64, 100, MEAN, STD)
    t.eval()
    images = [np.ones((3, 60, 70), np.float32), np.ones((3, 50, 90), np.float32)]
    image_list, _ = t(images)
    # 60x70 -> 64x74 (short side); 50x90 -> 55x100 (long side capped); padded to 64x128
    assert image_list.image_sizes == [(64, 74), (55, 100)]
    assert image_list.tensors.shape == (2, 3, 64, 128)
    # padding is zero, the image is normalised
    assert image_list.tensors[1, 0, 55:].max() == 0 and image_list.tensors[0, 0, :, 74:].max() == 0
    np.testing.assert_allclose(image_list.tensors[0, 0, :64, :74], (1 - MEAN[0]) / STD[0], rtol=1e-6)


def test_targets_are_resized_and_not_modified():
    t = GeneralizedRCNNTransform(80, 1000, MEAN, STD)  # 50x40 -> 100x80
    boxes = np.array([[10.0, 5.0, 30.0, 25.0]], np.float32)
    masks = np.zeros((1, 50, 40), np.uint8)
    masks[0, 5:25, 10:30] = 1
    targets = [{"boxes": boxes, "labels": np.array([1]), "masks": masks}]
    _, new = t([np.zeros((3, 50, 40), np.float32)], targets)
    np.testing.assert_allclose(new[0]["boxes"], boxes * 2)
    assert new[0]["masks"].shape == (1, 100, 80) and new[0]["masks"].dtype == np.uint8
    assert new[0]["masks"].sum() == 4 * masks.sum()
    assert targets[0]["boxes"] is boxes and targets[0]["masks"].shape == (1, 50, 40)


def test_training_picks_min_size_from_tuple():
    t = GeneralizedRCNNTransform((64, 96), 1000, MEAN, STD, seed=0)
    t.train()
    sizes = {t([np.zeros((3, 32, 32), np.float32)])[0].image_sizes[0][0] for _ in range(20)}
    assert sizes == {64, 96}
    t.eval()
    assert t([np.zeros((3, 32, 32), np.float32)])[0].image_sizes == [(96, 96)]


def test_resize_boxes_back():
    boxes = np.array([[0, 0, 100, 50]], np.float32)
    np.testing.assert_allclose(resize_boxes(boxes, (200, 400), (100, 100)), [[0, 0, 25, 25]])


@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,min_size,max_size", [((3, 480, 640), 800, 1333), ((3, 333, 500), 128, 160),
                                                      ((3, 100, 30), 120, 300), ((3, 427, 640), 256, 384)])
def test_resize_bilinear_matches_torch(dtype, shape, min_size, max_size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random(shape).astype(dtype)
    (h, w), scale = resized_size(shape[1], shape[2], min_size, max_size)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=scale, mode="bilinear",
                                               recompute_scale_factor=True, align_corners=False)[0].numpy()
    ours = resize_bilinear(x, (h, w))
    assert ours.shape == expected.shape
    if dtype == np.float32:
        # bit for bit against torch's multi-threaded CPU kernel; its single-thread path (the tests
        # set OMP_NUM_THREADS=1) rounds the interpolation weights differently: a few float32 ulps
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-13)


@pytest.mark.reference
def test_resize_nearest_matches_torch():
    torch = pytest.importorskip("torch")
    m = (np.random.default_rng(2).random((3, 57, 43)) > 0.5).astype(np.float32)
    for size in [(114, 86), (100, 75), (30, 20)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(m)[:, None], size=size)[:, 0].numpy()
        np.testing.assert_array_equal(resize_nearest(m, size), expected)


@pytest.mark.reference
@pytest.mark.parametrize("training", [False, True])
def test_transform_matches_torchvision(training):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.transform import GeneralizedRCNNTransform as TVTransform

    rng = np.random.default_rng(3)
    images = [rng.random((3, 90, 120)).astype(np.float32), rng.random((3, 130, 70)).astype(np.float32)]
    targets = []
    for img in images:
        h, w = img.shape[1:]
        masks = (rng.random((2, h, w)) > 0.5).astype(np.uint8)
        boxes = np.array([[3.0, 4.0, 50.5, 60.25], [10.0, 1.0, 20.0, 80.0]], np.float32)
        targets.append({"boxes": boxes, "labels": np.array([1, 2]), "masks": masks})
    tv = TVTransform(160, 200, list(MEAN), list(STD)).train(training)
    ours = GeneralizedRCNNTransform(160, 200, MEAN, STD).train(training)
    tv_targets = [{k: torch.from_numpy(v) for k, v in t.items()} for t in targets] if training else None
    expected, expected_targets = tv([torch.from_numpy(i) for i in images], tv_targets)
    got, got_targets = ours(images, targets if training else None)
    assert got.image_sizes == [tuple(s) for s in expected.image_sizes]
    np.testing.assert_allclose(got.tensors, expected.tensors.numpy(), rtol=1e-6, atol=1e-6)  # see above
    if training:
        for e, g in zip(expected_targets, got_targets):
            np.testing.assert_array_equal(g["boxes"], e["boxes"].numpy())
            np.testing.assert_array_equal(g["masks"], e["masks"].numpy())


@pytest.mark.reference
def test_postprocess_matches_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.transform import GeneralizedRCNNTransform as TVTransform

    rng = np.random.default_rng(4)
    boxes = np.array([[10.0, 12.0, 60.0, 70.0], [0.0, 0.0, 30.5, 20.0], [80.0, 5.0, 159.0, 99.0]], np.float32)
    masks = rng.random((3, 1, 28, 28)).astype(np.float32)
    image_sizes, original = [(100, 160)], [(50, 81)]
    tv = TVTransform(100, 200, list(MEAN), list(STD)).eval()
    expected = tv.postprocess(
        [{"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)}], image_sizes, original
    )
    ours = GeneralizedRCNNTransform(100, 200, MEAN, STD).eval()
    got = ours.postprocess([{"boxes": boxes.copy(), "masks": masks}], image_sizes, original)
    np.testing.assert_allclose(got[0]["boxes"], expected[0]["boxes"].numpy(), rtol=0, atol=1e-5)
    assert got[0]["masks"].shape == (3, 1, 50, 81)
    np.testing.assert_allclose(got[0]["masks"], expected[0]["masks"].numpy(), rtol=0, atol=1e-5)
