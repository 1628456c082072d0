"""batch_norm, frozen_batch_norm, group_norm: float64 gradcheck and parity with torch/torchvision."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy
from minimaskrcnn.ops.norm import batch_norm, frozen_batch_norm, group_norm

torch = pytest.importorskip("torch")


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
    np.testing.assert_allclose(to_numpy(mine), ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=name)


def _run(ours, theirs, arrays, on_device, rng):
    """Forward and backward through both libraries; returns ours and torch's tensors, in order."""
    ts = [torch.tensor(a, requires_grad=True) if a is not None else None for a in arrays]
    out_t = theirs(*ts)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(dout))
    xs = [Tensor(on_device(a), requires_grad=True) if a is not None else None for a in arrays]
    out = ours(*xs)
    out.backward(on_device(dout))
    _assert_close(out.data, out_t, "output")
    for i, (x, t) in enumerate(zip(xs, ts)):
        if x is not None:
            _assert_close(x.grad, t.grad, f"grad of input {i}")
    return xs, ts


# ------------------------------------------------------------------------------------ batch norm
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5, 3, 3), (6, 4)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_equals_torch_and_updates_running_stats(xp_backend, shape, training, affine, rng):
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    rm_ours, rv_ours = Tensor(xp_backend(rm)), Tensor(xp_backend(rv))
    _run(lambda x_, w_, b_: batch_norm(x_, rm_ours, rv_ours, w_, b_, training, 0.3, 1e-4),
         lambda x_, w_, b_: torch.nn.functional.batch_norm(x_, rm_t, rv_t, w_, b_, training, 0.3, 1e-4),
         [x, w, b], xp_backend, rng)
    _assert_close(rm_ours.data, rm_t, "running_mean")
    _assert_close(rv_ours.data, rv_t, "running_var (updated with the unbiased variance)")
    if not training:
        np.testing.assert_array_equal(to_numpy(rm_ours.data), rm)  # eval never touches them


def test_batch_norm_training_by_hand():
    x = Tensor(np.array([[1.0], [3.0]]))  # one channel, batch of 2: mean 2, biased var 1, unbiased var 2
    rm, rv = Tensor(np.array([0.0])), Tensor(np.array([1.0]))
    y = batch_norm(x, rm, rv, training=True, momentum=0.5, eps=0.0)
    np.testing.assert_allclose(y.numpy(), [[-1.0], [1.0]])
    np.testing.assert_allclose(rm.numpy(), [1.0])  # 0.5 * 0 + 0.5 * 2
    np.testing.assert_allclose(rv.numpy(), [1.5])  # 0.5 * 1 + 0.5 * 2


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (4, 3)])
def test_batch_norm_gradcheck(training, shape, rng):
    C = shape[1]
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    w, b = Tensor(rng.standard_normal(C), requires_grad=True), Tensor(rng.standard_normal(C), requires_grad=True)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    # fresh running stats each call, so that every evaluation sees the same ones. In training each
    # channel's dx sums to 0, so a few elements are ~1e-7, where finite differences carry ~1e-9 of
    # rounding noise: compare those in absolute terms (atol) rather than relative ones.
    result = gradcheck(lambda x_, w_, b_: batch_norm(x_, Tensor(rm.copy()), Tensor(rv.copy()), w_, b_, training),
                       [x, w, b], atol=1e-8)
    assert result.passed, result.report()


def test_batch_norm_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(Tensor(np.ones((1, 3, 1, 1))), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean"):
        batch_norm(Tensor(np.ones((2, 3))), None, None, training=False)


def test_batch_norm_keeps_float32(rng):
    x = Tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True)
    rm, rv = Tensor(np.zeros(3, np.float32)), Tensor(np.ones(3, np.float32))
    y = batch_norm(x, rm, rv, Tensor(np.ones(3, np.float32)), Tensor(np.zeros(3, np.float32)), training=True)
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32 and rm.dtype == np.float32


# ----------------------------------------------------------------------------- frozen batch norm
def test_frozen_batch_norm_equals_torchvision(xp_backend, rng):
    torchvision = pytest.importorskip("torchvision")
    C = 4
    frozen = torchvision.ops.misc.FrozenBatchNorm2d(C).double()
    stats = {"weight": rng.standard_normal(C), "bias": rng.standard_normal(C),
             "running_mean": rng.standard_normal(C), "running_var": rng.uniform(0.1, 2, C)}
    for k, v in stats.items():
        getattr(frozen, k).copy_(torch.tensor(v))
    assert frozen.eps == 1e-5  # torchvision's default, which ours shares
    x = rng.standard_normal((2, C, 5, 3))
    s = {k: Tensor(xp_backend(v)) for k, v in stats.items()}
    _run(lambda x_: frozen_batch_norm(x_, s["weight"], s["bias"], s["running_mean"], s["running_var"]),
         frozen, [x], xp_backend, rng)


def test_frozen_batch_norm_gradcheck_and_no_gradient_to_its_buffers(rng):
    C = 3
    stats = [Tensor(rng.standard_normal(C), requires_grad=True) for _ in range(3)]
    stats.append(Tensor(rng.uniform(0.5, 2, C), requires_grad=True))
    x = Tensor(rng.standard_normal((2, C, 3, 2)), requires_grad=True)
    result = gradcheck(lambda x_: frozen_batch_norm(x_, *stats), [x])
    assert result.passed, result.report()
    frozen_batch_norm(x, *stats).sum().backward()
    assert all(s.grad is None for s in stats)


# ------------------------------------------------------------------------------------ group norm
@pytest.mark.parametrize("shape,groups", [((2, 6, 4, 5), 3), ((3, 4, 3, 3), 1), ((2, 4, 3, 2), 4), ((2, 6, 7), 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_equals_torch(xp_backend, shape, groups, affine, rng):
    C = shape[1]
    x = rng.standard_normal(shape) * 3 - 1
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    _run(lambda x_, w_, b_: group_norm(x_, groups, w_, b_, eps=1e-5),
         lambda x_, w_, b_: torch.nn.functional.group_norm(x_, groups, w_, b_, eps=1e-5), [x, w, b], xp_backend, rng)


@pytest.mark.parametrize("shape,groups", [((2, 4, 3, 2), 2), ((1, 6, 2, 2), 3)])
def test_group_norm_gradcheck(shape, groups, rng):
    C = shape[1]
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    w, b = Tensor(rng.standard_normal(C), requires_grad=True), Tensor(rng.standard_normal(C), requires_grad=True)
    result = gradcheck(lambda x_, w_, b_: group_norm(x_, groups, w_, b_), [x, w, b])
    assert result.passed, result.report()


def test_group_norm_needs_divisible_channels():
    with pytest.raises(ValueError, match="do not split"):
        group_norm(Tensor(np.ones((1, 5, 2, 2))), 2)


def test_group_norm_normalises_each_group(rng):
    y = group_norm(Tensor(rng.standard_normal((2, 6, 4, 4)) * 5 + 3), 3, eps=0.0).numpy().reshape(2, 3, -1)
    np.testing.assert_allclose(y.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=2), 1, rtol=1e-12)

