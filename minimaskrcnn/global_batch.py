"""A training step's place in its global batch: randomness keyed by image, and the losses' counts.

Data-parallel training splits the global batch of B images over N processes (``distributed``). For
the N processes together to compute what one process computes on the whole batch, nothing may
depend on which process holds an image or in which order it draws its random numbers, and every
loss must be divided by its count over the whole batch, not over one process's share:

- random draws (anchor and RoI sampling, the multi-scale resize) come from a generator keyed by
  ``(seed, step, global image index, stream)`` (``GlobalBatch.generator``), so an image gets the
  same draws wherever it is processed;
- the batch is padded to the largest image of the global batch (``padded_batch_shape``), so the
  anchors and the features are those of the whole batch;
- each loss notes the count it divides by (sampled anchors, sampled RoIs, mask pixels:
  ``note_loss_count``); the trainer adds the counts over the processes and rescales each loss by
  ``local count / global count``, so that the summed gradients are those of the whole batch.

``with global_batch(seed, step, image_indices, image_sizes) as gb: losses = model(images, targets)``;
outside such a block the model draws from its own generators and nothing is noted, as before. Lesson
19 (data parallelism) shows the arithmetic.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

# The random streams of a training step: one per stage that draws, so that no two stages share draws
STREAM_RPN_SAMPLER = 1  # the RPN's choice of positive and negative anchors
STREAM_ROI_SAMPLER = 2  # the RoI heads' choice of foreground and background RoIs
STREAM_RESIZE = 3  # the training resize's choice of min_size (multi-scale training)
STREAM_MASK_ROI_SAMPLER = 4  # the mask head's choice of positive RoIs per object (Deep-MAC runs, rois_per_object)


@dataclass
class GlobalBatch:
    """Where this process's images sit in the step's global batch.

    Attributes:
        seed: the run's seed (>= 0).
        step: the step's index (>= 0); every step draws anew.
        image_indices: (n,) position in the global batch (0..B-1) of each image this process holds,
            in the order they are given to the model.
        image_sizes: (B,) (h, w) of every image of the global batch as given to the model (before
            resizing), or None when this process holds the whole batch.
        loss_counts: {loss name: count} noted by the model during the block (``note_loss_count``).
    """

    seed: int
    step: int
    image_indices: tuple[int, ...]
    image_sizes: tuple[tuple[int, int], ...] | None = None
    loss_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if int(self.seed) < 0 or int(self.step) < 0:
            raise ValueError(f"seed and step must be >= 0, got seed={self.seed}, step={self.step}")
        self.image_indices = tuple(int(i) for i in self.image_indices)
        if self.image_sizes is not None:
            self.image_sizes = tuple((int(h), int(w)) for h, w in self.image_sizes)
            if any(not 0 <= i < len(self.image_sizes) for i in self.image_indices):
                raise ValueError(f"image_indices {self.image_indices} outside the global batch of "
                                 f"{len(self.image_sizes)} images")

    def generator(self, global_index: int, stream: int) -> np.random.Generator:
        """The generator of image ``global_index``'s draws in ``stream`` (a ``STREAM_*`` constant) at
        this step: the same in every process, whatever else that process draws."""
        return np.random.default_rng([int(self.seed), int(self.step), int(global_index), int(stream)])

    def image_generators(self, stream: int) -> list[np.random.Generator]:
        """One generator per image of this process, in order (see ``generator``)."""
        return [self.generator(i, stream) for i in self.image_indices]


class _State(threading.local):
    batch: GlobalBatch | None = None


_state = _State()


def current_batch() -> GlobalBatch | None:
    """The ``GlobalBatch`` of the enclosing ``global_batch`` block (of this thread), or None."""
    return _state.batch


@contextlib.contextmanager
def global_batch(seed: int, step: int, image_indices: Sequence[int],
                 image_sizes: Sequence[tuple[int, int]] | None = None) -> Iterator[GlobalBatch]:
    """Context manager: the forward passes in the block work on part of (or all of) a global batch.

    Args:
        seed, step: the run's seed and the step's index; they key the random draws.
        image_indices: (n,) position of each image given to the model in the global batch.
        image_sizes: (B,) (h, w) of all the global batch's images (as given to the model), so that
            every process pads to the same shape; None when the model gets the whole batch.

    Yields:
        the ``GlobalBatch``; its ``loss_counts`` are filled as the model computes its losses.

    Example::

        with global_batch(seed=0, step=7, image_indices=[2, 3], image_sizes=sizes_of_all_4) as gb:
            losses = model(images, targets)      # images 2 and 3 of the step's 4
        gb.loss_counts                            # {"loss_objectness": 512, ...}
    """
    batch = GlobalBatch(int(seed), int(step), tuple(image_indices),
                        None if image_sizes is None else tuple(image_sizes))
    previous = _state.batch
    _state.batch = batch
    try:
        yield batch
    finally:
        _state.batch = previous


def image_generators(num_images: int, stream: int) -> list[np.random.Generator] | None:
    """The keyed generators of the ``num_images`` images given to the model, or None outside a
    ``global_batch`` block (the caller then draws from its own generator).

    Raises:
        ValueError: the block was opened for another number of images.
    """
    batch = _state.batch
    if batch is None:
        return None
    if len(batch.image_indices) != num_images:
        raise ValueError(f"global_batch was given {len(batch.image_indices)} image indices, the model "
                         f"{num_images} images")
    return batch.image_generators(stream)


def note_loss_count(name: str, count: int) -> None:
    """Note that loss ``name`` is its terms' sum divided by ``count`` (this process's count); nothing
    outside a ``global_batch`` block. The trainer rescales the loss to the count of the whole batch.

    Args:
        name: the key of the loss in the model's loss dict, e.g. "loss_objectness".
        count: what the loss is averaged over in this process: sampled anchors, sampled RoIs, mask
            pixels... (0 when the loss has no term: it is then 0 and stays 0).
    """
    if _state.batch is not None:
        _state.batch.loss_counts[name] = int(count)


def padded_batch_shape(resized_sizes: Sequence[tuple[int, int]], size_divisible: int) -> tuple[int, int] | None:
    """(H, W) of a batch holding images of the given resized sizes: the largest h and w rounded up to a
    multiple of ``size_divisible`` (torchvision's ``batch_images``); None for no image."""
    if not resized_sizes:
        return None
    height = max(int(s[0]) for s in resized_sizes)
    width = max(int(s[1]) for s in resized_sizes)
    return -(-height // size_divisible) * size_divisible, -(-width // size_divisible) * size_divisible
