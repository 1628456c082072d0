"""NMS on the GPU with Numba-CUDA: the bitmask method (as torchvision's CUDA kernel).

1. Sort the boxes by decreasing score (stable) and gather them in that order.
2. Kernel: the N sorted boxes form ``num_blocks = ceil(N / 64)`` blocks of 64. CUDA block
   ``(blockIdx.x, blockIdx.y) = (col_block, row_block)`` compares the 64 boxes of ``row_block``
   with the 64 boxes of ``col_block``; its thread ``t`` owns row box ``i = row_block * 64 + t`` and
   writes one uint64 ``mask[i, col_block]`` whose bit ``c`` says "box ``i`` suppresses box
   ``j = col_block * 64 + c``" (IoU > threshold, only for ``j > i``: lower triangle blocks exit).
3. Reduce (host, one pass in score order): keep box ``i`` unless a kept box's mask has its bit,
   then OR its mask row into the running ``removed`` bits.

Works on CuPy arrays on a GPU and on NumPy arrays under NUMBA_ENABLE_CUDASIM=1 (tiny inputs only).
"""
from __future__ import annotations

import numba
import numpy as np
from minimaskrcnn.kernels.nms import argsort_descending, check_nms_args
from numba import cuda

from minimaskrcnn.backend import get_array_module, to_numpy

THREADS_PER_BLOCK = 64  # one bit of a uint64 per column box


@cuda.jit
def _nms_mask_kernel(boxes, iou_threshold, zero, mask):
    # thread -> (row box i, column block): i = blockIdx.y * 64 + threadIdx.x, col_block = blockIdx.x
    n = boxes.shape[0]
    row_block = cuda.blockIdx.y
    col_block = cuda.blockIdx.x
    if row_block > col_block:  # box j < box i never needs a bit: torchvision skips these blocks too
        return
    i = row_block * THREADS_PER_BLOCK + cuda.threadIdx.x
    if i >= n:
        return
    ix1, iy1, ix2, iy2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
    iarea = (ix2 - ix1) * (iy2 - iy1)
    # on the diagonal block, only the boxes after i; elsewhere the whole column block
    first_c = cuda.threadIdx.x + 1 if row_block == col_block else 0
    last_c = min(THREADS_PER_BLOCK, n - col_block * THREADS_PER_BLOCK)
    bits = np.uint64(0)
    for c in range(first_c, last_c):
        j = col_block * THREADS_PER_BLOCK + c  # column box
        jx1, jy1, jx2, jy2 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
        w = max(min(ix2, jx2) - max(ix1, jx1), zero)  # `zero` keeps the IoU in the boxes' dtype
        h = max(min(iy2, jy2) - max(iy1, jy1), zero)
        inter = w * h
        iou = inter / (iarea + (jx2 - jx1) * (jy2 - jy1) - inter)
        if iou > iou_threshold:  # strictly greater, against a float64 threshold
            bits |= np.uint64(1) << np.uint64(c)
    mask[i, col_block] = bits


@numba.njit(cache=True)
def _reduce_mask(mask):
    """Step 3: walk the sorted boxes, keep those no kept box suppresses; returns the kept ranks."""
    n, num_blocks = mask.shape
    removed = np.zeros(num_blocks, dtype=np.uint64)
    keep = np.empty(n, dtype=np.int64)
    num_kept = 0
    for i in range(n):
        block, bit = i // 64, np.uint64(i % 64)
        if (removed[block] >> bit) & np.uint64(1):
            continue
        keep[num_kept] = i
        num_kept += 1
        for b in range(block, num_blocks):
            removed[b] |= mask[i, b]
    return keep[:num_kept]


def nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression with the CUDA bitmask kernel. No gradient.

    Args:
        boxes: (N, 4) float32/float64 (CuPy on a GPU, NumPy under the simulator), (x1, y1, x2, y2).
        scores: (N,) float, one score per box.
        iou_threshold: a box is dropped when its IoU with a kept, higher-ranked box is > this.

    Returns:
        keep: (K,) int64 array of the input's array module, indices of the kept boxes by
        decreasing score.
    """
    xp = get_array_module(boxes, scores)
    boxes, scores = check_nms_args(boxes, scores)
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, dtype=xp.int64)
    order = argsort_descending(scores)
    sorted_boxes = xp.ascontiguousarray(boxes[order])
    num_blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    mask = xp.zeros((n, num_blocks), dtype=xp.uint64)
    zero = boxes.dtype.type(0)
    # a float64 scalar, so that the comparison is made in float64 on the device and in the simulator
    threshold = np.float64(iou_threshold)
    with np.errstate(divide="ignore", invalid="ignore"):  # simulator: 0/0 of zero-area boxes is NaN
        _nms_mask_kernel[(num_blocks, num_blocks), THREADS_PER_BLOCK](sorted_boxes, threshold, zero, mask)
    kept_ranks = _reduce_mask(to_numpy(mask))
    return order[xp.asarray(kept_ranks)]
