"""Prediction: image files (or arrays) in, detections and pictures out.

``checkpoint.load_model`` rebuilds a trained model from a checkpoint written by ``minimaskrcnn train``;
``predict_image`` runs it on one image (from a notebook too) and ``predict_files`` writes one PNG
per input with the masks, boxes, class names and scores drawn (``minimaskrcnn predict``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.data import image as data_image
from minimaskrcnn.data.image import read_image
from minimaskrcnn.errors import ImageError
from minimaskrcnn.function import no_grad
from minimaskrcnn.visualize import draw_detections, save_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as the model's input, turned by its EXIF orientation as a viewer shows it.

    Args:
        path: a JPEG, PNG, TIFF, ... file; every pixel format keeps its intensities (16-bit / 65535,
            1-bit, palette, CMYK, float TIFF in [0, 1]; see ``data.image.read_image``).

    Returns:
        (3, H, W) float32 in [0, 1].

    Raises:
        ImageError: the file is missing, is not an image Pillow can read, or its pixels have no place in [0, 1].
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(path, "no such image file")
    return read_image(path, exif_transpose=True)


def as_model_image(image: Any) -> np.ndarray:
    """An image path, PIL image or array as the model's (3, H, W) float32 input in [0, 1].

    Args:
        image: a path or a PIL image (turned by its EXIF orientation, as ``load_image``); an array
            (H, W), (H, W, C) or (C, H, W) mapped to [0, 1] by its dtype: uint8 / 255, uint16 / 65535,
            bool, float as given (it must lie in [0, 1]); see ``data.image.array_to_image``.

    Returns:
        (3, H, W) float32 in [0, 1].

    Raises:
        ImageError: an unreadable file. ValueError, TypeError: an array of another layout or dtype, or
            float values outside [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    return data_image.as_model_image(image, exif_transpose=True)


def predict_image(
    model,
    image: Any,
    score_threshold: float = 0.0,
) -> dict[str, np.ndarray]:
    """Detect objects in one image.

    Args:
        model: a Mask R-CNN in the torchvision convention (it is put in eval mode).
        image: a path, PIL image or array (see ``as_model_image``).
        score_threshold: drop detections scoring below this.

    Returns:
        {"boxes": (N, 4) float32 (x1, y1, x2, y2) in image pixels, "labels": (N,) int64,
        "scores": (N,) float32, "masks": (N, 1, H, W) float32 probabilities} as NumPy arrays.
    """
    x = as_model_image(image)
    model.eval()
    with no_grad():
        out = model([x])[0]
    det = {k: to_numpy(v) for k, v in out.items()}  # CuPy arrays (a GPU model's outputs) are copied to the host
    keep = det["scores"] >= score_threshold
    return {k: v[keep] for k, v in det.items()}


def collect_image_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named directly, or found (sorted) in folders named.

    Raises:
        ImageError: an input does not exist, or nothing is left to predict on.
    """
    paths: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise ImageError(item, "folder holds no image files")
            paths += found
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise ImageError(item, "no such image file")
    if not paths:
        raise ImageError(None, "no images given")
    return paths


def predict_files(
    model,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    skeleton: Sequence[Sequence[int]] | None = None,
    keypoint_names: Sequence[str] | None = None,
) -> list[str]:
    """Run the model on image files and write one PNG per image with the detections drawn.

    Args:
        model: the model (eval mode is set).
        inputs: image files and/or folders of images.
        output_dir: where ``<image stem>.png`` files are written (created if needed).
        class_names: names indexed by label, for the captions.
        score_threshold: only detections scoring at least this are drawn.
        skeleton, keypoint_names: for a keypoint model, the limbs (1-based pairs) drawn between its
            keypoints and their names (left ones warm, right ones cool); see ``load_keypoint_info``.

    Returns:
        the paths of the PNGs written, in input order.

    Raises:
        ImageError: an input is missing or unreadable (nothing is written for it or after it).
    """
    written = []
    for path in collect_image_paths(inputs):
        image = load_image(path)
        det = predict_image(model, image, score_threshold=score_threshold)
        picture = draw_detections(image, det, class_names, score_threshold=score_threshold, skeleton=skeleton,
                                  keypoint_names=keypoint_names)
        out = os.path.join(os.fspath(output_dir), os.path.splitext(os.path.basename(path))[0] + ".png")
        save_image(picture, out)
        written.append(out)
    return written


def predict_masks_for_boxes(model, images: Sequence, boxes: Sequence,
                            labels: Sequence | None = None) -> list[np.ndarray]:
    """The masks a model predicts for given boxes, with no detection step (Deep-MAC's "image + boxes in,
    masks out", the model garden's ``call_images_and_boxes``): backbone, RoIAlign on the boxes, mask head.

    Used to measure the mask head alone, on ground-truth boxes, apart from detection quality.

    Args:
        model: a Mask R-CNN (run in eval mode; its mode is restored).
        images: N images, (3, H_i, W_i) float in [0, 1].
        boxes: N arrays (D_i, 4) float, (x1, y1, x2, y2) in the image's pixels.
        labels: N arrays (D_i,) int64, the class whose mask channel to read (ignored by a
            class-agnostic predictor); None reads class 1 (or the one channel).

    Returns:
        N arrays (D_i, H_i, W_i) float of mask probabilities pasted into the images (threshold at 0.5).
    """
    from minimaskrcnn.backend import get_array_module, to_numpy
    from minimaskrcnn.function import no_grad
    from minimaskrcnn.models.roi_heads import maskrcnn_inference
    from minimaskrcnn.tensor import Tensor

    heads = model.roi_heads
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            dtype = next(iter(model.parameters())).dtype
            images = [np.asarray(to_numpy(img)).astype(dtype, copy=False) for img in images]
            original_sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
            targets = [{"boxes": np.asarray(b, dtype=dtype).reshape(-1, 4)} for b in boxes]
            image_list, targets = model.transform(images, targets)
            xp = get_array_module(next(iter(model.parameters())).data)
            features = model.backbone(Tensor(xp.asarray(image_list.tensors)))
            rois = [xp.asarray(t["boxes"]) for t in targets]
            if labels is None:
                labels = [np.ones(len(b), dtype=np.int64) for b in rois]
            result = [{"boxes": r, "masks": xp.zeros((0, 1, 1, 1), dtype=dtype)} for r in rois]
            if sum(len(r) for r in rois):
                logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, rois,
                                                                                  image_list.image_sizes)))
                probs = maskrcnn_inference(logits.data, [xp.asarray(np.asarray(lbl, np.int64)) for lbl in labels])
                result = [{"boxes": r, "masks": p} for r, p in zip(rois, probs)]
            result = model.transform.postprocess(result, image_list.image_sizes, original_sizes)
    finally:
        model.train(was_training)
    return [to_numpy(r["masks"])[:, 0] if len(r["boxes"]) else np.zeros((0, *size), dtype=dtype)
            for r, size in zip(result, original_sizes)]
