"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 convolution with 2.25x fewer multiplications.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), section 4. A 2x2
block of outputs of a 3x3 cross-correlation reads a 4x4 tile ``d`` of the (zero-padded) input, and

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise; g the 3x3 filter, Y the 2x2 outputs)

with the 4x4, 4x3 and 4x2 matrices B^T, G and A^T below. Summed over input channels c, the
elementwise products of one output channel are, for each of the 16 positions (i, j) of the 4x4
tile, a matrix product over c:

    M[k] = U[k] @ V[k],  k = 4*i + j,  U[k]: (C_out, C), V[k]: (C, T), M[k]: (C_out, T)

for the T tiles of the batch. So a convolution is: transform the weights (``weight_transform``,
U = G g G^T per filter), transform the input tiles (``input_transform``, V = B^T d B), 16 BLAS
products, and transform the results back (``output_transform``, Y = A^T m A). The products do
16 * C_out * C multiply-adds per tile of 4 outputs where im2col + GEMM does 36 * C_out * C; the
transforms are additions only. On small channel counts the transforms cost more than the products
save, so ``minimaskrcnn.ops.conv`` uses this only where it wins (see ``WINOGRAD_MIN_CHANNELS`` there).

Layout, the same in every backend: the tiles of the batch are numbered image after image, row after
row, ``t = (n*TH + ti)*TW + tj``, where tile (ti, tj) covers output rows 2*ti, 2*ti + 1 and columns
2*tj, 2*tj + 1, so ``TH = ceil(OH/2)``, ``TW = ceil(OW/2)``; a "tile row" is ``R = n*TH + ti``. Tile
(ti, tj) reads input rows ``2*ti - pad_h .. 2*ti - pad_h + 3`` and columns likewise (zero outside
the image; outputs past OH or OW, in the last tile row or column when OH or OW is odd, are dropped).

    V: (16, C, T), V[4*i + j, c, t] = (B^T d B)[i, j] of tile t of channel c
    M: (16, C_out, T), the products; output_transform writes A^T m A into out[n, co, 2*ti + a, 2*tj + b]

The two transforms take a range of tile rows ``(R0, R1)``, so that a large batch is transformed and
multiplied a block at a time (kept in cache). F(2x2, 3x3)'s matrices hold only 0, +-1 and +-1/2: for
finite inputs its results equal a direct convolution's up to float rounding (about 1e-6 relative in
float32). Two differences remain at the edges of floating point: the transforms subtract, so an
infinite input gives NaN where a direct convolution gives +-inf (inf - inf), and the transformed
values are up to about 4x larger than the inputs, so float32 overflows for inputs within a factor
of about 4 of its largest value (1e38) where a direct convolution would not.

``reference.py`` is NumPy (the spec), ``cpu.py`` Numba. There is no CUDA version: on the GPU the
convolution stays im2col + cuBLAS.
"""
from __future__ import annotations

import numpy as np
from minimaskrcnn.kernels._checks import check_float

# F(2x2, 3x3) (Lavin and Gray 2016, section 4.1), interpolation points 0, 1, -1 and infinity
B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float64)


def winograd_geometry(x_shape, padding) -> tuple:
    """The sizes of a 3x3, stride-1 convolution of an (N, C, H, W) input done in 2x2 output tiles.

    Args:
        x_shape: (N, C, H, W).
        padding: (pad_h, pad_w), zeros added on both sides of each axis.

    Returns:
        ``(N, C, H, W, pad_h, pad_w, OH, OW, TH, TW)`` as ints: OH = H + 2*pad_h - 2 (likewise OW),
        TH = ceil(OH / 2), TW = ceil(OW / 2).

    Raises:
        ValueError: for a shape that is not 4-D, padding that is not a pair of ints >= 0 or an
            output with no pixel.
    """
    if len(x_shape) != 4:
        raise ValueError(f"winograd: expected an (N, C, H, W) input, got shape {tuple(x_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    if not isinstance(padding, (tuple, list)) or len(padding) != 2:
        raise ValueError(f"winograd: padding must be a pair (pad_h, pad_w), got {padding!r}")
    pad_h, pad_w = (int(p) for p in padding)
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"winograd: padding must be >= 0, got {tuple(padding)}")
    OH, OW = H + 2 * pad_h - 2, W + 2 * pad_w - 2
    if OH < 1 or OW < 1:
        raise ValueError(f"winograd: a 3x3 window does not fit in {H}x{W} with padding {tuple(padding)}")
    return N, C, H, W, pad_h, pad_w, OH, OW, (OH + 1) // 2, (OW + 1) // 2


def check_output(out, dtype, name: str = "out", contiguous: bool = True) -> tuple:
    """``(N, C_out, OH, OW, TH, TW)`` of a convolution's output (or its gradient) ``out``.

    Raises:
        ValueError: unless ``out`` is 4-D, of ``dtype`` and (with ``contiguous``) C-contiguous.
    """
    if out.ndim != 4:
        raise ValueError(f"winograd: {name} must be (N, C_out, OH, OW), got shape {tuple(out.shape)}")
    check_array(out, out.shape, dtype, name, contiguous)
    N, C_out, OH, OW = (int(s) for s in out.shape)
    return N, C_out, OH, OW, (OH + 1) // 2, (OW + 1) // 2


def check_weight(weight) -> tuple[int, int]:
    """``(C_out, C)`` of a conv2d weight; ValueError unless it is (C_out, C, 3, 3), TypeError unless float."""
    check_float(weight, "weight")
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd: weight must be (C_out, C, 3, 3), got {tuple(weight.shape)}")
    return int(weight.shape[0]), int(weight.shape[1])


# The adjoint convolution (the gradient of the input) correlates dout with the filters rotated by
# 180 degrees, input and output channels swapped. Rotating g by 180 degrees reverses the order of
# G g's rows and of g G^T's columns (G's rows 1 and 2 are symmetric, rows 0 and 3 swap), so the
# rotated filter's U at tile position (i, j) is U at (ROTATED[i], ROTATED[j]), and the adjoint's
# products are ``M[4*i + j] = U[4*ROTATED[i] + ROTATED[j]].T @ V[4*i + j]``: no second transform.
ROTATED = (3, 1, 2, 0)


def adjoint_position(k: int) -> int:
    """The position of U whose transpose the adjoint convolution multiplies at tile position k (see ROTATED)."""
    return 4 * ROTATED[k // 4] + ROTATED[k % 4]


def check_tile_rows(tile_rows, N: int, TH: int) -> tuple[int, int]:
    """``(R0, R1)`` as ints, all tile rows ``(0, N*TH)`` for None; ValueError unless 0 <= R0 <= R1 <= N*TH."""
    R0, R1 = (0, N * TH) if tile_rows is None else (int(tile_rows[0]), int(tile_rows[1]))
    if not 0 <= R0 <= R1 <= N * TH:
        raise ValueError(f"winograd: tile rows {(R0, R1)} outside 0..{N * TH}")
    return R0, R1


def check_array(a, shape: tuple, dtype, name: str, contiguous: bool = True) -> None:
    """Raise ValueError unless ``a`` has ``shape`` and ``dtype`` and (with ``contiguous``) is C-contiguous."""
    if tuple(a.shape) != tuple(shape) or a.dtype != dtype:
        raise ValueError(f"winograd: {name} must be a {np.dtype(dtype)} array of shape {tuple(shape)}, "
                         f"got {a.dtype} {tuple(a.shape)}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"winograd: {name} must be C-contiguous (it is written in place)")
