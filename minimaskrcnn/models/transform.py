"""The input transform: normalise, resize, pad into a batch; and back to the original size after.

torchvision's ``GeneralizedRCNNTransform`` step for step (same resize rule, same bilinear weights,
same padding to a multiple of 32), on plain arrays: images carry no gradient. Lesson 13 shows an
image before and after.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.global_batch import STREAM_RESIZE, current_batch, padded_batch_shape
from minimaskrcnn.models.configs import TransformConfig
from minimaskrcnn.nn import Module
from minimaskrcnn.ops.masks import paste_masks_in_image


# --------------------------------------------------------------------------- array resizing
def _wide(dtype):
    """A float type wide enough to emulate a fused multiply-add of ``dtype`` (see ``_fma``)."""
    return np.float64 if np.dtype(dtype) == np.float32 else np.longdouble


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, dtype) -> np.ndarray:
    """a * b + c rounded once, like a fused multiply-add instruction.

    PyTorch's compiled CPU kernel contracts ``a * b + c`` into FMA instructions; computing in a
    wider type and rounding once reproduces its float32 results bit for bit (and its float64
    results to within an ulp, in the rare case long double is not wide enough).
    """
    wide = _wide(dtype)
    return (a.astype(wide) * b.astype(wide) + c.astype(wide)).astype(dtype)


def _linear_source(in_size: int, out_size: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation, align_corners=False (as PyTorch).

    Returns:
        idx0, idx1: (out_size,) int64 input indices; lambda0, lambda1: (out_size,) weights of dtype.
    """
    real = np.dtype(dtype).type
    out_idx = np.arange(out_size)
    if in_size == out_size:  # PyTorch's identity shortcut
        return out_idx, out_idx, np.ones(out_size, dtype=real), np.zeros(out_size, dtype=real)
    ratio = real(in_size) / real(out_size)  # recompute_scale_factor=True: in / out, not 1 / scale
    # centre of output pixel i in input coordinates: (i + 0.5) * ratio - 0.5, clamped at 0
    wide = _wide(real)
    src = (wide(ratio) * (out_idx.astype(wide) + wide(0.5)) - wide(0.5)).astype(real)
    src = np.maximum(src, real(0))
    idx0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lambda1 = np.clip(src - idx0.astype(real), real(0), real(1)).astype(real)
    idx1 = idx0 + (idx0 < in_size - 1)
    lambda0 = (real(1) - lambda1).astype(real)
    return idx0, idx1, lambda0, lambda1


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., H, W) to (..., out_h, out_w), align_corners=False. No gradient.

    The same weights and the same order of operations as PyTorch's CPU kernel
    (``F.interpolate(mode="bilinear", align_corners=False)``): along W, then along H, each step
    ``v0 * lambda0 + v1 * lambda1`` with one rounding (see ``_fma``); float32 results are
    bit-identical to PyTorch's.

    Args:
        image: (..., H, W) float array.
        size: (out_h, out_w).

    Returns:
        (..., out_h, out_w) array of image's dtype.
    """
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = image.shape[-2:]
    dtype = image.dtype
    x = image
    if out_w != in_w:
        i0, i1, l0, l1 = _linear_source(in_w, out_w, dtype)
        x = _fma(x[..., i0], l0, x[..., i1] * l1, dtype)
    if out_h != in_h:
        i0, i1, l0, l1 = _linear_source(in_h, out_h, dtype)
        x = _fma(x[..., i0, :], l0[:, None], x[..., i1, :] * l1[:, None], dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _nearest_source(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's "nearest" mode (floor(i * in / out), in float32)."""
    out_idx = np.arange(out_size)
    if out_size == in_size:
        return out_idx
    if out_size == 2 * in_size:
        return out_idx >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(out_idx.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) to (..., out_h, out_w), as PyTorch's mode="nearest". No gradient."""
    in_h, in_w = x.shape[-2:]
    rows = _nearest_source(in_h, int(size[0]))
    cols = _nearest_source(in_w, int(size[1]))
    return np.ascontiguousarray(x[..., rows[:, None], cols[None, :]])


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[tuple[int, int], float]:
    """torchvision's resize rule: scale the short side to min_size unless the long side passes max_size.

    Args:
        height, width: the image's size in pixels (at least 1 each).
        min_size, max_size: in pixels.

    Returns:
        ((out_h, out_w), scale) with scale = min(min_size / min(h, w), max_size / max(h, w)) and
        out = max(1, floor(in * scale)) (F.interpolate with scale_factor and recompute_scale_factor=True).

    Note:
        The floor of a very elongated image's short side can be 0 (6 x 2000 with max_size 128 gives
        floor(6 * 0.064) = 0), where torchvision fails deep in a convolution; every side here keeps
        at least one pixel, so such an image goes through with a 1-pixel-high input.

    Raises:
        ValueError: an image without pixels (a side of 0).
    """
    if height < 1 or width < 1:
        raise ValueError(f"an image of {height} x {width} pixels (height x width) has nothing to resize")
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    return (max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))), scale


def resize_keypoints(keypoints: np.ndarray, original_size: Sequence[int], new_size: Sequence[int]) -> np.ndarray:
    """Scale keypoints from an image of original_size (h, w) to one of new_size (h, w).

    Args:
        keypoints: (M, NK, 3) float, (x, y, visibility) in pixels of the original image.

    Returns:
        (M, NK, 3) array of keypoints' dtype: x times new w / w, y times new h / h (ratios in float32,
        as torchvision's ``resize_keypoints``), visibility unchanged.
    """
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    xp = get_array_module(keypoints)
    scale = xp.asarray(np.array([ratio_w, ratio_h, 1], dtype=np.float32).astype(keypoints.dtype))
    return (keypoints * scale).astype(keypoints.dtype, copy=False)


def resize_boxes(boxes: np.ndarray, original_size: Sequence[int], new_size: Sequence[int]) -> np.ndarray:
    """Scale (x1, y1, x2, y2) boxes from an image of original_size (h, w) to one of new_size (h, w).

    Args:
        boxes: (M, 4) float, (x1, y1, x2, y2) in pixels of the original image.

    Returns:
        (M, 4) array of boxes' dtype (ratios computed in float32, as torchvision).
    """
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    ratios = get_array_module(boxes).asarray(ratios.astype(boxes.dtype))  # to the boxes' device
    return (boxes * ratios).astype(boxes.dtype, copy=False)


# ------------------------------------------------------------------------------ the batch
class ImageList:
    """A padded batch and the size of each image inside it (before padding).

    Attributes:
        tensors: (N, C, H, W) float array, images padded with zeros at the bottom and right.
        image_sizes: list of N (h, w), the resized size of each image (h <= H, w <= W).
    """

    def __init__(self, tensors: np.ndarray, image_sizes: list[tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def __repr__(self) -> str:
        return f"ImageList(tensors of shape {self.tensors.shape}, image_sizes={self.image_sizes})"


class GeneralizedRCNNTransform(Module):
    """Normalise, resize and batch images (and resize their targets), as torchvision. No gradient.

    Args:
        min_size: the short side after resizing; a tuple gives a random choice per image in training.
        max_size: the long side is never longer than this.
        image_mean, image_std: per-channel normalisation of [0, 1] images.
        size_divisible: the batch's H and W are padded to a multiple of this (32: the P5 stride).
        fixed_size: (w, h) to resize every image to instead (torchvision's ``fixed_size``).
        seed: seed of the generator that picks min_size in training when it is a tuple.
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
        fixed_size: tuple[int, int] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible
        self.fixed_size = fixed_size
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, config: TransformConfig, seed: int | None = None) -> GeneralizedRCNNTransform:
        """The transform a ``TransformConfig`` describes; ``seed`` seeds the training min_size choice."""
        return cls(config.min_size, config.max_size, config.image_mean, config.image_std,
                   size_divisible=config.size_divisible, seed=seed)

    def forward(self, images: Sequence[Any], targets: list[dict] | None = None) -> tuple[ImageList, list[dict] | None]:
        """Transform a list of images (and targets) into a padded batch.

        Args:
            images: list of N (3, H_i, W_i) float arrays or Tensors in [0, 1].
            targets: optional list of N dicts with "boxes" (M, 4) float (x1, y1, x2, y2) in pixels of
                the image, "labels" (M,) int64 and optionally "masks" (M, H_i, W_i) uint8 and
                "keypoints" (M, NK, 3) float (x, y, visibility) in pixels. Not modified.

        Returns:
            (ImageList, targets resized to the batch's images; new dicts, other keys kept as given).

        Inside a ``global_batch`` block (data-parallel training), the training min_size of each
        image is drawn with that image's keyed generator, and the batch is padded to the shape of
        the whole global batch (``global_batch_shape``), so that every process gets the anchors and
        the features one process would get for the whole batch.
        """
        batch = current_batch() if self.training else None
        if batch is not None and len(batch.image_indices) != len(images):
            raise ValueError(f"global_batch was given {len(batch.image_indices)} image indices, the model "
                             f"{len(images)} images")
        resized = []
        new_targets = None if targets is None else []
        for i, image in enumerate(images):
            image = to_numpy(image)
            if image.ndim != 3:
                raise ValueError(f"images are expected to be 3-D arrays (C, H, W), got shape {image.shape}")
            target = None
            if targets is not None:
                target = {k: (to_numpy(v) if k in ("boxes", "labels", "masks", "keypoints") else v)
                          for k, v in targets[i].items()}
            if batch is not None and batch.image_sizes is not None:
                given = batch.image_sizes[batch.image_indices[i]]
                if given != tuple(image.shape[-2:]):
                    raise ValueError(f"image {i} is {tuple(image.shape[-2:])}, global_batch says image "
                                     f"{batch.image_indices[i]} of the batch is {given}")
            rng = None if batch is None else batch.generator(batch.image_indices[i], STREAM_RESIZE)
            image = self.normalize(image)
            image, target = self.resize(image, target, rng=rng)
            resized.append(image)
            if new_targets is not None:
                new_targets.append(target)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        shape = self.global_batch_shape() if batch is not None else None
        return ImageList(self.batch_images(resized, self.size_divisible, shape), image_sizes), new_targets

    def training_size(self, height: int, width: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """(out_h, out_w) of an (height, width) image after ``resize``; in training with several
        ``min_size``, one is drawn from ``rng`` (default: the transform's own generator)."""
        if self.training:
            size = self.min_size[int((self.rng if rng is None else rng).integers(len(self.min_size)))]
        else:
            size = self.min_size[-1]
        if self.fixed_size is not None:
            return int(self.fixed_size[1]), int(self.fixed_size[0])
        return resized_size(height, width, size, self.max_size)[0]

    def global_batch_shape(self) -> tuple[int, int] | None:
        """(H, W) of the padded batch of every image of the enclosing ``global_batch`` block (the
        sizes it gives, resized with the min_size each image draws there), or None without a block
        or without its image sizes."""
        batch = current_batch()
        if batch is None or batch.image_sizes is None:
            return None
        sizes = [self.training_size(h, w, batch.generator(g, STREAM_RESIZE))
                 for g, (h, w) in enumerate(batch.image_sizes)]
        return padded_batch_shape(sizes, self.size_divisible)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """(image - mean) / std per channel, in the image's float dtype."""
        if image.dtype.kind != "f":
            raise TypeError(f"images must be float arrays in [0, 1], got dtype {image.dtype}")
        mean = np.asarray(self.image_mean, dtype=image.dtype)[:, None, None]
        std = np.asarray(self.image_std, dtype=image.dtype)[:, None, None]
        return (image - mean) / std

    def resize(self, image: np.ndarray, target: dict | None = None,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict | None]:
        """Resize one (C, H, W) image with torchvision's rule, and its target's boxes, masks and keypoints.

        Masks are resized with nearest-neighbour (as torchvision) and stay uint8. In training with
        several ``min_size``, the one used is drawn from ``rng`` (default: the transform's own).
        """
        h, w = image.shape[-2:]
        out_size = self.training_size(h, w, rng)
        image = resize_bilinear(image, out_size)
        if target is None:
            return image, target
        if "masks" in target:
            masks = np.asarray(target["masks"])
            target["masks"] = resize_nearest(masks.astype(np.float32), out_size).astype(np.uint8)
        boxes = np.asarray(target["boxes"])
        if boxes.dtype.kind != "f":
            boxes = boxes.astype(np.float32)
        target["boxes"] = resize_boxes(boxes, (h, w), out_size)
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(np.asarray(target["keypoints"]), (h, w), out_size)
        return image, target

    @staticmethod
    def batch_images(images: Sequence[np.ndarray], size_divisible: int = 32,
                     shape: tuple[int, int] | None = None) -> np.ndarray:
        """Stack (C, h_i, w_i) images into (N, C, H, W), zero-padded at the bottom and right.

        H and W are the largest h_i and w_i rounded up to a multiple of size_divisible, or at least
        ``shape`` (H, W) when given (the padded shape of a whole global batch).
        """
        c = max(img.shape[0] for img in images)
        height = int(math.ceil(max(img.shape[1] for img in images) / size_divisible) * size_divisible)
        width = int(math.ceil(max(img.shape[2] for img in images) / size_divisible) * size_divisible)
        if shape is not None:
            height, width = max(height, int(shape[0])), max(width, int(shape[1]))
        batch = np.zeros((len(images), c, height, width), dtype=images[0].dtype)
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]] = img
        return batch

    def postprocess(self, result: list[dict], image_sizes: Sequence[tuple[int, int]],
                    original_image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Map detections from the resized images back to the original images. No gradient.

        Args:
            result: list of N dicts with "boxes" (D, 4) in resized-image pixels and optionally
                "masks" (D, 1, S, S) probabilities in each box and "keypoints" (D, NK, 3).
            image_sizes: the resized (h, w) of each image.
            original_image_sizes: the (h, w) of each image as given to the model.

        Returns:
            the same dicts with "boxes" in original pixels and "masks" (D, 1, h, w) pasted into
            the original image (torchvision's paste_masks_in_image, padding 1), "keypoints" scaled
            back as the boxes.
        """
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_sizes, original_image_sizes):
            boxes = resize_boxes(pred["boxes"], im_s, o_im_s)
            pred["boxes"] = boxes
            if "masks" in pred:
                pred["masks"] = paste_masks_in_image(pred["masks"], boxes, tuple(o_im_s), padding=1)
            if "keypoints" in pred:
                pred["keypoints"] = resize_keypoints(pred["keypoints"], im_s, o_im_s)
        return result

    def __repr__(self) -> str:
        return (
            f"GeneralizedRCNNTransform(\n    Normalize(mean={self.image_mean}, std={self.image_std})\n"
            f"    Resize(min_size={self.min_size}, max_size={self.max_size}, mode='bilinear')\n)"
        )
