"""ResNeXt (Xie et al. 2017): the grouped Bottleneck's widths, a gradient check of one block, and
parity with torchvision's resnext50_32x4d body and ``resnet_fpn_backbone("resnext50_32x4d")``."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck, nn
from minimaskrcnn.models.configs import BackboneConfig
from minimaskrcnn.models.fpn import resnet_fpn_backbone
from minimaskrcnn.models.resnet import Bottleneck, ResNetBody, make_norm_layer


def test_grouped_bottleneck_widths():
    # torchvision's rule: inner width = int(planes * width_per_group / 64) * groups
    block = Bottleneck(256, 64, groups=32, base_width=4, norm_layer=make_norm_layer("frozen_bn"))
    assert block.conv1.weight.shape == (128, 256, 1, 1)
    assert block.conv2.weight.shape == (128, 4, 3, 3) and block.conv2.groups == 32
    assert block.conv3.weight.shape == (256, 128, 1, 1)


def test_small_resnext_shapes_and_errors():
    body = ResNetBody(50, make_norm_layer("gn", gn_groups=4), width_multiplier=0.125, groups=4, width_per_group=8)
    out = body(Tensor(np.zeros((1, 3, 64, 64), np.float32)))
    assert [f.shape[1] for f in out.values()] == body.out_channels_list == [32, 64, 128, 256]
    assert body.layer1[0].conv2.groups == 4 and body.layer1[0].conv2.weight.shape == (4, 1, 3, 3)
    with pytest.raises(ValueError, match="Bottleneck depth"):
        ResNetBody(18, groups=32, width_per_group=4)
    # depth 26: two bottlenecks a stage (the small ResNeXt of lesson 17's study)
    small = ResNetBody(26, make_norm_layer("gn", gn_groups=4), width_multiplier=0.25, groups=32, width_per_group=4)
    assert [len(getattr(small, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert small.layer1[0].conv2.groups == 32 and small.out_channels_list == [64, 128, 256, 512]


def test_grouped_bottleneck_gradcheck():
    rng = np.random.default_rng(0)
    nn.init.manual_seed(0)
    block = Bottleneck(8, 4, stride=2, groups=2, base_width=32, norm_layer=make_norm_layer("gn", gn_groups=2),
                       downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.GroupNorm(2, 16)))
    block.to_dtype(np.float64)
    params = dict(block.named_parameters())
    x = Tensor(rng.standard_normal((1, 8, 5, 5)), requires_grad=True)
    w = params["conv2.weight"]

    def fn(x, w):
        return block(x)

    assert gradcheck(fn, [x, w], tol=1e-5).passed


def _randomise_frozen_bn(torch, model):
    from torchvision.ops.misc import FrozenBatchNorm2d

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.reference
def test_resnext50_32x4d_body_matches_torchvision():
    torch = pytest.importorskip("torch")
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = torchvision.models.resnext50_32x4d(weights=None, norm_layer=FrozenBatchNorm2d)
    _randomise_frozen_bn(torch, tv)
    tv = IntermediateLayerGetter(tv, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}).eval()
    ours = ResNetBody(50, make_norm_layer("frozen_bn"), groups=32, width_per_group=4)
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


@pytest.mark.reference
def test_resnext_fpn_backbone_matches_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

    torch.manual_seed(0)
    tv = tv_backbone(backbone_name="resnext50_32x4d", weights=None, trainable_layers=3).eval()
    _randomise_frozen_bn(torch, tv)
    for name, p in tv.named_parameters():  # non-zero FPN biases
        if name.startswith("fpn") and name.endswith("bias"):
            torch.nn.init.uniform_(p, -0.5, 0.5)
    ours = resnet_fpn_backbone(BackboneConfig(depth=50, groups=32, width_per_group=4, trainable_layers=3))
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd)
    # the same parameters are trainable (conv1 and layer1 frozen)
    assert ({n for n, p in ours.named_parameters() if p.requires_grad}
            == {n for n, p in tv.named_parameters() if p.requires_grad})
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x))
    got = ours(Tensor(x))
    assert list(got) == list(expected)
    for k in expected:
        e = expected[k].numpy()
        np.testing.assert_allclose(got[k].numpy(), e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
