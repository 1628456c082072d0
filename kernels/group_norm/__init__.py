"""Group normalisation (Wu and He, "Group Normalization", ECCV 2018), forward and backward.

For each image n and group g of C/G channels, over the group's channels and pixels (M values):

    mean, var = the mean and biased variance;  invstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * invstd;  out = xhat * weight[c] + bias[c]

and the backward, with dxhat = dout * weight[c] and means over the same M values,

    dx = invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dweight[c] = sum over n and pixels of dout * xhat;  dbias[c] = sum of dout

(as torch.nn.functional.group_norm). Both backends take x as (N, C, L) (the pixels flattened) and
return xhat (N, C, L) and invstd (N, G) for the backward. ``reference.py`` is array code (NumPy, and
CuPy on the GPU: the "numpy" and "cuda" backends run it), ``cpu.py`` Numba (one pass for the
statistics and one for the output per (image, group), sums in float64: two to three times faster
than the array code's temporaries on this machine).
"""
from __future__ import annotations


def check_group_norm(x_shape, num_groups: int) -> None:
    """Raise ValueError unless x_shape is (N, C, L) with C divisible by num_groups (>= 1)."""
    if len(x_shape) != 3:
        raise ValueError(f"group_norm: expected (N, C, L), got shape {tuple(x_shape)}")
    if num_groups < 1 or x_shape[1] % num_groups != 0:
        raise ValueError(f"group_norm: {x_shape[1]} channels do not split into {num_groups} groups")
