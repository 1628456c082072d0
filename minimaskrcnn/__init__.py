"""minimaskrcnn: Mask R-CNN from scratch in NumPy, with a manual autograd engine you can read.

Start with ``Tensor`` and ``gradcheck``; layers are in ``minimaskrcnn.nn``, detection ops in
``minimaskrcnn.ops`` and the model in ``minimaskrcnn.models``; ``record_intermediates`` looks inside a
forward pass. The lessons/ notebooks teach each piece.
"""
from minimaskrcnn.backend import get_backend, set_backend, use_backend
from minimaskrcnn.function import (
    AnomalyError,
    Context,
    Function,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_detect_anomaly,
)
from minimaskrcnn.gradcheck import gradcheck, rel_error
from minimaskrcnn.intermediates import record_intermediates
from minimaskrcnn.ops import cat, clamp, exp, gather, index_add, log, matmul, relu, scatter_add, sigmoid, stack, where
from minimaskrcnn.tensor import Tensor, as_tensor, ones, tensor, zeros

__version__ = "0.1.0"
