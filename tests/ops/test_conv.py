"""conv2d, conv_transpose2d and linear: float64 gradcheck and parity with torch on every backend."""
import numpy as np
import pytest

import minimaskrcnn
from minimaskrcnn import Tensor, gradcheck
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.ops.conv import conv2d, conv_transpose2d, linear

CPU_BACKENDS = ["numpy", "numba"]

# (x_shape, w_shape, bias, stride, padding, dilation, groups)
CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), True, 1, 1, 1, 1),
    ((1, 2, 8, 7), (3, 2, 3, 2), True, 2, (1, 0), 1, 1),
    ((1, 2, 9, 9), (2, 2, 3, 3), False, 1, 2, 2, 1),  # dilation 2, no bias
    ((2, 4, 5, 6), (6, 2, 3, 3), True, (2, 1), 1, 1, 2),  # groups 2
    ((1, 3, 6, 5), (6, 1, 3, 3), True, 1, 1, 1, 3),  # depthwise (channel multiplier 2)
    ((2, 3, 5, 4), (4, 3, 1, 1), True, 1, 0, 1, 1),  # 1x1 fast path
    ((1, 3, 7, 6), (2, 3, 1, 1), False, 2, 0, 1, 1),  # 1x1 stride 2 fast path
]
CUDA_CONV_CASES = [((1, 2, 4, 4), (2, 2, 3, 3), True, 1, 1, 1, 1), ((1, 2, 5, 4), (2, 1, 2, 2), False, 2, 1, 2, 2)]

# (x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation); w is (C_in, C_out/groups, KH, KW)
TRANSPOSE_CASES = [
    ((2, 3, 4, 5), (3, 2, 3, 3), True, 2, 1, 1, 1, 1),  # stride 2, padding, output_padding
    ((1, 4, 3, 3), (4, 1, 2, 2), True, 2, 0, 0, 2, 1),  # Mask R-CNN's 2x2 stride-2 upsampling, groups 2
    ((1, 2, 4, 3), (2, 3, 3, 2), False, (1, 2), (0, 1), (0, 1), 1, (1, 2)),  # pairs, dilation
    ((1, 2, 3, 4), (2, 2, 3, 3), True, 1, 1, 1, 1, 2),  # output_padding >= stride (allowed by dilation 2)
]

LINEAR_CASES = [((5, 4), (3, 4), True), ((2, 3, 4), (6, 4), False), ((4,), (2, 4), True)]


def _arrays(rng, x_shape, w_shape, bias, out_channels, dtype=np.float64):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    return x, w, b


def _compare_with_torch(ours, theirs, x, w, b, rtol=1e-10, on_device=lambda a: a.copy()):
    """Run ``ours`` (minimaskrcnn) and ``theirs`` (torch) on x, w, b; compare output and all gradients.

    ``on_device`` moves our copies of the inputs where the backend computes (CuPy on a GPU).
    """
    torch = pytest.importorskip("torch")
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    out_t = theirs(xt, wt, bt)
    dout = np.random.default_rng(9).standard_normal(tuple(out_t.shape)).astype(x.dtype)
    out_t.backward(torch.from_numpy(dout))

    xs, ws = Tensor(on_device(x), requires_grad=True), Tensor(on_device(w), requires_grad=True)
    bs = Tensor(on_device(b), requires_grad=True) if b is not None else None
    out = ours(xs, ws, bs)
    assert out.dtype == x.dtype and out.shape == tuple(out_t.shape)
    out.backward(dout)
    for name, mine, original in (("x", xs, x), ("w", ws, w), ("b", bs, b)):
        if original is not None:  # the ops must not write into their inputs (e.g. scratch aliasing)
            np.testing.assert_array_equal(to_numpy(mine.data), original, err_msg=f"{name} was modified")

    pairs = [("output", out.numpy(), out_t), ("dx", xs.grad, xt.grad), ("dw", ws.grad, wt.grad)]
    if b is not None:
        pairs.append(("db", bs.grad, bt.grad))
    for name, mine, ref in pairs:
        ref = ref.detach().numpy()
        scale = np.abs(ref).max()  # relative to the array's magnitude: no blow-up where ref ~ 0
        np.testing.assert_allclose(to_numpy(mine), ref, rtol=rtol, atol=rtol * scale, err_msg=name)


def _conv_fns(stride, padding, dilation, groups):
    import torch

    ours = lambda x, w, b: conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)  # noqa: E731
    theirs = lambda x, w, b: torch.nn.functional.conv2d(  # noqa: E731
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return ours, theirs


def _transpose_fns(stride, padding, output_padding, groups, dilation):
    import torch

    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    return ((lambda x, w, b: conv_transpose2d(x, w, b, **kw)),
            (lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **kw)))


# ------------------------------------------------------------------------------------ gradcheck
# gradcheck evaluates the op twice per input element: run it on the NumPy backend, which has no
# thread start-up per call (the backends' equality is checked by the torch parity tests below)
@pytest.fixture
def numpy_backend():
    with minimaskrcnn.use_backend("numpy"):
        yield


@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding, dilation, groups", CONV_CASES[:5])
@pytest.mark.usefixtures("numpy_backend")
def test_conv2d_gradcheck(x_shape, w_shape, bias, stride, padding, dilation, groups):
    x, w, b = _arrays(np.random.default_rng(0), x_shape, w_shape, bias, w_shape[0])
    inputs = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)]
    inputs.append(Tensor(b, requires_grad=True) if bias else None)
    result = gradcheck(lambda x, w, b: conv2d(x, w, b, stride, padding, dilation, groups), inputs)
    assert result.max_rel_error < 1e-6, result.report()


@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation", TRANSPOSE_CASES)
@pytest.mark.usefixtures("numpy_backend")
def test_conv_transpose2d_gradcheck(x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation):
    x, w, b = _arrays(np.random.default_rng(0), x_shape, w_shape, bias, w_shape[1] * groups)
    inputs = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)]
    inputs.append(Tensor(b, requires_grad=True) if bias else None)
    result = gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation),
                       inputs)
    assert result.max_rel_error < 1e-6, result.report()


@pytest.mark.parametrize("x_shape, w_shape, bias", LINEAR_CASES)
def test_linear_gradcheck(x_shape, w_shape, bias):
    x, w, b = _arrays(np.random.default_rng(0), x_shape, w_shape, bias, w_shape[0])
    inputs = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)]
    inputs.append(Tensor(b, requires_grad=True) if bias else None)
    result = gradcheck(linear, inputs)
    assert result.max_rel_error < 1e-6, result.report()


# ---------------------------------------------------------------------------- parity with torch
@pytest.mark.reference
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_matches_torch(backend, x_shape, w_shape, bias, stride, padding, dilation, groups):
    pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), x_shape, w_shape, bias, w_shape[0])
    with minimaskrcnn.use_backend(backend):
        _compare_with_torch(*_conv_fns(stride, padding, dilation, groups), x, w, b)


@pytest.mark.reference
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(backend, x_shape, w_shape, bias, stride, padding, output_padding, groups,
                                        dilation):
    pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), x_shape, w_shape, bias, w_shape[1] * groups)
    with minimaskrcnn.use_backend(backend):
        _compare_with_torch(*_transpose_fns(stride, padding, output_padding, groups, dilation), x, w, b)


@pytest.mark.reference
@pytest.mark.parametrize("x_shape, w_shape, bias", LINEAR_CASES)
def test_linear_matches_torch(x_shape, w_shape, bias):
    torch = pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), x_shape, w_shape, bias, w_shape[0])
    _compare_with_torch(linear, torch.nn.functional.linear, x, w, b)


@pytest.mark.cuda
@pytest.mark.reference
@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding, dilation, groups", CUDA_CONV_CASES)
def test_conv2d_matches_torch_cuda(x_shape, w_shape, bias, stride, padding, dilation, groups):
    pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), x_shape, w_shape, bias, w_shape[0])
    with minimaskrcnn.use_backend("cuda"):
        _compare_with_torch(*_conv_fns(stride, padding, dilation, groups), x, w, b, on_device=_on_device)


@pytest.mark.cuda
@pytest.mark.reference
def test_conv_transpose2d_matches_torch_cuda():
    pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), (1, 2, 3, 3), (2, 2, 2, 2), True, 2)
    with minimaskrcnn.use_backend("cuda"):
        _compare_with_torch(*_transpose_fns(2, 0, 0, 1, 1), x, w, b, on_device=_on_device)


def _on_device(a):
    """A CuPy copy of ``a`` on a GPU; a NumPy copy under the simulator."""
    cupy = cupy_or_none()
    return cupy.asarray(a) if cupy is not None else a.copy()


@pytest.mark.reference
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_chain_of_convs_matches_torch(backend):
    """conv 3x3 -> 1x1 -> transposed -> 3x3 in one graph: each op's scratch cols must not leak into another's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6))
    weights = [rng.standard_normal(shape) for shape in [(4, 3, 3, 3), (4, 4, 1, 1), (4, 3, 2, 2), (2, 3, 3, 3)]]

    def run(conv, conv_t, x, w):
        h = conv(x, w[0], None, 1, 1)  # 3x3, padding 1
        h = conv(h * h, w[1], None, 2, 0)  # 1x1, stride 2
        h = conv_t(h, w[2], None, 2)  # 2x2 stride 2 upsampling
        return conv(h, w[3], None, 1, 1) + h.sum()

    xt, wt = torch.tensor(x, requires_grad=True), [torch.tensor(w, requires_grad=True) for w in weights]
    out_t = run(torch.nn.functional.conv2d, torch.nn.functional.conv_transpose2d, xt, wt)
    out_t.sum().backward()
    with minimaskrcnn.use_backend(backend):
        xs, ws = Tensor(x, requires_grad=True), [Tensor(w, requires_grad=True) for w in weights]
        out = run(conv2d, conv_transpose2d, xs, ws)
        out.sum().backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(xs.data, x)
    for mine, ref in zip([xs] + ws, [xt] + wt):
        np.testing.assert_allclose(mine.grad, ref.grad.numpy(), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ dtypes, shapes, errors
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_stays_float32(backend):
    rng = np.random.default_rng(2)
    x, w, b = _arrays(rng, (1, 2, 5, 5), (3, 2, 3, 3), True, 3, dtype=np.float32)
    xs, ws, bs = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    with minimaskrcnn.use_backend(backend):
        out = conv2d(xs, ws, bs, padding=1)
        (out * out).sum().backward()
        up = conv_transpose2d(out, Tensor(rng.standard_normal((3, 2, 2, 2)).astype(np.float32)), stride=2)
        lin = linear(Tensor(x.reshape(2, -1)), Tensor(rng.standard_normal((4, 25)).astype(np.float32)))
    assert out.dtype == up.dtype == lin.dtype == np.float32
    assert xs.grad.dtype == ws.grad.dtype == bs.grad.dtype == np.float32


def test_unbatched_input_matches_batched():
    rng = np.random.default_rng(3)
    x, w, b = _arrays(rng, (2, 5, 4), (3, 2, 3, 3), True, 3)
    batched = conv2d(Tensor(x[None]), Tensor(w), Tensor(b), padding=1).numpy()[0]
    np.testing.assert_array_equal(conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1).numpy(), batched)
    wt = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_array_equal(conv_transpose2d(Tensor(x), Tensor(wt), stride=2).numpy(),
                                  conv_transpose2d(Tensor(x[None]), Tensor(wt), stride=2).numpy()[0])


def test_bad_arguments_raise():
    x, w = Tensor(np.zeros((1, 4, 5, 5))), Tensor(np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, w)  # 4 input channels, weight expects 3
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, Tensor(np.zeros((3, 2, 3, 3))), groups=2)  # 3 output channels in 2 groups
    with pytest.raises(TypeError, match="must match"):
        conv2d(x, Tensor(np.zeros((2, 4, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="bias"):
        conv2d(x, Tensor(np.zeros((2, 4, 3, 3))), Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(x, Tensor(np.zeros((4, 2, 3, 3))), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="do not match"):
        linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5))))


def test_backward_computes_only_the_gradients_asked_for(rng):
    """The stem conv's input needs no gradient and a frozen conv's weight none: both still give
    the right gradient for what does require one (ctx.needs_input_grad)."""
    import minimaskrcnn as mm
    from minimaskrcnn.ops.conv import conv2d as conv

    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    both_x, both_w = mm.Tensor(x.copy(), requires_grad=True), mm.Tensor(w.copy(), requires_grad=True)
    conv(both_x, both_w, padding=1).sum().backward()
    only_w = mm.Tensor(w.copy(), requires_grad=True)
    conv(mm.Tensor(x.copy()), only_w, padding=1).sum().backward()
    only_x = mm.Tensor(x.copy(), requires_grad=True)
    conv(only_x, mm.Tensor(w.copy()), padding=1).sum().backward()
    np.testing.assert_allclose(only_w.grad, both_w.grad, rtol=1e-12)
    np.testing.assert_allclose(only_x.grad, both_x.grad, rtol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 6 * 9 * 50 * 8])  # one image per chunk; three (5 = 3 + 2)
@pytest.mark.parametrize("needs", ["both", "x", "w"])
def test_chunked_conv2d_equals_whole_batch(rng, monkeypatch, chunk_bytes, needs):
    """Unfolding a few images at a time (ops.conv.CHUNK_BYTES) gives bit-identical outputs and
    gradients to one unfold of the whole batch, with groups, stride, dilation and any mix of
    gradients asked for."""
    from minimaskrcnn.ops import conv as conv_module

    x = rng.standard_normal((5, 6, 7, 8))
    w = rng.standard_normal((6, 2, 3, 3))  # (C_out, C/groups, KH, KW)
    b = rng.standard_normal(6)
    dout = rng.standard_normal((5, 6, 5, 10))
    kwargs = dict(stride=(1, 1), padding=(1, 2), dilation=(2, 1), groups=3)

    def run(limit):
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", limit)
        xs = Tensor(x.copy(), requires_grad=needs in ("both", "x"))
        ws = Tensor(w.copy(), requires_grad=needs in ("both", "w"))
        bs = Tensor(b.copy(), requires_grad=True)
        out = conv2d(xs, ws, bs, **kwargs)
        out.backward(dout)
        return out.numpy(), xs.grad, ws.grad, bs.grad

    whole, chunked = run(0), run(chunk_bytes)
    assert whole[0].shape == (5, 6, 5, 10)
    for name, a, c in zip(("output", "dx", "dw", "db"), whole, chunked):
        if a is None:
            assert c is None, name
        else:
            np.testing.assert_array_equal(c, a, err_msg=name)


@pytest.mark.parametrize("row_block_bytes", [1, 2 * 6 * 9 * 11 * 8])  # one output row per block; 2 or 3
@pytest.mark.parametrize("needs", ["both", "x", "w"])
@pytest.mark.parametrize("stride, padding, dilation, groups",
                         [((1, 1), (1, 2), (2, 1), 3), ((2, 1), (2, 0), (1, 1), 1)])
def test_conv2d_in_row_blocks_matches_whole_image(rng, monkeypatch, row_block_bytes, needs, stride, padding, dilation,
                                                   groups):
    """Large maps are unfolded a block of output rows at a time (ops.conv.ROW_BLOCK_BYTES): the output
    and gradients equal the whole image's up to float rounding (BLAS blocks products of another size
    differently; dx adds the blocks' overlapping input rows, dw the blocks' parts), with padding,
    stride and dilation along H."""
    from minimaskrcnn.ops import conv as conv_module

    x = rng.standard_normal((2, 6, 9, 9))
    w = rng.standard_normal((6, 6 // groups, 3, 3))
    b = rng.standard_normal(6)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def run(limit):
        monkeypatch.setattr(conv_module, "ROW_BLOCK_BYTES", limit)
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", 0)
        xs = Tensor(x.copy(), requires_grad=needs in ("both", "x"))
        ws = Tensor(w.copy(), requires_grad=needs in ("both", "w"))
        bs = Tensor(b.copy(), requires_grad=True)
        out = conv2d(xs, ws, bs, **kwargs)
        out.backward(np.random.default_rng(1).standard_normal(out.shape))
        return out.numpy(), xs.grad, ws.grad, bs.grad

    whole, blocks = run(0), run(row_block_bytes)
    for name, a, c in zip(("output", "dx", "dw", "db"), whole, blocks):
        if a is None:
            assert c is None, name
        else:
            np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("stride, padding, output_padding, groups, dilation",
                         [(2, 0, 0, 1, 1), (2, 1, 1, 2, 1), (1, 1, 0, 1, 2)])
def test_chunked_conv_transpose2d_equals_whole_batch(rng, monkeypatch, stride, padding, output_padding, groups,
                                                     dilation):
    """conv_transpose2d a chunk of images at a time (ops.conv.CHUNK_BYTES): bit-identical results."""
    from minimaskrcnn.ops import conv as conv_module

    x = rng.standard_normal((5, 4, 4, 3))
    w = rng.standard_normal((4, 6 // groups, 3, 3))
    b = rng.standard_normal(6)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)

    def run(limit):
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", limit)
        xs, ws, bs = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
        out = conv_transpose2d(xs, ws, bs, **kwargs)
        out.backward(np.random.default_rng(1).standard_normal(out.shape))
        return out.numpy(), xs.grad, ws.grad, bs.grad

    for name, a, c in zip(("output", "dx", "dw", "db"), run(0), run(1)):
        np.testing.assert_array_equal(c, a, err_msg=name)


# ------------------------------------------------------------------- Winograd F(2x2, 3x3) on the CPU
# On the numba backend, 3x3 stride-1 convs compute the output, dx and dw with kernels/winograd where
# ops.conv's thresholds say (64+ channels, 128+ tiles); these tests lower the thresholds so that small
# inputs take that path too.
# (x_shape, w_shape, bias, padding): "same" padding, none, 2, odd sizes, the two pads differing
WINOGRAD_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), True, 1),
    ((1, 2, 5, 6), (3, 2, 3, 3), False, 0),
    ((2, 2, 4, 5), (2, 2, 3, 3), True, 2),
    ((1, 3, 6, 5), (2, 3, 3, 3), True, (0, 2)),
]


def _count_calls(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call appends its positional arguments to the returned list."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    return calls


def _forward_backward(x, w, b, dout, needs, **kwargs) -> list:
    """conv2d on the numba backend (input and weight with gradients as ``needs`` says), then its backward:
    [output, the gradients asked for]."""
    xs, ws = Tensor(x.copy(), requires_grad=needs[0]), Tensor(w.copy(), requires_grad=needs[1])
    with minimaskrcnn.use_backend("numba"):
        out = conv2d(xs, ws, None if b is None else Tensor(b), **kwargs)
        out.backward(dout)
    return [out.numpy()] + [t.grad for t, need in zip((xs, ws), needs) if need]


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Winograd for every eligible conv2d (any channel count and batch size); counts its calls."""
    from minimaskrcnn.ops import conv as conv_module

    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_TILES", 1)
    calls = []
    original = conv_module._winograd
    monkeypatch.setattr(conv_module, "_winograd",
                        lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    return calls


@pytest.mark.parametrize("x_shape, w_shape, bias, padding", WINOGRAD_CASES)
def test_conv2d_winograd_gradcheck(winograd_everywhere, x_shape, w_shape, bias, padding):
    x, w, b = _arrays(np.random.default_rng(0), x_shape, w_shape, bias, w_shape[0])
    inputs = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)]
    inputs.append(Tensor(b, requires_grad=True) if bias else None)
    with minimaskrcnn.use_backend("numba"):
        result = gradcheck(lambda x, w, b: conv2d(x, w, b, padding=padding), inputs)
    assert result.max_rel_error < 1e-6, result.report()
    # output and dx both by Winograd
    assert any(c.get("adjoint") for c in winograd_everywhere) and any(not c.get("adjoint") for c in winograd_everywhere)


@pytest.mark.reference
@pytest.mark.parametrize("x_shape, w_shape, bias, padding", WINOGRAD_CASES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_conv2d_winograd_matches_torch(winograd_everywhere, x_shape, w_shape, bias, padding, contiguous):
    pytest.importorskip("torch")
    x, w, b = _arrays(np.random.default_rng(1), x_shape, w_shape, bias, w_shape[0])
    if not contiguous:  # the same values in transposed memory
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        w = np.asfortranarray(w)
    with minimaskrcnn.use_backend("numba"):
        _compare_with_torch(*_conv_fns(1, padding, 1, 1), x, w, b)
    assert len(winograd_everywhere) == 2


@pytest.mark.reference
def test_conv2d_winograd_nan_stays_where_a_direct_convolution_puts_it(winograd_everywhere):
    """A NaN input pixel makes NaN exactly the outputs whose windows hold it (torch's), not its whole tile."""
    torch = pytest.importorskip("torch")
    x, w, _ = _arrays(np.random.default_rng(5), (1, 2, 6, 6), (3, 2, 3, 3), False, 3)
    x[0, 1, 2, 2] = np.nan
    with minimaskrcnn.use_backend("numba"):
        out = conv2d(Tensor(x), Tensor(w), padding=1).numpy()
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert len(winograd_everywhere) == 1
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(out).sum() == 3 * 9


@pytest.mark.reference
def test_conv2d_winograd_float32_mask_head_matches_torch():
    """The default thresholds on the mask head's shape (64 channels, 14x14 RoIs), float32, as in training."""
    pytest.importorskip("torch")
    from minimaskrcnn.ops import conv as conv_module

    assert conv_module._winograd_applies((12, 64, 14, 14), 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, np.zeros(1))
    x, w, b = _arrays(np.random.default_rng(2), (12, 64, 14, 14), (64, 64, 3, 3), True, 64, dtype=np.float32)
    with minimaskrcnn.use_backend("numba"):
        _compare_with_torch(*_conv_fns(1, 1, 1, 1), x, w, b, rtol=2e-5)


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_conv2d_winograd_in_blocks_equals_one_block(winograd_everywhere, monkeypatch, needs):
    """A tile row at a time (ops.conv.WINOGRAD_BLOCK_BYTES and the minimum block sizes lowered: blocks
    that end inside an image) gives the one-block numbers, to rounding."""
    from minimaskrcnn.kernels.winograd import cpu as winograd_cpu

    from minimaskrcnn.ops import conv as conv_module

    monkeypatch.setattr(conv_module, "SAVED_COLS_BYTES", 0)  # dw transforms the input again, in its own blocks
    x, w, b = _arrays(np.random.default_rng(3), (3, 4, 9, 7), (5, 4, 3, 3), True, 5, dtype=np.float32)
    dout = np.random.default_rng(4).standard_normal((3, 5, 9, 7)).astype(np.float32)
    blocks = _count_calls(monkeypatch, winograd_cpu, "input_transform")
    results = []
    for block_bytes, min_tiles, factor in ((1 << 30, 256, 4), (1, 1, 0)):  # everything at once; a tile row per block
        monkeypatch.setattr(conv_module, "WINOGRAD_BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_BLOCK_TILES", min_tiles)
        monkeypatch.setattr(conv_module, "WINOGRAD_WEIGHT_GRAD_BLOCK_FACTOR", factor)
        blocks.clear()
        results.append(_forward_backward(x, w, b, dout, needs, padding=1))
        passes = 1 + sum(needs)  # the output, then dx and/or dw, each over all 3 x 5 tile rows
        assert len(blocks) == (passes if block_bytes > 1 else 15 * passes)
    for whole, blocked in zip(*results):
        np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())


@pytest.mark.parametrize("needs", [(True, True), (False, True), (True, False)])
def test_conv2d_winograd_keeps_the_transformed_input_for_the_weight_gradient(winograd_everywhere, monkeypatch, needs):
    """Within SAVED_COLS_BYTES the forward's input transform serves dw (one transform fewer), with the
    numbers of transforming again, to rounding; nothing is kept without a weight gradient or under no_grad."""
    from minimaskrcnn.kernels.winograd import cpu as winograd_cpu

    from minimaskrcnn.ops import conv as conv_module

    x, w, b = _arrays(np.random.default_rng(7), (3, 4, 9, 7), (5, 4, 3, 3), True, 5, dtype=np.float32)
    dout = np.random.default_rng(8).standard_normal((3, 5, 9, 7)).astype(np.float32)
    transforms = _count_calls(monkeypatch, winograd_cpu, "input_transform")
    results = []
    for saved_bytes in (16 << 20, 0):
        monkeypatch.setattr(conv_module, "SAVED_COLS_BYTES", saved_bytes)
        transforms.clear()
        winograd_everywhere.clear()
        results.append(_forward_backward(x, w, b, dout, needs, padding=1))
        kept = saved_bytes > 0 and needs[1]
        assert winograd_everywhere[0] == {"keep_input": kept}
        assert len(transforms) == 1 + sum(needs) - kept  # the output's, dx's (of dout) and dw's, less the kept one
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-6, atol=1e-6 * np.abs(b_).max())
    winograd_everywhere.clear()
    with minimaskrcnn.use_backend("numba"), minimaskrcnn.no_grad():
        conv2d(Tensor(x), Tensor(w, requires_grad=True), padding=1)
    assert winograd_everywhere == [{"keep_input": False}]


def test_conv2d_keeps_cols_when_the_input_needs_no_gradient(monkeypatch):
    """The stem's case (an image without gradient, 7x7 stride 2): the forward's cols serve dw (one im2col
    fewer), the same bits as unfolding again; within SAVED_COLS_BYTES only, never with dx or under no_grad."""
    from minimaskrcnn.kernels.im2col import cpu as im2col_cpu

    from minimaskrcnn.ops import conv as conv_module

    x, w, _ = _arrays(np.random.default_rng(9), (3, 3, 20, 18), (4, 3, 7, 7), False, 4, dtype=np.float32)
    dout = np.random.default_rng(10).standard_normal((3, 4, 10, 9)).astype(np.float32)
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 1)  # an image per chunk, as the stem at 128x128
    unfolds = _count_calls(monkeypatch, im2col_cpu, "im2col")
    grads = {}
    for saved_bytes, needs_dx in ((16 << 20, False), (0, False), (16 << 20, True)):
        monkeypatch.setattr(conv_module, "SAVED_COLS_BYTES", saved_bytes)
        unfolds.clear()
        grads[saved_bytes, needs_dx] = _forward_backward(x, w, None, dout, (needs_dx, True), stride=2, padding=3)[-1]
        assert len(unfolds) == (3 if saved_bytes and not needs_dx else 6)  # per image: forward (and backward)
    assert np.array_equal(grads[16 << 20, False], grads[0, False])
    np.testing.assert_allclose(grads[16 << 20, True], grads[0, False], rtol=1e-5)
    with minimaskrcnn.use_backend("numba"), minimaskrcnn.no_grad():
        ctx_cols = []
        forward = conv_module.Conv2d.forward
        monkeypatch.setattr(conv_module.Conv2d, "forward", staticmethod(
            lambda ctx, *args, **kwargs: (forward(ctx, *args, **kwargs), ctx_cols.append(ctx.cols))[0]))
        conv2d(Tensor(x), Tensor(w, requires_grad=True), stride=2, padding=3)
    assert ctx_cols == [None]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("saved_bytes", [16 << 20, 0])
def test_conv2d_of_an_empty_batch_without_input_gradient(monkeypatch, backend, saved_bytes):
    """The kept-cols case (an input without gradient, a weight with one) and no image, as a mask head
    with no RoI behind a frozen backbone: zeros dw, no error; an input smaller than the kernel still gets
    im2col's error, not NumPy's."""
    from minimaskrcnn.ops import conv as conv_module

    monkeypatch.setattr(conv_module, "SAVED_COLS_BYTES", saved_bytes)
    w = Tensor(np.ones((5, 4, 3, 3), np.float32), requires_grad=True)
    with minimaskrcnn.use_backend(backend):
        out = conv2d(Tensor(np.ones((0, 4, 9, 8), np.float32)), w, padding=1)
        out.backward(np.zeros(out.shape, np.float32))
        assert out.shape == (0, 5, 9, 8) and w.grad.shape == (5, 4, 3, 3) and np.all(w.grad == 0)
        with pytest.raises(ValueError, match="does not fit in the padded input"):
            conv2d(Tensor(np.ones((2, 4, 1, 1), np.float32)), w)


def test_conv2d_winograd_of_an_empty_batch(winograd_everywhere, monkeypatch):
    """Thresholds at 0 ("always") and no image: zeros gradients of the right shapes, no error."""
    from minimaskrcnn.ops import conv as conv_module

    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_TILES", 0)
    x, w = Tensor(np.zeros((0, 4, 6, 6)), requires_grad=True), Tensor(np.ones((4, 4, 3, 3)), requires_grad=True)
    with minimaskrcnn.use_backend("numba"):
        out = conv2d(x, w, padding=1)
        out.backward(np.zeros(out.shape))
    assert out.shape == (0, 4, 6, 6) and x.grad.shape == (0, 4, 6, 6) and np.all(w.grad == 0)


def test_which_convs_use_winograd():
    """3x3, stride 1, dilation 1, one group, padding <= 2, 64+ channels each side, 128+ tiles, numba backend only."""
    from minimaskrcnn.ops import conv as conv_module

    def applies(x_shape=(4, 64, 14, 14), C_out=64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1),
                dilation=(1, 1), groups=1):
        return conv_module._winograd_applies(x_shape, C_out, kernel_size, stride, padding, dilation, groups,
                                             np.zeros(1))

    assert applies() and applies(x_shape=(1, 256, 200, 272), C_out=256) and applies(padding=(2, 0))
    assert not applies(stride=(2, 2)) and not applies(dilation=(2, 2)) and not applies(groups=2)
    assert not applies(kernel_size=(1, 1), padding=(0, 0)) and not applies(kernel_size=(3, 2))
    assert not applies(padding=(3, 3)) and not applies(x_shape=(4, 32, 14, 14)) and not applies(C_out=32)
    assert not applies(x_shape=(4, 64, 8, 8)) and applies(x_shape=(8, 64, 8, 8))  # 64 and 128 tiles
    with minimaskrcnn.use_backend("cuda"):  # the GPU path (and its simulator in CI) stays im2col
        assert not applies()
    with minimaskrcnn.use_backend("numpy"):  # the readable reference backend stays im2col
        assert not applies()
    with minimaskrcnn.use_backend("numba"):
        assert applies()
