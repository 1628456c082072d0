"""The autograd engine itself: gradchecks of the basic ops, parity with torch, accumulation, no_grad,
anomaly mode, and gradcheck catching a wrong backward."""
import numpy as np
import pytest

import minimaskrcnn as mm
from minimaskrcnn import Function, Tensor, gradcheck

torch = pytest.importorskip("torch")


def _t(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def _assert_close(mine, ref, rtol=1e-10, name=""):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    mine = np.asarray(mine)
    assert mine.shape == ref.shape, (name, mine.shape, ref.shape)
    scale = np.abs(ref).max() if ref.size else 0.0
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=rtol * scale, err_msg=name)


def _parity(ours, theirs, arrays, seed=1):
    """Run ``ours`` on Tensors and ``theirs`` on torch tensors of the same float64 arrays; compare the
    output and every input gradient (for a random upstream gradient)."""
    xs = [_t(a) for a in arrays]
    ts = [torch.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out, out_t = ours(*xs), theirs(*ts)
    dout = np.random.default_rng(seed).standard_normal(tuple(out_t.shape))
    out.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    _assert_close(out.data, out_t, name="output")
    for i, (x, t) in enumerate(zip(xs, ts)):
        _assert_close(x.grad if x.grad is not None else np.zeros(x.shape),
                      t.grad if t.grad is not None else torch.zeros(t.shape), name=f"grad {i}")
    return xs


def _check(fn, arrays, tol=1e-6):
    result = gradcheck(fn, [_t(a) for a in arrays], tol=tol)
    assert result.passed, result.report()


# ------------------------------------------------------------------------ arithmetic, broadcasting
BINARY = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
]
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1, 4), (2, 4)), ((1,), (2, 3)), ((), (3, 2))]


@pytest.mark.parametrize("name,op", BINARY)
@pytest.mark.parametrize("shape_a,shape_b", BROADCAST_SHAPES)
def test_binary_ops_broadcast_gradcheck_and_torch(name, op, shape_a, shape_b, rng):
    a = rng.standard_normal(shape_a)
    b = rng.uniform(0.5, 2.0, shape_b) * rng.choice([-1, 1], shape_b)  # away from 0 for div
    _check(op, [a, b])
    _parity(op, op, [a, b])


@pytest.mark.parametrize("name,op", [
    ("scalar_right", lambda x: x * 3.0 - 1.5),
    ("scalar_left", lambda x: 2.0 / x + 1.0 - x),
    ("neg_pow", lambda x: -(x ** 3) + x ** 2),
    ("exp_log", lambda x: (x * x + 1).log() + (x * 0.3).exp()),
    ("sqrt_abs", lambda x: (x.abs() + 0.5).sqrt()),
    ("sigmoid", lambda x: x.sigmoid()),
    ("relu", lambda x: x.relu() * x),
    ("clamp", lambda x: x.clamp(min=-0.5, max=0.7)),
    ("clamp_min", lambda x: x.clamp(min=0.1)),
])
def test_unary_ops_gradcheck_and_torch(name, op, rng):
    x = rng.standard_normal((3, 5))
    x[np.abs(x) < 1e-3] = 0.1  # keep finite differences away from the kinks of abs/relu/clamp
    x[np.abs(np.abs(x) - 0.5) < 1e-3] = 0.2
    x[np.abs(x - 0.7) < 1e-3] = 0.2
    _check(op, [x])
    _parity(op, op, [x])


def test_sigmoid_is_stable_for_huge_inputs():
    x = _t([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    y = x.sigmoid()
    assert np.all(np.isfinite(y.data))
    np.testing.assert_allclose(y.data, torch.sigmoid(torch.tensor(x.data)).numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape_a,shape_b", [
    ((3, 4), (4, 2)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4,)),
    ((4,), (4, 3)), ((4,), (2, 4, 3)), ((4,), (4,)),
])
def test_matmul_gradcheck_and_torch(shape_a, shape_b, rng):
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    _check(lambda x, y: x @ y, [a, b])
    _parity(lambda x, y: x @ y, lambda x, y: x @ y, [a, b])


# ------------------------------------------------------------------------------------ reductions
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_reductions_gradcheck_and_torch(axis, keepdims, rng):
    x = rng.standard_normal((3, 4, 2))
    dims = tuple(range(3)) if axis is None else axis
    _check(lambda t: t.sum(axis=axis, keepdims=keepdims) * 2 + t.mean(axis=axis, keepdims=keepdims), [x])
    _parity(lambda t: t.sum(axis=axis, keepdims=keepdims), lambda t: t.sum(dim=dims, keepdim=keepdims), [x])
    _parity(lambda t: t.mean(axis=axis, keepdims=keepdims), lambda t: t.mean(dim=dims, keepdim=keepdims), [x])
    _parity(lambda t: t.max(axis=axis, keepdims=keepdims), lambda t: torch.amax(t, dim=dims, keepdim=keepdims), [x])


def test_max_splits_the_gradient_between_ties_like_torch_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    _parity(lambda t: t.max(axis=1), lambda t: torch.amax(t, dim=1), [x])
    xs = _t(x)
    xs.max(axis=1).backward(np.array([1.0, 3.0]))
    np.testing.assert_array_equal(xs.grad, [[0.0, 0.5, 0.5], [1.0, 1.0, 1.0]])


# -------------------------------------------------------------------------------- shape / index
def test_reshape_permute_transpose_flatten(rng):
    x = rng.standard_normal((2, 3, 4))
    _check(lambda t: t.reshape(4, 6).permute(1, 0).transpose(0, 1).flatten() * 1.5, [x])
    _parity(lambda t: t.permute(2, 0, 1).reshape(4, -1).T, lambda t: t.permute(2, 0, 1).reshape(4, -1).T, [x])
    _parity(lambda t: t.flatten(1), lambda t: t.flatten(1), [x])


@pytest.mark.parametrize("index", [
    (slice(1, None), 2),
    (Ellipsis, slice(None, None, 2)),
    (np.array([0, 2, 0, 1]),),  # repeated rows: their gradients add up
    (np.array([1, 1]), np.array([3, 3])),  # the same element twice
    (None, 1),
])
def test_getitem_gradcheck_and_torch(index, rng):
    x = rng.standard_normal((3, 4))
    index = index if len(index) > 1 else index[0]
    _check(lambda t: t[index], [x])
    def to_torch(i):
        return torch.from_numpy(i) if isinstance(i, np.ndarray) else i

    t_index = tuple(to_torch(i) for i in index) if isinstance(index, tuple) else to_torch(index)
    _parity(lambda t: t[index], lambda t: t[t_index], [x])


def test_getitem_boolean_mask_and_tensor_index(rng):
    x = rng.standard_normal((5, 3))
    mask = np.array([True, False, True, True, False])
    _parity(lambda t: t[mask], lambda t: t[torch.from_numpy(mask)], [x])
    idx = Tensor(np.array([4, 0, 4]))
    _parity(lambda t: t[idx], lambda t: t[torch.tensor([4, 0, 4])], [x])


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_gradcheck_and_torch(axis, rng):
    x = rng.standard_normal((4, 5))
    idx = rng.integers(0, x.shape[axis], size=(3, 5) if axis == 0 else (4, 7))  # repeats included
    _check(lambda t: mm.gather(t, axis, idx), [x])
    _parity(lambda t: mm.gather(t, axis, idx), lambda t: torch.gather(t, axis, torch.from_numpy(idx)), [x])


def test_index_add_gradcheck_and_torch(rng):
    base, src = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    idx = np.array([0, 2, 2, 4, 0, 0])  # repeats accumulate
    _check(lambda b, s: mm.index_add(b, idx, s), [base, src])
    _parity(lambda b, s: mm.index_add(b, idx, s), lambda b, s: b.index_add(0, torch.from_numpy(idx), s), [base, src])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cat_and_stack_gradcheck_and_torch(axis, rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _check(lambda x, y, z: mm.cat([x, y * 2, z], axis=axis), [a, b, c])
    _parity(lambda x, y, z: mm.cat([x, y, z], axis=axis), lambda x, y, z: torch.cat([x, y, z], dim=axis), [a, b, c])
    _check(lambda x, y, z: mm.stack([x, y, z], axis=axis), [a, b, c])
    _parity(lambda x, y, z: mm.stack([x, y, z], axis=axis), lambda x, y, z: torch.stack([x, y, z], dim=axis), [a, b, c])


def test_cat_of_uneven_sizes(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((5, 3))
    _parity(lambda x, y: mm.cat([x, y]), lambda x, y: torch.cat([x, y]), [a, b])


def test_where_gradcheck_and_torch(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))  # b broadcasts
    cond = rng.random((3, 4)) > 0.5
    _check(lambda x, y: mm.where(cond, x, y), [a, b])
    _parity(lambda x, y: mm.where(cond, x, y), lambda x, y: torch.where(torch.from_numpy(cond), x, y), [a, b])


def test_cast_passes_the_gradient_back_in_the_input_dtype():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = x.astype(np.float64) * 3
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


# ---------------------------------------------------------------------------------- the graph
def test_a_tensor_used_twice_gets_both_gradients():
    x = _t([1.0, -2.0, 3.0])
    y = x * x + x  # dy/dx = 2x + 1, through two paths into x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)


def test_gradients_accumulate_over_backward_calls_until_cleared():
    x = _t([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, 3 + 2 * x.data)
    x.zero_grad()
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])


def test_no_gradient_flows_into_constants_and_unused_leaves():
    x, c, unused = _t([1.0, 2.0]), _t([3.0, 4.0], requires_grad=False), _t([5.0])
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad, c.data)
    assert c.grad is None and unused.grad is None


def test_backward_needs_a_gradient_for_non_scalars_and_a_graph():
    x = _t([1.0, 2.0])
    with pytest.raises(RuntimeError, match="needs a gradient"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        _t([1.0], requires_grad=False).backward()
    with pytest.raises(RuntimeError, match="gradient of shape"):
        (x * 2).backward(np.ones(3))


def test_no_grad_records_nothing_and_enable_grad_turns_it_back_on():
    x = _t([1.0, 2.0])
    with mm.no_grad():
        y = x * 2
        assert not mm.is_grad_enabled()
        with mm.enable_grad():
            z = x * 3
    assert mm.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad and not z.is_leaf
    z.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_backward_checks_the_shape_of_each_gradient():
    class BadShape(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, dout):
            return dout.sum(axis=0)  # wrong shape on purpose

    x = _t([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(RuntimeError, match="BadShape.backward returned a gradient of shape"):
        BadShape.apply(x).sum().backward()


def test_gradcheck_catches_a_wrong_backward():
    class WrongSquare(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, dout):
            (x,) = ctx.saved_tensors
            return dout * x  # should be 2 * x

    result = gradcheck(WrongSquare.apply, [_t([1.0, 2.0, -3.0])])
    assert not result.passed and result.max_rel_error > 0.1
    assert "FAILED" in result.report()


def test_unbroadcast_sums_back_to_each_shape(rng):
    from minimaskrcnn.function import unbroadcast

    g = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_allclose(unbroadcast(g, (4,)), g.sum(axis=(0, 1)))
    np.testing.assert_allclose(unbroadcast(g, ()), g.sum())
    assert unbroadcast(g, (2, 3, 4)) is g


# ------------------------------------------------------------------------------------ anomaly mode
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_anomaly_mode_names_the_op_and_the_line_that_made_the_nan():
    x = _t([1.0, 2.0, 3.0])
    with mm.detect_anomaly():
        h = x * 2 - 3  # [-1, 1, 3]: finite
        with pytest.raises(mm.AnomalyError) as info:
            bad = h.log()  # log(-1) = NaN: the line the error must point at
            bad.sum()
    err = info.value
    assert err.op == "Log"
    assert "test_engine.py" in err.where and "bad = h.log()" in err.where
    assert "Log.forward produced NaN/Inf" in str(err) and "its inputs were finite" in str(err)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_anomaly_mode_catches_a_nonfinite_gradient_in_backward():
    x = _t([0.0, 4.0])
    with mm.detect_anomaly():
        y = x.sqrt()  # fine forward (0, 2), but d sqrt / dx = inf at 0
        loss = (y * 3).sum()
        with pytest.raises(mm.AnomalyError) as info:
            loss.backward()
    assert info.value.op == "Sqrt"
    assert "y = x.sqrt()" in info.value.where


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_anomaly_mode_the_nan_just_propagates():
    x = _t([1.0, 2.0])
    out = (x - 1.5).log().sum()
    assert np.isnan(out.item())


def test_dim_is_the_axis_name_and_axis_its_alias(rng):
    x = Tensor(rng.standard_normal((2, 3, 4)))
    for method in ("sum", "mean", "max"):
        by_dim = getattr(x, method)(dim=1, keepdim=True).numpy()
        assert by_dim.shape == (2, 1, 4)
        np.testing.assert_array_equal(getattr(x, method)(axis=1, keepdims=True).numpy(), by_dim)
        np.testing.assert_array_equal(getattr(x, method)(1, True).numpy(), by_dim)  # torch's positional order
        np.testing.assert_array_equal(getattr(mm.ops, method)(x, dim=(0, 2)).numpy(),
                                      getattr(x, method)(axis=(0, 2)).numpy())
        with pytest.raises(TypeError, match="dim or its alias axis"):
            getattr(x, method)(dim=0, axis=0)
        with pytest.raises(TypeError, match="keepdim or its alias keepdims"):
            getattr(x, method)(0, keepdim=True, keepdims=True)
    np.testing.assert_array_equal(mm.cat([x, x], dim=2).numpy(), mm.cat([x, x], axis=2).numpy())
    assert mm.cat([x, x]).shape == (4, 3, 4) and mm.stack([x, x], dim=-1).shape == (2, 3, 4, 2)
    assert mm.gather(x, dim=2, idx=np.zeros((2, 3, 1), np.int64)).shape == (2, 3, 1)
    with pytest.raises(TypeError, match="dim or its alias axis"):
        mm.stack([x, x], dim=0, axis=0)


def test_zeros_and_ones():
    z, o = mm.zeros(2, 3), mm.ones((1, 2), dtype=np.float64, requires_grad=True)
    assert z.shape == (2, 3) and z.dtype == np.float32 and not z.numpy().any()
    assert o.shape == (1, 2) and o.dtype == np.float64 and o.requires_grad and o.numpy().all()


def test_gradcheck_report_shows_the_differences_that_atol_counts_as_zero(rng):
    """A correct backward passes with relative error 0 after atol; the report still shows what remained."""
    x, w = _t(rng.standard_normal((4, 3))), _t(rng.standard_normal((3, 5)))
    result = gradcheck(lambda a, b: (a @ b).relu(), [x, w], atol=1e-6)
    assert result.passed and result.max_rel_error == 0.0
    assert 0 < result.max_abs_error < 1e-6 and set(result.per_input_abs) == {0, 1}
    assert abs(result.analytic - result.numeric) == pytest.approx(result.max_abs_error)
    report = result.report()
    assert f"{result.max_abs_error:.2e}" in report and "largest difference" in report
