"""The index rule of a sliding window, written once in plain Python for the backends that need it.

Along one axis, tap k of output o reads input pixel ``i = o*S - pad + k*D`` (stride S, padding
pad, dilation D). The CUDA gathers (col2im here, the max-pool backward) invert it: which output's
tap k read pixel i? ``cuda.py`` compiles it with ``numba.cuda.jit(device=True)`` (``kernels/_compile.py``).
"""
from __future__ import annotations


def tap_output(i: int, k: int, S: int, pad: int, D: int, out_size: int) -> int:
    """The output o (in [0, out_size)) whose tap k reads pixel i, i.e. ``o*S - pad + k*D == i``; -1 if none."""
    t = i + pad - k * D  # = o*S if tap k of output o reads pixel i
    if t < 0 or t % S != 0 or t // S >= out_size:
        return -1
    return t // S
