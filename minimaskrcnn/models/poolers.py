"""Multi-scale RoIAlign: pool each RoI from the FPN level that suits its size (FPN paper, Eq. 1).

``k = floor(k0 + log2(sqrt(w * h) / 224))`` clamped to the available levels (k0 = 4: a 224-px RoI
is pooled from P4), then RoIAlign on that level with its stride. The level choice has no gradient;
the pooled features do. Lesson 07 (FPN) shows which RoI goes to which level. ``pooler_type`` swaps
RoIAlign for the RoI layers the paper compares it with (Table 2c: RoIPool, RoIWarp, max pooling;
detectron2's ``ROIPooler(pooler_type=...)``), lesson 17.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from minimaskrcnn.backend import as_array, get_array_module
from minimaskrcnn.function import Function
from minimaskrcnn.nn import Module
from minimaskrcnn.ops.roi_align import roi_align
from minimaskrcnn.ops.roi_pool import roi_pool
from minimaskrcnn.ops.roi_warp import roi_warp

# the RoI layers a pooler can use (Mask R-CNN's Table 2c): "roi_align" is the paper's and torchvision's
POOLER_TYPES = ("roi_align", "roi_align_max", "roi_warp", "roi_warp_max", "roi_pool")


def pool_rois(pooler_type: str, feature, rois, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int):
    """Pool ``rois`` from one feature map with the RoI layer ``pooler_type``.

    Args:
        pooler_type: one of POOLER_TYPES: RoIAlign (average, as torchvision, or max of the bilinear
            samples), RoIWarp (the same on the box rounded to the feature grid), RoIPool.
        feature: (N, C, H, W) Tensor.
        rois: (K, 5) array [batch_idx, x1, y1, x2, y2] in input pixels.
        output_size: (PH, PW).
        spatial_scale: the feature map's 1 / stride.
        sampling_ratio: samples per bin side for RoIAlign and RoIWarp (RoIPool takes every pixel).

    Returns:
        (K, C, PH, PW) Tensor, differentiable w.r.t. the feature map.

    Raises:
        ValueError: an unknown pooler_type.
    """
    if pooler_type in ("roi_align", "roi_align_max"):
        return roi_align(feature, rois, output_size=output_size, spatial_scale=spatial_scale,
                         sampling_ratio=sampling_ratio, aligned=False,
                         mode="max" if pooler_type == "roi_align_max" else "avg")
    if pooler_type in ("roi_warp", "roi_warp_max"):
        return roi_warp(feature, rois, output_size, spatial_scale, sampling_ratio,
                        mode="max" if pooler_type == "roi_warp_max" else "avg")
    if pooler_type == "roi_pool":
        return roi_pool(feature, rois, output_size, spatial_scale)
    raise ValueError(f"unknown pooler_type {pooler_type!r}: choose one of {POOLER_TYPES}")


class LevelMapper:
    """Which pyramid level each RoI is pooled from (torchvision's ``LevelMapper``). No gradient.

    Args:
        k_min, k_max: the finest and coarsest available levels (2 and 5 for P2-P5).
        canonical_scale: s0, the RoI side pooled from the canonical level (224, ImageNet's size).
        canonical_level: k0, that level (4).
        eps: added before the floor so that exact powers of two map consistently.
    """

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6):
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: Sequence) -> np.ndarray:
        """Level of each RoI, counted from k_min.

        Args:
            boxlists: list of (K_i, 4) float arrays, (x1, y1, x2, y2) in input pixels.

        Returns:
            (K,) int64 in [0, k_max - k_min], K = sum K_i, in the order of the concatenated lists.
        """
        boxes = [as_array(b) for b in boxlists]
        xp = get_array_module(*boxes)
        boxes = xp.concatenate(boxes, axis=0)
        dtype = boxes.dtype
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        s = xp.sqrt(area)
        # computed in the boxes' dtype, as torchvision (the rounding decides borderline RoIs)
        target = xp.floor(dtype.type(self.lvl0) + xp.log2(s / dtype.type(self.s0)) + dtype.type(self.eps))
        target = xp.clip(target, self.k_min, self.k_max)
        return target.astype(xp.int64) - self.k_min


def infer_scale(feature_size: Sequence[int], original_size: Sequence[int]) -> float:
    """The spatial scale of a feature map: the power of two nearest to feature / image height.

    Args:
        feature_size: (H_l, W_l) of the feature map.
        original_size: (H, W) of the largest image in the batch (before padding).

    Returns:
        e.g. 0.25 for P2; only the heights are used, as torchvision.
    """
    approx = np.float32(float(feature_size[0]) / float(original_size[0]))
    return float(2.0 ** float(np.round(np.log2(approx))))


def setup_scales(feature_sizes: Sequence[Sequence[int]], image_shapes: Sequence[tuple[int, int]],
                 canonical_scale: int = 224, canonical_level: int = 4) -> tuple[list[float], LevelMapper]:
    """Scales of the feature maps and the ``LevelMapper`` for them (levels inferred from the ratios).

    Args:
        feature_sizes: (H_l, W_l) of each pooled feature map, finest first.
        image_shapes: (h, w) of each image of the batch (resized, before padding).

    Returns:
        (scales, mapper): e.g. [1/4, 1/8, 1/16, 1/32] and LevelMapper(2, 5).
    """
    if not image_shapes:
        raise ValueError("images list should not be empty")
    original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [infer_scale(size, original) for size in feature_sizes]
    lvl_min = -math.log2(scales[0])
    lvl_max = -math.log2(scales[-1])
    mapper = LevelMapper(int(lvl_min), int(lvl_max), canonical_scale=canonical_scale, canonical_level=canonical_level)
    return scales, mapper


def convert_to_roi_format(boxes: Sequence) -> np.ndarray:
    """Per-image box lists -> one (K, 5) RoI array [batch_idx, x1, y1, x2, y2]. No gradient."""
    boxes = [as_array(b) for b in boxes]
    xp = get_array_module(*boxes)
    concat = xp.concatenate(boxes, axis=0)
    ids = xp.concatenate([xp.full((len(b), 1), i, dtype=concat.dtype) for i, b in enumerate(boxes)], axis=0)
    return xp.concatenate([ids, concat], axis=1)


class MergeLevels(Function):
    """Put each level's pooled RoIs back in RoI order: ``out[idx_l] = pooled_l`` for every level l.

    A permutation of rows, so the backward is the inverse gather ``dpooled_l = dout[idx_l]``
    (no accumulation needed: every output row comes from exactly one level).
    """

    @staticmethod
    def forward(ctx, *pooled_per_level, idx_per_level, num_rois: int):
        xp = get_array_module(*pooled_per_level)
        first = pooled_per_level[0]
        out = xp.zeros((num_rois,) + tuple(first.shape[1:]), dtype=first.dtype)
        for idx, pooled in zip(idx_per_level, pooled_per_level):
            out[idx] = pooled
        ctx.idx_per_level = idx_per_level
        return out

    @staticmethod
    def backward(ctx, dout):
        return tuple(dout[idx] for idx in ctx.idx_per_level)


class MultiScaleRoIAlign(Module):
    """RoIAlign over several FPN levels, each RoI from the level its size maps to (torchvision's).

    Args:
        featmap_names: names of the feature maps to pool from, finest first (e.g. ["0", "1", "2", "3"]).
        output_size: PH = PW, or (PH, PW).
        sampling_ratio: samples per bin side (0 or less: adaptive, ceil(roi size / output size)).
        canonical_scale, canonical_level: s0 = 224 and k0 = 4 of the FPN paper's Eq. 1.
        pooler_type: the RoI layer, one of POOLER_TYPES ("roi_align", torchvision's, by default).

    Raises:
        ValueError: an unknown pooler_type.

    Note:
        torchvision infers the scales once, from the first batch it sees, and keeps them; we infer
        them at every call (the same numbers whenever the model's strides are powers of two).
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int | Sequence[int], sampling_ratio: int,
                 *, canonical_scale: int = 224, canonical_level: int = 4, pooler_type: str = "roi_align"):
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(f"unknown pooler_type {pooler_type!r}: choose one of {POOLER_TYPES}")
        self.pooler_type = pooler_type
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.output_size = tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.last_levels: np.ndarray | None = None  # the level of each RoI of the last call, for inspection

    def forward(self, features: Mapping, boxes: Sequence, image_shapes: Sequence[tuple[int, int]]):
        """Pool every RoI.

        Args:
            features: name -> (N, C, H_l, W_l) Tensor; names not in ``featmap_names`` are ignored.
            boxes: list of N (K_i, 4) float arrays, (x1, y1, x2, y2) in input pixels.
            image_shapes: (h, w) of each image (resized, before padding).

        Returns:
            (K, C, PH, PW) Tensor, K = sum K_i, RoIs in the order of the concatenated lists.
        """
        x_filtered = [v for k, v in features.items() if k in self.featmap_names]
        scales, mapper = setup_scales([tuple(x.shape[-2:]) for x in x_filtered], image_shapes,
                                      self.canonical_scale, self.canonical_level)
        rois = convert_to_roi_format(boxes)
        if len(x_filtered) == 1:
            self.last_levels = np.zeros(len(rois), dtype=np.int64)
            return pool_rois(self.pooler_type, x_filtered[0], rois, self.output_size, scales[0], self.sampling_ratio)
        levels = mapper(boxes) if len(rois) else np.zeros(0, dtype=np.int64)
        self.last_levels = levels
        pooled, idx_per_level = [], []
        for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
            idx_in_level = get_array_module(rois).nonzero(levels == level)[0]
            if len(idx_in_level) == 0 and len(rois) > 0:
                continue
            pooled.append(pool_rois(self.pooler_type, feature, rois[idx_in_level], self.output_size, scale,
                                    self.sampling_ratio))
            idx_per_level.append(idx_in_level)
        if len(pooled) == 1:
            return pooled[0]  # every RoI on one level, already in order
        return MergeLevels.apply(*pooled, idx_per_level=idx_per_level, num_rois=len(rois))

    def __repr__(self) -> str:
        return (f"MultiScaleRoIAlign(featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}"
                + (f", pooler_type={self.pooler_type!r})" if self.pooler_type != "roi_align" else ")"))
