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
        max_abs_error: the largest |analytic - numeric| over all checked elements (before ``atol``).
        per_input_abs: the largest |analytic - numeric| of each checked input.
        tol, atol: the tolerances the check used.

    Differences smaller than ``atol`` count as zero relative error (where both gradients are ~0 the
    relative error means nothing), so ``max_rel_error`` can be 0.0 although the gradients differ by
    rounding; ``max_abs_error`` and the report show the difference that remained. When every difference
    is below ``atol``, ``element`` is where the absolute difference is largest.
    """

    max_rel_error: float
    input_index: int
    element: tuple
    analytic: float
    numeric: float
    passed: bool
    per_input: dict
    max_abs_error: float = 0.0
    per_input_abs: dict | None = None
    tol: float = 1e-6
    atol: float = 1e-9

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        lines = [
            "gradcheck " + ("passed" if self.passed else "FAILED")
            + f" (relative error < {self.tol:.0e}; differences below atol {self.atol:.0e} count as 0)"
        ]
        per_abs = self.per_input_abs or {}
        for i, err in self.per_input.items():
            lines.append(f"  input {i}: max |analytic - numeric| {per_abs.get(i, float('nan')):.2e}, "
                         f"max relative error {err:.2e}")
        difference = abs(self.analytic - self.numeric)
        lines.append(
            f"  {'worst' if self.max_rel_error > 0 else 'largest difference'}: input {self.input_index} at "
            f"{self.element}: analytic {self.analytic:.12g}, numeric {self.numeric:.12g}, "
            f"|difference| {difference:.2e}, relative {float(rel_error(self.analytic, self.numeric)):.2e}"
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
    analytic = {i: to_numpy(inputs[i].grad) if inputs[i].grad is not None else np.zeros(inputs[i].shape)
                for i in checked}

    def objective() -> float:
        with no_grad():
            return float(to_numpy((fn(*inputs).data * dout).sum()))

    worst = (-1.0, checked[0], (), 0.0, 0.0)
    largest = (-1.0, checked[0], (), 0.0, 0.0)  # the largest absolute difference, for the report
    per_input, per_input_abs = {}, {}
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
        difference = np.abs(analytic[i] - numeric)
        err[difference < atol] = 0.0
        per_input[i] = float(err.max()) if err.size else 0.0
        per_input_abs[i] = float(difference.max()) if difference.size else 0.0
        if difference.size and difference.max() > largest[0]:
            at = np.unravel_index(int(difference.argmax()), difference.shape)
            where = tuple(int(a) for a in at)
            largest = (float(difference.max()), i, where, float(analytic[i][at]), float(numeric[at]))
        if err.size and err.max() > worst[0]:
            at = np.unravel_index(int(err.argmax()), err.shape)
            worst = (float(err.max()), i, tuple(int(a) for a in at), float(analytic[i][at]), float(numeric[at]))
        for j in checked:
            inputs[j].grad = None
    if worst[0] <= 0.0 and largest[0] >= 0.0:  # every difference below atol: point at the largest one
        worst = (0.0, *largest[1:])
    result = GradcheckResult(
        max_rel_error=max(worst[0], 0.0),
        input_index=worst[1],
        element=worst[2],
        analytic=worst[3],
        numeric=worst[4],
        passed=worst[0] < tol,
        per_input=per_input,
        max_abs_error=max(largest[0], 0.0),
        per_input_abs=per_input_abs,
        tol=tol,
        atol=atol,
    )
    if verbose:
        print(result.report())
    if raise_on_failure and not result.passed:
        raise AssertionError(result.report())
    return result
