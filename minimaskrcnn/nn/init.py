"""Weight initialisation, in place, with PyTorch's names and formulas (torch.nn.init).

Random values come from one NumPy generator, reseeded with ``manual_seed(seed)``; like PyTorch's,
it starts from a fixed seed, so a fresh process builds the same weights. Values are drawn in
float64 and cast to the tensor's dtype and array module (NumPy or CuPy).
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.tensor import Tensor

_DEFAULT_SEED = 0
_generator = np.random.default_rng(_DEFAULT_SEED)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator every init function draws from (``torch.manual_seed`` for weights)."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def get_generator() -> np.random.Generator:
    """The NumPy generator init functions use when none is passed."""
    return _generator


def _fill(tensor: Tensor, values) -> Tensor:
    """Write ``values`` (NumPy, any float dtype) into ``tensor``'s array, in place, in its dtype."""
    xp = get_array_module(tensor.data)
    tensor.data[...] = xp.asarray(np.asarray(values).astype(tensor.dtype))
    return tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activations' variance stable through ``nonlinearity`` (PyTorch's table).

    Args:
        nonlinearity: "linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu", ...
        param: the negative slope of "leaky_relu" (default 0.01).

    Returns:
        1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2) for relu, sqrt(2 / (1 + slope**2)) for
        leaky_relu, 3/4 for selu.
    """
    if nonlinearity in (
        "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid"
    ):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: size(1) * receptive field and size(0) * receptive field.

    For a conv weight (C_out, C_in/groups, KH, KW) that is (C_in/groups*KH*KW, C_out*KH*KW); for
    a transposed conv weight (C_in, C_out/groups, KH, KW) PyTorch's rule gives C_out/groups*KH*KW
    as fan_in.
    """
    if tensor.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive_field = 1
    for n in tensor.shape[2:]:
        receptive_field *= n
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


calculate_fan_in_and_fan_out = _calculate_fan_in_and_fan_out


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Fill with U(a, b)."""
    return _fill(tensor, (generator or _generator).uniform(a, b, size=tensor.shape))


def normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: np.random.Generator | None = None
) -> Tensor:
    """Fill with N(mean, std**2) (e.g. the RPN head's convs: std 0.01)."""
    return _fill(tensor, (generator or _generator).normal(mean, std, size=tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    return _fill(tensor, np.full(tensor.shape, val))


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: np.random.Generator | None = None) -> Tensor:
    """He initialisation, uniform: U(-bound, bound) with ``bound = gain * sqrt(3 / fan)``.

    Args:
        tensor: a weight of 2 or more dimensions.
        a: the negative slope of the leaky ReLU that follows (``gain = sqrt(2 / (1 + a**2))``);
            PyTorch's default conv/linear init uses a=sqrt(5), which gives ``bound = 1/sqrt(fan_in)``.
        mode: "fan_in" (keeps forward variance) or "fan_out" (backward).
        nonlinearity: "leaky_relu" (uses ``a``) or "relu", ...
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: np.random.Generator | None = None) -> Tensor:
    """He initialisation, normal: N(0, std**2) with ``std = gain / sqrt(fan)``.

    torchvision's ResNet and mask head use ``mode="fan_out", nonlinearity="relu"``.
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Glorot initialisation, uniform: ``bound = gain * sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Glorot initialisation, normal: ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)
