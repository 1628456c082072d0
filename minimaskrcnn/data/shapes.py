"""Synthetic shapes: a data set small models can learn in minutes on a CPU (matterport's "shapes").

Each image holds 1-4 circles, squares and triangles of random size, colour and rotation on a noisy
gradient; later shapes occlude earlier ones, and every mask is the *visible* part of its shape. The
class is the shape, never the colour. Everything follows from the seed: ``(seed, index)`` picks one
image, so the same seed gives the same bytes. ``classes`` draws other shapes too (pentagons and
hexagons, which look alike, for studies that need look-alike classes; a five-pointed star, a ring and a cross,
unlike the first three, for the partially supervised experiments of lesson 18). Lesson: lessons/
(training on shapes).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.errors import PathLike
from minimaskrcnn.io import atomic_write

__all__ = ["SHAPE_CLASSES", "SHAPE_KINDS", "ShapesDataset", "ShapesFiles", "ShapesSample", "generate_shapes_image",
           "make_shapes_dataset"]

SHAPE_CLASSES = ("circle", "square", "triangle")  # the default classes, labels 1, 2, 3
# regular polygons, vertices on the circumscribed circle
_VERTICES = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}
# every shape the generator can draw; star, ring and cross are non-convex or holed (Deep-MAC, lesson 18)
SHAPE_KINDS = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "ring", "cross")
_STAR_INNER = 0.45  # inner radius of the star / outer radius
_RING_INNER = 0.55  # radius of the ring's hole / outer radius
_CROSS_HALF_WIDTH = 0.3  # half-width of the cross's bars / radius
_MIN_VISIBLE_PIXELS = 20  # an instance showing fewer pixels than this is dropped
_MIN_CONTRAST = 80.0  # mean |shape colour - background| over RGB, in 0..255 units
_MAX_PLACEMENT_TRIES = 30


class ShapesSample(NamedTuple):
    """One generated image with its instances (M of them)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (M, H, W) uint8, visible part of each shape
    labels: np.ndarray  # (M,) int64, 1-based index into the classes
    boxes: np.ndarray  # (M, 4) float32, (x1, y1, x2, y2) pixel edges of the visible mask


class ShapesFiles(NamedTuple):
    """Where make_shapes_dataset wrote the data set (pass both to CocoDataset)."""

    annotation_file: Path
    image_dir: Path


def _convex_polygon(vx: np.ndarray, vy: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Inside a convex polygon with counter-clockwise vertices = left of every edge (cross product >= 0)."""
    n = len(vx)
    inside = np.ones(np.broadcast_shapes(xs.shape, ys.shape), dtype=bool)
    for k in range(n):
        ex, ey = vx[(k + 1) % n] - vx[k], vy[(k + 1) % n] - vy[k]
        inside &= ex * (ys - vy[k]) - ey * (xs - vx[k]) >= 0
    return inside


def _shape_mask(kind: str, cx: float, cy: float, radius: float, angle: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centre (x + 0.5, y + 0.5) lies inside the shape.

    All shapes fit in the circle of ``radius`` around (cx, cy): a circle of that radius, a regular
    polygon (square, triangle, pentagon, hexagon) whose vertices lie on it, rotated by ``angle``
    radians; a five-pointed star (outer points on the circle, inner corners at 0.45 of it), a ring (a
    hole of 0.55 of the radius) or a cross (two bars of half-width 0.3 of the radius), rotated likewise.
    """
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    if kind == "circle":
        return d2 <= radius**2
    if kind == "ring":
        return (d2 <= radius**2) & (d2 >= (_RING_INNER * radius) ** 2)
    if kind == "star":
        # ten convex triangles (centre, point k, inner corner k) and (centre, inner corner k, point k + 1)
        t = angle + np.pi * np.arange(10) / 5  # alternating outer points and inner corners, counter-clockwise
        r = np.where(np.arange(10) % 2 == 0, radius, _STAR_INNER * radius)
        vx, vy = cx + r * np.cos(t), cy + r * np.sin(t)
        inside = np.zeros((height, width), dtype=bool)
        for k in range(10):
            j = (k + 1) % 10
            inside |= _convex_polygon(np.array([cx, vx[k], vx[j]]), np.array([cy, vy[k], vy[j]]), xs, ys)
        return inside
    if kind == "cross":
        # two perpendicular bars whose corners stay inside the circle
        half_w = _CROSS_HALF_WIDTH * radius
        half_l = np.sqrt(radius**2 - half_w**2)
        inside = np.zeros((height, width), dtype=bool)
        for a in (angle, angle + np.pi / 2):
            ux, uy = np.cos(a), np.sin(a)  # along the bar; (-uy, ux) across it
            corners = [(half_l, -half_w), (half_l, half_w), (-half_l, half_w), (-half_l, -half_w)]
            vx = np.array([cx + s * ux - q * uy for s, q in corners])
            vy = np.array([cy + s * uy + q * ux for s, q in corners])
            inside |= _convex_polygon(vx, vy, xs, ys)
        return inside
    n = _VERTICES[kind]
    t = angle + 2 * np.pi * np.arange(n) / n  # counter-clockwise vertices
    return _convex_polygon(cx + radius * np.cos(t), cy + radius * np.sin(t), xs, ys)


def shape_classes(num_classes: int = len(SHAPE_CLASSES), classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The shape of each label, from 1: ``classes``, or the first ``num_classes`` of SHAPE_CLASSES.

    Raises:
        ValueError: an unknown or repeated shape, or num_classes outside 1..3.
    """
    if classes is None:
        if not 1 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes}")
        return SHAPE_CLASSES[:num_classes]
    kinds = tuple(classes)
    unknown = [k for k in kinds if k not in SHAPE_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"classes must be distinct shapes among {SHAPE_KINDS}, got {kinds}")
    return kinds


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float64: a linear gradient between two random colours along a random direction."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = (np.cos(theta) * xs / max(width - 1, 1) + np.sin(theta) * ys / max(height - 1, 1))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return c0 + (c1 - c0) * t[..., None]


def generate_shapes_image(
    rng: np.random.Generator,
    image_size: int | tuple[int, int] = 128,
    num_classes: int = len(SHAPE_CLASSES),
    min_objects: int = 1,
    max_objects: int = 4,
    min_size: float = 15,
    max_size: float = 60,
    max_occlusion: float = 0.5,
    noise: float = 10.0,
    classes: Sequence[str] | None = None,
) -> ShapesSample:
    """Draw one image of shapes.

    Steps: 1. a gradient background; 2. up to ``max_objects`` shapes, each placed (up to 30 tries)
    where it hides at most ``max_occlusion`` of any earlier shape's visible pixels, in a colour that
    stands out from the background under it; 3. Gaussian pixel noise; 4. visible masks, dropping
    instances with fewer than 20 visible pixels.

    Args:
        rng: the generator all randomness comes from.
        image_size: H = W, or (H, W), in pixels.
        num_classes: how many of SHAPE_CLASSES to use (labels 1..num_classes); ignored when
            ``classes`` is given.
        min_objects, max_objects: the number of shapes tried, inclusive.
        min_size, max_size: the diameter of the circle that holds a shape, in pixels.
        max_occlusion: the largest fraction of a shape's pixels later shapes may hide.
        noise: standard deviation of the pixel noise, in 0..255 units.
        classes: the shape of each label (label i + 1 is ``classes[i]``), any of SHAPE_KINDS;
            None: SHAPE_CLASSES[:num_classes].

    Raises:
        ValueError: an unknown shape, a bad class count or sizes that do not fit the image.

    Returns:
        A ShapesSample (image uint8 (H, W, 3); masks (M, H, W) uint8; labels (M,) int64;
        boxes (M, 4) float32 x1 y1 x2 y2).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    kinds = shape_classes(num_classes, classes)
    if not 0 < min_size <= max_size <= min(height, width):
        raise ValueError(f"need 0 < min_size <= max_size <= image side, got {min_size}, {max_size}")
    image = _background(rng, height, width)
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        label = int(rng.integers(1, len(kinds) + 1))
        kind = kinds[label - 1]
        for _try in range(_MAX_PLACEMENT_TRIES):
            radius = rng.uniform(min_size, max_size) / 2
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            mask = _shape_mask(kind, cx, cy, radius, rng.uniform(0, 2 * np.pi), height, width)
            if mask.sum() < _MIN_VISIBLE_PIXELS:
                continue
            # accept if every earlier shape keeps at least (1 - max_occlusion) of its full area
            if all((v & ~mask).sum() >= (1 - max_occlusion) * f.sum() for v, f in zip(visible, full_masks)):
                break
        else:
            continue  # no room for this shape
        under = image[mask].mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        for _try in range(_MAX_PLACEMENT_TRIES):
            if np.abs(colour - under).mean() >= _MIN_CONTRAST:
                break
            colour = rng.uniform(0, 255, size=3)
        else:
            colour = np.where(under > 127.5, 0.0, 255.0)  # the opposite corner of the RGB cube
        image[mask] = colour
        visible = [v & ~mask for v in visible] + [mask.copy()]
        full_masks.append(mask)
        labels.append(label)
    image = image + rng.normal(0.0, noise, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    keep = [k for k, v in enumerate(visible) if v.sum() >= _MIN_VISIBLE_PIXELS]
    masks = np.array([visible[k] for k in keep], dtype=np.uint8).reshape(-1, height, width)
    boxes = np.zeros((len(keep), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)  # pixel edges: x2 = last column + 1
    return ShapesSample(image, masks, np.array([labels[k] for k in keep], dtype=np.int64), boxes)


class ShapesDataset:
    """Synthetic shapes in memory, with the same samples as CocoDataset: ``ds[i] -> (image, target)``.

    Sample ``i`` is drawn from ``np.random.default_rng([seed, i])``, so any sample can be made alone
    and the same arguments always give the same data. Keyword arguments go to generate_shapes_image.

    Args:
        num_images: the length of the data set.
        image_size: H = W, or (H, W).
        seed: the data set's seed (use different seeds for train and held-out sets).
        transforms: optional ``transforms(image, target) -> (image, target)``.

    A sample: image (3, H, W) float32 in [0, 1]; target with boxes (M, 4) float32 (x1, y1, x2, y2),
    labels (M,) int64 in 1..num_classes-1, masks (M, H, W) uint8, has_mask (M,) bool (all True),
    image_id int (= index + 1), area (M,) float32 (visible pixels), iscrowd (M,) int64 zeros.
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
        kinds = shape_classes(generator_kwargs.get("num_classes", len(SHAPE_CLASSES)), generator_kwargs.get("classes"))
        self.categories: dict[int, str] = {i + 1: kind for i, kind in enumerate(kinds)}
        self.num_classes = len(kinds) + 1  # with background
        self.keypoint_names: list[str] | None = None  # no keypoints (see data.figures for a keypoint set)
        self.class_names = ["__background__"] + list(self.categories.values())
        self.ids = list(range(1, num_images + 1))

    def __len__(self) -> int:
        return self.num_images

    def check_images(self, indices=None) -> None:
        """Nothing to check: the images are generated (see ``data.prepare.DetectionDataset``)."""

    def sample(self, index: int) -> ShapesSample:
        """The raw sample ``index`` (uint8 image, masks, labels, boxes)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a data set of {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])
        return generate_shapes_image(rng, self.image_size, **self.generator_kwargs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if -self.num_images <= index < 0:
            index += self.num_images
        s = self.sample(index)
        image = s.image.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
        target = {
            "boxes": s.boxes,
            "labels": s.labels,
            "masks": s.masks,
            "has_mask": np.ones(len(s.labels), dtype=bool),
            "image_id": index + 1,
            "area": s.masks.sum(axis=(1, 2)).astype(np.float32),
            "iscrowd": np.zeros(len(s.labels), dtype=np.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def coco_dict(self) -> dict:
        """The whole data set as a COCO instances dict (RLE masks), e.g. for pycocotools' COCOeval."""
        return self._coco(write_images_to=None)

    def _coco(self, write_images_to) -> dict:
        images, annotations = [], []
        for index in range(self.num_images):
            s = self.sample(index)
            height, width = s.image.shape[:2]
            file_name = f"{index:06d}.png"
            if write_images_to is not None:
                with atomic_write(write_images_to / file_name) as f:
                    Image.fromarray(s.image).save(f, format="PNG")
            images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height, "license": 0})
            for mask, label, box in zip(s.masks, s.labels, s.boxes):
                rle = mask_utils.encode(np.asfortranarray(mask))
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                })
        return {
            "info": {"description": "minimaskrcnn synthetic shapes", "seed": self.seed, "version": "1.0"},
            "licenses": [{"id": 0, "name": "generated by minimaskrcnn (public domain)", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in self.categories.items()],
        }


def make_shapes_dataset(out_dir: PathLike, num_images: int, image_size: int | tuple[int, int] = 128,
                        seed: int = 0, **generator_kwargs: Any) -> ShapesFiles:
    """Write a shapes data set in COCO format: ``out_dir/images/NNNNNN.png`` and ``out_dir/instances.json``.

    Masks are stored as compressed RLE (exactly the visible pixels). The same arguments give the same
    bytes. Keyword arguments go to generate_shapes_image (num_classes, min_objects, max_size, ...).

    Args:
        out_dir: the folder to write (created; existing files of the same names are overwritten).
        num_images: how many images.
        image_size: H = W, or (H, W).
        seed: the data set's seed.

    Returns:
        ShapesFiles(annotation_file, image_dir): pass them to CocoDataset.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(num_images, image_size, seed, **generator_kwargs)._coco(write_images_to=image_dir)
    annotation_file = out_dir / "instances.json"
    with atomic_write(annotation_file, "w") as f:
        f.write(json.dumps(data, separators=(",", ":")) + "\n")
    return ShapesFiles(annotation_file, image_dir)
