"""Layers as Modules (PyTorch's torch.nn names): Module and Parameter, containers, conv, linear,
norm, pooling (including RoIPool and RoIAlign, torchvision.ops' layers, and RoIWarp) and activation layers,
``init`` for weights and ``functional`` (import as F)."""
from minimaskrcnn.nn import functional, init
from minimaskrcnn.nn.activation import ReLU, Sigmoid
from minimaskrcnn.nn.container import ModuleDict, ModuleList, Sequential
from minimaskrcnn.nn.conv import Conv2d, ConvTranspose2d
from minimaskrcnn.nn.linear import Flatten, Identity, Linear
from minimaskrcnn.nn.module import IncompatibleKeys, Module, Parameter
from minimaskrcnn.nn.norm import BatchNorm2d, FrozenBatchNorm2d, GroupNorm
from minimaskrcnn.nn.pool import MaxPool2d, RoIAlign, RoIPool, RoIWarp

__all__ = [
    "Module", "Parameter", "IncompatibleKeys", "Sequential", "ModuleList", "ModuleDict",
    "Conv2d", "ConvTranspose2d", "Linear", "Identity", "Flatten", "ReLU", "Sigmoid", "MaxPool2d",
    "RoIAlign", "RoIPool", "RoIWarp",
    "BatchNorm2d", "FrozenBatchNorm2d", "GroupNorm", "functional", "init",
]
