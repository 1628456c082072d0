"""Transforms keep image, boxes and masks together; the DataLoader's order is seeded and resumable."""
import numpy as np
import pytest

from minimaskrcnn.data import ShapesDataset
from minimaskrcnn.data.transforms import (
    Compose,
    DataLoader,
    RandomHorizontalFlip,
    Resize,
    collate,
    hflip,
    resize,
    resize_bilinear,
    resize_nearest,
)


def _sample(index=0, seed=0):
    return ShapesDataset(8, seed=seed)[index]


def _mask_box(mask):
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def test_hflip_twice_is_identity():
    image, target = _sample(0)
    target = dict(target, crowd_boxes=target["boxes"][:1] + 0.25, crowd_masks=target["masks"][:1])
    image2, target2 = hflip(*hflip(image, target))
    np.testing.assert_array_equal(image2, image)
    for key in ("boxes", "masks", "labels", "crowd_boxes", "crowd_masks"):
        np.testing.assert_array_equal(target2[key], target[key], err_msg=key)


def test_hflip_moves_boxes_with_masks():
    image, target = _sample(1)
    flipped_image, flipped = hflip(image, target)
    np.testing.assert_array_equal(flipped_image[:, :, 0], image[:, :, -1])
    for box, mask in zip(flipped["boxes"], flipped["masks"]):
        np.testing.assert_array_equal(box, _mask_box(mask))  # tight boxes stay tight
    assert target["boxes"] is not flipped["boxes"]  # the input is not modified
    hand = hflip(np.zeros((3, 2, 10), np.float32), {"boxes": np.array([[1.0, 0.0, 3.0, 2.0]], np.float32)})[1]
    np.testing.assert_array_equal(hand["boxes"], [[7, 0, 9, 2]])


@pytest.mark.parametrize("min_size,max_size", [(256, 1000), (64, 1000), (200, 150)])
def test_resize_keeps_boxes_and_masks_consistent(min_size, max_size):
    image, target = _sample(2)
    out_image, out = resize(image, target, min_size, max_size)
    scale = min(min_size / 128, max_size / 128)
    side = int(np.floor(128 * scale))
    assert out_image.shape == (3, side, side) and out["masks"].shape[1:] == (side, side)
    np.testing.assert_allclose(out["boxes"], target["boxes"] * side / 128, rtol=1e-6)
    np.testing.assert_allclose(out["area"], target["area"] * (side / 128) ** 2, rtol=1e-5)
    for box, mask in zip(out["boxes"], out["masks"]):
        # nearest-neighbour masks stay within a resampled pixel of the scaled box
        np.testing.assert_allclose(_mask_box(mask), box, atol=max(side / 128, 1) + 1e-3)
    assert out_image.min() >= 0 and out_image.max() <= 1


def test_resize_of_a_non_square_image_caps_the_longer_side():
    image = np.random.default_rng(0).random((3, 100, 400), dtype=np.float32)
    out, _ = resize(image, None, 800, 1333)
    assert out.shape == (3, 333, 1333)
    out, _ = resize(image, None, 50, 1333)
    assert out.shape == (3, 50, 200)


def test_bilinear_and_nearest_by_hand():
    image = np.array([[[0.0, 1.0], [2.0, 3.0]]], dtype=np.float32)
    np.testing.assert_allclose(resize_bilinear(image, 4, 4)[0, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(resize_bilinear(image, 4, 4)[0, :, 0], [0, 0.5, 1.5, 2])
    np.testing.assert_allclose(resize_bilinear(image, 1, 1), [[[1.5]]])
    masks = np.array([[[1, 0], [0, 1]]], dtype=np.uint8)
    np.testing.assert_array_equal(resize_nearest(masks, 4, 4)[0], np.kron(masks[0], np.ones((2, 2), np.uint8)))


@pytest.mark.parametrize("size", [(480, 640), (427, 640), (37, 100), (1000, 300), (128, 128)])
def test_resize_matches_torchvision(size):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes

    rng = np.random.default_rng(0)
    height, width = size
    image = rng.random((3, height, width), dtype=np.float32)
    masks = (rng.random((2, height, width)) > 0.5).astype(np.uint8)
    boxes = np.array([[1.5, 2.0, width - 3.0, height - 1.0], [0, 0, 10, 7]], dtype=np.float32)
    for min_size, max_size in [(800, 1333), (64, 100)]:
        ref_image, ref_target = _resize_image_and_masks(torch.from_numpy(image), min_size, max_size,
                                                        {"masks": torch.from_numpy(masks)})
        ref_boxes = resize_boxes(torch.from_numpy(boxes), (height, width), tuple(ref_image.shape[-2:]))
        out_image, out = resize(image, {"masks": masks, "boxes": boxes}, min_size, max_size)
        assert out_image.shape == tuple(ref_image.shape)
        np.testing.assert_allclose(out_image, ref_image.numpy(), rtol=0, atol=2e-7)
        np.testing.assert_array_equal(out["masks"], ref_target["masks"].numpy())
        np.testing.assert_array_equal(out["boxes"], ref_boxes.numpy())


def test_random_flip_and_compose_follow_the_rng():
    image, target = _sample(3)
    never, always = RandomHorizontalFlip(p=0.0), RandomHorizontalFlip(p=1.0)
    assert never(image, target)[0] is image
    np.testing.assert_array_equal(always(image, target)[0], image[:, :, ::-1])
    pipeline = Compose([RandomHorizontalFlip(0.5), Resize(min_size=(64, 96, 160), max_size=1000)])
    runs = [pipeline(image, target, rng=np.random.default_rng(s))[0] for s in (1, 1, 2, 3, 4, 5)]
    np.testing.assert_array_equal(runs[0], runs[1])  # same generator, same result
    assert len({r.shape for r in runs}) > 1  # the size is drawn
    assert "Resize" in repr(pipeline)


def test_collate_keeps_images_of_different_sizes_apart():
    a = (np.zeros((3, 4, 5), np.float32), {"image_id": 1})
    b = (np.zeros((3, 6, 2), np.float32), {"image_id": 2})
    images, targets = collate([a, b])
    assert [i.shape for i in images] == [(3, 4, 5), (3, 6, 2)] and [t["image_id"] for t in targets] == [1, 2]


class _Indexed:
    """A data set whose sample i is (image whose pixels equal i, target)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = np.full((1, 2, 3), i, dtype=np.float32)
        image[0, 0, 0] = -1  # marks the left edge, to see flips
        return image, {"image_id": i, "boxes": np.array([[0, 0, 1, 1]], np.float32)}


def _ids(batch):
    return [t["image_id"] for t in batch[1]]


def test_loader_order_is_seeded_and_covers_each_epoch():
    loader = DataLoader(_Indexed(10), batch_size=3, shuffle=True, seed=4)
    assert len(loader) == 4
    epoch0 = [i for batch in loader for i in _ids(batch)]
    epoch1 = [i for batch in loader for i in _ids(batch)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1 and loader.epoch == 2
    again = DataLoader(_Indexed(10), batch_size=3, shuffle=True, seed=4)
    assert [i for batch in again for i in _ids(batch)] == epoch0
    other = DataLoader(_Indexed(10), batch_size=3, shuffle=True, seed=5)
    assert [i for batch in other for i in _ids(batch)] != epoch0
    plain = DataLoader(_Indexed(5), batch_size=2, drop_last=True)
    assert len(plain) == 2 and [_ids(b) for b in plain] == [[0, 1], [2, 3]]
    subset = DataLoader(_Indexed(10), batch_size=4, indices=[7, 2, 5])
    assert [_ids(b) for b in subset] == [[7, 2, 5]]


def test_loader_resumes_exactly():
    def make():
        return DataLoader(_Indexed(7), batch_size=2, shuffle=True, seed=11, hflip_prob=0.5)

    def signature(batch):
        return [(t["image_id"], float(img[0, 0, -1])) for img, t in zip(*batch)]  # id, flipped or not

    reference = make()
    stream = reference.forever()
    full = [signature(next(stream)) for _ in range(10)]  # 2.5 epochs
    flips = [flipped == -1 for batch in full for _, flipped in batch]
    assert any(flips) and not all(flips)

    interrupted = make()
    stream = interrupted.forever()
    first = [signature(next(stream)) for _ in range(6)]
    state = interrupted.state_dict()
    assert state == {"seed": 11, "epoch": 1, "batch_index": 2}
    resumed = make()
    resumed.load_state_dict(state)
    stream = resumed.forever()
    rest = [signature(next(stream)) for _ in range(4)]
    assert first + rest == full


def test_loader_state_at_an_epoch_boundary():
    loader = DataLoader(_Indexed(4), batch_size=2, shuffle=True, seed=0)
    batches = iter(loader)
    next(batches), next(batches)  # the whole epoch, the generator not yet finished
    state = loader.state_dict()
    resumed = DataLoader(_Indexed(4), batch_size=2, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    expected = [_ids(b) for b in loader]  # epoch 1
    assert len(expected) == 2 and loader.epoch == 2
    assert [_ids(b) for b in resumed] == expected
    with pytest.raises(ValueError):
        DataLoader(_Indexed(0))
    with pytest.raises(ValueError):
        DataLoader(_Indexed(3), batch_size=4, drop_last=True)
