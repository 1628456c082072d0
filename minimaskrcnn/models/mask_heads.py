"""Mask-head architectures: the network between a RoI's RoIAlign crop and the mask predictor.

Mask R-CNN's head is four 3x3 convs (sec. 3, ``MaskRCNNHeads``). Deep-MAC (Birodkar et al. 2021,
"The surprising impact of mask-head architecture on novel class segmentation", sec. 4-5) found that
deeper heads, residual stacks and above all an hourglass encoder-decoder (Newell et al. 2016), segment
classes that had no mask labels in training far better when the head is trained on ground-truth boxes.
Every head here maps (K, C, P, P) crop features to (K, out_channels, P, P); the predictor
(``MaskRCNNPredictor``) then upsamples 2x to S = 2P. Built from the library's own layers. Lesson 18.
"""
from __future__ import annotations

from collections.abc import Sequence

from minimaskrcnn import nn
from minimaskrcnn.models.resnet import make_norm_layer
from minimaskrcnn.nn import functional as F

MASK_HEADS = ("fcn", "resnet", "hourglass")
NORMS = ("gn", "bn", "none")
GN_GROUPS = 8  # GroupNorm groups (gcd with C): heads are narrow, 32 groups would normalise single channels

# Deep-MAC's hourglass sizes (named by conv-layer count), as multiples of the stem width w:
# channels of each stage (outermost first) and residual blocks per stage
HOURGLASS_SIZES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    10: ((2, 2), (1, 1)),
    20: ((2, 2, 3), (1, 2, 2)),
    32: ((2, 2, 3, 3), (2, 2, 2, 2)),
    52: ((2, 2, 3, 3, 3, 4), (2, 2, 2, 2, 2, 4)),
    100: ((2, 2, 3, 3, 3, 4), (4, 4, 4, 4, 4, 8)),
}


def hourglass_size(depth: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Deep-MAC's Hourglass-``depth`` stage channels and blocks for stem width ``width``.

    Args:
        depth: 10, 20, 32, 52 or 100 (Deep-MAC's ``hourglass_network.hourglass_<depth>``).
        width: the stem's channels (Deep-MAC's ``num_init_channels``, 64 in its Mask R-CNN runs).

    Returns:
        (stage_channels, stage_blocks), e.g. Hourglass-20 at width 16: ((32, 32, 48), (1, 2, 2)).

    Raises:
        ValueError: for another depth.
    """
    if depth not in HOURGLASS_SIZES:
        raise ValueError(f"unknown hourglass depth {depth}: choose one of {sorted(HOURGLASS_SIZES)}")
    multipliers, blocks = HOURGLASS_SIZES[depth]
    return tuple(m * width for m in multipliers), blocks


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    return make_norm_layer(kind, gn_groups=GN_GROUPS)(channels)


def _init_convs(module: nn.Module) -> None:
    """He normal (fan_out) for every conv and zero biases, as torchvision's mask head."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvNormReLU(nn.Module):
    """conv (k x k, "same" padding) -> norm -> ReLU (the ReLU optional).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: 1 or 3.
        stride: 1 or 2 (2 halves H and W, rounding up).
        norm: "gn", "bn" or "none" (then the conv has a bias).
        relu: end with a ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 norm: str = "gn", relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=norm == "none")
        self.norm = _norm(norm, out_channels)
        self.relu = relu

    def forward(self, x):
        """(K, C_in, H, W) -> (K, C_out, ceil(H / stride), ceil(W / stride))."""
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    """relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x)), the basic residual block.

    The shortcut is the identity, or a 1x1 conv + norm when the channels or the stride change
    (Deep-MAC's hourglass ``ResidualBlock``; ResNet's ``BasicBlock``).

    Args:
        in_channels, out_channels: C_in, C_out.
        stride: of the first conv (and of the shortcut).
        norm: "gn", "bn" or "none".
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "gn"):
        super().__init__()
        self.conv_block = ConvNormReLU(in_channels, out_channels, 3, stride, norm)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm = _norm(norm, out_channels)
        self.skip = (ConvNormReLU(in_channels, out_channels, 1, stride, norm, relu=False)
                     if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        """(K, C_in, H, W) -> (K, C_out, ceil(H / stride), ceil(W / stride))."""
        out = self.norm(self.conv(self.conv_block(x)))
        return F.relu(out + (x if self.skip is None else self.skip(x)))


def residual_stack(in_channels: int, out_channels: int, num_blocks: int, stride: int = 1, norm: str = "gn",
                   hidden_channels: int | None = None) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first carries the stride, the last ends at ``out_channels``.

    Args:
        in_channels, out_channels: C_in, C_out.
        num_blocks: >= 1.
        stride: of the first block.
        norm: "gn", "bn" or "none".
        hidden_channels: channels between the blocks (default ``out_channels``), as Deep-MAC's
            ``_make_repeated_residual_blocks``.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    hidden = out_channels if hidden_channels is None else hidden_channels
    widths = [in_channels] + [hidden] * (num_blocks - 1) + [out_channels]
    return nn.Sequential(*[ResidualBlock(widths[i], widths[i + 1], stride if i == 0 else 1, norm)
                           for i in range(num_blocks)])


class ResidualMaskHead(nn.Module):
    """A 1x1 stem conv, then ``num_blocks`` residual blocks at full resolution (Deep-MAC's ResNet heads).

    Depth (convs on the path) = 1 + 2 * num_blocks; Deep-MAC's "ResNet-4/8/.../16" heads are 2/4/.../8 blocks.

    Args:
        in_channels: C of the crop (the FPN's channels).
        width: channels of every block (out_channels).
        num_blocks: residual blocks.
        norm: "gn", "bn" or "none".

    Shape: (K, in_channels, P, P) -> (K, width, P, P).
    """

    def __init__(self, in_channels: int, width: int = 64, num_blocks: int = 4, norm: str = "gn"):
        super().__init__()
        self.stem = ConvNormReLU(in_channels, width, 1, 1, norm)
        self.blocks = residual_stack(width, width, num_blocks, 1, norm)
        self.out_channels = width
        _init_convs(self)

    def forward(self, x):
        return self.blocks(self.stem(x))


class EncoderDecoder(nn.Module):
    """One level of the hourglass, defined recursively (Newell et al. 2016, Fig. 3; Deep-MAC's
    ``EncoderDecoderBlock``).

    ``out = skip(x) + upsample(decoder(inner(down(x))))``: ``skip`` keeps the full resolution,
    ``down`` halves it (stride 2) and moves to the next stage's channels, ``inner`` is the next level
    (or residual blocks at the bottom), ``decoder`` returns to this stage's channels and a nearest
    2x upsampling (to the skip's exact size, so odd sizes such as 7 work) brings it back up.

    Args:
        channels: channels of this stage and of every stage below, outermost first (len >= 2).
        blocks: residual blocks per stage, same length.
        norm: "gn", "bn" or "none".

    Shape: (K, channels[0], H, W) -> (K, channels[0], H, W).
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int], norm: str = "gn"):
        super().__init__()
        if len(channels) < 2 or len(channels) != len(blocks):
            raise ValueError(f"need >= 2 stages and a block count per stage, got channels {channels}, blocks {blocks}")
        c, c_down = channels[0], channels[1]
        self.skip = residual_stack(c, c, blocks[0], 1, norm)
        self.down = residual_stack(c, c_down, blocks[0], 2, norm)
        if len(channels) > 2:
            self.inner = EncoderDecoder(channels[1:], blocks[1:], norm)
        else:
            self.inner = residual_stack(c_down, c_down, blocks[1], 1, norm)
        self.decoder = residual_stack(c_down, c, blocks[0], 1, norm, hidden_channels=c_down)

    def forward(self, x):
        skip = self.skip(x)
        y = self.decoder(self.inner(self.down(x)))
        return skip + F.interpolate(y, size=tuple(skip.shape[-2:]), mode="nearest")


class HourglassMaskHead(nn.Module):
    """An hourglass network as the mask head (Deep-MAC's Mask R-CNN head, without initial downsampling).

    Stem: 3x3 conv + norm + ReLU to ``width``, a residual block to ``channels[0]``; then one
    ``EncoderDecoder`` with ``len(channels) - 1`` halvings of the resolution and skip connections at
    each; then a 3x3 conv + norm + ReLU. ``hourglass_size(depth, width)`` gives Deep-MAC's sizes
    (Hourglass-52 with width 64 in its best Mask R-CNN model, on 32 x 32 crops).

    Args:
        in_channels: C of the crop.
        width: stem channels.
        channels: channels of each stage, outermost first (len - 1 halvings; a P x P crop needs
            P >= 2 ** (len - 1) to keep at least one pixel at the bottom).
        blocks: residual blocks per stage.
        norm: "gn", "bn" or "none".

    Shape: (K, in_channels, P, P) -> (K, channels[0], P, P).
    """

    def __init__(self, in_channels: int, width: int = 32, channels: Sequence[int] = (64, 64, 96),
                 blocks: Sequence[int] = (1, 2, 2), norm: str = "gn"):
        super().__init__()
        self.stem = nn.Sequential(ConvNormReLU(in_channels, width, 3, 1, norm),
                                  ResidualBlock(width, channels[0], 1, norm))
        self.hourglass = EncoderDecoder(tuple(channels), tuple(blocks), norm)
        self.out_conv = ConvNormReLU(channels[0], channels[0], 3, 1, norm)
        self.out_channels = channels[0]
        _init_convs(self)

    def forward(self, x):
        return self.out_conv(self.hourglass(self.stem(x)))


def build_mask_head(kind: str, in_channels: int, *, layers: Sequence[int] = (256, 256, 256, 256), dilation: int = 1,
                    width: int = 32, depth: int = 20, norm: str = "gn") -> nn.Module:
    """The mask head named ``kind``, with an ``out_channels`` attribute.

    Args:
        kind: "fcn" (Mask R-CNN's 3x3 convs, ``MaskRCNNHeads(in_channels, layers, dilation)``),
            "resnet" (``ResidualMaskHead``, ``depth`` residual blocks of ``width`` channels) or
            "hourglass" (``HourglassMaskHead`` of Deep-MAC's size ``depth`` in 10/20/32/52/100,
            stem ``width``).
        in_channels: C of the RoIAlign crop.
        layers, dilation: the FCN's conv widths and dilation.
        width, depth, norm: the residual and hourglass heads' size and normalisation.

    Raises:
        ValueError: an unknown kind, depth or norm.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown mask-head norm {norm!r}: choose one of {NORMS}")
    if kind == "fcn":
        from minimaskrcnn.models.roi_heads import MaskRCNNHeads

        head = MaskRCNNHeads(in_channels, layers, dilation)
        head.out_channels = layers[-1]
        return head
    if kind == "resnet":
        if depth < 1:
            raise ValueError(f"a residual mask head needs depth (residual blocks) >= 1, got {depth}")
        return ResidualMaskHead(in_channels, width, depth, norm)
    if kind == "hourglass":
        channels, blocks = hourglass_size(depth, width)
        return HourglassMaskHead(in_channels, width, channels, blocks, norm)
    raise ValueError(f"unknown mask head {kind!r}: choose one of {MASK_HEADS}")
