"""Module bookkeeping: registration, names, state_dict/load_state_dict (against torch's names), modes,
dtype/device conversion, containers and minimaskrcnn.nn.init."""
import math

import numpy as np
import pytest

import minimaskrcnn.nn as nn
from minimaskrcnn import Tensor
from minimaskrcnn.backend import cupy_or_none
from minimaskrcnn.nn import init

torch = pytest.importorskip("torch")


class Net(nn.Module):
    """Every container and layer kind, nested, plus own buffers (persistent and not)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList(
            [nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Sequential(nn.Identity(), nn.ConvTranspose2d(4, 2, 2, 2))]
        )
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "box": nn.Linear(4, 8)})
        self.frozen = nn.FrozenBatchNorm2d(4)
        self.register_buffer("scale", np.ones(2, np.float32))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)
        self.gain = nn.Parameter(np.ones(1, np.float32))  # own parameter after children: still listed first


def _torch_net():
    import torchvision

    tnn = torch.nn

    class TorchNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(3, 4, 3, bias=False), tnn.BatchNorm2d(4), tnn.ReLU())
            self.blocks = tnn.ModuleList([
                tnn.Conv2d(4, 4, 1),
                tnn.GroupNorm(2, 4),
                tnn.Sequential(tnn.Identity(), tnn.ConvTranspose2d(4, 2, 2, 2)),
            ])
            self.heads = tnn.ModuleDict({"cls": tnn.Linear(4, 3), "box": tnn.Linear(4, 8)})
            self.frozen = torchvision.ops.misc.FrozenBatchNorm2d(4)
            self.register_buffer("scale", torch.ones(2))
            self.register_buffer("scratch", torch.zeros(2), persistent=False)
            self.gain = tnn.Parameter(torch.ones(1))

    return TorchNet()


# ---------------------------------------------------------------------------------- names
def test_state_dict_keys_order_and_shapes_equal_torch():
    pytest.importorskip("torchvision")
    ours, theirs = Net().state_dict(), _torch_net().state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        assert ours[k].shape == tuple(theirs[k].shape), k
    assert ours["stem.1.num_batches_tracked"].dtype == np.int64
    assert "scratch" not in ours  # non-persistent


def test_named_parameters_and_buffers_equal_torch():
    pytest.importorskip("torchvision")
    net, tnet = Net(), _torch_net()
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in tnet.named_buffers()]
    assert [n for n, _ in net.named_modules()] == [n for n, _ in tnet.named_modules()]
    assert [n for n, _ in net.named_children()] == [n for n, _ in tnet.named_children()]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert not any(isinstance(b, nn.Parameter) for b in net.buffers())  # FrozenBatchNorm2d: buffers only


def test_shared_parameters_are_listed_once():
    a = nn.Linear(2, 2)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_attribute_registration_rules():
    m = nn.Module()
    m.w = nn.Parameter(np.zeros(3))
    m.child = nn.Linear(2, 2)
    m.plain = 5
    assert list(m._parameters) == ["w"] and list(m._modules) == ["child"] and m.plain == 5
    with pytest.raises(TypeError):
        m.w = np.zeros(3)  # a plain array cannot replace a parameter
    m.w = None  # but None may (declares it absent)
    assert m.w is None and [n for n, _ in m.named_parameters()] == ["child.weight", "child.bias"]
    m.child = nn.Parameter(np.ones(1))  # an attribute may change kind
    assert "child" not in m._modules and m.child.shape == (1,)
    del m.child
    assert not hasattr(m, "child")
    with pytest.raises(AttributeError, match="no attribute"):
        _ = m.missing  # reading an attribute that was never set must raise

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1))  # before super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_buffers_accept_arrays_and_stay_tensors():
    m = nn.Module()
    m.register_buffer("b", np.arange(3.0))
    assert isinstance(m.b, Tensor) and not m.b.requires_grad
    m.b = np.zeros(3)  # assigning to a buffer name keeps it a buffer
    assert isinstance(m.b, Tensor) and list(m.state_dict()) == ["b"]


# ----------------------------------------------------------------------------- load_state_dict
def test_load_state_dict_copies_in_place_with_the_modules_dtype():
    net = Net()
    w = net.stem[0].weight
    array_before = w.data
    sd = {
        k: np.random.default_rng(1).standard_normal(v.shape) if v.dtype.kind == "f" else v
        for k, v in net.state_dict().items()
    }
    result = net.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert net.stem[0].weight is w and w.data is array_before  # same objects: optimizers keep working
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w.data, sd["stem.0.weight"].astype(np.float32))
    np.testing.assert_array_equal(net.state_dict()["frozen.running_var"], sd["frozen.running_var"].astype(np.float32))


def test_load_state_dict_from_torch_module_state_dict():
    pytest.importorskip("torchvision")
    tnet = _torch_net()
    with torch.no_grad():
        for p in tnet.parameters():
            p.normal_()
        tnet.frozen.running_var.uniform_(0.5, 1.5)
    net = Net()
    net.load_state_dict(tnet.state_dict())  # torch tensors are read through np.asarray
    for k, v in tnet.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], v.numpy(), err_msg=k)


def test_strict_loading_lists_missing_and_unexpected_keys_and_copies_nothing():
    net = Net()
    before = net.state_dict()
    sd = dict(before)
    del sd["heads.box.bias"]
    sd["heads.extra.weight"] = np.zeros(3)
    sd["stem.0.weight"] = np.ones_like(sd["stem.0.weight"])
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(sd)
    message = str(info.value)
    assert 'Missing key(s) in state_dict: "heads.box.bias"' in message
    assert 'Unexpected key(s) in state_dict: "heads.extra.weight"' in message
    np.testing.assert_array_equal(net.stem[0].weight.data, before["stem.0.weight"])  # untouched
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["heads.box.bias"] and result.unexpected_keys == ["heads.extra.weight"]
    np.testing.assert_array_equal(net.stem[0].weight.data, 1.0)


def test_shape_mismatch_is_an_error_even_when_not_strict():
    net = Net()
    sd = net.state_dict()
    sd["heads.cls.weight"] = np.zeros((4, 4))
    with pytest.raises(RuntimeError, match=r"size mismatch for heads.cls.weight: copying a param with shape \(4, 4\)"):
        net.load_state_dict(sd, strict=False)


def test_frozen_batch_norm_loads_a_batch_norm_state_dict():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.data[:] = [1, 2, 3]
    frozen = nn.FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())  # strict, although num_batches_tracked has no home
    np.testing.assert_array_equal(frozen.running_mean.data, [1, 2, 3])


def test_state_dict_is_a_copy():
    lin = nn.Linear(2, 2)
    sd = lin.state_dict()
    sd["weight"][...] = 7
    assert not np.any(lin.weight.data == 7)


# --------------------------------------------------------------------------- modes and conversion
def test_train_eval_reach_every_module():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_requires_grad_and_apply():
    lin = nn.Linear(3, 2)
    lin(Tensor(np.ones((1, 3), np.float32))).sum().backward()
    assert lin.weight.grad is not None
    lin.zero_grad(set_to_none=False)
    assert np.all(lin.weight.grad == 0)
    lin.zero_grad()
    assert lin.weight.grad is None
    assert lin.requires_grad_(False) is lin and not any(p.requires_grad for p in lin.parameters())
    visited = []
    Net().apply(lambda m: visited.append(type(m).__name__))
    assert visited[-1] == "Net" and visited[:3] == ["Conv2d", "BatchNorm2d", "ReLU"]  # children first


def test_double_converts_floating_state_only():
    net = Net().double()
    sd = net.state_dict()
    assert all(v.dtype == np.float64 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert sd["stem.1.num_batches_tracked"].dtype == np.int64
    assert net.to(np.float32).stem[0].weight.dtype == np.float32


def test_device_moves():
    net = Net()
    assert net.to_device("cpu") is net and isinstance(net.stem[0].weight.data, np.ndarray)
    with pytest.raises(ValueError):
        net.to_device("tpu")
    if cupy_or_none() is None:
        with pytest.raises(RuntimeError, match="CuPy"):
            net.to("cuda")
    else:
        net.to("cuda")
        assert type(net.stem[0].weight.data).__module__.startswith("cupy")
        net.cpu()
        assert isinstance(net.stem[0].weight.data, np.ndarray)


def test_repr_names_children_like_torch():
    text = repr(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)))
    assert "(0): Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)" in text
    assert "(1): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)" in text
    assert repr(nn.FrozenBatchNorm2d(4)) == "FrozenBatchNorm2d(4, eps=1e-05)"


def test_get_submodule():
    net = Net()
    assert net.get_submodule("blocks.2.1") is net.blocks[2][1]
    assert net.get_submodule("") is net
    with pytest.raises(AttributeError):
        net.get_submodule("blocks.7")


# ---------------------------------------------------------------------------------- containers
def test_sequential_indexing_slicing_and_appending():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and seq[-1] is layers[2] and list(seq) == layers
    head = seq[1:]
    assert isinstance(head, nn.Sequential) and list(head._modules) == ["1", "2"]  # names kept, as torch
    seq.append(nn.Sigmoid())
    assert list(seq._modules) == ["0", "1", "2", "3"]
    with pytest.raises(IndexError):
        seq[4]
    x = Tensor(np.ones((5, 2), np.float32))
    np.testing.assert_array_equal(seq(x).numpy(), nn.Sigmoid()(layers[2](layers[1](layers[0](x)))).numpy())


def test_sequential_from_ordered_dict():
    from collections import OrderedDict

    seq = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 1, 1)), ("relu", nn.ReLU())]))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias"]


def test_module_list_and_dict():
    ml = nn.ModuleList([nn.ReLU(), nn.Identity()])
    ml.insert(0, nn.Linear(1, 1))
    assert [type(m).__name__ for m in ml] == ["Linear", "ReLU", "Identity"]
    assert list(ml.state_dict()) == ["0.weight", "0.bias"]
    del ml[0]
    assert len(ml) == 2 and list(ml._modules) == ["0", "1"]
    ml += [nn.Linear(1, 2)]
    assert list(ml.state_dict()) == ["2.weight", "2.bias"]
    md = nn.ModuleDict({"a": nn.ReLU()})
    md["b"] = nn.Linear(1, 1)
    assert "b" in md and list(md) == ["a", "b"] and len(md) == 2
    assert list(md.state_dict()) == ["b.weight", "b.bias"]
    assert isinstance(md.pop("a"), nn.ReLU) and list(md.keys()) == ["b"]


# ----------------------------------------------------------------------------------------- init
def test_manual_seed_makes_weights_reproducible():
    init.manual_seed(3)
    a = nn.Conv2d(3, 4, 3).weight.numpy().copy()
    init.manual_seed(3)
    b = nn.Conv2d(3, 4, 3).weight.numpy()
    c = nn.Conv2d(3, 4, 3).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (4, 6), (6, 2, 2, 2), (5, 2, 3)])
def test_fan_in_and_fan_out_equal_torch(shape):
    ours = init._calculate_fan_in_and_fan_out(Tensor(np.zeros(shape)))
    assert ours == torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))


@pytest.mark.parametrize(
    "nonlinearity,param",
    [("relu", None), ("leaky_relu", None), ("leaky_relu", math.sqrt(5)), ("tanh", None),
     ("linear", None), ("conv2d", None), ("sigmoid", None), ("selu", None)],
)
def test_calculate_gain_equals_torch(nonlinearity, param):
    expected = torch.nn.init.calculate_gain(nonlinearity, param)
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(expected, rel=1e-15)


def test_default_conv_and_linear_init_are_torchs_bounds():
    conv = nn.Conv2d(16, 32, 3)  # fan_in 144: weight and bias in U(+-1/12)
    bound = 1 / 12
    for t in (conv.weight, conv.bias):
        assert np.abs(t.data).max() <= bound and np.abs(t.data).max() > 0.9 * bound
    assert conv.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    convt = nn.ConvTranspose2d(8, 4, 2, 2)  # fan_in from weight.shape[1]: 4 * 2 * 2 = 16 -> U(+-1/4)
    assert np.abs(convt.weight.data).max() <= 0.25 and np.abs(convt.weight.data).max() > 0.2
    lin = nn.Linear(100, 50)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.bias.data).max() <= 0.1


def test_kaiming_normal_fan_out_relu_std():
    w = nn.Parameter(np.zeros((64, 32, 3, 3), np.float32))
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
    assert w.data.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert abs(w.data.mean()) < 0.005


def test_fill_functions():
    t = nn.Parameter(np.zeros((2, 3)))
    assert init.constant_(t, 0.5) is t and np.all(t.data == 0.5)
    init.ones_(t)
    assert np.all(t.data == 1)
    init.zeros_(t)
    assert np.all(t.data == 0)
    init.normal_(t, mean=3.0, std=0.0)
    assert np.all(t.data == 3.0)
    init.uniform_(t, -1, 1, generator=np.random.default_rng(0))
    assert np.all(np.abs(t.data) <= 1)
    init.xavier_uniform_(t)
    assert np.all(np.abs(t.data) <= math.sqrt(6 / 5))
    with pytest.raises(ValueError):
        init.kaiming_uniform_(nn.Parameter(np.zeros(3)))  # fewer than 2 dimensions


def test_parameter_is_a_tensor_that_requires_grad():
    from minimaskrcnn.backend import get_array_module, to_numpy

    p = nn.Parameter(np.arange(3.0))
    assert isinstance(p, Tensor) and p.requires_grad and p.is_leaf
    assert not nn.Parameter(np.zeros(1), requires_grad=False).requires_grad
    np.testing.assert_array_equal(to_numpy(p), [0.0, 1.0, 2.0])  # looked through like a Tensor
    assert get_array_module(p) is np
    assert repr(p).startswith("Parameter containing:")
    y = (p * 2).sum()
    assert type(y) is Tensor  # ops on Parameters make plain Tensors
