"""Paste masks with Numba-CUDA: one thread per output pixel (k, y, x) of the (K, im_h, im_w) result.

Thread index ``t = blockIdx.x * blockDim.x + threadIdx.x`` -> ``k = t // (im_h * im_w)``,
``y = (t // im_w) % im_h``, ``x = t % im_w``. A thread outside its box (or the box outside the
image) writes 0, so the output needs no zero fill. Works on CuPy arrays on a GPU and on NumPy arrays
under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

from minimaskrcnn.kernels._compile import compile_helpers
from minimaskrcnn.kernels._cuda import launch
from minimaskrcnn.kernels.paste_masks import _scalar, check_paste_args
from numba import cuda

from minimaskrcnn.backend import get_array_module

# _scalar.py's resize rule, compiled as a CUDA device function
(source_index,) = compile_helpers(cuda.jit(device=True), _scalar.source_index)


@cuda.jit
def _paste_masks_kernel(masks, boxes, out):
    num_masks, in_h, in_w = masks.shape
    im_h, im_w = out.shape[1], out.shape[2]
    t = cuda.grid(1)
    if t >= num_masks * im_h * im_w:
        return
    k = t // (im_h * im_w)  # mask
    y = (t // im_w) % im_h  # image row
    x = t % im_w  # image column
    bx1, by1, bx2, by2 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
    w, h = max(bx2 - bx1 + 1, 1), max(by2 - by1 + 1, 1)  # box size = resized mask size
    if x < bx1 or x > bx2 or y < by1 or y > by2:  # outside the box (x2, y2 inclusive)
        out[k, y, x] = 0
        return
    # source columns of box column x - bx1, source rows of box row y - by1 (half-pixel centres)
    c0, c1, lc = source_index(x - bx1, in_w, w)
    r0, r1, lr = source_index(y - by1, in_h, h)
    top = (1.0 - lc) * masks[k, r0, c0] + lc * masks[k, r0, c1]
    bottom = (1.0 - lc) * masks[k, r1, c0] + lc * masks[k, r1, c1]
    out[k, y, x] = (1.0 - lr) * top + lr * bottom


def paste_masks(masks, boxes, im_h: int, im_w: int):
    """Paste each mask into an empty image at its box (see ``kernels/paste_masks/__init__.py``).

    Args:
        masks: (K, SH, SW) float32/float64 (CuPy on a GPU, NumPy under the simulator).
        boxes: (K, 4) int, (x1, y1, x2, y2) with x2, y2 inclusive: the box spans x2 - x1 + 1 columns.
        im_h, im_w: image size in pixels.

    Returns:
        (K, im_h, im_w) array of the input's array module, the dtype of ``masks``; 0 outside the boxes.
    """
    xp = get_array_module(masks, boxes)
    masks, boxes = check_paste_args(masks, boxes, im_h, im_w)
    out = xp.empty((masks.shape[0], im_h, im_w), dtype=masks.dtype)
    total = out.size
    if total == 0:
        return out
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        out[...] = 0
        return out
    launch(_paste_masks_kernel, total, masks, boxes, out)
    return out
