"""Synthetic stick figures: a keypoint data set that a small Keypoint R-CNN learns in minutes on a CPU.

Each image holds 1-3 articulated figures (a head, a torso and jointed arms and legs, all facing the
viewer) on a noisy gradient, with 13 named keypoints each in COCO's person format: x, y and a
visibility (0 outside the image, 1 hidden by a later figure, 2 visible), a COCO-style ``skeleton``
and per-keypoint OKS sigmas. Facing the viewer makes left and right well defined (the figure's left
is the image's right), and mirror-consistent, so a horizontal flip that swaps left and right
keypoints stays a valid sample, as for COCO persons. Everything follows from the seed, as in
``shapes.py``. Lesson 15 (Keypoint R-CNN) trains on it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.data.shapes import _MAX_PLACEMENT_TRIES, _MIN_CONTRAST, _background
from minimaskrcnn.errors import PathLike
from minimaskrcnn.io import atomic_write

__all__ = [
    "FIGURE_KEYPOINTS",
    "FIGURE_SIGMAS",
    "FIGURE_SKELETON",
    "FiguresDataset",
    "FiguresFiles",
    "FiguresSample",
    "figures_category",
    "generate_figures_image",
    "make_figures_dataset",
]

# the keypoints, named as COCO's person keypoints (the head stands for COCO's five face points)
FIGURE_KEYPOINTS = (
    "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# limbs as pairs of 1-based keypoint indices (COCO's convention), COCO's person skeleton restricted to
# these keypoints, with the head joined to both shoulders
FIGURE_SKELETON = (
    (12, 10), (10, 8), (13, 11), (11, 9), (8, 9), (2, 8), (3, 9),
    (2, 3), (2, 4), (3, 5), (4, 6), (5, 7), (1, 2), (1, 3),
)
# OKS sigmas: COCO's (pycocotools') values for the joints of the same name; the head is the centre of a
# disc, better defined than COCO's face points (0.025-0.035) yet not a joint, so it takes 0.05
FIGURE_SIGMAS = (0.05, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
CATEGORY_NAME = "figure"
NOT_LABELLED, OCCLUDED, VISIBLE = 0, 1, 2  # COCO's keypoint visibility flags

# body proportions, as fractions of the figure's height h (head top to ankles, standing straight)
_PELVIS_TO_SHOULDERS = 0.30
_NECK = 0.05
_HEAD_RADIUS = 0.075
_SHOULDER_HALF_WIDTH = 0.11
_HIP_HALF_WIDTH = 0.08
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.16, 0.15, 0.24, 0.23
_ARM_RADIUS, _LEG_RADIUS, _NECK_RADIUS = 0.03, 0.04, 0.03
_MIN_VISIBLE_PIXELS = 40  # a figure showing fewer pixels than this is dropped


class FiguresSample(NamedTuple):
    """One generated image with its M figures (NK = 13 keypoints each)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (M, H, W) uint8, the visible part of each figure
    labels: np.ndarray  # (M,) int64, all 1 (the one category)
    boxes: np.ndarray  # (M, 4) float32, (x1, y1, x2, y2) pixel edges of the visible mask
    keypoints: np.ndarray  # (M, NK, 3) float32, (x, y, visibility) in pixels; (0, 0, 0) outside the image


class FiguresFiles(NamedTuple):
    """Where make_figures_dataset wrote the data set (pass both to CocoDataset)."""

    annotation_file: Path
    image_dir: Path


def _pose(rng: np.random.Generator, cx: float, cy: float, height: float) -> np.ndarray:
    """(NK, 2) float64 keypoints of one figure with its pelvis at (cx, cy), in pixels.

    The body leans by up to 15 degrees; each arm opens 10-170 degrees from hanging down and bends at
    the elbow by -60..100 degrees; each leg opens -5..40 degrees and bends by -25..25 degrees.
    Widths vary by 15%. The figure's left side (its left keypoints) is on the image's right.
    """
    tilt = np.deg2rad(rng.uniform(-15, 15))
    up = np.array([np.sin(tilt), -np.cos(tilt)])  # image y points down
    right = np.array([np.cos(tilt), np.sin(tilt)])  # the image's right = the figure's left
    width = rng.uniform(0.85, 1.15)
    pelvis = np.array([cx, cy])
    shoulders = pelvis + up * _PELVIS_TO_SHOULDERS * height
    head = shoulders + up * (_NECK + _HEAD_RADIUS) * height
    points = {"head": head}

    def limb(start: np.ndarray, side: float, opening: float, bend: float, lengths: tuple[float, float]) -> tuple:
        # angles from hanging straight down, turning outwards (towards the image's right for the left side)
        def direction(angle: float) -> np.ndarray:
            return -up * np.cos(angle) + side * right * np.sin(angle)
        middle = start + direction(opening) * lengths[0] * height
        return middle, middle + direction(opening + bend) * lengths[1] * height

    for side, name in ((1.0, "left"), (-1.0, "right")):
        shoulder = shoulders + side * right * _SHOULDER_HALF_WIDTH * width * height
        hip = pelvis + side * right * _HIP_HALF_WIDTH * width * height
        opening = np.deg2rad(rng.uniform(10, 170))
        elbow, wrist = limb(shoulder, side, opening, np.deg2rad(rng.uniform(-60, 100)), (_UPPER_ARM, _FOREARM))
        opening = np.deg2rad(rng.uniform(-5, 40))
        knee, ankle = limb(hip, side, opening, np.deg2rad(rng.uniform(-25, 25)), (_THIGH, _SHIN))
        points.update({f"{name}_shoulder": shoulder, f"{name}_elbow": elbow, f"{name}_wrist": wrist,
                       f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_ankle": ankle})
    return np.array([points[name] for name in FIGURE_KEYPOINTS])


def _capsule(p: np.ndarray, q: np.ndarray, radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixel centres within ``radius`` of the segment p-q (a limb with round ends)."""
    d = q - p
    t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2 <= radius**2


def _figure_mask(keypoints: np.ndarray, height: float, image_height: int, image_width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies inside the figure (head disc, neck, torso, limbs)."""
    ys = np.arange(image_height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(image_width, dtype=np.float64)[None, :] + 0.5
    k = {name: keypoints[i] for i, name in enumerate(FIGURE_KEYPOINTS)}
    head = k["head"]
    mask = (xs - head[0]) ** 2 + (ys - head[1]) ** 2 <= (_HEAD_RADIUS * height) ** 2
    neck = (k["left_shoulder"] + k["right_shoulder"]) / 2
    mask |= _capsule(head, neck, _NECK_RADIUS * height, xs, ys)
    # the torso: the convex quadrilateral of the shoulders and hips, grown by the arm radius
    quad = [k["left_shoulder"], k["right_shoulder"], k["right_hip"], k["left_hip"]]
    inside = np.ones_like(mask)
    centre = np.mean(quad, axis=0)
    for a, b in zip(quad, quad[1:] + quad[:1]):
        edge = b - a
        normal = np.array([edge[1], -edge[0]]) / max(np.hypot(*edge), 1e-12)
        if normal @ (centre - a) < 0:
            normal = -normal  # point inwards
        inside &= (xs - a[0]) * normal[0] + (ys - a[1]) * normal[1] >= -_ARM_RADIUS * height
    mask |= inside
    for side in ("left", "right"):
        for a, b, r in ((f"{side}_shoulder", f"{side}_elbow", _ARM_RADIUS),
                        (f"{side}_elbow", f"{side}_wrist", _ARM_RADIUS),
                        (f"{side}_hip", f"{side}_knee", _LEG_RADIUS),
                        (f"{side}_knee", f"{side}_ankle", _LEG_RADIUS)):
            mask |= _capsule(k[a], k[b], r * height, xs, ys)
    return mask


def generate_figures_image(
    rng: np.random.Generator,
    image_size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 3,
    min_size: float = 48,
    max_size: float = 110,
    max_occlusion: float = 0.4,
    noise: float = 10.0,
) -> FiguresSample:
    """Draw one image of stick figures.

    Steps: 1. a gradient background; 2. up to ``max_objects`` figures, each posed at random and placed
    (up to 30 tries) where it hides at most ``max_occlusion`` of any earlier figure's visible pixels,
    its pelvis inside the image (limbs may leave it), in one colour that stands out from the
    background under it; 3. Gaussian pixel noise; 4. visible masks and boxes, dropping figures with
    fewer than 40 visible pixels; 5. keypoint visibility: 0 (and x = y = 0) outside the image, 1 where
    a later figure covers the keypoint's pixel, else 2.

    Args:
        rng: the generator all randomness comes from.
        image_size: H = W, or (H, W), in pixels.
        min_objects, max_objects: the number of figures tried, inclusive.
        min_size, max_size: the figure's height (head top to ankles, standing straight), in pixels.
        max_occlusion: the largest fraction of a figure's pixels later figures may hide.
        noise: standard deviation of the pixel noise, in 0..255 units.

    Returns:
        A FiguresSample (image uint8 (H, W, 3); masks (M, H, W) uint8; labels (M,) int64 ones;
        boxes (M, 4) float32 x1 y1 x2 y2; keypoints (M, 13, 3) float32 x, y, visibility).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
    image = _background(rng, height, width)
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    poses: list[np.ndarray] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _try in range(_MAX_PLACEMENT_TRIES):
            size = rng.uniform(min_size, max_size)
            # the pelvis inside the image, the head (0.5 h above it) too
            cx = rng.uniform(0.1 * size, width - 0.1 * size) if width > 0.2 * size else width / 2
            cy = rng.uniform(min(0.55 * size, height - 1), height - 1)
            pose = _pose(rng, cx, cy, size)
            mask = _figure_mask(pose, size, height, width)
            if mask.sum() < _MIN_VISIBLE_PIXELS:
                continue
            if all((v & ~mask).sum() >= (1 - max_occlusion) * f.sum() for v, f in zip(visible, full_masks)):
                break
        else:
            continue  # no room for this figure
        under = image[mask].mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        for _try in range(_MAX_PLACEMENT_TRIES):
            if np.abs(colour - under).mean() >= _MIN_CONTRAST:
                break
            colour = rng.uniform(0, 255, size=3)
        else:
            colour = np.where(under > 127.5, 0.0, 255.0)
        image[mask] = colour
        visible = [v & ~mask for v in visible] + [mask.copy()]
        full_masks.append(mask)
        poses.append(pose)
    image = image + rng.normal(0.0, noise, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    keep = [k for k, v in enumerate(visible) if v.sum() >= _MIN_VISIBLE_PIXELS]
    masks = np.array([visible[k] for k in keep], dtype=np.uint8).reshape(-1, height, width)
    boxes = np.zeros((len(keep), 4), dtype=np.float32)
    keypoints = np.zeros((len(keep), len(FIGURE_KEYPOINTS), 3), dtype=np.float32)
    for i, k in enumerate(keep):
        rows, cols = np.nonzero(masks[i].any(axis=1))[0], np.nonzero(masks[i].any(axis=0))[0]
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        covered = np.zeros((height, width), dtype=bool)  # pixels of the figures drawn after this one
        for later in full_masks[k + 1:]:
            covered |= later
        for j, (x, y) in enumerate(poses[k]):
            if not (0 <= x < width and 0 <= y < height):
                continue  # outside the image: not labelled, (0, 0, 0) as COCO
            keypoints[i, j] = (x, y, OCCLUDED if covered[int(y), int(x)] else VISIBLE)
    return FiguresSample(image, masks, np.ones(len(keep), dtype=np.int64), boxes, keypoints)


def figures_category() -> dict:
    """The COCO category record of the figures: id, name, ``keypoints`` names, 1-based ``skeleton``,
    and ``keypoint_sigmas`` (not a COCO key: the OKS sigmas ``minimaskrcnn.evaluate`` uses)."""
    return {"id": 1, "name": CATEGORY_NAME, "supercategory": "figure", "keypoints": list(FIGURE_KEYPOINTS),
            "skeleton": [list(pair) for pair in FIGURE_SKELETON], "keypoint_sigmas": list(FIGURE_SIGMAS)}


class FiguresDataset:
    """Synthetic stick figures in memory, with the samples of a person-keypoints CocoDataset.

    Sample ``i`` is drawn from ``np.random.default_rng([seed, i])``; keyword arguments go to
    generate_figures_image.

    Args:
        num_images: the length of the data set.
        image_size: H = W, or (H, W).
        seed: the data set's seed (use different seeds for train and held-out sets).
        transforms: optional ``transforms(image, target) -> (image, target)``.

    A sample: image (3, H, W) float32 in [0, 1]; target with boxes (M, 4) float32 (x1, y1, x2, y2),
    labels (M,) int64 ones, masks (M, H, W) uint8, keypoints (M, 13, 3) float32 (x, y, visibility),
    image_id int (= index + 1), area (M,) float32 (visible pixels), iscrowd (M,) int64 zeros.
    Attributes ``keypoint_names``, ``skeleton`` (1-based pairs), ``keypoint_sigmas`` describe the
    keypoints; ``coco`` is a pycocotools COCO of the whole set (built on first use) and
    ``label_to_category_id`` its category of each label, for evaluation; ``box_only_annotation_ids`` is
    empty (every figure has a mask).
    """

    def __init__(self, num_images: int, image_size: int | tuple[int, int] = 128, seed: int = 0,
                 transforms=None, **generator_kwargs: Any):
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.transforms = transforms
        self.generator_kwargs = generator_kwargs
        self.categories: dict[int, str] = {1: CATEGORY_NAME}
        self.label_to_category_id = {1: 1}  # the model's label 1 is COCO category 1
        self.num_classes = 2
        self.class_names = ["__background__", CATEGORY_NAME]
        self.keypoint_names = list(FIGURE_KEYPOINTS)
        self.skeleton = [list(pair) for pair in FIGURE_SKELETON]
        self.keypoint_sigmas = np.array(FIGURE_SIGMAS)
        self.ids = list(range(1, num_images + 1))
        self.box_only_annotation_ids: set[int] = set()  # every figure has its mask (evaluate reads this)
        self._coco = None

    def __len__(self) -> int:
        return self.num_images

    def check_images(self, indices=None) -> None:
        """Nothing to check: the images are generated (see ``data.prepare.DetectionDataset``)."""

    def sample(self, index: int) -> FiguresSample:
        """The raw sample ``index`` (uint8 image, masks, labels, boxes, keypoints)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a data set of {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])
        return generate_figures_image(rng, self.image_size, **self.generator_kwargs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if -self.num_images <= index < 0:
            index += self.num_images
        s = self.sample(index)
        image = s.image.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
        target = {
            "boxes": s.boxes,
            "labels": s.labels,
            "masks": s.masks,
            "keypoints": s.keypoints,
            "image_id": index + 1,
            "area": s.masks.sum(axis=(1, 2)).astype(np.float32),
            "iscrowd": np.zeros(len(s.labels), dtype=np.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @property
    def coco(self):
        """The ground truth as a pycocotools ``COCO`` (for ``minimaskrcnn.evaluate``)."""
        if self._coco is None:
            import contextlib
            import io

            from pycocotools.coco import COCO

            self._coco = COCO()
            self._coco.dataset = self.coco_dict()
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco.createIndex()
        return self._coco

    def coco_dict(self) -> dict:
        """The whole data set as a COCO person-keypoints dict (RLE masks, keypoints, num_keypoints)."""
        return self._coco_dict(write_images_to=None)

    def _coco_dict(self, write_images_to) -> dict:
        images, annotations = [], []
        for index in range(self.num_images):
            s = self.sample(index)
            height, width = s.image.shape[:2]
            file_name = f"{index:06d}.png"
            if write_images_to is not None:
                with atomic_write(write_images_to / file_name) as f:
                    Image.fromarray(s.image).save(f, format="PNG")
            images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height, "license": 0})
            for mask, box, kp in zip(s.masks, s.boxes, s.keypoints):
                rle = mask_utils.encode(np.asfortranarray(mask))
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "keypoints": [round(float(v), 3) if j % 3 < 2 else int(v) for j, v in enumerate(kp.reshape(-1))],
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                })
        return {
            "info": {"description": "minimaskrcnn synthetic stick figures", "seed": self.seed, "version": "1.0"},
            "licenses": [{"id": 0, "name": "generated by minimaskrcnn (public domain)", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": [figures_category()],
        }


def make_figures_dataset(out_dir: PathLike, num_images: int, image_size: int | tuple[int, int] = 128,
                         seed: int = 0, **generator_kwargs: Any) -> FiguresFiles:
    """Write a stick-figures data set in COCO person-keypoints format: ``out_dir/images/NNNNNN.png`` and
    ``out_dir/keypoints.json``.

    The same arguments give the same bytes. Keyword arguments go to generate_figures_image.

    Args:
        out_dir: the folder to write (created; existing files of the same names are overwritten).
        num_images: how many images.
        image_size: H = W, or (H, W).
        seed: the data set's seed.

    Returns:
        FiguresFiles(annotation_file, image_dir): pass them to CocoDataset.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    data = FiguresDataset(num_images, image_size, seed, **generator_kwargs)._coco_dict(write_images_to=image_dir)
    annotation_file = out_dir / "keypoints.json"
    with atomic_write(annotation_file, "w") as f:
        f.write(json.dumps(data, separators=(",", ":")) + "\n")
    return FiguresFiles(annotation_file, image_dir)
