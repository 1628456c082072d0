"""Every layer against its torch.nn twin: same state_dict names, and after loading torch's state_dict,
the same outputs, input gradients, parameter gradients and buffer updates (float64, to 1e-10);
plus a float64 gradcheck of each layer."""
import numpy as np
import pytest

import minimaskrcnn.nn as nn
from minimaskrcnn import Tensor, gradcheck, use_backend
from minimaskrcnn.backend import cupy_or_none, to_numpy

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
tnn = torch.nn

# name -> (our layer, torch's layer, input shape); the constructors take the same arguments
LAYERS = {
    "conv3x3_s2": (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
        lambda: tnn.Conv2d(3, 4, 3, stride=2, padding=1),
        (2, 3, 7, 6),
    ),
    "conv_groups_dilation": (
        lambda: nn.Conv2d(4, 6, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2, bias=False),
        lambda: tnn.Conv2d(4, 6, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2, bias=False),
        (1, 4, 6, 5),
    ),
    "conv1x1": (lambda: nn.Conv2d(4, 2, 1), lambda: tnn.Conv2d(4, 2, 1), (2, 4, 3, 3)),
    "conv_transpose_mask_head": (
        lambda: nn.ConvTranspose2d(4, 3, 2, stride=2),
        lambda: tnn.ConvTranspose2d(4, 3, 2, stride=2),
        (2, 4, 3, 3),
    ),
    "conv_transpose_general": (
        lambda: nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        lambda: tnn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        (1, 2, 3, 4),
    ),
    "linear": (lambda: nn.Linear(6, 4), lambda: tnn.Linear(6, 4), (5, 6)),
    "linear_3d_no_bias": (lambda: nn.Linear(5, 3, bias=False), lambda: tnn.Linear(5, 3, bias=False), (2, 3, 5)),
    "batch_norm": (lambda: nn.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3), (4, 3, 3, 5)),
    "batch_norm_cumulative": (
        lambda: nn.BatchNorm2d(3, momentum=None),
        lambda: tnn.BatchNorm2d(3, momentum=None),
        (3, 3, 2, 2),
    ),
    "batch_norm_no_affine": (
        lambda: nn.BatchNorm2d(2, affine=False),
        lambda: tnn.BatchNorm2d(2, affine=False),
        (3, 2, 2, 3),
    ),
    "batch_norm_no_stats": (
        lambda: nn.BatchNorm2d(2, track_running_stats=False),
        lambda: tnn.BatchNorm2d(2, track_running_stats=False),
        (3, 2, 2, 3),
    ),
    "frozen_batch_norm": (
        lambda: nn.FrozenBatchNorm2d(3),
        lambda: torchvision.ops.misc.FrozenBatchNorm2d(3),
        (2, 3, 4, 4),
    ),
    "group_norm": (lambda: nn.GroupNorm(2, 4), lambda: tnn.GroupNorm(2, 4), (2, 4, 3, 3)),
    "max_pool_stem": (lambda: nn.MaxPool2d(3, 2, 1), lambda: tnn.MaxPool2d(3, 2, 1), (1, 2, 7, 8)),
    "max_pool_2": (lambda: nn.MaxPool2d(2), lambda: tnn.MaxPool2d(2), (2, 2, 4, 6)),
    "relu": (lambda: nn.ReLU(), lambda: tnn.ReLU(), (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), lambda: tnn.Sigmoid(), (3, 4)),
    "flatten": (lambda: nn.Flatten(), lambda: tnn.Flatten(), (2, 3, 2, 2)),
    "identity": (lambda: nn.Identity(7, foo=1), lambda: tnn.Identity(), (2, 3)),
}
# layers whose ops run a kernel (im2col, max_pool): also run on "cuda" (simulator in CI) on tiny inputs
KERNEL_LAYERS = {"conv3x3_s2": (1, 3, 4, 4), "conv_transpose_mask_head": (1, 4, 2, 2), "max_pool_stem": (1, 2, 5, 5)}


def _randomised_torch_layer(name, seed=0):
    torch.manual_seed(seed)
    layer = LAYERS[name][1]().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
        for bname, b in layer.named_buffers():
            if bname.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif b.dtype.is_floating_point:
                b.normal_()
    return layer


def _on_device(backend):
    cp = cupy_or_none() if backend == "cuda" else None
    return (cp.asarray, "cuda") if cp is not None else (np.array, "cpu")


def _assert_close(mine, ref, name, rtol=1e-10):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    mine = to_numpy(mine)
    assert mine.shape == ref.shape, name
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=rtol * max(np.abs(ref).max(initial=0), 1e-300), err_msg=name)


def _compare(name, backend, training, shape=None, steps=2):
    theirs = _randomised_torch_layer(name)
    theirs.train(training)
    ours = LAYERS[name][0]().double()
    ours.load_state_dict(theirs.state_dict())
    ours.train(training)
    on_device, device = _on_device(backend)
    ours.to_device(device)
    rng = np.random.default_rng(1)
    shape = shape or LAYERS[name][2]
    for step in range(steps):  # a second step checks the updated running statistics too
        x = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        out_t = theirs(xt)
        dout = rng.standard_normal(tuple(out_t.shape))
        out_t.backward(torch.from_numpy(dout))
        xs = Tensor(on_device(x), requires_grad=True)
        with use_backend(backend):
            out = ours(xs)
            out.backward(on_device(dout))
        _assert_close(out.data, out_t, f"{name} step {step}: output")
        _assert_close(xs.grad, xt.grad, f"{name} step {step}: input gradient")
        torch_params = dict(theirs.named_parameters())
        assert [n for n, _ in ours.named_parameters()] == list(torch_params)
        for pname, p in ours.named_parameters():
            _assert_close(p.grad, torch_params[pname].grad, f"{name} step {step}: gradient of {pname}")
            p.grad, torch_params[pname].grad = None, None
        ours_state = ours.state_dict()
        for key, value in theirs.state_dict().items():
            _assert_close(ours_state[key], value, f"{name} step {step}: {key}")


def _layer_params():
    params = []
    for name in LAYERS:
        for backend in ("numpy", "numba"):
            for training in (True, False):
                mode = "train" if training else "eval"
                params.append(pytest.param(name, backend, None, training, id=f"{name}-{backend}-{mode}"))
    for name, shape in KERNEL_LAYERS.items():  # train and eval compute the same for these: one run
        params.append(pytest.param(name, "cuda", shape, True, id=f"{name}-cuda", marks=pytest.mark.cuda))
    return params


@pytest.mark.parametrize("name,backend,shape,training", _layer_params())
def test_layer_equals_torch_after_loading_its_state_dict(name, backend, shape, training):
    _compare(name, backend, training, shape, steps=1 if backend == "cuda" else 2)


@pytest.mark.parametrize("name", list(LAYERS))
def test_state_dict_names_equal_torch(name):
    ours, theirs = LAYERS[name][0](), LAYERS[name][1]()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for k in ours_sd:
        assert ours_sd[k].shape == tuple(theirs_sd[k].shape), k
        assert str(ours_sd[k].dtype) == str(theirs_sd[k].dtype).replace("torch.", ""), k


@pytest.mark.parametrize("name", [n for n in LAYERS if n not in ("identity", "flatten")])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_gradcheck(name, training):
    ours = LAYERS[name][0]().double()
    ours.load_state_dict(_randomised_torch_layer(name).state_dict())
    ours.train(training)
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal(LAYERS[name][2]), requires_grad=True)
    params = list(ours.parameters())
    result = gradcheck(lambda x_, *ps: ours(x_), [x, *params], atol=1e-8)
    assert result.passed, result.report()


def test_a_small_cnn_loaded_from_torch_gives_identical_outputs():
    tmodel = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 4, 3, stride=2, padding=1), tnn.GroupNorm(2, 4), tnn.ReLU(), tnn.Flatten(), tnn.Linear(16, 5),
    )
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        tmodel[1].running_mean.normal_()
        tmodel[1].running_var.uniform_(0.5, 2)
    model.load_state_dict(tmodel.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for train in (False, True):
        tmodel.train(train)
        model.train(train)
        out_t = tmodel(torch.from_numpy(x)).detach().numpy()
        out = model(Tensor(x)).numpy()
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, out_t, rtol=1e-4, atol=1e-5)  # float32: rounding only
    np.testing.assert_allclose(
        model.state_dict()["1.running_var"], tmodel.state_dict()["1.running_var"].numpy(), rtol=1e-5
    )
