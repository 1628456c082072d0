"""roi_align(mode="max") and roi_warp as differentiable ops: float64 gradcheck (the max of bilinear
samples is piecewise linear in the features), parity with torchvision on every backend through
Tensors, the layers (nn.RoIAlign(mode=...), nn.RoIWarp), the modes' errors and empty RoIs."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import to_numpy
from minimaskrcnn.nn import RoIAlign, RoIWarp
from minimaskrcnn.ops import roi_align, roi_warp

BOXES = np.array([[0, 1.3, 0.7, 20.1, 15.2], [1, -3.0, -2.0, 8.0, 9.0], [1, 10.0, 4.0, 33.0, 30.0],
                  [0, 30.0, 20.0, 40.0, 26.0]])


def _inputs(rng, dtype=np.float64):
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    return x, BOXES.astype(dtype)


@pytest.mark.parametrize("op,kwargs", [(roi_align, dict(aligned=False, mode="max")),
                                       (roi_align, dict(aligned=True, mode="max")),
                                       (roi_warp, dict(mode="avg")), (roi_warp, dict(mode="max"))])
def test_gradcheck(op, kwargs):
    rng = np.random.default_rng(0)
    x, rois = _inputs(rng)
    xt = Tensor(x, requires_grad=True)
    result = gradcheck(lambda t: op(t, rois, (2, 3), 0.25, 2, **kwargs), [xt])
    assert result.passed, result.report()


def _torch_reference(torch, torchvision, xt, rois, kind, scale, PH, PW, g):
    """torchvision's RoIAlign at one sample per finer bin, then max_pool2d (max); on rounded boxes (warp)."""
    boxes = torch.tensor(rois)
    if kind.startswith("warp"):
        scaled = boxes[:, 1:] * scale
        boxes = torch.cat([boxes[:, :1], torch.sign(scaled) * torch.floor(torch.abs(scaled) + 0.5)], dim=1)
        scale = 1.0
    if kind.endswith("max"):
        fine = torchvision.ops.roi_align(xt, boxes, (PH * g, PW * g), scale, 1, False)
        return torch.nn.functional.max_pool2d(fine, g)
    return torchvision.ops.roi_align(xt, boxes, (PH, PW), scale, g, False)


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["align_max", "warp_avg", "warp_max"])
def test_parity_with_torchvision_on_every_backend(backend, kind):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(1)
    x, rois = _inputs(rng, np.float32)
    scale, PH, PW, g = 1 / 4, 3, 2, 2
    xt = torch.tensor(x, requires_grad=True)
    expected = _torch_reference(torch, torchvision, xt, rois, kind, scale, PH, PW, g)
    dout = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    expected.backward(torch.tensor(dout))
    ours = Tensor(x, requires_grad=True)
    mode = kind.split("_")[1]
    if kind.startswith("align"):
        out = roi_align(ours, rois, (PH, PW), scale, g, mode=mode)
    else:
        out = roi_warp(ours, rois, (PH, PW), scale, g, mode=mode)
    out.backward(dout)
    np.testing.assert_allclose(to_numpy(out.data), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(ours.grad), xt.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_layers_modes_and_errors():
    rng = np.random.default_rng(2)
    x, rois = _inputs(rng)
    np.testing.assert_array_equal(RoIAlign(3, 0.25, 2, mode="max")(Tensor(x), rois).numpy(),
                                  roi_align(x, rois, 3, 0.25, 2, mode="max").numpy())
    np.testing.assert_array_equal(RoIWarp(3, 0.25, 2, mode="max")(Tensor(x), rois).numpy(),
                                  roi_warp(x, rois, 3, 0.25, 2, mode="max").numpy())
    assert "mode='max'" in repr(RoIWarp(3, 0.25, 2, mode="max"))
    # the max is never below the average of the same samples
    assert (roi_align(x, rois, 3, 0.25, 2, mode="max").numpy() >= roi_align(x, rois, 3, 0.25, 2).numpy() - 1e-12).all()
    with pytest.raises(ValueError, match="mode"):
        roi_align(x, rois, 3, 0.25, 2, mode="sum")
    with pytest.raises(ValueError, match="mode"):
        roi_warp(x, rois, 3, 0.25, 2, mode="median")
    with use_backend("numba"):
        empty = roi_warp(Tensor(x, requires_grad=True), np.zeros((0, 5)), 3, 0.25, 2, mode="max")
        assert empty.shape == (0, 3, 3, 3)
