"""Module and Parameter: the bookkeeping that turns functions into layers, as torch.nn.Module does.

A Module owns Parameters (learnable Tensors), buffers (state that is not learned, such as batch
norm's running statistics) and child Modules, all found by assigning attributes. From them come
``parameters()`` for the optimizer and ``state_dict()`` with PyTorch's dotted names
(``layer1.0.conv1.weight``), so torchvision checkpoints load by name. The layers lesson builds it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from minimaskrcnn.backend import cupy_or_none, get_array_module, to_numpy
from minimaskrcnn.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable weight of a Module: ``requires_grad=True``, registered on assignment.

    Args:
        data: an array (kept as it is: NumPy or CuPy) or array-like.
        requires_grad: False for a frozen weight.
    """

    def __init__(self, data: Any = None, requires_grad: bool = True):
        if data is None:
            data = np.zeros((0,), dtype=np.float32)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` did not match: keys the module expected but did not get, and the reverse."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, then assign Parameters, Modules and buffers
    (``register_buffer``) as attributes, and define ``forward``. Calling the module calls forward.

    Attributes:
        training: True in training mode (``train()``), False in eval mode (``eval()``); batch norm
            and the detection heads behave differently in the two.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args: Any, **kwargs: Any):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any):
        return self.forward(*args, **kwargs)

    # -------------------------------------------------------------------------- registration
    def _check_name(self, name: str, kind: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {kind} before Module.__init__() call")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f'{kind} name must be a non-empty string without ".", got {name!r}')

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a Parameter (or None, a declared but absent one such as ``bias=False``) under ``name``."""
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter {name!r} "
                            "(a Parameter or None is required)")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Add a buffer: state saved in ``state_dict`` (if ``persistent``) but not learned.

        Args:
            name: attribute name.
            tensor: a Tensor, an array (wrapped in a Tensor) or None.
            persistent: False keeps it out of ``state_dict``.
        """
        self._check_name(name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor if hasattr(tensor, "dtype") else np.asarray(tensor))
        self._forget(name)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a child module under ``name`` (what attribute assignment does)."""
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    def _forget(self, name: str) -> None:
        """Remove ``name`` from every registry (an attribute changes kind when reassigned)."""
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self._non_persistent_buffers.discard(name)
        self.__dict__.pop(name, None)

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                "(a Parameter or None is required)")
            params[name] = None
        elif params is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} "
                                "(a Module or None is required)")
            self._modules[name] = None
        elif params is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                value = Tensor(value)
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only called when ordinary lookup fails: look in the registries
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    # ------------------------------------------------------------------------------ iteration
    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module ("") and every descendant, parents before children."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            yield from module.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, module) of the direct children."""
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool = True):
        seen = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) of this module's parameters and, with ``recurse``, its descendants'.

        A parameter shared by two modules is listed once (under its first name).
        """
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, Tensor) of every buffer (persistent or not)."""
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> Module:
        """The descendant at dotted path ``target`` ("" is self), e.g. ``"backbone.body.layer1"``."""
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules or module._modules[part] is None:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} (in {target!r})")
            module = module._modules[part]
        return module

    # ------------------------------------------------------------------------------ state dict
    def _state_items(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, Tensor) in PyTorch's state_dict order: a module's own parameters, then its
        persistent buffers, then each child's in turn."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                yield prefix + name, b
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_items(prefix + name + ".")

    def state_dict(self, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """Every parameter and persistent buffer, by dotted name, as a host NumPy array (a copy).

        Args:
            prefix: prepended to every key.

        Returns:
            OrderedDict name -> np.ndarray, with the names and order ``torch.nn.Module.state_dict``
            gives for the same architecture (e.g. ``conv1.weight``, ``bn1.running_mean``,
            ``bn1.num_batches_tracked``).
        """
        return OrderedDict((name, np.array(to_numpy(t.data), copy=True)) for name, t in self._state_items(prefix))

    def _filter_state_dict(self, state_dict: dict, prefix: str) -> None:
        """Hook: edit the (copied) incoming state dict before loading; ``prefix`` is this module's.

        E.g. FrozenBatchNorm2d drops the ``num_batches_tracked`` a BatchNorm2d checkpoint carries.
        """

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values into this module's parameters and buffers by name (in place).

        Args:
            state_dict: name -> array (NumPy arrays, anything ``np.asarray`` accepts such as a CPU
                torch tensor, or Tensors), e.g. from ``state_dict()`` or a torchvision checkpoint.
            strict: raise if a key is missing or unexpected.

        Returns:
            ``IncompatibleKeys(missing_keys, unexpected_keys)``.

        Raises:
            RuntimeError: listing the missing and unexpected keys (when ``strict``) and every shape
                mismatch (always); nothing is copied then.

        Values are converted to each tensor's dtype and array module (NumPy or CuPy) and copied into
        the existing arrays, so optimizers that hold these Parameters keep working.
        """
        state_dict = OrderedDict(state_dict)
        for prefix, module in self.named_modules():
            module._filter_state_dict(state_dict, prefix + "." if prefix else "")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        values = {}
        for name, t in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = to_numpy(value)
            if tuple(value.shape) != t.shape:
                errors.append(f"size mismatch for {name}: copying a param with shape {tuple(value.shape)}, "
                              f"the shape in the current model is {t.shape}")
            values[name] = value
        if strict and unexpected:
            errors.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected))
        if strict and missing:
            errors.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        for name, value in values.items():
            t = own[name]
            xp = get_array_module(t.data)
            t.data[...] = xp.asarray(value.astype(t.dtype, copy=False))
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or eval mode on this module and every descendant."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Eval mode: batch norm uses its running statistics, detection heads return detections."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze every parameter."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (None, or zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = get_array_module(p.grad).zeros_like(p.grad)

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every descendant (children first) and then on self; returns self."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------------- dtype and device
    def _apply(self, convert: Callable, floating_only: bool) -> Module:
        """Replace the array of every parameter, buffer and gradient by ``convert(array)``.

        The Parameter objects stay the same (only ``.data`` changes), but convert before you
        build the optimizer: its state (momentum) is not converted.
        """
        seen = set()
        for module in self.modules():
            for t in list(module._parameters.values()) + list(module._buffers.values()):
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                if floating_only and t.dtype.kind != "f":
                    continue
                t.data = convert(t.data)
                if t.grad is not None:
                    t.grad = convert(t.grad)
        return self

    def to_dtype(self, dtype) -> Module:
        """Cast floating-point parameters and buffers to ``dtype`` (integer buffers stay as they are)."""
        dtype = np.dtype(dtype)
        return self._apply(lambda a: a.astype(dtype), floating_only=True)

    def double(self) -> Module:
        """float64 everywhere (what ``gradcheck`` needs)."""
        return self.to_dtype(np.float64)

    def float(self) -> Module:
        return self.to_dtype(np.float32)

    def to_device(self, device: str) -> Module:
        """Move every parameter and buffer to ``"cuda"`` (CuPy arrays) or ``"cpu"`` (NumPy arrays).

        Raises:
            RuntimeError: for "cuda" when CuPy or a GPU is missing (under the CUDA simulator the
                arrays stay NumPy: keep the model on "cpu" there).
        """
        if device == "cpu":
            return self._apply(to_numpy, floating_only=False)
        if device == "cuda":
            cp = cupy_or_none()
            if cp is None:
                raise RuntimeError("to_device('cuda'): CuPy with a visible GPU is needed")
            return self._apply(cp.asarray, floating_only=False)
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    def cpu(self) -> Module:
        return self.to_device("cpu")

    def cuda(self) -> Module:
        return self.to_device("cuda")

    def to(self, target) -> Module:
        """``to("cuda")``/``to("cpu")`` moves (see ``to_device``); ``to(np.float64)`` casts (see ``to_dtype``)."""
        if isinstance(target, str) and target in ("cpu", "cuda"):
            return self.to_device(target)
        return self.to_dtype(target)

    # ---------------------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr`` (its constructor arguments)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, module in self._modules.items():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"
