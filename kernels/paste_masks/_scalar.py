"""The 1-D resize rule of paste_masks, written once in plain Python for the compiled backends.

``cpu.py`` compiles it with ``numba.njit`` and ``cuda.py`` with ``numba.cuda.jit(device=True)``
(``kernels/_compile.py``); ``reference.py`` computes the same expressions for a whole axis at once
with NumPy. See ``minimaskrcnn.kernels.paste_masks`` for the equations.
"""
from __future__ import annotations


def source_index(d: int, size: int, out: int) -> tuple:
    """Where output sample d of ``out`` reads, resizing ``size`` input samples (align_corners=False).

    Returns:
        ``(i0, i1, l1)``: the two input indices and the weight of the second; the value is
        ``(1 - l1) * sample[i0] + l1 * sample[i1]``.
    """
    src = max((size / out) * (d + 0.5) - 0.5, 0.0)  # half-pixel centres, clamped at 0
    i0 = min(int(src), size - 1)  # src >= 0: int() is floor
    i1 = i0 + 1 if i0 < size - 1 else i0
    l1 = min(src - i0, 1.0)
    return i0, i1, l1
