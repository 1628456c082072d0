"""Feature pyramid network: a top-down pathway with lateral connections (Lin et al. 2017, sec. 3).

Each ResNet stage C_l gets a 1x1 lateral conv; from the top, the coarser map is upsampled 2x
(nearest) and added; a 3x3 conv smooths each sum into P_l. P6 ("pool") subsamples P5 by 2 for the
RPN's largest anchors. Names as torchvision (``inner_blocks.0.0``, ``layer_blocks.0.0``). Lesson 07 (FPN).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from minimaskrcnn import nn
from minimaskrcnn.intermediates import record
from minimaskrcnn.models.configs import BackboneConfig
from minimaskrcnn.models.resnet import ResNetBackbone, ResNetBody, freeze_layers, make_norm_layer
from minimaskrcnn.nn import functional as F


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by 2 (torchvision's max_pool2d with kernel 1, stride 2: a strided slice)."""

    def forward(self, results: list, names: list) -> tuple[list, list]:
        results = results + [results[-1][:, :, ::2, ::2]]
        return results, names + ["pool"]


class FeaturePyramidNetwork(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` without normalisation.

    Args:
        in_channels_list: channels of each input level, finest first.
        out_channels: channels of every output level.
        extra_blocks: e.g. ``LastLevelMaxPool()``, run on the outputs.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_blocks: nn.Module | None = None):
        super().__init__()
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            if in_channels == 0:
                raise ValueError("in_channels=0 is not supported")
            self.inner_blocks.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0)))
            self.layer_blocks.append(nn.Sequential(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.constant_(module.bias, 0.0)
        self.extra_blocks = extra_blocks

    def forward(self, x: OrderedDict) -> OrderedDict:
        """Args: name -> (N, C_l, H_l, W_l) Tensors, finest first. Returns: name -> (N, out_channels,
        H_l, W_l) Tensors, the same names plus those of the extra blocks ("pool")."""
        names = list(x.keys())
        x = list(x.values())
        last_inner = self.inner_blocks[-1](x[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(x) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](x[idx])
            feat_shape = tuple(inner_lateral.shape[-2:])
            inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """ResNet body + FPN (torchvision's ``BackboneWithFPN``): ``backbone.body`` and ``backbone.fpn``.

    Args:
        body: a ``ResNetBody``.
        in_channels_list: channels of the body's returned stages.
        out_channels: FPN channels.

    Attributes:
        out_channels: FPN channels (the RPN and heads read it).
    """

    def __init__(self, body: ResNetBody, in_channels_list: Sequence[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x) -> OrderedDict:
        """(N, 3, H, W) Tensor -> OrderedDict "0".."3", "pool" of (N, out_channels, H / s, W / s) Tensors.

        Records (see ``minimaskrcnn.intermediates``) "body_features", the body's C2-C5.
        """
        body_features = self.body(x)
        record("body_features", body_features)
        return self.fpn(body_features)


def resnet_fpn_backbone(config: BackboneConfig) -> BackboneWithFPN:
    """The backbone a ``BackboneConfig`` describes, with the bottom stages frozen as configured."""
    body = _body(config)
    return BackboneWithFPN(body, body.out_channels_list, config.fpn_channels)


def build_backbone(config: BackboneConfig) -> BackboneWithFPN | ResNetBackbone:
    """``resnet_fpn_backbone(config)``, or with ``config.fpn`` False a ``ResNetBackbone``: the body's one
    returned stage alone (C4 or C5, the paper's single-level backbones)."""
    if config.fpn:
        return resnet_fpn_backbone(config)
    return ResNetBackbone(_body(config))


def _body(config: BackboneConfig) -> ResNetBody:
    """The ResNet (or ResNeXt) body of ``config``, its bottom stages frozen as configured."""
    norm_layer = make_norm_layer(config.norm, eps=config.norm_eps, gn_groups=config.gn_groups)
    body = ResNetBody(config.depth, norm_layer, config.width_multiplier, config.returned_layers,
                      groups=config.groups, width_per_group=config.width_per_group)
    freeze_layers(body, config.trainable_layers)
    return body
