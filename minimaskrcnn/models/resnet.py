"""ResNet body: the backbone's convolutional stages C2-C5 (He et al. 2016; torchvision's resnet.py).

BasicBlock (ResNet-18/34) and Bottleneck (ResNet-50/101/152, stride in the 3x3 conv: "v1.5"),
with a width multiplier and a choice of normalisation layer for small from-scratch models.
ResNeXt (Xie et al. 2017) is the Bottleneck with a grouped 3x3 conv: ``groups`` paths of
``width_per_group`` channels each (resnext50_32x4d: depth 50, 32 groups of 4).
Parameter names equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``).
Lesson 06 (layers and ResNet) walks through a block.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from minimaskrcnn import nn
from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn import functional as F
from minimaskrcnn.tensor import Tensor

# blocks per stage for each depth
# blocks per stage for each depth; 26 is the small bottleneck ResNet (timm's resnet26: 2 bottlenecks a stage)
RESNET_LAYERS = {18: (2, 2, 2, 2), 26: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                 152: (3, 8, 36, 3)}
BASIC_BLOCK_DEPTHS = (18, 34)  # the other depths use bottlenecks


def make_norm_layer(kind: str, eps: float = 1e-5, gn_groups: int = 32) -> Callable[[int], nn.Module]:
    """A factory ``norm_layer(num_channels)`` for "frozen_bn", "bn" or "gn".

    GroupNorm uses gcd(gn_groups, C) groups so that any width works.
    """
    if kind == "frozen_bn":
        return lambda c: nn.FrozenBatchNorm2d(c, eps=eps)
    if kind == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    if kind == "gn":
        return lambda c: nn.GroupNorm(math.gcd(gn_groups, c), c, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: choose 'frozen_bn', 'bn' or 'gn'")


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x, relu: bool = False):
    """``norm(conv(x))``, or ``relu(norm(conv(x)))`` with ``relu=True``; with frozen batch norm, one
    convolution with the norm folded into it.

    Frozen batch norm is a per-channel ``y * scale + shift`` (scale = weight / sqrt(running_var +
    eps), shift = bias - running_mean * scale), so ``norm(conv(x)) = conv(x; weight * scale) + shift``:
    the same numbers up to rounding, one pass over the output instead of three. The folded weight
    is ``conv.weight * scale`` as a Tensor op, so the gradient still reaches ``conv.weight``.
    The ReLU is fused into the last op (``F.conv2d_relu``, ``F.group_norm_relu``: the same numbers).
    """
    if not isinstance(norm, nn.FrozenBatchNorm2d) or conv.bias is not None:
        y = conv(x)
        if relu and isinstance(norm, nn.GroupNorm) and norm.weight is not None:
            return F.group_norm_relu(y, norm.num_groups, norm.weight, norm.bias, norm.eps)
        y = norm(y)
        return F.relu(y) if relu else y
    xp = get_array_module(norm.weight.data)
    scale = norm.weight.data * (1 / xp.sqrt(norm.running_var.data + norm.eps))  # as FrozenBatchNorm2d
    shift = norm.bias.data - norm.running_mean.data * scale
    weight = conv.weight * Tensor(scale.reshape(-1, 1, 1, 1).astype(conv.weight.dtype, copy=False))
    conv2d = F.conv2d_relu if relu else F.conv2d
    return conv2d(x, weight, Tensor(shift.astype(conv.weight.dtype, copy=False)), conv.stride, conv.padding,
                  conv.dilation, conv.groups)


def _shortcut(downsample: nn.Module | None, x):
    """The identity, or the downsampling 1x1 conv + norm (``downsample.0``, ``downsample.1``)."""
    if downsample is None:
        return x
    return conv_norm(downsample[0], downsample[1], x)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Raises:
        ValueError: ``groups`` other than 1 or ``base_width`` other than 64 (as torchvision: no
            ResNeXt basic block).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, groups: int = 1, base_width: int = 64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64 (ResNeXt needs depth >= 50)")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        """(N, inplanes, H, W) -> (N, planes, H / stride, W / stride)."""
        identity = _shortcut(self.downsample, x)
        out = conv_norm(self.conv1, self.bn1, x, relu=True)
        out = conv_norm(self.conv2, self.bn2, out)
        return F.add_relu(out, identity)  # relu(out + identity) as one op


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand (x4), with a shortcut (torchvision's v1.5).

    ResNeXt's block when ``groups > 1``: the 3x3 conv is grouped, and the inner width is
    ``int(planes * base_width / 64) * groups`` (torchvision's rule: 2 * planes for 32x4d), so that
    each of the ``groups`` paths has ``int(planes * base_width / 64)`` channels.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(f"Bottleneck: planes={planes} with base_width={base_width} leaves no channel per group")
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        """(N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride)."""
        identity = _shortcut(self.downsample, x)
        out = conv_norm(self.conv1, self.bn1, x, relu=True)
        out = conv_norm(self.conv2, self.bn2, out, relu=True)
        out = conv_norm(self.conv3, self.bn3, out)
        return F.add_relu(out, identity)  # relu(out + identity) as one op


def make_stage(block, inplanes: int, planes: int, blocks: int, stride: int, norm_layer: Callable[[int], nn.Module],
               groups: int = 1, base_width: int = 64) -> nn.Sequential:
    """One ResNet stage (torchvision's ``_make_layer``): ``blocks`` blocks, the first with the stride and,
    when the shape changes, a 1x1 conv + norm shortcut (``0.downsample``).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        inplanes: C of the stage's input.
        planes: the blocks' width (the output has ``planes * block.expansion`` channels).
        blocks: how many blocks.
        stride: of the first block (2 halves H and W).
        norm_layer: factory ``norm_layer(C)``.
        groups, base_width: ResNeXt's (see ``Bottleneck``).

    Returns:
        an ``nn.Sequential`` of the blocks, (N, inplanes, H, W) -> (N, planes * expansion, H / stride, W / stride).
    """
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        out_channels = planes * block.expansion
        downsample = nn.Sequential(conv1x1(inplanes, out_channels, stride), norm_layer(out_channels))
    kw = dict(norm_layer=norm_layer, groups=groups, base_width=base_width)
    layers = [block(inplanes, planes, stride, downsample, **kw)]
    layers += [block(planes * block.expansion, planes, **kw) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def stage_widths(depth: int, width_multiplier: float = 1.0) -> tuple[type, list[int]]:
    """The block type of a ResNet depth and the ``planes`` of its 4 stages (64, 128, 256, 512 times the multiplier)."""
    block = BasicBlock if depth in BASIC_BLOCK_DEPTHS else Bottleneck
    base = max(1, int(round(64 * width_multiplier)))
    return block, [base, base * 2, base * 4, base * 8]


class ResNetBody(nn.Module):
    """ResNet or ResNeXt without its classifier, returning the outputs of chosen stages
    (torchvision's ``resnet``/``resnext`` wrapped in ``IntermediateLayerGetter``).

    Args:
        depth: 18, 34 (BasicBlock), 26, 50, 101 or 152 (Bottleneck; 26 has 2 blocks a stage).
        norm_layer: factory ``norm_layer(C)``, e.g. from ``make_norm_layer``.
        width_multiplier: scales every width (64 * m in conv1 and layer1).
        returned_layers: stages whose outputs are returned, named "0", "1", ... in order.
        groups: ResNeXt's cardinality, the groups of every 3x3 conv (1: ResNet). Needs depth >= 50.
        width_per_group: ResNeXt's channels per group at width 64 (torchvision's ``width_per_group``;
            64 with groups=1 is ResNet). resnext50_32x4d is ``depth=50, groups=32, width_per_group=4``.

    Attributes:
        out_channels_list: channels of each returned stage (e.g. [256, 512, 1024, 2048] for R50).
    """

    def __init__(self, depth: int = 50, norm_layer: Callable[[int], nn.Module] | None = None,
                 width_multiplier: float = 1.0, returned_layers: Sequence[int] = (1, 2, 3, 4),
                 groups: int = 1, width_per_group: int = 64):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"unsupported ResNet depth {depth}: choose one of {sorted(RESNET_LAYERS)}")
        if depth in BASIC_BLOCK_DEPTHS and (groups != 1 or width_per_group != 64):
            raise ValueError(f"ResNeXt (groups={groups}, width_per_group={width_per_group}) needs a Bottleneck "
                             f"depth (26, 50, 101, 152), got depth {depth}")
        self.groups = groups
        self.base_width = width_per_group
        if min(returned_layers) < 1 or max(returned_layers) > 4:
            raise ValueError(f"returned_layers must be in [1, 4], got {returned_layers}")
        norm_layer = norm_layer or make_norm_layer("frozen_bn")
        block, widths = stage_widths(depth, width_multiplier)
        base = widths[0]
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # as IntermediateLayerGetter, stages above the last returned one are not built
        for i, (planes, blocks) in enumerate(zip(widths[: max(returned_layers)], RESNET_LAYERS[depth])):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, 1 if i == 0 else 2, norm_layer))
        self.returned_layers = tuple(returned_layers)
        self.out_channels_list = [widths[i - 1] * block.expansion for i in self.returned_layers]
        # torchvision's init: He normal (fan_out) for convs; norm layers start as identity
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int, norm_layer) -> nn.Sequential:
        layer = make_stage(block, self.inplanes, planes, blocks, stride, norm_layer, self.groups, self.base_width)
        self.inplanes = planes * block.expansion
        return layer

    def forward(self, x) -> OrderedDict:
        """(N, 3, H, W) Tensor -> OrderedDict "0", "1", ... of the returned stages' (N, C_l, H / s_l, W / s_l)
        Tensors, s_l = 4, 8, 16, 32 for layer1..layer4."""
        x = self.maxpool(conv_norm(self.conv1, self.bn1, x, relu=True))  # self.relu, fused
        out = OrderedDict()
        for i in range(1, max(self.returned_layers) + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in self.returned_layers:
                out[str(len(out))] = x
        return out


def freeze_layers(body: ResNetBody, trainable_layers: int) -> None:
    """Freeze all but the top ``trainable_layers`` stages, as torchvision's ``_resnet_fpn_extractor``.

    3 trains layer2-layer4; 5 trains everything (conv1 and bn1 included); 0 freezes the body.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers should be in [0, 5], got {trainable_layers}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad = False


class ResNetBackbone(nn.Module):
    """A ResNet body whose one returned stage is the only feature map: no FPN (the paper's C4 and C5
    backbones; detectron2's ``ResNet`` with one out_feature). ``backbone.body`` as in ``BackboneWithFPN``,
    so a body's weights move between the two by name.

    Args:
        body: a ``ResNetBody`` with one returned layer (3 for C4, stride 16; 4 for C5, stride 32).

    Attributes:
        out_channels: C of that stage (the RPN and RoI heads read it).

    Raises:
        ValueError: a body that returns more than one stage.
    """

    def __init__(self, body: ResNetBody):
        super().__init__()
        if len(body.returned_layers) != 1:
            raise ValueError(f"a backbone without FPN returns one stage, got returned_layers={body.returned_layers}")
        self.body = body
        self.out_channels = body.out_channels_list[0]

    def forward(self, x) -> OrderedDict:
        """(N, 3, H, W) Tensor -> OrderedDict {"0": (N, out_channels, H / s, W / s)}, s = 16 (C4) or 32 (C5)."""
        return self.body(x)
