"""Gradient checking: analytic gradients against central finite differences, in float64.

``gradcheck(fn, inputs)`` perturbs every element of every input that requires grad by +-eps,
compares (f(x+eps) - f(x-eps)) / 2eps, contracted with a random upstream gradient, against what
``backward`` gives, and reports the largest relative error. Lesson 04 writes it from scratch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.function import no_grad
from minimaskrcnn.tensor import Tensor


def rel_error(a, b, floor: float = 1e-8) -> np.ndarray:
    """|a - b| / max(|a| + |b|, floor), elementwise (CS231n's relative error)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)


@dataclass
class GradcheckResult:
    """What ``gradcheck`` found.

    Attributes:
        max_rel_error: the largest relative error over all checked elements.
        input_index: which input (position in ``inputs``) holds it.
        element: the multi-index of that element.
        analytic, numeric: the two gradient values there.
        passed: max_rel_error < tolerance.
        per_input: the largest relative error of each checked input.
    """

    max_rel_error: float
    input_index: int
    element: tuple
    analytic: float
    numeric: float
    passed: bool
    per_input: dict

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        lines = ["gradcheck " + ("passed" if self.passed else "FAILED")]
        for i, err in self.per_input.items():
            lines.append(f"  input {i}: max relative error {err:.2e}")
        lines.append(
            f"  worst: input {self.input_index} at {self.element}: "
            f"analytic {self.analytic:.10g}, numeric {self.numeric:.10g}, rel error {self.max_rel_error:.2e}"
        )
        return "\n".join(lines)


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence,
    eps: float = 1e-6,
    tol: float = 1e-6,
    atol: float = 1e-9,
    seed: int = 0,
    verbose: bool = False,
    raise_on_failure: bool = False,
) -> GradcheckResult:
    """Compare ``fn``'s analytic gradients with central finite differences.

    Args:
        fn: takes the inputs (Tensors, plus anything else passed through) and returns one Tensor.
        inputs: the arguments of ``fn``; Tensors with ``requires_grad=True`` are checked. They
            should be float64 (finite differences in float32 are too coarse to mean anything).
        eps: the finite-difference step.
        tol: the largest relative error that passes.
        atol: differences below this absolute size count as zero error (both gradients ~0).
        seed: seed of the random upstream gradient ``dout``.
        verbose: print ``result.report()``.
        raise_on_failure: raise AssertionError with the report when the check fails.

    Returns:
        a ``GradcheckResult`` (truthy when it passed).

    Note: fn is evaluated 2 * (number of checked elements) times; keep the inputs small.
    """
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} is {inputs[i].dtype}; use float64")

    out = fn(*inputs)
    rng = np.random.default_rng(seed)
    xp = get_array_module(out.data)
    dout = xp.asarray(rng.standard_normal(out.shape))
    for i in checked:
        inputs[i].grad = None
    out.backward(dout)
    analytic = {i: to_numpy(inputs[i].grad) if inputs[i].grad is not None else np.zeros(inputs[i].shape) for i in checked}

    def objective() -> float:
        with no_grad():
            return float(to_numpy((fn(*inputs).data * dout).sum()))

    worst = (-1.0, checked[0], (), 0.0, 0.0)
    per_input = {}
    for i in checked:
        x = inputs[i].data
        numeric = np.zeros(x.shape)
        for idx in np.ndindex(*x.shape):
            old = x[idx].item()
            x[idx] = old + eps
            f_plus = objective()
            x[idx] = old - eps
            f_minus = objective()
            x[idx] = old
            numeric[idx] = (f_plus - f_minus) / (2 * eps)
        err = np.array(rel_error(analytic[i], numeric))  # an array even for 0-d inputs
        err[np.abs(analytic[i] - numeric) < atol] = 0.0
        per_input[i] = float(err.max()) if err.size else 0.0
        if err.size and err.max() > worst[0]:
            at = np.unravel_index(int(err.argmax()), err.shape)
            worst = (float(err.max()), i, tuple(int(a) for a in at), float(analytic[i][at]), float(numeric[at]))
        for j in checked:
            inputs[j].grad = None
    result = GradcheckResult(
        max_rel_error=max(worst[0], 0.0),
        input_index=worst[1],
        element=worst[2],
        analytic=worst[3],
        numeric=worst[4],
        passed=worst[0] < tol,
        per_input=per_input,
    )
    if verbose:
        print(result.report())
    if raise_on_failure and not result.passed:
        raise AssertionError(result.report())
    return result
