"""Losses (cross_entropy, smooth_l1_loss, binary_cross_entropy_with_logits) and log_softmax/softmax:
hand cases, float64 gradcheck, parity with torch, and stability at extreme logits."""
import functools
import math

import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.ops.loss import binary_cross_entropy_with_logits, cross_entropy, log_softmax, smooth_l1_loss, softmax

torch = pytest.importorskip("torch")
F = torch.nn.functional
REDUCTIONS = ["none", "mean", "sum"]


# These ops have no kernel: "numpy" and "numba" run the same array code; "cuda" runs it on CuPy
# arrays, which needs a GPU (under the CUDA simulator it would be the NumPy path a third time).
XP_BACKENDS = ["numpy", "numba"] + (["cuda"] if cupy_or_none() is not None else [])


@pytest.fixture(params=XP_BACKENDS)
def xp_backend(request):
    """Switch to the backend and return the function that puts an array where it computes."""
    with use_backend(request.param):
        yield cupy_or_none().asarray if request.param == "cuda" else np.array


def _assert_close(mine, ref, name, rtol=1e-10):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    mine = to_numpy(mine)
    assert mine.shape == ref.shape, name
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=name)


def _compare(ours, theirs, differentiable, on_device, rng, constants=()):
    """Forward/backward of ``ours`` and ``theirs`` on the same float64 inputs; compare every gradient."""
    ts = [torch.tensor(a, requires_grad=True) for a in differentiable]
    out_t = theirs(*ts)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(dout))
    xs = [Tensor(on_device(a), requires_grad=True) for a in differentiable]
    out = ours(*xs)
    out.backward(on_device(dout))
    _assert_close(out.data, out_t, "loss")
    for i, (x, t) in enumerate(zip(xs, ts)):
        _assert_close(x.grad, t.grad, f"grad of input {i}")


def _gradcheck(fn, arrays):
    result = gradcheck(fn, [Tensor(a, requires_grad=True) for a in arrays])
    assert result.passed, result.report()


# ---------------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_of_uniform_logits_is_log_num_classes():
    loss = cross_entropy(Tensor(np.zeros((3, 5))), np.array([0, 4, 2]))
    assert loss.item() == pytest.approx(math.log(5), rel=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_equals_torch(xp_backend, reduction, weighted, rng):
    K, L = 9, 4
    logits = rng.standard_normal((K, L)) * 3
    target = rng.integers(0, L, K)
    target[[2, 5]] = -100  # ignored rows
    weight = rng.uniform(0.2, 2.0, L) if weighted else None
    t_kw = {"weight": torch.tensor(weight)} if weighted else {}
    on = xp_backend
    _compare(lambda x: cross_entropy(x, on(target), weight=on(weight) if weighted else None, reduction=reduction),
             lambda x: F.cross_entropy(x, torch.tensor(target), reduction=reduction, **t_kw), [logits], on, rng)


def test_cross_entropy_custom_ignore_index_and_k_dimensional_input(rng):
    logits, target = rng.standard_normal((2, 3, 4, 5)), rng.integers(0, 3, (2, 4, 5))
    target[0, 1] = 7
    for reduction in REDUCTIONS:
        kw = {"ignore_index": 7, "reduction": reduction}
        _compare(lambda x, kw=kw: cross_entropy(x, target, **kw),
                 lambda x, kw=kw: F.cross_entropy(x, torch.tensor(target), **kw),
                 [logits], np.array, rng)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = Tensor(np.array([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 799.0]]), requires_grad=True)
    loss = cross_entropy(logits, np.array([1, 2]), reduction="none")
    ref = F.cross_entropy(torch.tensor(logits.data), torch.tensor([1, 2]), reduction="none").numpy()
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-14)  # 2000 and 1 + log(1 + e^-1)
    loss.sum().backward()
    assert np.all(np.isfinite(logits.grad))


def test_cross_entropy_gradcheck(rng):
    target = np.array([0, 3, 3, -100, 1])
    weight = rng.uniform(0.5, 2, 4)
    for reduction in REDUCTIONS:
        _gradcheck(lambda x, reduction=reduction: cross_entropy(x, target, weight=weight, reduction=reduction),
                   [rng.standard_normal((5, 4))])


def test_cross_entropy_all_ignored_mean_is_nan_like_torch():
    target = np.array([-100, -100])
    with np.errstate(invalid="ignore"):
        ours = cross_entropy(Tensor(np.zeros((2, 3))), target).item()
    assert math.isnan(ours)
    assert math.isnan(F.cross_entropy(torch.zeros(2, 3, dtype=torch.float64), torch.tensor(target)).item())


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(IndexError):
        cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
    with pytest.raises(TypeError):
        cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 1]), reduction="avg")


# ------------------------------------------------------------------------------------ smooth L1
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0, 2.5])
def test_smooth_l1_equals_torch(xp_backend, reduction, beta, rng):
    pred, target = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    _compare(lambda a, b: smooth_l1_loss(a, b, reduction=reduction, beta=beta),
             lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=beta), [pred, target], xp_backend, rng)


def test_smooth_l1_by_hand():
    loss = smooth_l1_loss(Tensor(np.array([0.5, 3.0, -2.0])), Tensor(np.zeros(3)), reduction="none", beta=1.0)
    np.testing.assert_allclose(loss.numpy(), [0.125, 2.5, 1.5])  # 0.5 d^2 / beta, |d| - beta / 2


def test_smooth_l1_gradcheck(rng):
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    for reduction in REDUCTIONS:
        _gradcheck(lambda x, y, reduction=reduction: smooth_l1_loss(x, y, reduction=reduction, beta=0.5), [a, b])


def test_smooth_l1_broadcasts_the_target(rng):
    _compare(lambda a, b: smooth_l1_loss(a, b, beta=0.3), lambda a, b: F.smooth_l1_loss(a, b.expand(5, 4), beta=0.3),
             [rng.standard_normal((5, 4)), rng.standard_normal((1, 4))], np.array, rng)


# ---------------------------------------------------------------------------- sigmoid BCE (mask)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extra", ["none", "weight", "pos_weight"])
def test_bce_with_logits_equals_torch(xp_backend, reduction, extra, rng):
    x, t = rng.standard_normal((3, 5, 5)) * 3, rng.random((3, 5, 5))
    t[0] = t[0] > 0.5  # hard 0/1 targets as the mask loss has, plus soft ones
    if extra == "weight":
        kw = {"weight": rng.random((5, 5))}
    elif extra == "pos_weight":
        kw = {"pos_weight": rng.uniform(0.5, 3, 5)}
    else:
        kw = {}
    ours_kw = {k: xp_backend(v) for k, v in kw.items()}
    torch_kw = {k: torch.tensor(v) for k, v in kw.items()}
    _compare(lambda a, b: binary_cross_entropy_with_logits(a, b, reduction=reduction, **ours_kw),
             lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction, **torch_kw),
             [x, t], xp_backend, rng)


def test_bce_with_logits_is_exact_and_finite_at_extreme_logits():
    x = Tensor(np.array([1000.0, -1000.0, 1000.0, -1000.0, 50.0, 0.0]), requires_grad=True)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    loss = binary_cross_entropy_with_logits(x, Tensor(t), reduction="none")
    # -log(sigmoid(x)) for t = 1, -log(1 - sigmoid(x)) for t = 0, computed exactly
    np.testing.assert_allclose(
        loss.numpy(), [0.0, 0.0, 1000.0, 1000.0, math.exp(-50.0), math.log(2.0)], rtol=1e-14, atol=0
    )
    loss.sum().backward()
    np.testing.assert_allclose(
        x.grad, [0.0, 0.0, 1.0, -1.0, -math.exp(-50.0) / (1 + math.exp(-50.0)), -0.5], rtol=1e-14, atol=0
    )


def test_bce_with_logits_gradcheck(rng):
    x, t, w, pw = rng.standard_normal((3, 4)) * 2, rng.random((3, 4)), rng.random((3, 4)), rng.uniform(0.5, 2, 4)
    for reduction in REDUCTIONS:
        _gradcheck(functools.partial(binary_cross_entropy_with_logits, weight=w, reduction=reduction), [x, t])
        _gradcheck(functools.partial(binary_cross_entropy_with_logits, pos_weight=pw, reduction=reduction), [x, t])


def test_bce_with_logits_needs_matching_shapes():
    with pytest.raises(ValueError, match="same as input size"):
        binary_cross_entropy_with_logits(Tensor(np.zeros((2, 3))), Tensor(np.zeros((3,))))


# ----------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_and_log_softmax_equal_torch(dim, rng):
    x = rng.standard_normal((3, 4, 2)) * 4
    _compare(lambda a: softmax(a, dim), lambda a: F.softmax(a, dim), [x], np.array, rng)
    _compare(lambda a: log_softmax(a, dim), lambda a: F.log_softmax(a, dim), [x], np.array, rng)
    _gradcheck(lambda a: softmax(a, dim), [x])
    _gradcheck(lambda a: log_softmax(a, dim), [x])


def test_softmax_of_huge_logits_is_finite():
    p = softmax(Tensor(np.array([[1000.0, 1000.0, -1000.0]])), dim=1).numpy()
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])
