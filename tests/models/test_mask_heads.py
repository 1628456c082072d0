"""Mask-head architectures: shapes, sizes, and a float64 gradcheck of each (input and chosen weights)."""
import numpy as np
import pytest

from minimaskrcnn import Tensor, gradcheck
from minimaskrcnn.models.mask_heads import (
    EncoderDecoder,
    HourglassMaskHead,
    ResidualMaskHead,
    build_mask_head,
    hourglass_size,
)
from minimaskrcnn.models.roi_heads import MaskRCNNHeads


def _check(head, x, params):
    """gradcheck of head(x) w.r.t. x and the given parameters (all of them would take minutes)."""
    for p in head.parameters():
        p.grad = None
    result = gradcheck(lambda x_, *ps: head(x_), [x, *params], atol=1e-8)
    assert result.passed, result.report()


def _input(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_residual_head_gradcheck(norm):
    head = ResidualMaskHead(3, width=4, num_blocks=2, norm=norm).double()
    x = _input((2, 3, 4, 4))
    _check(head, x, [head.stem.conv.weight, head.blocks[1].conv.weight])


def test_hourglass_head_gradcheck_two_levels_odd_size():
    # two halvings of a 5 x 5 crop: 5 -> 3 -> 2, upsampled back to the skips' exact sizes
    head = HourglassMaskHead(3, width=2, channels=(2, 3, 3), blocks=(1, 1, 1), norm="gn").double()
    x = _input((2, 3, 5, 5), seed=1)
    inner = head.hourglass.inner
    assert isinstance(inner, EncoderDecoder)
    _check(head, x, [head.stem[0].conv.weight, inner.inner[0].conv.weight, head.hourglass.decoder[0].conv.weight,
                     head.out_conv.conv.weight])


def test_fcn_head_gradcheck():
    head = build_mask_head("fcn", 3, layers=(4, 4)).double()
    assert isinstance(head, MaskRCNNHeads) and head.out_channels == 4
    x = _input((2, 3, 4, 4), seed=2)
    _check(head, x, [head[0][0].weight, head[1][0].bias])


@pytest.mark.parametrize("kind,depth", [("fcn", 0), ("resnet", 3), ("hourglass", 10), ("hourglass", 20),
                                        ("hourglass", 52)])
@pytest.mark.parametrize("crop", [14, 32])
def test_every_head_keeps_the_crop_size(kind, depth, crop):
    head = build_mask_head(kind, 8, layers=(8, 8, 8, 8), width=4, depth=depth)
    y = head(Tensor(np.zeros((3, 8, crop, crop), dtype=np.float32)))
    assert y.shape == (3, head.out_channels, crop, crop)


def test_hourglass_sizes_are_deepmacs():
    assert hourglass_size(20, 16) == ((32, 32, 48), (1, 2, 2))
    assert hourglass_size(52, 64) == ((128, 128, 192, 192, 192, 256), (2, 2, 2, 2, 2, 4))
    # Hourglass-52: 5 halvings, so a 32 x 32 crop reaches 1 x 1 at the bottom
    head = build_mask_head("hourglass", 4, width=2, depth=52)
    depth, level = 0, head.hourglass
    while isinstance(level, EncoderDecoder):
        depth, level = depth + 1, level.inner
    assert depth == 5


def test_unknown_head_or_depth_is_refused():
    with pytest.raises(ValueError, match="unknown mask head"):
        build_mask_head("unet", 8)
    with pytest.raises(ValueError, match="hourglass depth"):
        build_mask_head("hourglass", 8, depth=21)
    with pytest.raises(ValueError, match="norm"):
        build_mask_head("resnet", 8, norm="ln")
