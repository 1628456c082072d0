"""Normalisation layers: BatchNorm2d, FrozenBatchNorm2d (torchvision's, for the ResNet backbone) and GroupNorm."""
from __future__ import annotations

import numpy as np

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.module import Module, Parameter


def _vector(n: int, value: float, dtype) -> np.ndarray:
    return np.full((n,), value, dtype=np.float32 if dtype is None else dtype)


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``.

    Args:
        num_features: C.
        eps: added to the variance.
        momentum: weight of each new batch in the running averages; None means a cumulative
            average (1 / num_batches_tracked), as PyTorch.
        affine: learn weight (init 1) and bias (init 0).
        track_running_stats: keep running_mean/running_var (init 0 and 1) and num_batches_tracked;
            without them the batch statistics are used in eval mode too.
        device, dtype: as ``Conv2d``.

    Buffers: running_mean (C,), running_var (C,) (updated with the unbiased batch variance),
    num_batches_tracked () int64 — the same state_dict keys as PyTorch.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(_vector(num_features, 1.0, dtype))
            self.bias = Parameter(_vector(num_features, 0.0, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _vector(num_features, 0.0, dtype))
            self.register_buffer("running_var", _vector(num_features, 1.0, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if device is not None and device != "cpu":
            self.to_device(device)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d expects 4-D (N, C, H, W) input, got shape {x.shape}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        # batch statistics in training, and in eval too when there are no running statistics
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class FrozenBatchNorm2d(Module):
    """Batch norm with fixed statistics and affine, as ``torchvision.ops.FrozenBatchNorm2d``.

    Mask R-CNN trains with 1-2 images per GPU, far too few for batch statistics, so the ResNet
    backbone keeps ImageNet's: ``y = x * scale + (bias - running_mean * scale)``,
    ``scale = weight / sqrt(running_var + eps)``.

    Args:
        num_features: C.
        eps: torchvision's default 1e-5.

    Buffers (not parameters: no gradient, not in ``parameters()``): weight (init 1), bias (0),
    running_mean (0), running_var (1), all (C,). Loading a BatchNorm2d state dict works: its
    ``num_batches_tracked`` is dropped, as torchvision does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=None):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", _vector(num_features, 1.0, dtype))
        self.register_buffer("bias", _vector(num_features, 0.0, dtype))
        self.register_buffer("running_mean", _vector(num_features, 0.0, dtype))
        self.register_buffer("running_var", _vector(num_features, 1.0, dtype))

    def _filter_state_dict(self, state_dict: dict, prefix: str) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)

    def forward(self, x):
        return F.frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_features}, eps={self.eps})"


class GroupNorm(Module):
    """Group normalisation, as ``torch.nn.GroupNorm`` (statistics per image over groups of channels).

    Args:
        num_groups: G, which must divide num_channels.
        num_channels: C.
        eps: added to the variance.
        affine: learn a per-channel weight (init 1) and bias (init 0).
        device, dtype: as ``Conv2d``.

    Shape: (N, C, ...) -> (N, C, ...).
    """

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None
    ):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = Parameter(_vector(num_channels, 1.0, dtype))
            self.bias = Parameter(_vector(num_channels, 0.0, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if device is not None and device != "cpu":
            self.to_device(device)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
