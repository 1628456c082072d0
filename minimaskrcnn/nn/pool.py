"""Pooling layers: MaxPool2d (ResNet's stem), and RoIPool, RoIAlign and RoIWarp (one fixed-size grid
per box), as modules over the functions of ops/pool.py, ops/roi_pool.py, ops/roi_align.py, ops/roi_warp.py."""
from __future__ import annotations

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.module import Module
from minimaskrcnn.ops.roi_align import BoxesLike, roi_align
from minimaskrcnn.ops.roi_pool import roi_pool
from minimaskrcnn.ops.roi_warp import roi_warp
from minimaskrcnn.tensor import Tensor


class MaxPool2d(Module):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (see ``minimaskrcnn.ops.pool.max_pool2d``).

    Args:
        kernel_size: int or (KH, KW).
        stride: int or pair; None means ``kernel_size``.
        padding, dilation: int or pair.
        return_indices: must be False.
        ceil_mode: round the output size up.

    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2P - D(K - 1) - 1) / S) + 1.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class RoIAlign(Module):
    """RoIAlign as a layer, as torchvision.ops.RoIAlign: ``RoIAlign(7, 1 / 4, 2, True)(features, boxes)``.

    See ``minimaskrcnn.ops.roi_align.roi_align`` for the arguments and shapes (``mode="max"``: the
    largest sample of each bin). It has no parameters.
    """

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False, *,
                 mode: str = "avg"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode

    def forward(self, input, rois: BoxesLike) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                         mode=self.mode)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
            + (", mode='max'" if self.mode == "max" else "")
        )


class RoIWarp(Module):
    """RoIWarp as a layer (RoIPool's rounding, then RoIAlign's samples): ``RoIWarp(14, 1 / 16, 2)(features, boxes)``.

    See ``minimaskrcnn.ops.roi_warp.roi_warp`` for the arguments and shapes. It has no parameters.
    """

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, *, mode: str = "avg"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.mode = mode

    def forward(self, input, rois: BoxesLike) -> Tensor:
        return roi_warp(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, mode=self.mode)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, mode={self.mode!r}")


class RoIPool(Module):
    """RoIPool as a layer, as torchvision.ops.RoIPool: ``RoIPool(7, 1 / 16)(features, boxes)``.

    See ``minimaskrcnn.ops.roi_pool.roi_pool`` for the arguments and shapes. It has no parameters.
    """

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input, rois: BoxesLike) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
