"""ResNet body: shapes, torchvision's parameter names, freezing, and parity with torchvision's resnet."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, nn
from minimaskrcnn.models.resnet import ResNetBody, freeze_layers, make_norm_layer


@pytest.mark.parametrize("depth,expansion", [(18, 1), (50, 4)])
def test_stage_shapes_and_strides(depth, expansion):
    body = ResNetBody(depth, make_norm_layer("gn", gn_groups=4), width_multiplier=0.125)
    out = body(Tensor(np.zeros((2, 3, 64, 96), np.float32)))
    assert list(out) == ["0", "1", "2", "3"]
    widths = [8 * expansion, 16 * expansion, 32 * expansion, 64 * expansion]
    assert body.out_channels_list == widths
    for (_name, feature), c, stride in zip(out.items(), widths, (4, 8, 16, 32)):
        assert feature.shape == (2, c, 64 // stride, 96 // stride)


def test_returned_layers_drop_unused_stages():
    body = ResNetBody(18, make_norm_layer("bn"), width_multiplier=0.125, returned_layers=(2, 3))
    assert not hasattr(body, "layer4") or "layer4" not in body._modules
    out = body(Tensor(np.zeros((1, 3, 64, 64), np.float32)))
    assert [f.shape[1] for f in out.values()] == [16, 32]


def test_norm_layer_kinds():
    assert isinstance(make_norm_layer("frozen_bn")(8), nn.FrozenBatchNorm2d)
    assert isinstance(make_norm_layer("bn")(8), nn.BatchNorm2d)
    gn = make_norm_layer("gn", gn_groups=32)(24)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8  # gcd(32, 24)
    with pytest.raises(ValueError):
        make_norm_layer("ln")


@pytest.mark.parametrize("trainable,expected", [
    (0, set()),
    (3, {"layer2", "layer3", "layer4"}),
    (5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
])
def test_freeze_layers(trainable, expected):
    body = ResNetBody(18, make_norm_layer("bn"), width_multiplier=0.125)
    freeze_layers(body, trainable)
    trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trained == expected


@pytest.mark.reference
@pytest.mark.parametrize("depth", [18, 50])
def test_parity_with_torchvision(depth):
    torch = pytest.importorskip("torch")
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d)
    # non-trivial frozen statistics
    for m in tv.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for name in ("weight", "bias", "running_mean"):
                getattr(m, name).uniform_(-0.5, 0.5) if name != "weight" else getattr(m, name).uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
    tv = IntermediateLayerGetter(tv, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}).eval()
    ours = ResNetBody(depth, make_norm_layer("frozen_bn"))
    sd = {k: v.numpy() for k, v in tv.state_dict().items()}
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x))
    got = ours(Tensor(x))
    for k in expected:
        e = expected[k].numpy()
        np.testing.assert_allclose(got[k].numpy(), e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
