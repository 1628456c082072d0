"""Launching a CUDA kernel with one thread per element, the mapping every ``cuda.py`` here uses.

A 1-D grid of blocks of up to ``THREADS_PER_BLOCK`` threads; thread ``i = cuda.grid(1)`` handles
element ``i`` of the flattened output (or input) and returns at once when ``i`` is past the end
(the last block may have spare threads); ``unravel_4d`` turns ``i`` into the element's 4 indices.
Works on a GPU and under NUMBA_ENABLE_CUDASIM=1.
"""
from __future__ import annotations

from numba import cuda

THREADS_PER_BLOCK = 256


def launch_shape(num_threads: int) -> tuple[int, int]:
    """``(blocks, threads per block)`` for ``num_threads`` threads; a small launch gets one small block."""
    threads = min(THREADS_PER_BLOCK, max(num_threads, 1))
    return (num_threads + threads - 1) // threads, threads


def launch(kernel, num_threads: int, *args) -> None:
    """Run ``kernel[blocks, threads](*args)`` with at least ``num_threads`` threads; nothing for 0."""
    if num_threads > 0:
        blocks, threads = launch_shape(num_threads)
        kernel[blocks, threads](*args)


@cuda.jit(device=True)
def unravel_4d(i, B, C, D):
    """``(a, b, c, d)`` of flat index ``i = ((a*B + b)*C + c)*D + d``: the element of a C-ordered
    (A, B, C, D) array that thread i handles (a device function)."""
    return i // (B * C * D), (i // (C * D)) % B, (i // D) % C, i % D
