"""The global batch in one process: keyed randomness, padding to the global batch, loss counts, and
the arithmetic of data parallelism (a batch split in parts, losses rescaled by global counts, gradients
summed, equals the whole batch) without MPI."""
import numpy as np
import pytest

from minimaskrcnn.data.figures import FiguresDataset
from minimaskrcnn.data.shapes import generate_shapes_image
from minimaskrcnn.distributed import global_loss_stats, loss_weights, shard_slots
from minimaskrcnn.global_batch import (
    STREAM_RPN_SAMPLER,
    GlobalBatch,
    current_batch,
    global_batch,
    image_generators,
    note_loss_count,
    padded_batch_shape,
)
from minimaskrcnn.intermediates import record_intermediates
from minimaskrcnn.models import build_model
from minimaskrcnn.models.mask_rcnn import LOSS_NAMES
from minimaskrcnn.ops.matcher import BalancedPositiveNegativeSampler

TINY = dict(num_classes=4, min_size=64, max_size=64, rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=40,
            rpn_batch_size_per_image=32, box_batch_size_per_image=16, seed=0)


def shapes_batch(n: int, sizes=None, seed: int = 0):
    """n shapes images (3, H, W) float in [0, 1] and their targets; sizes: (h, w) per image."""
    images, targets = [], []
    for i in range(n):
        size = (64, 64) if sizes is None else sizes[i]
        s = generate_shapes_image(np.random.default_rng([seed, i]), size, min_size=12, max_size=30)
        images.append(s.image.transpose(2, 0, 1).astype(np.float32) / 255)
        targets.append({"boxes": s.boxes, "labels": s.labels, "masks": s.masks})
    return images, targets


# ------------------------------------------------------------------------------ the context
def test_context_nests_and_restores():
    assert current_batch() is None
    with global_batch(1, 2, [0, 1]) as outer:
        with global_batch(1, 3, [1]) as inner:
            assert current_batch() is inner
        assert current_batch() is outer
    assert current_batch() is None
    note_loss_count("loss_x", 3)  # outside a block: nothing noted, nothing raised
    assert image_generators(2, STREAM_RPN_SAMPLER) is None


def test_generators_are_keyed_by_seed_step_image_and_stream():
    a = GlobalBatch(seed=5, step=7, image_indices=(2, 3))
    b = GlobalBatch(seed=5, step=7, image_indices=(0, 1, 2, 3))
    draw = lambda g: g.integers(1 << 62, size=4).tolist()
    # image 2 draws the same in a process holding images 2-3 as in one holding the whole batch
    assert draw(a.image_generators(1)[0]) == draw(b.image_generators(1)[2])
    # and differently for another stream, step, seed or image
    ref = draw(a.generator(2, 1))
    for other in (a.generator(2, 2), GlobalBatch(5, 8, (2,)).generator(2, 1), GlobalBatch(6, 7, (2,)).generator(2, 1),
                  a.generator(3, 1)):
        assert draw(other) != ref


def test_bad_global_batches_are_refused():
    with pytest.raises(ValueError, match="seed and step"):
        GlobalBatch(seed=-1, step=0, image_indices=(0,))
    with pytest.raises(ValueError, match="outside the global batch"):
        GlobalBatch(seed=0, step=0, image_indices=(2,), image_sizes=((8, 8), (8, 8)))
    with global_batch(0, 0, [0, 1]), pytest.raises(ValueError, match="2 image indices, the model 3"):
        image_generators(3, STREAM_RPN_SAMPLER)


def test_sampler_draws_each_image_from_its_generator():
    sampler = BalancedPositiveNegativeSampler(8, 0.25, generator=0)
    labels = [np.array([1] * 5 + [0] * 30 + [-1] * 5, dtype=np.float32) for _ in range(2)]
    gens = lambda: [np.random.default_rng(10), np.random.default_rng(11)]
    pos, neg = sampler(labels, generators=gens())
    pos2, neg2 = sampler(labels[1:], generators=gens()[1:])  # image 1 alone: the same draw
    assert np.array_equal(pos[1], pos2[0]) and np.array_equal(neg[1], neg2[0])
    assert not np.array_equal(neg[0], neg[1])  # the two images' keys differ
    assert [int(p.sum()) for p in pos] == [2, 2] and [int(n.sum()) for n in neg] == [6, 6]
    with pytest.raises(ValueError, match="1 generators for 2 images"):
        sampler(labels, generators=gens()[:1])


def test_padded_batch_shape_rounds_up_the_largest_sides():
    assert padded_batch_shape([(60, 64), (64, 33)], 32) == (64, 64)
    assert padded_batch_shape([(65, 10)], 32) == (96, 32)
    assert padded_batch_shape([], 32) is None


def test_shard_slots_cover_the_batch_in_rank_order():
    for batch in range(0, 9):
        for size in (1, 2, 3, 4):
            slots = [list(shard_slots(batch, r, size)) for r in range(size)]
            assert sum(slots, []) == list(range(batch))
            assert max(map(len, slots)) - min(map(len, slots)) <= 1
    assert list(shard_slots(4, 1, 2)) == [2, 3]


def test_loss_stats_weigh_each_rank_by_its_count():
    class TwoRanks:  # an allgather that answers with two ranks' contributions
        size = 2

        def __init__(self, other):
            self.other = other

        def allgather(self, obj):
            return [obj, self.other]

    other = {"loss_a": (3, 2.0), "loss_b": (2, 5.0)}  # rank 1: mean 2 over 3 terms; loss_b over 2 images
    values, counts = global_loss_stats(TwoRanks(other), {"loss_a": 1.0, "loss_b": 1.0}, {"loss_a": 1}, num_images=2)
    assert counts == {"loss_a": 4, "loss_b": 4}
    assert values["loss_a"] == pytest.approx((1.0 * 1 + 2.0 * 3) / 4)
    assert values["loss_b"] == pytest.approx((1.0 * 2 + 5.0 * 2) / 4)
    assert loss_weights({"loss_a": 1}, counts) == {"loss_a": 0.25, "loss_b": 0.0}
    assert loss_weights({"loss_a": 0}, {"loss_a": 0}) == {"loss_a": 0.0}


# ---------------------------------------------------------------------- padding and resizing
def test_every_part_of_the_batch_is_padded_like_the_whole():
    model = build_model("r18-shapes", **{**TINY, "min_size": (48, 64), "max_size": 96}).train()
    images, targets = shapes_batch(4, sizes=[(64, 64), (40, 64), (64, 96), (64, 48)])
    sizes = [img.shape[-2:] for img in images]
    with global_batch(3, 1, [0, 1, 2, 3], sizes):
        whole, _ = model.transform(images, targets)
    with global_batch(3, 1, [2, 3], sizes):
        part, _ = model.transform(images[2:], targets[2:])
    assert part.tensors.shape[-2:] == whole.tensors.shape[-2:]
    assert part.image_sizes == whole.image_sizes[2:]  # the same min_size drawn for images 2 and 3
    assert np.array_equal(part.tensors, whole.tensors[2:])
    with global_batch(3, 1, [2, 3], sizes), pytest.raises(ValueError, match="global_batch says image 2"):
        model.transform(images[:2], targets[:2])


# ------------------------------------------------------------------ the arithmetic of data parallelism
def _losses_and_grads(model, images, targets, seed, step, indices, sizes):
    """One part's forward: its losses (Tensors), their noted counts; no backward yet."""
    with global_batch(seed, step, indices, sizes) as gb:
        losses = model(images, targets)
    return losses, dict(gb.loss_counts)


def _grads(model):
    return {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}


def figures_batch(n: int):
    """n stick-figure images (3, 128, 128) float in [0, 1] and their targets with keypoints and masks."""
    ds = FiguresDataset(n, seed=0)
    images, targets = zip(*[ds[i] for i in range(n)])
    return list(images), list(targets)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parts_rescaled_by_global_counts_sum_to_the_whole_batch_gradient(dtype):
    model = build_model("r18-shapes", **TINY).train().to_dtype(dtype)
    check_parts_sum_to_the_whole(model, *shapes_batch(4), LOSS_NAMES, dtype)


def test_keypoint_loss_notes_its_count_and_parts_sum_to_the_whole():
    """The keypoint loss (a mean over the valid (RoI, keypoint) pairs) is weighted by global counts too,
    in a model with both a mask and a keypoint branch."""
    tiny = {**TINY, "num_classes": 2}
    model = build_model("r18-figures-kp-mask", **tiny).train().to_dtype(np.float64)
    names = (*LOSS_NAMES, "loss_keypoint")
    check_parts_sum_to_the_whole(model, *figures_batch(4), names, np.float64)


def check_parts_sum_to_the_whole(model, images, targets, loss_names, dtype):
    LOSS_NAMES = loss_names  # noqa: N806 (the names this model's losses have)
    sizes = [img.shape[-2:] for img in images]

    # the whole batch in one pass
    losses, counts = _losses_and_grads(model, images, targets, 0, 5, range(4), sizes)
    assert set(counts) == set(LOSS_NAMES)  # every loss notes what it is a mean over
    model.zero_grad()
    sum(losses.values()).backward()
    whole = _grads(model)
    whole_values = {k: float(v.item()) for k, v in losses.items()}

    # two parts, as two ranks would compute them; counts summed as the allgather does
    parts = [_losses_and_grads(model, images[s], targets[s], 0, 5, range(4)[s], sizes)
             for s in (slice(0, 2), slice(2, 4))]
    global_counts = {k: sum(c[k] for _, c in parts) for k in LOSS_NAMES}
    assert global_counts == counts  # the parts' counts add up to the whole batch's
    summed = {}
    part_values = []
    for part_losses, part_counts in parts:
        weights = loss_weights(part_counts, global_counts)
        model.zero_grad()
        sum(v * weights[k] for k, v in part_losses.items()).backward()
        for n, g in _grads(model).items():
            summed[n] = summed.get(n, 0) + g
        part_values.append(({k: float(v.item()) for k, v in part_losses.items()}, part_counts))
    assert summed.keys() == whole.keys()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    largest = max(np.abs(g).max() for g in whole.values())
    for n in whole:
        # a gradient that is zero in exact arithmetic (the keypoint predictor's bias: a softmax does not
        # see a shift of all its logits) is compared at the scale of the largest one
        scale = max(np.abs(whole[n]).max(), 1e-6 * largest)
        assert np.abs(summed[n] - whole[n]).max() / scale < tol, n
    # and the losses of the whole batch follow from the parts' values and counts
    for k in LOSS_NAMES:
        combined = sum(v[k] * c[k] for v, c in part_values) / global_counts[k]
        assert combined == pytest.approx(whole_values[k], rel=tol)



# ------------------------------------------------- box-only instances (Deep-MAC): the mask loss's count
@pytest.mark.parametrize("train_rois", ["gt_boxes", "proposals"])
def test_mask_loss_with_box_only_instances_notes_the_masked_count_and_parts_sum_to_the_whole(train_rois):
    """The mask loss is a mean over the pixels of the RoIs whose instance has a mask: that count is noted,
    so a part holding only box-only instances weighs nothing and the parts' gradients sum to the whole's
    (with "proposals", one random positive per object, drawn from the image's keyed generator)."""
    size = 8  # mask RoIAlign output: masks of 2 x 8 = 16 pixels a side
    kwargs = {**TINY, "mask.class_agnostic": True, "mask.train_rois": train_rois, "mask.roi_output_size": size,
              "mask.train_rois_per_object": 1 if train_rois == "proposals" else None}
    model = build_model("r18-shapes", **kwargs).train().to_dtype(np.float64)
    images, targets = shapes_batch(4)
    # image 0: every instance box-only; image 1: every other one; images 2 and 3: all but the last (if 2+)
    m = [len(t["labels"]) for t in targets]
    has = [np.zeros(m[0], bool), np.arange(m[1]) % 2 == 0] + [np.arange(k) < max(k - 1, 1) for k in m[2:]]
    assert all(h.any() for h in has[1:]) and not all(h.all() for h in has)
    targets = [dict(t, has_mask=h) for t, h in zip(targets, has)]
    sizes = [img.shape[-2:] for img in images]

    with record_intermediates() as rec:
        losses, counts = _losses_and_grads(model, images, targets, 0, 5, range(4), sizes)
    if train_rois == "gt_boxes":  # every instance with a mask, once
        instances = sum(int(h.sum()) for h in has)
    else:  # one RoI per instance with a mask among the sampled positive RoIs
        instances = sum(len(np.unique(idx[(lbl > 0) & h[idx]]))
                        for idx, lbl, h in zip(rec["roi_matched_idxs"], rec["roi_labels"], has))
    assert instances > 0 and len(rec["mask_proposals"][0]) == 0  # nothing cropped from the box-only image
    assert counts["loss_mask"] == instances * (2 * size) ** 2 == rec["mask_targets"].size
    model.zero_grad()
    sum(losses.values()).backward()
    whole = _grads(model)

    # a part holding only image 0 (all box-only) and one holding the rest, as two ranks would
    parts = [_losses_and_grads(model, images[s], targets[s], 0, 5, range(4)[s], sizes)
             for s in (slice(0, 1), slice(1, 4))]
    assert parts[0][1]["loss_mask"] == 0 and parts[0][0]["loss_mask"].item() == 0
    global_counts = {k: sum(c[k] for _, c in parts) for k in LOSS_NAMES}
    assert global_counts == counts
    summed = {}
    for part_losses, part_counts in parts:
        weights = loss_weights(part_counts, global_counts)
        model.zero_grad()
        sum(v * weights[k] for k, v in part_losses.items()).backward()
        for n, g in _grads(model).items():
            summed[n] = summed.get(n, 0) + g
    assert summed.keys() == whole.keys()
    assert any(n.startswith("roi_heads.mask_head.") for n in whole)
    for n in whole:
        scale = max(np.abs(whole[n]).max(), 1e-12)
        assert np.abs(summed[n] - whole[n]).max() / scale < 1e-10, n
