"""Anchors: a fixed set of reference boxes tiled over every feature-map cell (Faster R-CNN, sec. 3.1.1).

Each FPN level gets anchors of one size (32 on P2 ... 512 on P6 for the COCO model) at three aspect
ratios, centred on the cell's top-left pixel in input coordinates, exactly as torchvision's
``AnchorGenerator``. No gradient: anchors are constants. Lesson 03 (anchors and box coding) draws them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=np.float32) -> np.ndarray:
    """The anchors of one cell, centred on (0, 0). No gradient.

    Args:
        sizes: anchor sizes in input pixels (the square root of the anchor area).
        aspect_ratios: height / width ratios.
        dtype: float dtype to compute in (torchvision computes in the features' dtype).

    Returns:
        (len(aspect_ratios) * len(sizes), 4) array, (x1, y1, x2, y2) rounded to whole pixels;
        ratio-major order: all sizes of the first ratio, then all sizes of the second, ...
    """
    real = np.dtype(dtype).type
    scales = np.asarray(sizes, dtype=real)
    ratios = np.asarray(aspect_ratios, dtype=real)
    h_ratios = np.sqrt(ratios)
    w_ratios = real(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / real(2)
    return np.round(base)  # half to even, as torch.round


def grid_anchors(cell_anchors: np.ndarray, grid_size: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Tile one level's cell anchors over a feature map. No gradient.

    Args:
        cell_anchors: (A, 4) float, anchors of one cell centred on (0, 0).
        grid_size: (H, W) of the feature map.
        stride: (stride_h, stride_w) in input pixels per feature cell.

    Returns:
        (H * W * A, 4) array of cell_anchors' dtype, (x1, y1, x2, y2) in input pixels; the order is
        row-major over cells and, within a cell, the cell_anchors order (the order the RPN head's
        outputs are flattened in).
    """
    grid_h, grid_w = grid_size
    shifts_x = np.arange(grid_w, dtype=np.int64) * int(stride[1])
    shifts_y = np.arange(grid_h, dtype=np.int64) * int(stride[0])
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(cell_anchors.dtype)
    return (shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 4)


class AnchorGenerator:
    """Anchors for a list of feature maps (torchvision's ``AnchorGenerator``). No gradient.

    Args:
        sizes: one tuple of sizes per feature level, e.g. ((32,), (64,), (128,), (256,), (512,)).
        aspect_ratios: one tuple of height / width ratios per level (or one tuple for all levels).

    Attributes:
        cell_anchors: list over levels of (A_l, 4) float32 arrays centred on (0, 0).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
    ):
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"{len(sizes)} levels of sizes but {len(aspect_ratios)} of aspect ratios")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        self.cell_anchors = [generate_cell_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]
        self._cache: dict[tuple, np.ndarray] = {}

    def num_anchors_per_location(self) -> list[int]:
        """A, the number of anchors per feature-map cell, for each level."""
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def anchors_per_level(
        self, image_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]], dtype=np.float32
    ) -> list[np.ndarray]:
        """The anchors of each level for a padded batch of size ``image_size``. No gradient.

        Args:
            image_size: (H, W) of the padded batch fed to the backbone.
            grid_sizes: (H_l, W_l) of each level's feature map.
            dtype: the features' float dtype.

        Returns:
            list over levels of (H_l * W_l * A_l, 4) arrays, (x1, y1, x2, y2) in input pixels.
        """
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"{len(grid_sizes)} feature maps but anchors for {len(self.cell_anchors)} levels: "
                "give one tuple of sizes per feature map"
            )
        dtype = np.dtype(dtype)
        key = (tuple(image_size), tuple(map(tuple, grid_sizes)), dtype.str)
        if key not in self._cache:
            levels = []
            for (gh, gw), cell_anchors in zip(grid_sizes, self.cell_anchors):
                # integer strides, as torchvision: image size // feature size
                stride = (int(image_size[0]) // int(gh), int(image_size[1]) // int(gw))
                cell = cell_anchors.astype(dtype)  # made in float32, then cast, as torchvision
                levels.append(grid_anchors(cell, (int(gh), int(gw)), stride))
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = levels
        return self._cache[key]

    def __call__(
        self,
        image_size: tuple[int, int],
        grid_sizes: Sequence[tuple[int, int]],
        num_images: int = 1,
        dtype=np.float32,
    ) -> list[np.ndarray]:
        """Anchors of every level concatenated, one (R, 4) array per image (all images share them).

        Args:
            image_size: (H, W) of the padded batch.
            grid_sizes: (H_l, W_l) of each feature map, in level order.
            num_images: N, the batch size.
            dtype: the features' float dtype.

        Returns:
            list of N (R, 4) arrays, R = sum over levels of H_l * W_l * A_l; (x1, y1, x2, y2) in
            input pixels. The arrays are shared: do not modify them in place.
        """
        levels = self.anchors_per_level(image_size, grid_sizes, dtype)
        key = ("cat",) + (tuple(image_size), tuple(map(tuple, grid_sizes)), np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = np.concatenate(levels, axis=0)
        return [self._cache[key]] * num_images

    def __repr__(self) -> str:
        return f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"
