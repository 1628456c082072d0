"""Differentiable functions (Tensor in, Tensor out) and the detection ops on plain arrays."""
from minimaskrcnn.ops.elementwise import clamp, exp, log, matmul, relu, sigmoid, sqrt, where
from minimaskrcnn.ops.reduce import max, mean, sum  # noqa: A004
from minimaskrcnn.ops.shape import cat, concatenate, gather, index_add, permute, reshape, scatter_add, stack
