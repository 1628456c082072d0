"""ops/fused.py: each op-and-ReLU gives exactly the numbers of relu(op(...)), forward and every gradient,
and passes a float64 gradient check."""
import numpy as np
import pytest

import minimaskrcnn
import minimaskrcnn.nn.functional as F
from minimaskrcnn import Tensor, gradcheck


def _cases(rng):
    """(name, fused, unfused, input arrays): the inputs shift the op's output around 0 so that both
    sides of the ReLU are exercised."""
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    wt = rng.standard_normal((4, 3, 2, 2))
    bt = rng.standard_normal(6)
    xl = rng.standard_normal((7, 5))
    wl = rng.standard_normal((3, 5))
    bl = rng.standard_normal(3)
    gw, gb = rng.standard_normal(4), rng.standard_normal(4)
    y = rng.standard_normal((2, 4, 5, 6))
    conv = dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    convt = dict(stride=2, padding=0, output_padding=1, groups=2)
    return [
        ("conv2d", lambda *a: F.conv2d_relu(*a, **conv), lambda *a: F.relu(F.conv2d(*a, **conv)), [x, w, b]),
        ("conv2d no bias", lambda *a: F.conv2d_relu(*a, **conv), lambda *a: F.relu(F.conv2d(*a, **conv)), [x, w]),
        ("conv_transpose2d", lambda *a: F.conv_transpose2d_relu(*a, **convt),
         lambda *a: F.relu(F.conv_transpose2d(*a, **convt)), [x, wt, bt]),
        ("linear", F.linear_relu, lambda *a: F.relu(F.linear(*a)), [xl, wl, bl]),
        ("group_norm", lambda x, w, b: F.group_norm_relu(x, 2, w, b),
         lambda x, w, b: F.relu(F.group_norm(x, 2, w, b)), [x, gw, gb]),
        ("add", F.add_relu, lambda a, b: F.relu(a + b), [x, y]),
        ("add broadcast", F.add_relu, lambda a, b: F.relu(a + b), [x, gb.reshape(1, 4, 1, 1)]),
    ]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("index", range(7))
def test_fused_equals_op_then_relu(backend, index):
    rng = np.random.default_rng(0)
    name, fused, unfused, arrays = _cases(rng)[index]
    arrays = [a.astype(np.float32) for a in arrays]
    results = []
    with minimaskrcnn.use_backend(backend):
        for fn in (fused, unfused):
            inputs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
            out = fn(*inputs)
            dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
            out.backward(dout)
            results.append([out.numpy()] + [t.grad for t in inputs])
    assert (results[0][0] > 0).any() and (results[0][0] == 0).any(), name  # both sides of the ReLU
    for i, (a, b) in enumerate(zip(*results)):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: {'output' if i == 0 else f'gradient {i - 1}'}")


@pytest.mark.parametrize("index", range(7))
def test_fused_gradcheck(index):
    name, fused, _, arrays = _cases(np.random.default_rng(2))[index]
    with minimaskrcnn.use_backend("numpy"):
        inputs = [Tensor(a, requires_grad=True) for a in arrays]
        result = gradcheck(fused, inputs)
    assert result.max_rel_error < 1e-6, f"{name}: {result.report()}"


def test_group_norm_relu_needs_the_affine_weight():
    with pytest.raises(ValueError, match="weight"):
        F.group_norm_relu(Tensor(np.ones((1, 2, 3, 3))), 1, None)
