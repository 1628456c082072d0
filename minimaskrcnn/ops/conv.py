"""Convolution, transposed convolution and the linear layer as matrix products.

conv2d unfolds the input with im2col (kernels/im2col) into cols (N, C*KH*KW, OH*OW), so that the
output of image n is ``weight.reshape(C_out, C*KH*KW) @ cols[n]``: one BLAS (cuBLAS on CuPy) product.
Its backward is two more products and a col2im; conv_transpose2d is the same three pieces in the
other order. Each op is fused (its own backward). Lesson 05 derives them.

On the "numba" backend (the CPU's default), 3x3 stride-1 convolutions of 64 or more channels
(ResNet's 3x3 convs, the FPN's and RPN head's, the mask head's) compute the output and both
gradients with Winograd's F(2x2, 3x3) instead (kernels/winograd; Lavin and Gray 2016): 16
multiply-adds per input and output channel per 2x2 output tile instead of im2col's 36, the same
results for finite inputs up to float rounding (an infinite input gives NaN instead of +-inf, see
kernels/winograd). ``WINOGRAD_MIN_CHANNELS`` sets where it starts (None: never). The "numpy"
backend (the readable reference) and the GPU keep im2col.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from minimaskrcnn.backend import get_array_module, get_backend, kernel
from minimaskrcnn.function import Function, is_grad_enabled
from minimaskrcnn.kernels.im2col import conv_output_size
from minimaskrcnn.kernels.winograd import adjoint_position, winograd_geometry
from minimaskrcnn.ops._utils import pair

# ------------------------------------------------------------------------- scratch memory (CPU)
# cols are KH*KW times larger than the input and live only inside one forward or backward. NumPy
# arrays that large are mmap-ed afresh and page-faulted in on every call (glibc gives blocks over
# 32 MiB back to the OS when they are freed), which costs about as much as im2col itself, so the
# CPU path reuses one scratch buffer per thread. CuPy's memory pool already reuses device memory.
SCRATCH_MAX_BYTES = 1 << 30  # larger cols are allocated afresh rather than kept
# conv2d keeps its cols for the backward when they are needed only for dw (an input without gradient,
# as the stem's image), and Winograd's transformed input for dw, when they take at most this many
# bytes (so the backward need not compute them again); 0 turns it off
SAVED_COLS_BYTES = 16 << 20


class _Scratch(threading.local):
    buffer = None  # flat uint8 NumPy array, grown to the largest request


_scratch_state = _Scratch()


def _scratch(shape: tuple, dtype, like):
    """An uninitialised C-contiguous array for cols, valid only until the next ``_scratch`` call.

    Args:
        shape, dtype: of the array wanted.
        like: an array of the module (NumPy or CuPy) to allocate with.
    """
    xp = get_array_module(like)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if xp is not np or nbytes > SCRATCH_MAX_BYTES:
        return xp.empty(shape, dtype=dtype)
    buffer = _scratch_state.buffer
    if buffer is None or buffer.nbytes < nbytes:
        _scratch_state.buffer = buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffer (it is otherwise kept for the next convolution)."""
    _scratch_state.buffer = None


# Small feature maps (the mask head's 14x14 RoIs, a small model's backbone) make cols of a few
# hundred kB per image. Unfolded for the whole batch at once they overflow the CPU's L2 cache, and
# im2col, the BLAS product (which reads cols again) and col2im each go to main memory; unfolded a
# few images at a time, each chunk is written, multiplied and folded while it is still in cache.
# The products and the per-image order of the weight-gradient sum are the same either way, so the
# results do not change (measured on 2 cores: a 14x14, 64-channel conv of 48 RoIs, forward +
# backward, 46 -> 36 ms).
CHUNK_BYTES = 1 << 20  # cols per chunk of images, at most (at least one image); 0 turns chunking off
# Large maps make cols far larger than the image (R50-FPN's 3x3 convs at 200x272: 125-500 MB per
# image, 9x the input): one image's output rows are then unfolded and multiplied a block at a time,
# from the input padded once along H, so that cols never take more than this. The products are
# as large as BLAS needs to run at full speed; the weight gradient and dx add the blocks' parts
# (in a fixed order: deterministic, equal to the whole image's up to float rounding).
ROW_BLOCK_BYTES = 16 << 20  # 0 turns row blocks off


def _blocks(x, C_cols: int, OH: int, OW: int) -> list[tuple[int, int, int, int]]:
    """How the batch is unfolded: (n0, n1, oh0, oh1) = images n0..n1-1, output rows oh0..oh1-1.

    One block for the whole batch (off the CPU, or when everything fits in CHUNK_BYTES), chunks
    of images (CHUNK_BYTES), or, when one image's cols (C_cols, OH*OW) exceed ROW_BLOCK_BYTES,
    blocks of output rows of one image at a time.
    """
    N = x.shape[0]
    if get_array_module(x) is not np or N == 0:
        return [(0, N, 0, OH)]
    per_row = C_cols * OW * x.dtype.itemsize
    if 0 < ROW_BLOCK_BYTES < per_row * OH and OH > 1:
        rows = max(1, ROW_BLOCK_BYTES // per_row)
        return [(n, n + 1, oh0, min(OH, oh0 + rows)) for n in range(N) for oh0 in range(0, OH, rows)]
    chunk = N if CHUNK_BYTES <= 0 else max(1, min(N, CHUNK_BYTES // max(1, per_row * OH)))
    return [(n0, min(N, n0 + chunk), 0, OH) for n0 in range(0, N, chunk)]


def _input_rows(x_rows, n0: int, n1: int, oh0: int, oh1: int, kernel_size: tuple, stride: tuple,
                dilation: tuple) -> tuple[slice, object]:
    """The padded input rows output rows oh0..oh1-1 read, and those rows of images n0..n1-1.

    ``x_rows`` is x zero-padded along H by pad_h (or x itself when oh0..oh1 are all rows and pad_h is
    kept by the kernel: then the slice is every row).
    """
    r0 = oh0 * stride[0]
    r1 = (oh1 - 1) * stride[0] + (kernel_size[0] - 1) * dilation[0] + 1
    return slice(r0, r1), x_rows[n0:n1, :, r0:r1]


def _view(a, shape: tuple):
    """``a`` reshaped without a copy (raises if that needs one), e.g. to write a product into it."""
    view = a.view()
    view.shape = shape
    return view


def _pad_rows(x, pad_h: int):
    """x (N, C, H, W) with pad_h zero rows above and below (a copy; x itself when pad_h == 0)."""
    if pad_h == 0:
        return x
    x_rows = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * pad_h, x.shape[3]), dtype=x.dtype)
    x_rows[:, :, pad_h : pad_h + x.shape[2]] = x
    return x_rows


# Winograd F(2x2, 3x3) (kernels/winograd) where it beats im2col + GEMM on this machine (2-core Xeon,
# one thread, `python benchmarks/bench_winograd.py`, forward + backward): from 64 input and output
# channels and 128 tiles on, e.g. the small model's mask head (64 channels, 14x14 RoIs) 1.3-1.4x
# faster, R50-FPN's 3x3 convs 1.4-2.0x. With 16 or 32 channels the forward alone is slower (the
# transforms cost more than the products save); below 128 tiles the products are too small.
WINOGRAD_MIN_CHANNELS = 64  # None turns Winograd off
WINOGRAD_MIN_TILES = 128  # below this many 2x2 output tiles in the batch, im2col
WINOGRAD_BLOCK_BYTES = 4 << 20  # the transformed input and products of a block of tile rows, at most ...
WINOGRAD_MIN_BLOCK_TILES = 256  # ... unless that leaves fewer tiles than this per product
WINOGRAD_WEIGHT_GRAD_BLOCK_FACTOR = 4  # the weight gradient's blocks: at least this x max(C, C_out) tiles


def _winograd_applies(x_shape, C_out: int, kernel_size: tuple, stride: tuple, padding: tuple, dilation: tuple,
                      groups: int, x) -> bool:
    """Whether conv2d of an input ``x_shape`` (N, C, H, W) runs with Winograd (see WINOGRAD_MIN_CHANNELS).

    Only on the "numba" backend (the "numpy" backend stays the textbook im2col, and kernels/winograd
    has no CUDA version); 3x3, stride 1, dilation 1, one group, padding at most 2 (so that the input's
    gradient, a convolution with padding 2 - pad, is one too); at least one tile.
    """
    if WINOGRAD_MIN_CHANNELS is None or get_backend() != "numba" or get_array_module(x) is not np:
        return False
    if kernel_size != (3, 3) or stride != (1, 1) or dilation != (1, 1) or groups != 1 or max(padding) > 2:
        return False
    N, C, H, W = x_shape
    OH, OW = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    if OH < 1 or OW < 1:
        return False
    tiles = N * ((OH + 1) // 2) * ((OW + 1) // 2)
    return min(C, C_out) >= WINOGRAD_MIN_CHANNELS and tiles >= max(1, WINOGRAD_MIN_TILES)


def _winograd_blocks(x, C_out: int, TH: int, TW: int, min_tiles: int):
    """The blocks of tile rows a Winograd pass runs over, with scratch memory for their two transforms.

    Yields ``(R0, R1, first, second)`` for tile rows R0..R1-1 of x's N*TH, in order: ``first``
    (16, C, L) and ``second`` (16, C_out, L), L = (R1 - R0)*TW, views of this thread's scratch buffer
    valid until the next block. A block holds as many tile rows as WINOGRAD_BLOCK_BYTES allows, but at
    least ``min_tiles`` tiles (and one tile row).
    """
    N, C = x.shape[:2]
    rows = max(1, WINOGRAD_BLOCK_BYTES // (16 * (C + C_out) * TW * x.dtype.itemsize))
    rows = max(rows, -(-min_tiles // TW))
    for R0 in range(0, N * TH, rows):
        R1 = min(N * TH, R0 + rows)
        L = (R1 - R0) * TW
        buffer = _scratch((16 * (C + C_out) * L,), x.dtype, x)
        yield R0, R1, _view(buffer[: 16 * C * L], (16, C, L)), _view(buffer[16 * C * L :], (16, C_out, L))


def _winograd(x, U, padding: tuple, C_out: int, adjoint: bool = False, keep_input: bool = False):
    """The 3x3 stride-1 correlation of x (N, C, H, W) with the filters transformed into U (kernels/winograd).

    Args:
        x: (N, C, H, W) NumPy array.
        U: (16, C_out, C) ``weight_transform`` of the filters; with ``adjoint``, the (16, C, C_out)
            transform of the forward's filters, for the adjoint convolution (rotated filters, see
            ``kernels.winograd.ROTATED``: x is then dout and C_out the forward's input channels).
        padding: (pad_h, pad_w).
        C_out: channels of the output.
        keep_input: also return x's transform V (16, C, T), T = N*TH*TW all the tiles (a new array,
            not scratch memory: the weight gradient reuses it); the whole batch is then one block.

    Returns:
        (N, C_out, H + 2*pad_h - 2, W + 2*pad_w - 2), x's dtype; with ``keep_input``, (that, V).
    """
    k = kernel("winograd")
    x = np.ascontiguousarray(x)
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    out = np.empty((N, C_out, OH, OW), dtype=x.dtype)
    if keep_input:
        kept = np.empty((16, C, N * TH * TW), dtype=x.dtype)
        blocks = [(0, N * TH, kept, _scratch((16, C_out, N * TH * TW), x.dtype, x))]
    else:  # blocks of at least WINOGRAD_MIN_BLOCK_TILES tiles: products wide enough for BLAS on wide layers
        blocks = _winograd_blocks(x, C_out, TH, TW, WINOGRAD_MIN_BLOCK_TILES)
    for R0, R1, V, M in blocks:
        k.input_transform(x, padding, (R0, R1), out=V)
        if adjoint:  # M[k] = U[adjoint_position(k)].T @ V[k]: BLAS reads the transpose, no copy
            for position in range(16):
                np.matmul(U[adjoint_position(position)].T, V[position], out=M[position])
        else:
            np.matmul(U, V, out=M)
        k.output_transform(M, out, (R0, R1))
    return (out, kept) if keep_input else out


def _winograd_weight_grad(x, dout, padding: tuple, V=None):
    """conv2d's weight gradient (C_out, C, 3, 3), x's dtype, by Winograd (kernels/winograd).

    The adjoint of the forward's transforms: at each tile position k, Q[k] = sum over tiles of
    (A dY A^T)[k] (B^T d B)[k], one (C_out, L) @ (L, C) product per block of tile rows, then G^T Q G.

    Args:
        x: (N, C, H, W) NumPy array, the forward's input.
        dout: (N, C_out, OH, OW), x's dtype, the gradient of the output.
        padding: (pad_h, pad_w) of the forward.
        V: x's transform of all tiles (16, C, T), kept by the forward (``_winograd(keep_input=True)``),
            or None (transformed here, by blocks). With V, the whole batch is one block.
    """
    k = kernel("winograd")
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    N, C, H, W, pad_h, pad_w, OH, OW, TH, TW = winograd_geometry(x.shape, padding)
    C_out = dout.shape[1]
    if V is not None:
        Y = k.output_transform_adjoint(dout, (0, N * TH), out=_scratch((16, C_out, N * TH * TW), x.dtype, x))
        return k.weight_transform_adjoint(np.matmul(Y, V.transpose(0, 2, 1)))
    Q = product = None
    # each block's products (16, C_out, C) are added to Q: blocks of at least
    # WINOGRAD_WEIGHT_GRAD_BLOCK_FACTOR * max(C, C_out) tiles keep those additions small beside the
    # products (a larger buffer than the forward's on wide layers); blocks in a fixed order: deterministic sums
    min_tiles = WINOGRAD_WEIGHT_GRAD_BLOCK_FACTOR * max(C, C_out)
    for R0, R1, V, Y in _winograd_blocks(x, C_out, TH, TW, min_tiles):
        k.input_transform(x, padding, (R0, R1), out=V)
        k.output_transform_adjoint(dout, (R0, R1), out=Y)
        if Q is None:
            Q = np.matmul(Y, V.transpose(0, 2, 1))  # (16, C_out, C)
        else:
            if product is None:
                product = np.empty_like(Q)
            Q += np.matmul(Y, V.transpose(0, 2, 1), out=product)
    return k.weight_transform_adjoint(Q)


# ------------------------------------------------------------------------------------ helpers
def _check_dtypes(x, weight, bias) -> None:
    if x.dtype.kind != "f":
        raise TypeError(f"input must be a floating-point array, got {x.dtype}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"{name} is {a.dtype} but input is {x.dtype}: they must match")


def _is_pointwise(kernel_size: tuple, padding: tuple) -> bool:
    """1x1 kernels without padding: cols are the (strided) input itself, no im2col needed."""
    return kernel_size == (1, 1) and padding == (0, 0)


def _unfold(x, kernel_size: tuple, stride: tuple, padding: tuple, dilation: tuple, out=None):
    """cols (N, C*KH*KW, OH*OW) of ``x`` (N, C, H, W), in scratch memory (see ``_scratch``) or in ``out``
    (ignored for 1x1 kernels without padding, whose cols are x itself)."""
    N, C, H, W = x.shape
    if _is_pointwise(kernel_size, padding):
        if stride != (1, 1):  # every stride-th pixel: a strided slice, copied contiguous
            x = get_array_module(x).ascontiguousarray(x[:, :, :: stride[0], :: stride[1]])
        return x.reshape(N, C, -1)  # a view when x is contiguous
    OH = conv_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1])
    if out is None and OH > 0 and OW > 0:
        out = _scratch((N, C * kernel_size[0] * kernel_size[1], OH * OW), x.dtype, x)
    return kernel("im2col").im2col(x, kernel_size, stride, padding, dilation, out=out)


def _fold(cols, x_shape: tuple, kernel_size: tuple, stride: tuple, padding: tuple, dilation: tuple, out=None):
    """The adjoint of ``_unfold``: dx (N, C, H, W) from cols (N, C*KH*KW, OH*OW), overlaps added
    (written into ``out`` when given)."""
    N, C, H, W = x_shape
    if _is_pointwise(kernel_size, padding):
        xp = get_array_module(cols)
        if stride == (1, 1):
            dx = cols.reshape(x_shape)
        else:
            dx = xp.zeros(x_shape, dtype=cols.dtype)
            dx[:, :, :: stride[0], :: stride[1]] = cols.reshape(N, C, len(range(0, H, stride[0])), -1)
        if out is not None:
            out[...] = dx
            return out
        return dx
    return kernel("im2col").col2im(cols, x_shape, kernel_size, stride, padding, dilation, out=out)


def _zero_extend(x, H2: int, W2: int):
    """x (N, C, H, W) with zero rows/columns appended on the bottom/right up to (H2, W2)."""
    N, C, H, W = x.shape
    if (H, W) == (H2, W2):
        return x
    x_big = get_array_module(x).zeros((N, C, H2, W2), dtype=x.dtype)
    x_big[:, :, :H, :W] = x
    return x_big


def _weight_grad(a, b, total=None):
    """sum over images n of a[n] @ b[n].T, for a (N, G, P, L) and b (N, G, Q, L): (G, P, Q).

    With ``total`` (G, P, Q), the products are added to it. Either way the sum runs image after
    image (as ``.sum(axis=0)`` does), so chunks of images give the same numbers as the whole batch.
    On the CPU the longer of P and Q is the rows of BLAS's products (a skinny product runs up to
    1.6x faster that way round on this machine, benchmarks/README.md): for Q > P it sums b[n] @ a[n].T
    and returns the transposed view of that (Q, P) sum.
    """
    xp = get_array_module(a)
    if xp is np and b.shape[2] > a.shape[2]:
        return _weight_grad(b, a, None if total is None else total.swapaxes(-1, -2)).swapaxes(-1, -2)
    if xp is not np or a.shape[0] == 0:
        products = (a @ b.swapaxes(-1, -2)).sum(axis=0)
        return products if total is None else xp.add(total, products, out=total)
    product = np.empty(a.shape[1:3] + b.shape[2:3], dtype=a.dtype)  # one image's (G, P, Q)
    for n in range(a.shape[0]):
        if total is None:
            total = np.matmul(a[n], b[n].swapaxes(-1, -2))
        else:
            total += np.matmul(a[n], b[n].swapaxes(-1, -2), out=product)
    return total


# ------------------------------------------------------------------------------------- conv2d
class Conv2d(Function):
    """2-D cross-correlation, as torch.nn.functional.conv2d (fused: im2col + matmul, own backward).

    forward(x, weight, bias=None, stride, padding, dilation, groups) on arrays:
        x: (N, C, H, W); weight: (C_out, C/groups, KH, KW); bias: (C_out,) or None; all one float dtype.
        Returns (N, C_out, OH, OW), OH = (H + 2*pad_h - DH*(KH - 1) - 1) // SH + 1 (likewise OW).
    backward: dx = col2im(weight^T @ dout), dw = sum_n dout[n] @ cols[n]^T, db = dout summed over N, OH, OW.
    On the "numba" backend, 3x3 stride-1 convolutions of 64+ channels compute out, dx and dw with
    Winograd's F(2x2, 3x3) instead (``_winograd_applies``; kernels/winograd), equal for finite inputs
    up to float rounding.

    Note: the backward recomputes im2col from the saved input instead of keeping cols, which are
    C*KH*KW/C = KH*KW times larger than the input (as PyTorch saves only the input); except that,
    within SAVED_COLS_BYTES, the forward keeps cols when they are needed only for dw (an input
    without gradient, as the stem's image), and Winograd's transformed input for dw.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        _check_dtypes(x, weight, bias)
        if x.ndim != 4 or weight.ndim != 4:
            raise ValueError("conv2d expects x (N, C, H, W) and weight (C_out, C/groups, KH, KW), "
                             f"got {x.shape} and {weight.shape}")
        N, C, H, W = x.shape
        C_out, C_per_group, KH, KW = weight.shape
        G = groups
        if G < 1 or C % G or C_out % G or C_per_group * G != C:
            raise ValueError(f"conv2d: input has {C} channels, weight {tuple(weight.shape)}, groups={G}: "
                             "need C == weight.shape[1] * groups and C_out divisible by groups")
        if bias is not None and tuple(bias.shape) != (C_out,):
            raise ValueError(f"conv2d: bias must have shape ({C_out},), got {tuple(bias.shape)}")
        OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
        OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])

        # group g multiplies its (C_out/G, C/G*KH*KW) block of weight with its rows of cols
        w_mat = weight.reshape(G, C_out // G, C_per_group * KH * KW)
        blocks = [(0, N, 0, OH)] if _is_pointwise((KH, KW), padding) else _blocks(x, C * KH * KW, OH, OW)
        # cols kept for the backward when it needs them only for dw (an input without gradient: the
        # stem's image), so that it need not unfold again; cols of whole images, within SAVED_COLS_BYTES
        # (no image, or a kernel larger than the padded input, takes the usual path: zeros dw, im2col's error)
        ctx.cols = ctx.winograd_input = None
        winograd = _winograd_applies(x.shape, C_out, (KH, KW), stride, padding, dilation, G, x)
        keep = is_grad_enabled() and ctx.needs_input_grad[1] and get_array_module(x) is np
        cols_bytes = N * C * KH * KW * OH * OW * x.dtype.itemsize
        if (keep and not winograd and not ctx.needs_input_grad[0] and not _is_pointwise((KH, KW), padding)
                and blocks[0][3] - blocks[0][2] == OH and min(N, OH, OW) > 0 and cols_bytes <= SAVED_COLS_BYTES):
            ctx.cols = np.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)
        if winograd:
            # the input's transform (16 values per 2x2 tile and channel: 4x x) kept for the weight gradient
            keep = keep and 16 * C * N * ((OH + 1) // 2) * ((OW + 1) // 2) * x.dtype.itemsize <= SAVED_COLS_BYTES
            out = _winograd(x, kernel("winograd").weight_transform(weight), padding, C_out, keep_input=keep)
            if keep:
                out, ctx.winograd_input = out
        elif len(blocks) == 1 and ctx.cols is None:
            cols = _unfold(x, (KH, KW), stride, padding, dilation)  # (N, C*KH*KW, OH*OW)
            out = w_mat @ cols.reshape(N, G, C_per_group * KH * KW, OH * OW)  # (N, G, C_out/G, OH*OW)
        else:  # a block at a time (see CHUNK_BYTES, ROW_BLOCK_BYTES; kept cols: whole images): the same products
            out = np.empty((N, C_out, OH, OW), dtype=x.dtype)
            row_blocks = blocks[0][3] - blocks[0][2] < OH
            x_rows = _pad_rows(x, padding[0]) if row_blocks else x
            block_padding = (0, padding[1]) if row_blocks else padding
            for n0, n1, oh0, oh1 in blocks:
                x_c = _input_rows(x_rows, n0, n1, oh0, oh1, (KH, KW), stride, dilation)[1] if row_blocks \
                    else x[n0:n1]
                kept = None if ctx.cols is None else ctx.cols[n0:n1]
                cols = _unfold(x_c, (KH, KW), stride, block_padding, dilation, out=kept)
                out_c = _view(out[n0:n1, :, oh0:oh1], (n1 - n0, G, C_out // G, (oh1 - oh0) * OW))
                np.matmul(w_mat, cols.reshape(n1 - n0, G, C_per_group * KH * KW, -1), out=out_c)
        out = out.reshape(N, C_out, OH, OW)
        if bias is not None:
            out += bias.reshape(1, C_out, 1, 1)

        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.stride, ctx.padding, ctx.dilation, ctx.groups = stride, padding, dilation, G
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        N, C, H, W = x.shape
        C_out, C_per_group, KH, KW = weight.shape
        G = ctx.groups
        geometry = ((KH, KW), ctx.stride, ctx.padding, ctx.dilation)
        OH, OW = dout.shape[2], dout.shape[3]
        L = OH * OW

        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        winograd = _winograd_applies(x.shape, C_out, (KH, KW), ctx.stride, ctx.padding, ctx.dilation, G, x)
        dx_winograd, dw_winograd = need_dx and winograd, need_dw and winograd
        need_dx, need_dw = need_dx and not winograd, need_dw and not winograd  # what the im2col loop computes
        pointwise = _is_pointwise((KH, KW), ctx.padding)
        blocks = [(0, N, 0, OH)] if pointwise else _blocks(x, C * KH * KW, OH, OW)
        if not (need_dx or need_dw):  # Winograd computes both (or neither is asked for)
            blocks = []
        row_blocks = len(blocks) > 1 and blocks[0][3] - blocks[0][2] < OH
        w_mat = weight.reshape(G, C_out // G, C_per_group * KH * KW)
        dw = dx = dx_rows = None
        if need_dx and len(blocks) > 1:
            if row_blocks:  # the blocks' input rows overlap: their dx parts are added into a padded dx
                dx_rows = np.zeros((N, C, H + 2 * ctx.padding[0], W), dtype=x.dtype)
            else:
                dx = np.empty(x.shape, dtype=x.dtype)
        x_rows = _pad_rows(x, ctx.padding[0]) if row_blocks else x
        block_geometry = ((KH, KW), ctx.stride, (0, ctx.padding[1]), ctx.dilation) if row_blocks else geometry
        for n0, n1, oh0, oh1 in blocks:  # one pass over the whole batch unless in blocks (see _blocks)
            L_c = (oh1 - oh0) * OW
            dout_c = dout[n0:n1, :, oh0:oh1].reshape(n1 - n0, G, C_out // G, L_c)  # a view
            if row_blocks:
                rows, x_c = _input_rows(x_rows, n0, n1, oh0, oh1, (KH, KW), ctx.stride, ctx.dilation)
            else:
                x_c = x if len(blocks) == 1 else x[n0:n1]
            if not need_dw:
                cols = None
            elif ctx.cols is not None:  # unfolded by the forward (whole images)
                cols = ctx.cols[n0:n1].reshape(n1 - n0, G, C_per_group * KH * KW, L_c)
            else:
                cols = _unfold(x_c, *block_geometry).reshape(n1 - n0, G, C_per_group * KH * KW, L_c)
            if need_dw:
                dw = _weight_grad(dout_c, cols, dw)
            if need_dx:
                # dcols (N, G, C/G*KH*KW, L) overwrite cols' scratch memory (cols are used up) unless cols
                # are x itself (1x1 kernels), whose dx must not alias scratch memory
                dcols = None if cols is None or pointwise or ctx.cols is not None else cols
                dcols = get_array_module(dout).matmul(w_mat.swapaxes(-1, -2), dout_c, out=dcols)
                dcols = dcols.reshape(n1 - n0, C * KH * KW, L_c)
                if row_blocks:
                    dx_rows[n0:n1, :, rows] += _fold(dcols, x_c.shape, *block_geometry)
                elif len(blocks) == 1:
                    dx = _fold(dcols, x_c.shape, *geometry)
                else:
                    _fold(dcols, x_c.shape, *geometry, out=dx[n0:n1])
        if dx_rows is not None:
            dx = np.ascontiguousarray(dx_rows[:, :, ctx.padding[0] : ctx.padding[0] + H])
        if dx_winograd:  # the adjoint convolution: dout with the rotated filters, padding 2 - pad
            adjoint_padding = (2 - ctx.padding[0], 2 - ctx.padding[1])
            dx = _winograd(dout, kernel("winograd").weight_transform(weight), adjoint_padding, C, adjoint=True)
        dw = dw.reshape(weight.shape) if need_dw else None
        if dw_winograd:
            dw = _winograd_weight_grad(x, dout, ctx.padding, V=ctx.winograd_input)
        dout = dout.reshape(N, G, C_out // G, L)
        db = dout.sum(axis=(0, 3)).reshape(C_out) if ctx.has_bias else None  # (N, G, C_out/G, L) -> (C_out,)
        return dx, dw, db


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    Args:
        input: (N, C, H, W) or (C, H, W) Tensor, float32 or float64.
        weight: (C_out, C/groups, KH, KW) Tensor, input's dtype.
        bias: (C_out,) Tensor or None.
        stride, padding, dilation: int or (height, width) pair; padding adds zeros on both sides.
        groups: split the channels into this many independent groups (groups == C: depthwise).

    Returns:
        (N, C_out, OH, OW) Tensor (or (C_out, OH, OW) for an unbatched input), input's dtype,
        OH = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1, likewise OW.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if input.ndim == 3:
        out = Conv2d.apply(input.reshape(1, *input.shape), weight, bias, stride=stride, padding=padding,
                           dilation=dilation, groups=int(groups))
        return out.reshape(out.shape[1:])
    return Conv2d.apply(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=int(groups))


# ---------------------------------------------------------------------------- conv_transpose2d
class ConvTranspose2d(Function):
    """2-D transposed convolution, as torch.nn.functional.conv_transpose2d (fused, own backward).

    It is conv2d's backward-data: each input pixel scatters ``weight``-weighted copies into the
    output (cols = weight^T @ x, then col2im). Its backward is conv2d's forward (im2col + matmul).

    forward(x, weight, bias=None, stride, padding, output_padding, groups, dilation) on arrays:
        x: (N, C_in, H, W); weight: (C_in, C_out/groups, KH, KW); bias: (C_out,) or None.
        Returns (N, C_out, OH, OW), OH = (H - 1)*SH - 2*pad_h + DH*(KH - 1) + output_padding_h + 1.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1,
                dilation=(1, 1)):
        _check_dtypes(x, weight, bias)
        if x.ndim != 4 or weight.ndim != 4:
            raise ValueError(f"conv_transpose2d expects x (N, C_in, H, W) and weight (C_in, C_out/groups, KH, KW), "
                             f"got {x.shape} and {weight.shape}")
        xp = get_array_module(x)
        N, C_in, H, W = x.shape
        _, C_out_per_group, KH, KW = weight.shape
        G = groups
        if G < 1 or C_in % G or weight.shape[0] != C_in:
            raise ValueError(f"conv_transpose2d: input has {C_in} channels, weight {tuple(weight.shape)}, groups={G}: "
                             "need weight.shape[0] == C_in, divisible by groups")
        C_out = C_out_per_group * G
        if bias is not None and tuple(bias.shape) != (C_out,):
            raise ValueError(f"conv_transpose2d: bias must have shape ({C_out},), got {tuple(bias.shape)}")
        for op, s, d in zip(output_padding, stride, dilation):
            if op < 0 or op >= max(s, d):
                raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride} "
                                 f"or dilation {dilation}")
        OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
        OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"conv_transpose2d: the output size {(OH, OW)} is not positive")
        geometry = ((KH, KW), stride, padding, dilation)
        # the conv2d that this op is the adjoint of maps (OH, OW) to (H2, W2); H2 > H only when
        # output_padding >= stride (allowed when dilation > stride): its extra rows see x = 0
        H2 = conv_output_size(OH, KH, stride[0], padding[0], dilation[0])
        W2 = conv_output_size(OW, KW, stride[1], padding[1], dilation[1])
        x_mat = _zero_extend(x, H2, W2).reshape(N, G, C_in // G, H2 * W2)

        w_mat = weight.reshape(G, C_in // G, C_out_per_group * KH * KW)
        pointwise = _is_pointwise((KH, KW), padding)
        # cols (N, C_out*KH*KW, H2*W2) a chunk of images at a time (see CHUNK_BYTES): the same products
        blocks = [(0, N, 0, OH)] if pointwise else _blocks(x, C_out * KH * KW, 1, H2 * W2)
        out = None if len(blocks) == 1 else xp.empty((N, C_out, OH, OW), dtype=x.dtype)
        for n0, n1, _, _ in blocks:
            cols_shape = (n1 - n0, G, C_out_per_group * KH * KW, H2 * W2)
            cols = None if pointwise else _scratch(cols_shape, x.dtype, x)
            cols = xp.matmul(w_mat.swapaxes(-1, -2), x_mat[n0:n1], out=cols)
            out_c = _fold(cols.reshape(n1 - n0, C_out * KH * KW, H2 * W2), (n1 - n0, C_out, OH, OW), *geometry,
                          out=None if out is None else out[n0:n1])
            out = out_c if out is None else out
        if bias is not None:
            out += bias.reshape(1, C_out, 1, 1)

        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.geometry, ctx.groups = geometry, G
        ctx.x_size = (H2, W2)  # x's size after _zero_extend
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        N, C_in, H, W = x.shape
        _, C_out_per_group, KH, KW = weight.shape
        G = ctx.groups
        xp = get_array_module(dout)
        H2W2 = ctx.x_size[0] * ctx.x_size[1]
        w_mat = weight.reshape(G, C_in // G, C_out_per_group * KH * KW)
        x_mat = _zero_extend(x, *ctx.x_size).reshape(N, G, C_in // G, H2W2)
        pointwise = _is_pointwise(ctx.geometry[0], ctx.geometry[2])
        blocks = [(0, N, 0, 1)] if pointwise else _blocks(dout, C_out_per_group * G * KH * KW, 1, H2W2)
        dx = xp.empty((N, G, C_in // G, H2W2), dtype=x.dtype) if len(blocks) > 1 else None
        dw = None
        for n0, n1, _, _ in blocks:  # a chunk of images at a time, as the forward
            dcols = _unfold(dout[n0:n1], *ctx.geometry)  # (n, C_out*KH*KW, H2*W2): conv2d's forward
            dcols = dcols.reshape(n1 - n0, G, C_out_per_group * KH * KW, H2W2)
            dx_c = xp.matmul(w_mat, dcols, out=None if dx is None else dx[n0:n1])  # (n, G, C_in/G, H2*W2)
            dx = dx_c if dx is None else dx
            dw = _weight_grad(x_mat[n0:n1], dcols, dw)
        dx = dx.reshape(N, C_in, *ctx.x_size)
        if dx.shape[2:] != (H, W):
            dx = xp.ascontiguousarray(dx[:, :, :H, :W])
        dw = dw.reshape(weight.shape)
        db = dout.sum(axis=(0, 2, 3)) if ctx.has_bias else None
        return dx, dw, db


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1):
    """2-D transposed convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose2d``.

    Args:
        input: (N, C_in, H, W) or (C_in, H, W) Tensor, float32 or float64.
        weight: (C_in, C_out/groups, KH, KW) Tensor, input's dtype (note: C_in first, unlike conv2d).
        bias: (C_out,) Tensor or None.
        stride, padding, output_padding, dilation: int or (height, width) pair; output_padding
            adds rows/columns on the bottom/right side only and must be < stride or < dilation.
        groups: number of independent channel groups.

    Returns:
        (N, C_out, OH, OW) Tensor, input's dtype,
        OH = (H - 1)*stride - 2*padding + dilation*(KH - 1) + output_padding + 1, likewise OW.
    """
    kwargs = dict(stride=pair(stride, "stride"), padding=pair(padding, "padding"),
                  output_padding=pair(output_padding, "output_padding"), groups=int(groups),
                  dilation=pair(dilation, "dilation"))
    if input.ndim == 3:
        out = ConvTranspose2d.apply(input.reshape(1, *input.shape), weight, bias, **kwargs)
        return out.reshape(out.shape[1:])
    return ConvTranspose2d.apply(input, weight, bias, **kwargs)


# -------------------------------------------------------------------------------------- linear
class Linear(Function):
    """``x @ weight.T + bias``, as torch.nn.functional.linear (fused, own backward).

    forward(x, weight, bias=None) on arrays: x (*, in_features), weight (out_features, in_features),
    bias (out_features,) or None; returns (*, out_features) in x's dtype.
    backward: dx = dout @ weight, dw = dout^T @ x, db = dout summed over the leading axes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        _check_dtypes(x, weight, bias)
        if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not match "
                             "(need input (*, in_features), weight (out_features, in_features))")
        out_features = weight.shape[0]
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"linear: bias must have shape ({out_features},), got {tuple(bias.shape)}")
        x_mat = x.reshape(-1, x.shape[-1])  # (B, in): all leading axes as one batch axis
        out = x_mat @ weight.T  # weight.T is a view: BLAS reads it transposed, no copy
        if bias is not None:
            out += bias
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        dout_mat = dout.reshape(-1, weight.shape[0])  # (B, out)
        x_mat = x.reshape(-1, x.shape[-1])  # (B, in)
        dx = (dout_mat @ weight).reshape(x.shape)
        dw = dout_mat.T @ x_mat
        db = dout_mat.sum(axis=0) if ctx.has_bias else None
        return dx, dw, db


def linear(input, weight, bias=None):
    """Affine map ``input @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Args:
        input: (*, in_features) Tensor, float32 or float64.
        weight: (out_features, in_features) Tensor, input's dtype.
        bias: (out_features,) Tensor or None.

    Returns:
        (*, out_features) Tensor, input's dtype.
    """
    return Linear.apply(input, weight, bias)
