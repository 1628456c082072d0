"""The optimizer's kernels: SGD's update in Numba bit for bit against the array code; the sum of squares."""
import itertools

import numpy as np
import pytest
from minimaskrcnn.kernels.optim import cpu, reference

import minimaskrcnn
import minimaskrcnn.nn as nn
from minimaskrcnn.optim import SGD, grad_norm

HYPER = [  # lr, momentum, dampening, weight_decay, nesterov, maximize
    (0.1, 0.0, 0.0, 0.0, False, False),
    (0.02, 0.9, 0.0, 1e-4, False, False),
    (0.02, 0.8, 0.3, 1e-3, False, False),
    (0.03, 0.9, 0.0, 1e-4, True, False),
    (0.01, 0.5, 0.0, 0.0, False, True),
    (0.07, 0.0, 0.0, 5e-2, False, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hyper", HYPER)
def test_numba_update_is_bit_identical_to_the_array_code(rng, dtype, hyper):
    shape = (7, 3, 5)
    p0 = rng.standard_normal(shape).astype(dtype)
    p_ref, p_cpu = p0.copy(), p0.copy()
    buf_ref = buf_cpu = None
    for step in range(4):  # the first step creates the buffer, the later ones update it
        grad = (rng.standard_normal(shape) * 10.0 ** (step - 2)).astype(dtype)
        buf_ref = reference.sgd_update_(p_ref, grad, buf_ref, *hyper)
        buf_cpu = cpu.sgd_update_(p_cpu, grad, buf_cpu, *hyper)
        assert p_cpu.dtype == dtype and np.array_equal(p_cpu, p_ref), f"step {step}"
        if hyper[1] == 0:
            assert buf_ref is None and buf_cpu is None
        else:
            assert buf_cpu.dtype == dtype and np.array_equal(buf_cpu, buf_ref)
    assert not np.array_equal(p_cpu, p0)


def test_update_by_hand():
    """p = 1, grad = 2, weight decay 0.5, momentum 0.9, lr 0.1: buf = 2.5 then 0.9*2.5 + g."""
    p, grad = np.ones(3), np.full(3, 2.0)
    for k in (reference, cpu):
        q = p.copy()
        buf = k.sgd_update_(q, grad, None, 0.1, 0.9, 0.0, 0.5, False, False)
        np.testing.assert_allclose(buf, 2.5)
        np.testing.assert_allclose(q, 1 - 0.25)
        buf = k.sgd_update_(q, grad, buf, 0.1, 0.9, 0.0, 0.5, False, False)
        np.testing.assert_allclose(buf, 0.9 * 2.5 + 2 + 0.5 * 0.75)
        np.testing.assert_allclose(q, 0.75 - 0.1 * buf)


def test_non_contiguous_arrays_are_updated_like_contiguous_ones(rng):
    base = rng.standard_normal((6, 8))
    grad = rng.standard_normal((6, 8))[:, ::2]  # a strided view: the array code's path
    p_view, p_copy = base.copy()[:, ::2], np.ascontiguousarray(base[:, ::2])
    for p in (p_view, p_copy):
        buf = cpu.sgd_update_(p, grad, None, 0.1, 0.9, 0.0, 1e-3, False, False)
        cpu.sgd_update_(p, grad, buf, 0.1, 0.9, 0.0, 1e-3, False, False)
    assert np.array_equal(p_view, p_copy)


@pytest.mark.parametrize("k", [reference, cpu], ids=["reference", "cpu"])
def test_update_argument_errors(k):
    p = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="grad has shape"):
        k.sgd_update_(p, np.zeros((3, 2), np.float32), None, 0.1, 0.9, 0.0, 0.0, False, False)
    with pytest.raises(TypeError, match="momentum_buffer is float64"):
        k.sgd_update_(p, np.zeros((2, 3), np.float32), np.zeros((2, 3)), 0.1, 0.9, 0.0, 0.0, False, False)
    with pytest.raises(TypeError, match="param must be float32 or float64"):
        k.sgd_update_(np.zeros(3, np.int64), np.zeros(3, np.int64), None, 0.1, 0.0, 0.0, 0.0, False, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_squares(rng, dtype):
    g = (rng.standard_normal((50, 40)) * 3).astype(dtype)
    expected = float(np.sum(g.astype(np.float64) ** 2))
    for k in (reference, cpu):
        assert float(k.sum_of_squares(g)) == pytest.approx(expected, rel=1e-13)
    assert cpu.sum_of_squares(g[:, ::3]) == pytest.approx(float(np.sum(g[:, ::3].astype(np.float64) ** 2)))


def test_sum_of_squares_does_not_overflow_float32_and_passes_nan_and_inf():
    big = np.full(4, 1e20, np.float32)  # 1e40 overflows float32, not float64
    for k in (reference, cpu):
        assert float(k.sum_of_squares(big)) == pytest.approx(4 * float(np.float32(1e20)) ** 2)
        for bad, check in ((np.nan, np.isnan), (np.inf, np.isinf)):
            g = np.ones(5, np.float32)
            g[2] = bad
            assert check(float(k.sum_of_squares(g)))
        with pytest.raises(TypeError, match="grad must be float32 or float64"):
            k.sum_of_squares(np.ones(3, np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_trajectory_is_the_same_on_both_cpu_backends(rng, dtype):
    """SGD (two groups, weight decay and momentum) on "numba" and "numpy": the same bits after 5 steps."""
    arrays = [rng.standard_normal(s).astype(dtype) for s in ((4, 3), (5,), (2, 3, 3))]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in arrays] for _ in range(5)]
    results, norms = {}, {}
    for backend in ("numpy", "numba"):
        with minimaskrcnn.use_backend(backend):
            params = [nn.Parameter(a.copy()) for a in arrays]
            opt = SGD([dict(params=params[:2]), dict(params=params[2:], weight_decay=0.0)], lr=0.02,
                      momentum=0.9, weight_decay=1e-4)
            norms[backend] = []
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = g.copy()
                norms[backend].append(grad_norm(params))
                opt.step()
            results[backend] = [p.data for p in params]
    for a, b in itertools.zip_longest(results["numpy"], results["numba"]):
        assert a.dtype == dtype and np.array_equal(a, b)
    np.testing.assert_allclose(norms["numba"], norms["numpy"], rtol=1e-12)


@pytest.mark.parametrize("k", [reference, cpu], ids=["reference", "cpu"])
def test_numpy_scalar_hyper_parameters_act_as_python_floats(rng, k):
    """lr and weight decay as NumPy float64 scalars (a schedule computed with NumPy) on a float32
    parameter: the same bits as Python floats, the momentum buffer stays float32 (NumPy would promote
    the array code to float64, and the next step would refuse the float64 buffer)."""
    p0 = rng.standard_normal((4, 5)).astype(np.float32)
    grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
    results = []
    for scalar in (float, np.float64):
        p, buf = p0.copy(), None
        for g in grads:
            buf = k.sgd_update_(p, g, buf, scalar(0.1), scalar(0.9), scalar(0.1), scalar(1e-2), False, False)
            assert buf.dtype == np.float32
        results.append((p, buf))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sgd_and_grad_norm_run_the_numba_kernels_on_the_numba_backend_only(monkeypatch, backend):
    """The "numba" backend's SGD.step and grad_norm go through cpu.py (the two backends giving equal
    numbers would not show a step that never reaches the kernel); "numpy" runs the array code."""
    calls = []
    for name in ("sgd_update_", "sum_of_squares"):
        original = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))
    p = nn.Parameter(np.ones((2, 3), np.float32))
    p.grad = np.full((2, 3), 0.5, np.float32)
    with minimaskrcnn.use_backend(backend):
        norm = grad_norm([p])
        SGD([p], lr=0.1, momentum=0.9).step()
    assert norm == pytest.approx(0.5 * 6 ** 0.5) and np.allclose(p.data, 0.95)
    assert calls == (["sum_of_squares", "sgd_update_"] if backend == "numba" else [])
