"""Pictures of what the model sees and says: boxes, anchors by label, proposals, masks, detections.

Drawing functions take an image and arrays and return a new (H, W, 3) uint8 image (PIL draws the
lines and text), so that they work the same in a notebook, a test and the ``predict`` command.
``show_masks`` and ``plot_curves`` make matplotlib figures. The lessons use all of them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.io import atomic_write
from minimaskrcnn.ops.matcher import BACKGROUND as NEGATIVE
from minimaskrcnn.ops.matcher import IGNORE, POSITIVE

# A palette of well-separated colours (matplotlib's tab10 then tab20's light tones), as 0-255 RGB.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.uint8,
)
# Anchor / proposal labels as the RPN assigns them (1 foreground, 0 background, -1 ignored).
LABEL_COLORS = {POSITIVE: (0, 200, 0), NEGATIVE: (220, 40, 40), IGNORE: (150, 150, 150)}


def color_for(label: int) -> tuple[int, int, int]:
    """The palette colour of a class label (the same label always gets the same colour)."""
    return tuple(int(c) for c in PALETTE[int(label) % len(PALETTE)])


def to_uint8_image(image: Any) -> np.ndarray:
    """Any image layout to an (H, W, 3) uint8 RGB array.

    Args:
        image: (3, H, W) or (H, W, 3) float in [0, 1], or uint8; (H, W) grayscale; a Tensor, a PIL
            image or a NumPy array.

    Returns:
        (H, W, 3) uint8, a new array.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    a = to_numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # (C, H, W), the model's layout, to (H, W, C)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(np.asarray(a, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


# ------------------------------------------------------------------------------------ boxes
def draw_boxes(
    image: Any,
    boxes: Any,
    colors: Sequence[tuple[int, int, int]] | tuple[int, int, int] | None = None,
    texts: Sequence[str] | None = None,
    width: int = 2,
    dashed: bool = False,
) -> np.ndarray:
    """Draw rectangles (and a caption above each) on a copy of an image.

    Args:
        image: the image (see ``to_uint8_image`` for accepted layouts).
        boxes: (K, 4) float, (x1, y1, x2, y2) in pixels of ``image``.
        colors: one RGB colour for all boxes, or one per box (default: the palette by index).
        texts: an optional caption per box, drawn on a filled strip at its top-left corner.
        width: line width in pixels.
        dashed: dashed outlines (matterport's notebooks draw boxes before refinement dashed).

    Returns:
        (H, W, 3) uint8, the image with the boxes drawn.
    """
    canvas = Image.fromarray(to_uint8_image(image))
    draw = ImageDraw.Draw(canvas)
    boxes = to_numpy(boxes).reshape(-1, 4)
    if colors is None:
        colors = [color_for(i) for i in range(len(boxes))]
    elif len(colors) == 3 and np.isscalar(colors[0]):
        colors = [tuple(int(c) for c in colors)] * len(boxes)
    font = _font(max(10, min(16, canvas.height // 30)))
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        color = tuple(int(c) for c in colors[i])
        if dashed:
            _dashed_rectangle(draw, (x1, y1, x2, y2), color, width)
        else:
            draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=width)
        if texts is not None and texts[i]:
            left, top, right, bottom = draw.textbbox((x1, y1), texts[i], font=font)
            h, w = bottom - top, right - left
            ty = y1 - h - 2 if y1 - h - 2 >= 0 else y1  # above the box, or inside it at the image top
            tx = max(0.0, min(x1, canvas.width - w - 4))  # kept inside the image on the right
            draw.rectangle((tx, ty, tx + w + 4, ty + h + 2), fill=color)
            draw.text((tx + 2, ty + 1 - (top - y1)), texts[i], fill=(255, 255, 255), font=font)
    return np.asarray(canvas).copy()


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, color, width: int, dash: float = 6.0) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay, bx, by) in ((x1, y1, x2, y1), (x2, y1, x2, y2), (x2, y2, x1, y2), (x1, y2, x1, y1)):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min(1.0, (s + 1) / steps)
            draw.line((ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
                      fill=color, width=width)


def draw_anchors(
    image: Any,
    anchors: Any,
    labels: Any,
    show_negative: int = 20,
    seed: int = 0,
    width: int = 1,
) -> np.ndarray:
    """Anchors coloured by their RPN training label: positive green, negative red.

    Args:
        image: the network input image.
        anchors: (R, 4) float, (x1, y1, x2, y2) in input pixels.
        labels: (R,) int, 1 foreground / 0 background / -1 ignore (ignored anchors are not drawn).
        show_negative: draw at most this many negatives (there are thousands), picked at random.
        seed: seed of that random pick.
        width: line width.

    Returns:
        (H, W, 3) uint8 image.
    """
    anchors, labels = to_numpy(anchors).reshape(-1, 4), to_numpy(labels).reshape(-1)
    neg_idx = np.flatnonzero(labels == NEGATIVE)
    if len(neg_idx) > show_negative:
        neg_idx = np.random.default_rng(seed).choice(neg_idx, show_negative, replace=False)
    pos_idx = np.flatnonzero(labels == POSITIVE)
    idx = np.concatenate([neg_idx, pos_idx])  # positives drawn last, on top
    colors = [LABEL_COLORS[int(labels[i])] for i in idx]
    return draw_boxes(image, anchors[idx], colors=colors, width=width)


def draw_proposals(
    image: Any,
    proposals: Any,
    scores: Any | None = None,
    top_n: int = 50,
    color: tuple[int, int, int] = (255, 200, 0),
    width: int = 1,
) -> np.ndarray:
    """The RPN's proposals (the ``top_n`` best by score when scores are given).

    Args:
        image: the network input image.
        proposals: (K, 4) float, (x1, y1, x2, y2) in input pixels.
        scores: (K,) float objectness (optional).
        top_n: how many to draw.
        color: outline colour.
        width: line width.

    Returns:
        (H, W, 3) uint8 image.
    """
    proposals = to_numpy(proposals).reshape(-1, 4)
    if scores is not None:
        order = np.argsort(-to_numpy(scores).reshape(-1), kind="stable")[:top_n]
        proposals = proposals[order]
    return draw_boxes(image, proposals[:top_n], colors=color, width=width)


# ------------------------------------------------------------------------------------ masks
def draw_masks(
    image: Any,
    masks: Any,
    colors: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.45,
    threshold: float = 0.5,
    outline: bool = True,
) -> np.ndarray:
    """Overlay full-image masks on a copy of an image, each in its colour.

    Args:
        image: the image, (H, W) of the masks.
        masks: (N, 1, H, W) or (N, H, W) float probabilities (thresholded at ``threshold``) or binary.
        colors: one RGB colour per mask (default: the palette by index).
        alpha: opacity of the fill.
        threshold: probability above which a pixel is in the mask.
        outline: also draw the mask's border in the full colour.

    Returns:
        (H, W, 3) uint8 image.
    """
    out = to_uint8_image(image).astype(np.float32)
    masks = to_numpy(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    binary = masks > threshold if masks.dtype != bool else masks
    if colors is None:
        colors = [color_for(i) for i in range(len(binary))]
    for m, color in zip(binary, colors):
        if m.shape != out.shape[:2]:
            raise ValueError(f"mask of shape {m.shape} for an image of shape {out.shape[:2]}")
        c = np.asarray(color, dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * c
        if outline:
            edge = m & ~_erode(m)
            out[edge] = c
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _erode(m: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), for mask outlines."""
    e = m.copy()
    e[1:, :] &= m[:-1, :]
    e[:-1, :] &= m[1:, :]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


# keypoint colours: left-side keypoints warm, right-side cool, the others white (pose drawings' habit)
LEFT_COLOR, RIGHT_COLOR, MIDDLE_COLOR = (255, 80, 40), (40, 140, 255), (255, 255, 255)


def keypoint_colors(keypoint_names: Sequence[str] | None, count: int) -> list[tuple[int, int, int]]:
    """One colour per keypoint: left_* warm, right_* cool, others white (all white without names)."""
    if keypoint_names is None:
        return [MIDDLE_COLOR] * count
    return [LEFT_COLOR if "left" in n else RIGHT_COLOR if "right" in n else MIDDLE_COLOR for n in keypoint_names]


def draw_keypoints(
    image: Any,
    keypoints: Any,
    skeleton: Sequence[Sequence[int]] | None = None,
    visible: Any = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    limb_colors: Sequence[tuple[int, int, int]] | tuple[int, int, int] | None = None,
    radius: int = 2,
    width: int = 2,
) -> np.ndarray:
    """Draw keypoints and the limbs of the skeleton between them on a copy of an image.

    Args:
        image: the image (see ``to_uint8_image``).
        keypoints: (N, NK, 3) float, (x, y, visibility) in pixels of ``image``, one row per instance.
        skeleton: limbs as pairs of 1-based keypoint indices (COCO's ``skeleton``); None draws points only.
        visible: (N, NK) bool, which keypoints to draw (default: visibility > 0); a limb is drawn when
            both its ends are.
        colors: one RGB colour per keypoint (default: ``keypoint_colors(None, NK)``, white).
        limb_colors: one colour for all limbs, or one per instance (default: the palette by instance).
        radius: the dots' radius in pixels.
        width: the limbs' line width in pixels.

    Returns:
        (H, W, 3) uint8, the image with the keypoints drawn.
    """
    canvas = Image.fromarray(to_uint8_image(image))
    draw = ImageDraw.Draw(canvas)
    keypoints = to_numpy(keypoints)
    keypoints = keypoints.reshape(-1, *keypoints.shape[-2:]) if keypoints.size else np.zeros((0, 0, 3))
    shown = keypoints[..., 2] > 0 if visible is None else to_numpy(visible).astype(bool).reshape(keypoints.shape[:2])
    num_keypoints = keypoints.shape[1]
    colors = list(colors) if colors is not None else keypoint_colors(None, num_keypoints)
    for n, (kp, on) in enumerate(zip(keypoints, shown)):
        if limb_colors is None:
            limb = color_for(n)
        elif len(limb_colors) == 3 and np.isscalar(limb_colors[0]):
            limb = tuple(int(c) for c in limb_colors)
        else:
            limb = tuple(int(c) for c in limb_colors[n])
        for a, b in skeleton or ():
            if 1 <= a <= num_keypoints and 1 <= b <= num_keypoints and on[a - 1] and on[b - 1]:
                draw.line([tuple(float(v) for v in kp[a - 1, :2]), tuple(float(v) for v in kp[b - 1, :2])],
                          fill=limb, width=width)
        for j in np.flatnonzero(on):
            x, y = float(kp[j, 0]), float(kp[j, 1])
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(colors[j]), outline=(0, 0, 0))
    return np.asarray(canvas).copy()


def draw_detections(
    image: Any,
    detections: Mapping[str, Any],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    show_masks: bool = True,
    show_boxes: bool = True,
    alpha: float = 0.45,
    skeleton: Sequence[Sequence[int]] | None = None,
    keypoint_names: Sequence[str] | None = None,
    keypoint_score_threshold: float = 0.0,
) -> np.ndarray:
    """The model's output for one image drawn on it: coloured masks, boxes, "class score" captions.

    Args:
        image: the image the detections are in, (3, H, W) float in [0, 1] or (H, W, 3) uint8.
        detections: a dict as the model returns in eval mode: "boxes" (N, 4) (x1, y1, x2, y2) in
            image pixels, "labels" (N,) int, "scores" (N,) float, optionally "masks" (N, 1, H, W)
            probabilities, optionally "keypoints" (N, NK, 3) and "keypoints_scores" (N, NK).
        class_names: names indexed by label (a list whose entry 0 is the background, or a dict
            label -> name); default: the label number.
        score_threshold: detections with a lower score are not drawn.
        mask_threshold: mask probability above which a pixel is drawn as the object.
        show_masks: draw the masks.
        show_boxes: draw the boxes and captions.
        alpha: opacity of the mask fill.
        skeleton: the keypoints' limbs (1-based pairs, COCO's ``skeleton``), drawn between keypoints.
        keypoint_names: to colour left keypoints warm and right ones cool.
        keypoint_score_threshold: keypoints whose score (the heatmap logit) is lower are not drawn.

    Returns:
        (H, W, 3) uint8, the picture.
    """
    scores = to_numpy(detections["scores"]).reshape(-1)
    keep = np.flatnonzero(scores >= score_threshold)
    labels = to_numpy(detections["labels"]).reshape(-1)[keep]
    colors = [color_for(label) for label in labels]
    out = to_uint8_image(image)
    if show_masks and "masks" in detections and len(keep):
        out = draw_masks(out, to_numpy(detections["masks"])[keep], colors=colors, alpha=alpha, threshold=mask_threshold)
    if show_boxes and len(keep):
        texts = [f"{class_name(class_names, label)} {s:.2f}" for label, s in zip(labels, scores[keep])]
        out = draw_boxes(out, to_numpy(detections["boxes"]).reshape(-1, 4)[keep], colors=colors, texts=texts)
    if "keypoints" in detections and len(keep):
        keypoints = to_numpy(detections["keypoints"])[keep]
        visible = (to_numpy(detections["keypoints_scores"])[keep] > keypoint_score_threshold
                   if "keypoints_scores" in detections else None)
        out = draw_keypoints(out, keypoints, skeleton, visible=visible, limb_colors=colors,
                             colors=keypoint_colors(keypoint_names, keypoints.shape[1]))
    return out


def class_name(class_names: Sequence[str] | Mapping[int, str] | None, label: int) -> str:
    """The name of ``label`` in ``class_names`` (a list indexed by label or a dict), else the number."""
    label = int(label)
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def save_image(image: Any, path: str | os.PathLike) -> None:
    """Write an image (any layout ``to_uint8_image`` accepts), creating the folder (atomically).

    The file's extension picks the format (``.png``, ``.jpg``, ...); PNG when it names none.
    """
    image_format = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    with atomic_write(path) as f:
        Image.fromarray(to_uint8_image(image)).save(f, format=image_format)


# ---------------------------------------------------------------------------- figures
def show_masks(
    masks: Any,
    titles: Sequence[str] | None = None,
    cols: int = 8,
    cmap: str = "viridis",
    size: float = 1.6,
):
    """Small masks side by side (e.g. mask targets above predictions), as a matplotlib figure.

    Args:
        masks: (N, S, S) or (N, 1, S, S) float or bool masks (values shown in [0, 1]).
        titles: an optional title per mask.
        cols: masks per row.
        cmap: matplotlib colour map.
        size: inches per mask.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    masks = to_numpy(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    n = max(1, len(masks))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(masks):
            ax.imshow(masks[i].astype(np.float32), cmap=cmap, vmin=0.0, vmax=1.0)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None):
    """Training curves: every ``loss*`` series against the step, and validation numbers if any.

    Args:
        records: log rows, each with "step" and any of "loss", "loss_<name>", "lr" and, for
            validation rows, keys starting with "val_" (e.g. "val_segm_AP50").
        path: if given, the figure is written there as PNG (with the Agg renderer, no display needed).

    Returns:
        a ``matplotlib.figure.Figure`` (not attached to pyplot, so it is not shown twice).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if any(k.startswith("loss") for k in r)]
    val = [r for r in records if any(k.startswith("val_") for k in r)]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    val_keys = sorted({k for r in val for k in r if k.startswith("val_") and isinstance(r[k], (int, float))})
    val_loss_keys = [k for k in val_keys if "loss" in k]
    val_ap_keys = [k for k in val_keys if "loss" not in k]
    panels = 1 + bool(val_loss_keys) + bool(val_ap_keys)
    fig = Figure(figsize=(5.5 * panels, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    for k in loss_keys:
        steps = [r["step"] for r in train if k in r]
        values = [r[k] for r in train if k in r]
        ax.plot(steps, values, label=k, linewidth=2.0 if k == "loss" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if loss_keys:
        ax.legend(fontsize=7)
    panel = 2
    for keys, ylabel in ((val_loss_keys, "validation loss"), (val_ap_keys, "validation AP")):
        if not keys:
            continue
        ax = fig.add_subplot(1, panels, panel)
        panel += 1
        for k in keys:
            steps = [r["step"] for r in val if k in r]
            ax.plot(steps, [r[k] for r in val if k in r], marker="o", label=k[len("val_"):])
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=90)
    return fig
