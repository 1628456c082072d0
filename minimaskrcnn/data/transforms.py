"""Data augmentation and batching: resize, horizontal flip, compose, collate, a seeded DataLoader.

A transform is ``t(image, target, rng=None) -> (image, target)`` on (3, H, W) float32 images and
targets as CocoDataset gives them (boxes (M, 4) x1 y1 x2 y2 pixels, masks (M, H, W) uint8, keypoints
(M, NK, 3) and crowd_boxes / crowd_masks when present). Normalisation is not here: the model's transform does it.
Lesson: lessons/ (the data pipeline).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from minimaskrcnn.distributed import shard_slots

__all__ = [
    "Compose",
    "DataLoader",
    "RandomHorizontalFlip",
    "Resize",
    "collate",
    "hflip",
    "keypoint_flip_indices",
    "resize",
    "resize_bilinear",
    "resize_nearest",
]

Target = dict[str, Any]
# target entries that are boxes (x1, y1, x2, y2) and masks (M, H, W)
_BOX_KEYS = ("boxes", "crowd_boxes")
_MASK_KEYS = ("masks", "crowd_masks")


def _source_scale(in_size: int, out_size: int) -> np.float32:
    # PyTorch's area_pixel_compute_scale (align_corners=False, size given): in / out in float32
    return np.float32(in_size) / np.float32(out_size)


def resize_bilinear(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Bilinear resize of (C, H, W) float32, as ``F.interpolate(mode="bilinear", align_corners=False)``.

    Output pixel (i, j) samples the input at ``src = (dst + 0.5) * in / out - 0.5`` (clamped at 0),
    mixing the 2x2 neighbours by distance; no antialiasing when shrinking (as torchvision's Mask R-CNN).

    Args:
        image: (C, H, W) float32.
        out_height, out_width: output size in pixels.

    Returns:
        (C, out_height, out_width) float32.
    """
    _, in_h, in_w = image.shape

    def axis_weights(in_size: int, out_size: int):
        # scale * (dst + 0.5) - 0.5 rounded once to float32 (PyTorch's CPU kernel compiles it to an FMA);
        # exact in float64 because the float32 scale times (dst + 0.5) needs fewer than 53 bits
        dst = np.arange(out_size, dtype=np.float64) + 0.5
        src = (np.float64(_source_scale(in_size, out_size)) * dst - 0.5).astype(np.float32)
        src = np.maximum(src, np.float32(0.0))
        i0 = np.floor(src).astype(np.int64)
        lam1 = (src - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return i0, i1, np.float32(1.0) - lam1, lam1

    h0, h1, lh0, lh1 = axis_weights(in_h, out_height)
    w0, w1, lw0, lw1 = axis_weights(in_w, out_width)
    image = image.astype(np.float32, copy=False)
    # along x first, then y (PyTorch's order of the four-term sum)
    rows0 = image[:, h0, :]
    rows1 = image[:, h1, :]
    top = lw0 * rows0[:, :, w0] + lw1 * rows0[:, :, w1]
    bottom = lw0 * rows1[:, :, w0] + lw1 * rows1[:, :, w1]
    return (lh0[:, None] * top + lh1[:, None] * bottom).astype(np.float32)


def resize_nearest(masks: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Nearest-neighbour resize of (M, H, W) masks, as ``F.interpolate(mode="nearest")``.

    Output pixel i takes input pixel ``min(floor(i * in / out), in - 1)``.

    Args:
        masks: (M, H, W) any dtype.
        out_height, out_width: output size in pixels.

    Returns:
        (M, out_height, out_width), the input's dtype.
    """
    _, in_h, in_w = masks.shape

    def source_index(in_size: int, out_size: int) -> np.ndarray:
        idx = np.floor(np.arange(out_size, dtype=np.float32) * _source_scale(in_size, out_size)).astype(np.int64)
        return np.minimum(idx, in_size - 1)

    return masks[:, source_index(in_h, out_height)][:, :, source_index(in_w, out_width)]


def resize(image: np.ndarray, target: Target | None, min_size: int, max_size: int) -> tuple[np.ndarray, Target | None]:
    """Scale so that the shorter side is ``min_size``, unless the longer would exceed ``max_size``.

    As torchvision's GeneralizedRCNNTransform: ``scale = min(min_size / min(H, W), max_size / max(H, W))``,
    output size ``floor(H * scale)``, ``floor(W * scale)`` but at least 1 pixel (``resized_size``); the
    image bilinear, masks nearest, boxes multiplied by (new W / W, new H / H).

    Args:
        image: (3, H, W) float32.
        target: dict with boxes (M, 4) float32 x1 y1 x2 y2 and masks (M, H, W) uint8 (both optional,
            also crowd_boxes / crowd_masks and keypoints (M, NK, 3), x and y scaled like the boxes;
            area (M,) is scaled by the area ratio), or None.
        min_size, max_size: in pixels.

    Returns:
        (image (3, H', W') float32, a new target dict or None).
    """
    from minimaskrcnn.models.transform import resized_size  # the one rule (it keeps >= 1 pixel per side)

    height, width = image.shape[-2:]
    (out_h, out_w), _ = resized_size(height, width, min_size, max_size)
    image = resize_bilinear(image, out_h, out_w)
    if target is None:
        return image, None
    target = dict(target)
    # float32 ratios, as torchvision's resize_boxes
    ratio_w, ratio_h = np.float32(out_w) / np.float32(width), np.float32(out_h) / np.float32(height)
    ratio = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    for key in _BOX_KEYS:
        if key in target:
            target[key] = (np.asarray(target[key], dtype=np.float32) * ratio).astype(np.float32)
    for key in _MASK_KEYS:
        if key in target:
            target[key] = resize_nearest(target[key], out_h, out_w)
    if "keypoints" in target:
        keypoints = np.array(target["keypoints"], dtype=np.float32, copy=True)
        keypoints[..., 0] *= ratio_w
        keypoints[..., 1] *= ratio_h
        target["keypoints"] = keypoints
    if "area" in target:
        target["area"] = (np.asarray(target["area"], dtype=np.float32) * (ratio_w * ratio_h)).astype(np.float32)
    return image, target


def keypoint_flip_indices(keypoint_names) -> np.ndarray:
    """Where each keypoint goes in a mirrored image: the index of its left/right partner, or its own.

    A mirror turns a person's left side into what looks like a right side, so "left_eye" must become
    "right_eye" and vice versa; names without "left"/"right" ("nose") keep their place. For COCO's
    17 person keypoints this is torchvision's ``[0, 2, 1, 4, 3, ..., 16, 15]``.

    Args:
        keypoint_names: the category's ``keypoints`` names, in order.

    Returns:
        (NK,) int64 permutation: flipped keypoint j is original keypoint ``idx[j]``.
    """
    names = list(keypoint_names)
    position = {name: i for i, name in enumerate(names)}
    swap = {"left": "right", "right": "left"}

    def partner(name: str) -> str:
        return "".join(swap.get(part, part) for part in re.split(r"(left|right)", name))

    return np.array([position.get(partner(name), i) for i, name in enumerate(names)], dtype=np.int64)


def hflip(image: np.ndarray, target: Target | None, keypoint_flip_indices: np.ndarray | None = None
          ) -> tuple[np.ndarray, Target | None]:
    """Mirror left-right: x -> W - x for boxes (x1' = W - x2, x2' = W - x1), columns reversed.

    Keypoints (x, y, v) get x -> W - x and swap left and right partners (``keypoint_flip_indices``);
    keypoints with v = 0 stay (0, 0, 0), as torchvision's reference ``_flip_coco_person_keypoints``.

    Args:
        image: (C, H, W).
        target: dict with boxes (M, 4) x1 y1 x2 y2, masks (M, H, W) and keypoints (M, NK, 3) (all
            optional), or None.
        keypoint_flip_indices: (NK,) the permutation from ``keypoint_flip_indices(names)``; needed
            when the target has keypoints.

    Returns:
        (image, new target) with fresh arrays.

    Raises:
        ValueError: keypoints without ``keypoint_flip_indices`` (a flip that keeps "left_wrist" on
            the mirrored right wrist would teach the model nonsense).
    """
    width = image.shape[-1]
    image = np.ascontiguousarray(image[..., ::-1])
    if target is None:
        return image, None
    target = dict(target)
    if "keypoints" in target:
        if keypoint_flip_indices is None:
            raise ValueError("hflip: the target has keypoints but no keypoint_flip_indices were given "
                             "(which keypoint becomes which when mirrored?)")
        keypoints = np.array(target["keypoints"], dtype=np.float32, copy=True)[:, keypoint_flip_indices]
        keypoints[..., 0] = width - keypoints[..., 0]
        keypoints[keypoints[..., 2] == 0] = 0
        target["keypoints"] = keypoints
    for key in _BOX_KEYS:
        if key in target:
            boxes = np.array(target[key], dtype=np.float32, copy=True)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            target[key] = boxes
    for key in _MASK_KEYS:
        if key in target:
            target[key] = np.ascontiguousarray(target[key][..., ::-1])
    return image, target


class Resize:
    """Resize transform; ``min_size`` may be a sequence, one picked at random (multi-scale training).

    Args:
        min_size: shorter side in pixels, or a sequence of choices.
        max_size: cap on the longer side.
        seed: seeds the generator used when no ``rng`` is passed to the call.
    """

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333, seed: int | None = None):
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.rng = np.random.default_rng(seed)

    def __call__(self, image, target=None, rng: np.random.Generator | None = None):
        size = self.min_size[0]
        if len(self.min_size) > 1:
            size = self.min_size[int((rng or self.rng).integers(len(self.min_size)))]
        return resize(image, target, size, self.max_size)

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Flip image, boxes, masks and keypoints left-right with probability ``p``.

    Args:
        p: probability of flipping.
        seed: seeds the generator used when no ``rng`` is passed to the call (the DataLoader passes one
            per sample, which makes epochs reproducible and resumable).
        keypoint_flip_indices: for targets with keypoints, which keypoint becomes which (see
            ``keypoint_flip_indices``; e.g. from the data set's ``keypoint_names``).
    """

    def __init__(self, p: float = 0.5, seed: int | None = None, keypoint_flip_indices=None):
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.keypoint_flip_indices = keypoint_flip_indices

    def __call__(self, image, target=None, rng: np.random.Generator | None = None):
        if (rng or self.rng).random() < self.p:
            return hflip(image, target, self.keypoint_flip_indices)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order; an ``rng`` given to the call is passed to each of them."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target=None, rng: np.random.Generator | None = None):
        for t in self.transforms:
            image, target = t(image, target) if rng is None else t(image, target, rng=rng)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def collate(samples: Sequence[tuple[np.ndarray, Target]]) -> tuple[list[np.ndarray], list[Target]]:
    """Batch samples as torchvision's detection references do: images of different sizes stay a list.

    Args:
        samples: [(image (3, H_i, W_i) float32, target), ...].

    Returns:
        (images: list of (3, H_i, W_i) float32, targets: list of dicts); the model pads and batches.
    """
    return [s[0] for s in samples], [s[1] for s in samples]


class DataLoader:
    """Batches in a fixed order from a seed; its state (three ints) resumes an epoch exactly.

    Epoch ``e`` visits the samples in ``np.random.default_rng([seed, e]).permutation(n)`` (or in
    order when ``shuffle=False``), and the ``k``-th sample of that epoch is augmented with
    ``np.random.default_rng([seed, e, k])``. So nothing but (seed, epoch, batch_index) needs saving:
    ``state_dict()`` after a batch and ``load_state_dict()`` in a new process give the same next batch.

    ``for batch in loader`` runs through the rest of the current epoch (as PyTorch's DataLoader) and
    leaves the loader at the start of the next; ``loader.forever()`` goes on across epochs (for
    training by steps).

    Data-parallel training: with ``num_replicas`` N > 1, ``batch_size`` is the global batch, and the
    loader of ``rank`` r loads and hands out only its share of each batch, the contiguous slots
    ``distributed.shard_slots(b, r, N)`` of the b samples of the batch (``last_batch_slots`` says
    which). The order, the augmentation keys and the state are those of the global batch, so the N
    loaders together give exactly the batches one loader gives.

    Args:
        dataset: has ``__len__`` and ``__getitem__`` -> (image, target).
        batch_size: samples per batch.
        shuffle: permute each epoch.
        seed: the seed of the order and of the augmentations.
        drop_last: skip a last, smaller batch.
        transforms: ``t(image, target, rng=...)`` applied here with the per-sample generator.
        hflip_prob: after ``transforms``, flip each sample left-right with this probability (same
            generator); keypoints swap left and right by the data set's ``keypoint_names``.
        indices: use only these dataset indices (default: all).
        collate_fn: list of samples -> batch (default: ``collate``).
        num_replicas, rank: the number of data-parallel processes and this one's index (see above).
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 transforms: Callable | None = None, hflip_prob: float = 0.0,
                 indices: Sequence[int] | None = None, collate_fn: Callable = collate,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.dataset = dataset
        self.indices = (np.arange(len(dataset), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        if len(self.indices) == 0:
            raise ValueError("the DataLoader has no samples (empty dataset or indices)")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transforms = transforms
        self.hflip_prob = hflip_prob
        self.collate_fn = collate_fn
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.last_batch_slots = range(0)  # slots in the global batch of the samples last handed out
        names = getattr(dataset, "keypoint_names", None)
        self.keypoint_flip_indices = keypoint_flip_indices(names) if names else None
        self.epoch = 0
        self.batch_index = 0  # batches of the current epoch already handed out
        if len(self) == 0:
            raise ValueError(f"drop_last with {len(self.indices)} samples < batch_size {batch_size} gives no batch")

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """(n,) int64: the dataset indices of ``epoch`` in visiting order."""
        if not self.shuffle:
            return self.indices.copy()
        return self.indices[np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))]

    def _sample(self, index: int, rng: np.random.Generator):
        image, target = self.dataset[index]
        if self.transforms is not None:
            image, target = self.transforms(image, target, rng=rng)
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            image, target = hflip(image, target, self.keypoint_flip_indices)
        return image, target

    def __iter__(self) -> Iterator:
        if self.batch_index >= len(self):  # the epoch was handed out in full: start the next
            self.epoch, self.batch_index = self.epoch + 1, 0
        order = self.order(self.epoch)
        while self.batch_index < len(self):
            start = self.batch_index * self.batch_size
            positions = range(start, min(start + self.batch_size, len(order)))
            # this process's share of the batch (all of it for one process)
            self.last_batch_slots = shard_slots(len(positions), self.rank, self.num_replicas)
            positions = [positions[s] for s in self.last_batch_slots]
            samples = [self._sample(int(order[k]), np.random.default_rng([self.seed, self.epoch, k]))
                       for k in positions]
            self.batch_index += 1
            yield self.collate_fn(samples)
        self.epoch += 1
        self.batch_index = 0

    def forever(self) -> Iterator:
        """Batches without end, epoch after epoch (the state advances as with ``for``)."""
        while True:
            yield from iter(self)

    def state_dict(self) -> dict[str, int]:
        """{"seed", "epoch", "batch_index"}: plain ints, e.g. for save_checkpoint's ``extra``."""
        return {"seed": int(self.seed), "epoch": int(self.epoch), "batch_index": int(self.batch_index)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a state_dict(): the next batch is the one that followed when it was taken."""
        self.seed, self.epoch, self.batch_index = int(state["seed"]), int(state["epoch"]), int(state["batch_index"])
