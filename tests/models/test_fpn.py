"""FPN: output names and shapes, the P6 subsampling, and parity with torchvision's FPN and backbone."""
from collections import OrderedDict

import numpy as np
import pytest

from minimaskrcnn import Tensor
from minimaskrcnn.models.configs import BackboneConfig
from minimaskrcnn.models.fpn import FeaturePyramidNetwork, LastLevelMaxPool, resnet_fpn_backbone


def _inputs(rng, channels=(4, 8, 16), size=16):
    return OrderedDict((str(i), Tensor(rng.standard_normal((2, c, size >> i, size >> i)).astype(np.float32)))
                       for i, c in enumerate(channels))


def test_names_shapes_and_pool_level(rng):
    fpn = FeaturePyramidNetwork([4, 8, 16], 6, extra_blocks=LastLevelMaxPool())
    out = fpn(_inputs(rng))
    assert list(out) == ["0", "1", "2", "pool"]
    assert [o.shape for o in out.values()] == [(2, 6, 16, 16), (2, 6, 8, 8), (2, 6, 4, 4), (2, 6, 2, 2)]
    np.testing.assert_array_equal(out["pool"].numpy(), out["2"].numpy()[:, :, ::2, ::2])


def test_top_down_pathway_reaches_the_finest_level(rng):
    # a change in the coarsest input must change the finest output (through the upsampling)
    fpn = FeaturePyramidNetwork([4, 8, 16], 6)
    x = _inputs(rng)
    before = fpn(x)["0"].numpy()
    x["2"] = Tensor(x["2"].numpy() + 1)
    assert not np.allclose(fpn(x)["0"].numpy(), before)


def test_backbone_gradients_reach_trainable_layers_only(rng):
    cfg = BackboneConfig(depth=18, width_multiplier=0.125, norm="gn", gn_groups=4, trainable_layers=2, fpn_channels=8)
    backbone = resnet_fpn_backbone(cfg)
    out = backbone(Tensor(rng.standard_normal((1, 3, 64, 64)).astype(np.float32)))
    sum(o.sum() for o in out.values()).backward()
    for name, p in backbone.named_parameters():
        if name.startswith(("body.layer3", "body.layer4", "fpn")):
            assert p.requires_grad and p.grad is not None and np.any(p.grad), name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.reference
def test_fpn_parity_with_torchvision(rng):
    torch = pytest.importorskip("torch")
    from torchvision.ops import FeaturePyramidNetwork as TVFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVPool

    torch.manual_seed(0)
    tv = TVFPN([4, 8, 16], 6, extra_blocks=TVPool())
    for p in tv.parameters():  # non-zero biases too
        torch.nn.init.uniform_(p, -0.5, 0.5)
    ours = FeaturePyramidNetwork([4, 8, 16], 6, extra_blocks=LastLevelMaxPool())
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd)
    # odd sizes: the nearest upsampling goes to the lateral map's size, not 2x
    x = OrderedDict([("0", rng.standard_normal((1, 4, 15, 13))), ("1", rng.standard_normal((1, 8, 8, 7))),
                     ("2", rng.standard_normal((1, 16, 4, 4)))])
    x = OrderedDict((k, v.astype(np.float32)) for k, v in x.items())
    with torch.no_grad():
        expected = tv(OrderedDict((k, torch.from_numpy(v)) for k, v in x.items()))
    got = ours(OrderedDict((k, Tensor(v)) for k, v in x.items()))
    assert list(got) == list(expected)
    for k in expected:
        np.testing.assert_allclose(got[k].numpy(), expected[k].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.reference
def test_backbone_state_dict_names_equal_torchvision():
    pytest.importorskip("torch")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

    tv = tv_backbone(backbone_name="resnet50", weights=None)
    ours = resnet_fpn_backbone(BackboneConfig())
    assert list(ours.state_dict()) == list(tv.state_dict())
    # the same parameters are frozen (trainable_layers=3: conv1 and layer1 frozen)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in tv.named_parameters() if p.requires_grad]
