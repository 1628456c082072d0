"""The optimizer's loops: SGD's update of one parameter, and a gradient's sum of squares.

SGD with momentum as torch.optim.SGD (Sutskever et al., ICML 2013, in PyTorch's form), per element:

    g = grad (or -grad to maximize);  g = g + weight_decay * p
    buf = g (the first step);  buf = momentum * buf + (1 - dampening) * g (later steps)
    g = g + momentum * buf (Nesterov) or buf;  p = p - lr * g

``reference.py`` is array code (NumPy, and CuPy on the GPU: the "numpy" and "cuda" backends run
it), one whole-array operation after another with a temporary for each; ``cpu.py`` is Numba, one
pass over the parameter with no temporaries, doing the same float operations in the same order on
each element in the parameter's dtype, so that both give the same bits (test). ``sum_of_squares`` is
the gradient norm's part per parameter (``optim.grad_norm``), summed in float64.
"""
from __future__ import annotations


def check_sgd_arrays(param, grad, momentum_buffer) -> None:
    """Raise ValueError/TypeError unless grad and momentum_buffer (or None) match param's shape and dtype."""
    for name, a in (("grad", grad), ("momentum_buffer", momentum_buffer)):
        if a is None:
            continue
        if tuple(a.shape) != tuple(param.shape):
            raise ValueError(f"sgd: {name} has shape {tuple(a.shape)}, the parameter {tuple(param.shape)}")
        if a.dtype != param.dtype:
            raise TypeError(f"sgd: {name} is {a.dtype}, the parameter {param.dtype}")
