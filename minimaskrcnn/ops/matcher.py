"""Matching anchors/proposals to ground truth by IoU, and sampling a balanced training batch.

``Matcher`` gives each prediction the index of its best ground-truth box, or a negative sentinel
when the IoU is too low (Faster R-CNN Sec. 3.1.2: positive at IoU >= 0.7, negative below 0.3, plus
each gt's best anchor). ``BalancedPositiveNegativeSampler`` draws a fixed number of them per image
with at most a given fraction of positives. No gradient. Lesson 07 (RPN) teaches both.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minimaskrcnn.backend import as_array, get_array_module

# Labels of the training targets, for anchors (RPN) and RoIs (box head) alike
POSITIVE = 1  # an anchor matched to an object (the RPN's one class); a foreground RoI carries its gt class (>= 1)
BACKGROUND = 0  # a negative anchor, a background RoI
IGNORE = -1  # between the IoU thresholds: never sampled, so no loss


class Matcher:
    """Assign to each prediction (column) the ground-truth element (row) it overlaps most.

    Args:
        high_threshold: quality >= this is a match.
        low_threshold: quality in [low, high) gives ``BETWEEN_THRESHOLDS``, below it
            ``BELOW_LOW_THRESHOLD``.
        allow_low_quality_matches: also match every prediction that has the highest quality of
            some gt (ties included) to its best gt, even below ``high_threshold`` (so that every
            gt gets at least one prediction).
    """

    BELOW_LOW_THRESHOLD = -1  # negative: background
    BETWEEN_THRESHOLDS = -2  # neither: ignored by the loss

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError("low_threshold should be <= high_threshold")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        """Match. No gradient.

        Args:
            match_quality_matrix: (M, N) float, quality (IoU) of gt m with prediction n.

        Returns:
            matched_idxs: (N,) int64, the gt index in [0, M - 1] matched to each prediction, or
            ``BELOW_LOW_THRESHOLD`` (-1) / ``BETWEEN_THRESHOLDS`` (-2).

        Raises:
            ValueError: when there is no gt (M == 0) or no prediction (N == 0).
        """
        quality = as_array(match_quality_matrix)
        xp = get_array_module(quality)
        if quality.size == 0:
            if quality.shape[0] == 0:
                raise ValueError("No ground-truth boxes available for one of the images during training")
            raise ValueError("No proposal boxes available for one of the images during training")

        # 1. best gt for each prediction (the first one on ties, as torch.max)
        matches = xp.argmax(quality, axis=0).astype(xp.int64)
        matched_vals = xp.max(quality, axis=0)
        all_matches = matches.copy() if self.allow_low_quality_matches else None

        # 2. too-low qualities become the sentinels
        below_low_threshold = matched_vals < self.low_threshold
        between_thresholds = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below_low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[between_thresholds] = self.BETWEEN_THRESHOLDS

        # 3. give back their best gt to the predictions that are some gt's best
        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(matches, all_matches, quality)
        return matches

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix) -> None:
        """In place: for each gt, every prediction with that gt's highest quality (ties included,
        even 0) gets its own best match ``all_matches`` back.

        Args:
            matches: (N,) int64 matches with sentinels, modified in place.
            all_matches: (N,) int64 best gt of each prediction, before the thresholds.
            match_quality_matrix: (M, N) float.
        """
        xp = get_array_module(match_quality_matrix)
        highest_quality_foreach_gt = match_quality_matrix.max(axis=1)
        _, pred_inds_to_update = xp.nonzero(match_quality_matrix == highest_quality_foreach_gt[:, None])
        matches[pred_inds_to_update] = all_matches[pred_inds_to_update]


class BalancedPositiveNegativeSampler:
    """Sample a batch per image with a fixed fraction of positives (torchvision's sampler).

    Args:
        batch_size_per_image: number of elements to select per image (e.g. 256 anchors, 512 RoIs).
        positive_fraction: largest fraction of positives in it (0.5 for the RPN, 0.25 for RoIs);
            negatives fill the rest.
        generator: NumPy ``Generator`` (or a seed) for the random draws; a fresh unseeded one if None.

    Note:
        torchvision draws with ``torch.randperm``; we draw with NumPy, so the selected elements
        differ, but their numbers and the distribution are the same. A call may bring one generator
        per image instead (``generators=``): the training step keys them by image
        (``minimaskrcnn.global_batch``), so that an image's sample does not depend on the others.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float,
                 generator: np.random.Generator | int | None = None):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.generator = np.random.default_rng(generator)

    def __call__(self, matched_idxs: Sequence,
                 generators: Sequence[np.random.Generator] | None = None) -> tuple[list, list]:
        """Draw the positives and negatives of each image. No gradient.

        Args:
            matched_idxs: list of (N_i,) int arrays, one per image: >= POSITIVE (1) positive,
                BACKGROUND (0) negative, IGNORE (-1) ignored (labels, or matched indices shifted as
                the caller needs).
            generators: one generator per image to draw that image's sample from, or None to draw
                every image's from ``self.generator`` in turn.

        Returns:
            ``(pos_idx, neg_idx)``: two lists of (N_i,) uint8 masks, 1 where an element was
            selected as a positive (resp. negative). At most
            ``int(batch_size_per_image * positive_fraction)`` positives, and negatives up to
            ``batch_size_per_image`` in total, fewer when there are not enough.
        """
        if generators is not None and len(generators) != len(matched_idxs):
            raise ValueError(f"{len(generators)} generators for {len(matched_idxs)} images")
        pos_idx, neg_idx = [], []
        for i, matched_idxs_per_image in enumerate(matched_idxs):
            rng = self.generator if generators is None else generators[i]
            matched_idxs_per_image = as_array(matched_idxs_per_image)
            xp = get_array_module(matched_idxs_per_image)
            positive = xp.nonzero(matched_idxs_per_image >= POSITIVE)[0]
            negative = xp.nonzero(matched_idxs_per_image == BACKGROUND)[0]

            # 1. how many of each: positives first, up to their fraction; negatives fill the batch
            num_pos = min(int(positive.size), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(int(negative.size), self.batch_size_per_image - num_pos)

            # 2. a random subset of each (the permutation is drawn on the host)
            perm_pos = rng.permutation(int(positive.size))[:num_pos]
            perm_neg = rng.permutation(int(negative.size))[:num_neg]
            pos_selected = positive[xp.asarray(perm_pos, dtype=xp.int64)]
            neg_selected = negative[xp.asarray(perm_neg, dtype=xp.int64)]

            # 3. as masks over the image's elements
            pos_mask = xp.zeros(matched_idxs_per_image.shape, dtype=xp.uint8)
            neg_mask = xp.zeros(matched_idxs_per_image.shape, dtype=xp.uint8)
            pos_mask[pos_selected] = 1
            neg_mask[neg_selected] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx
