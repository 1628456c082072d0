"""SGD with momentum, the warm-up + multi-step learning-rate schedule, and gradient clipping.

The update rule, the parameter groups and the state dicts follow ``torch.optim`` exactly, so a run
can be compared step by step with PyTorch and resumed bit for bit. Mask R-CNN trains with
SGD(lr=0.02 for 16 images, momentum=0.9, weight_decay=1e-4), a linear warm-up and two 10x decays.
The training lesson uses all three.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import numpy as np

from minimaskrcnn.backend import get_array_module, get_backend, kernel, to_numpy
from minimaskrcnn.function import no_grad
from minimaskrcnn.kernels.optim import reference as optim_reference
from minimaskrcnn.tensor import Tensor


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


class Optimizer:
    """Base class: parameter groups (each a dict with "params" and its own hyper-parameters) and state.

    Args:
        params: an iterable of Tensors (one group), or of dicts ``{"params": [...], "lr": ..., ...}``
            (several groups; missing hyper-parameters come from ``defaults``).
        defaults: hyper-parameter name -> default value.

    Attributes:
        param_groups: the list of group dicts.
        state: Parameter -> its state dict (e.g. {"momentum_buffer": array}).
    """

    def __init__(self, params: Iterable, defaults: dict):
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict = {}
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; its missing hyper-parameters take the optimizer's defaults."""
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (None, or zeros with ``set_to_none=False``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = get_array_module(p.grad).zeros_like(p.grad)

    def _params(self) -> list:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """The optimizer's state with parameters replaced by their index, PyTorch's layout.

        Returns:
            ``{"state": {index: {name: np.ndarray}}, "param_groups": [{..hyper-parameters..,
            "params": [index, ...]}]}``; arrays are host NumPy copies.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {}
        for p in self._params():
            if p in self.state:
                state[index[id(p)]] = {k: np.array(to_numpy(v), copy=True) if hasattr(v, "shape") else v
                                       for k, v in self.state[p].items()}
        groups = []
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = [index[id(p)] for p in group["params"]]
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state saved by ``state_dict`` (same parameters, same order).

        Raises:
            ValueError: if the number of groups or of parameters per group differs.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
        params = self._params()
        self.state = {}
        for i, entries in state_dict["state"].items():
            p = params[int(i)]
            xp = get_array_module(p.data)
            self.state[p] = {k: xp.asarray(np.asarray(v), dtype=p.dtype).copy() if hasattr(v, "shape") else v
                             for k, v in entries.items()}
        for saved, group in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = v

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's rule exactly (``torch.optim.SGD``).

    For each parameter p with gradient g, per step::

        g = g + weight_decay * p                              (L2 penalty)
        buf = g  (first step)  or  momentum * buf + (1 - dampening) * g
        g = g + momentum * buf  (nesterov)  or  buf
        p = p - lr * g

    Args:
        params: Tensors or parameter-group dicts (see ``Optimizer``; ``param_groups_weight_decay``
            builds groups without weight decay on norm layers and biases).
        lr: learning rate.
        momentum, dampening, weight_decay: as above (0 turns each off).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        maximize: ascend instead of descend.
    """

    def __init__(self, params: Iterable, lr: float = required, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False):
        if lr is not required and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def step(self) -> None:
        """Update every parameter that has a gradient, in place (its ``.data`` array).

        The update of each parameter is kernels/optim's ``sgd_update_``: Numba on the "numba"
        backend, its array code on "numpy" and "cuda" (the same bits).
        """
        with no_grad():
            for group in self.param_groups:
                hyper = (group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                         group["nesterov"], group["maximize"])
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state.setdefault(p, {}) if group["momentum"] != 0 else None
                    buf = state.get("momentum_buffer") if state is not None else None
                    buf = _optim_kernel(p.data).sgd_update_(p.data, p.grad, buf, *hyper)
                    if state is not None:
                        state["momentum_buffer"] = buf


def _optim_kernel(a):
    """kernels/optim's Numba module on the numba backend (NumPy arrays), else its reference (array code)."""
    if get_backend() == "numba" and type(a) is np.ndarray:
        return kernel("optim")
    return optim_reference


def param_groups_weight_decay(module, weight_decay: float, norm_weight_decay: float = 0.0,
                              bias_weight_decay: float | None = 0.0, norm_classes: tuple | None = None) -> list[dict]:
    """Parameter groups that exempt norm layers (and, by default, biases) from weight decay.

    Args:
        module: the model; only parameters with ``requires_grad`` are included.
        weight_decay: for every other parameter (conv and linear weights).
        norm_weight_decay: for the parameters of norm layers (``norm_classes``).
        bias_weight_decay: for parameters named "bias" outside norm layers; None means
            ``weight_decay`` (no special case).
        norm_classes: module types counted as norm layers (default: BatchNorm2d, GroupNorm).

    Returns:
        a list of ``{"params": [...], "weight_decay": value}`` dicts (empty groups left out), ready
        for ``SGD(groups, lr=..., momentum=...)``.
    """
    if norm_classes is None:
        from minimaskrcnn.nn import BatchNorm2d, GroupNorm

        norm_classes = (BatchNorm2d, GroupNorm)
    groups = {"other": [], "norm": [], "bias": []}
    seen = set()
    for module_ in module.modules():
        for name, p in module_._parameters.items():
            if p is None or not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module_, norm_classes):
                groups["norm"].append(p)
            elif name == "bias" and bias_weight_decay is not None:
                groups["bias"].append(p)
            else:
                groups["other"].append(p)
    decay = {"other": weight_decay, "norm": norm_weight_decay, "bias": bias_weight_decay}
    return [{"params": ps, "weight_decay": decay[k]} for k, ps in groups.items() if ps]


# ------------------------------------------------------------------------------ LR schedules
class LRScheduler:
    """Base class: sets each group's "lr" to ``get_lr()`` after every ``step()``, as torch's schedulers.

    Creating a scheduler performs the first step (``last_epoch`` becomes 0), so group "lr" already
    holds the schedule's value for iteration 0.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError("param 'initial_lr' is not specified in param_groups when resuming an optimizer")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def get_lr(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        """Advance one iteration (call it after ``optimizer.step()``)."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rate of each group set by the last ``step()``."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer (plain Python values)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


class WarmupMultiStepLR(LRScheduler):
    """Linear (or constant) warm-up, then decay by ``gamma`` at each milestone; stepped every iteration.

    ``lr(t) = base_lr * warmup(t) * gamma ** (number of milestones <= t)``, where for
    ``t < warmup_iters`` ``warmup(t) = warmup_factor + (1 - warmup_factor) * t / warmup_iters``
    ("linear") or ``warmup_factor`` ("constant"), and 1 afterwards. This is Detectron's and
    maskrcnn-benchmark's schedule; torchvision's detection reference gets the same numbers from
    ``LinearLR(start_factor=warmup_factor, total_iters=warmup_iters)`` chained with ``MultiStepLR``.

    Args:
        optimizer: the optimizer whose groups' "lr" this sets.
        milestones: increasing iteration numbers at which the rate is multiplied by gamma.
        gamma: the decay factor.
        warmup_factor: the fraction of base_lr at iteration 0 (torchvision's reference: 1/1000).
        warmup_iters: length of the warm-up in iterations (0: none).
        warmup_method: "linear" or "constant".
        last_epoch: the last iteration done (-1 for a fresh start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        warmup_factor: float = 1.0 / 1000,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        milestones = list(milestones)
        if milestones != sorted(milestones):
            raise ValueError(f"milestones should be a list of increasing integers, got {milestones}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        self.milestones, self.gamma = milestones, gamma
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup_factor, warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def lr_factor(self, t: int) -> float:
        """The multiplier of base_lr at iteration ``t``."""
        warmup = 1.0
        if t < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                warmup = self.warmup_factor + (1.0 - self.warmup_factor) * t / self.warmup_iters
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, t)

    def get_lr(self) -> list[float]:
        factor = self.lr_factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]


# ------------------------------------------------------------------------------ clipping
def grad_norm(parameters: Iterable) -> float:
    """The 2-norm of all gradients together (parameters without a ``.grad`` are skipped), as a float.

    Each gradient's sum of squares stays on its device and one number comes to the host at the end
    (one sync per step on a GPU instead of one per parameter, docs/GPU.md). The squares are summed in
    float64: float32 overflows at |g| > 1.8e19 and would report a finite gradient as Inf.

    Returns:
        the norm, or NaN when a gradient holds NaN/Inf (the trainer's non-finite check).
    """
    grads = (p.grad for p in parameters if p.grad is not None)
    total = float(sum((_optim_kernel(g).sum_of_squares(g) for g in grads), 0.0))
    return math.sqrt(total) if math.isfinite(total) else float("nan")


def clip_grad_norm_(parameters: Iterable | Tensor, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale gradients in place so that their total norm is at most ``max_norm`` (``torch.nn.utils``).

    Args:
        parameters: Tensors (their ``.grad`` is used; those without one are skipped).
        max_norm: the largest total norm allowed.
        norm_type: p of the p-norm (``math.inf`` for the max norm).
        error_if_nonfinite: raise if the total norm is NaN or Inf.

    Returns:
        the total norm of all gradients together, before clipping (a float). The gradients are
        multiplied by ``min(1, max_norm / (total_norm + 1e-6))``.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    if norm_type == math.inf:
        norms = [float(abs(g).max()) for g in grads]
        total = max(norms)
    else:
        norms = [float((abs(g.astype(np.float64)) ** norm_type).sum()) ** (1.0 / norm_type) for g in grads]
        total = float(np.sum(np.asarray(norms) ** norm_type) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be clipped")
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= g.dtype.type(coef)
    return total
