"""A stand-in for CuPy in CI: NumPy arrays that behave like device arrays and report every copy to the host.

Numba's CUDA simulator runs our CUDA kernels on NumPy arrays, so in CI a "device" array and a host
array are the same thing and a stray ``np.asarray(x)`` or ``float(x)`` on a GPU array goes unseen.
This module closes that gap. ``DeviceArray`` is a NumPy subclass whose class claims to come from
``cupy``, so ``backend.get_array_module`` takes it for a CuPy array and returns ``FakeCuPy``, a
module that wraps NumPy's functions so that they make DeviceArrays. Like CuPy:

- mixing a DeviceArray with a host ``np.ndarray`` in a ufunc or an array function raises
  ``HostDeviceMixError`` (CuPy raises TypeError); host arrays become device arrays only through
  ``xp.asarray`` / ``xp.array`` (a host-to-device copy), as indices, or as assigned values;
- reductions and integer indexing give 0-d DeviceArrays, not host scalars;
- ``.get()`` / ``xp.asnumpy`` (what ``backend.to_numpy`` calls), ``float()``, ``int()``, ``bool()``,
  ``.item()``, ``.tolist()`` and ``operator.index`` copy to the host: each call is recorded in
  ``FakeCuPy.transfers`` with the line of library code that made it (``Transfer``), so a test can
  require that a training step makes none outside an allow-list of documented syncs.

``install`` also wraps ``np.asarray``, ``np.array`` and ``np.ascontiguousarray`` so that they raise
when library code hands them a device array, as CuPy's ``__array__`` does (NumPy itself would give a
host view of the subclass without any hook). What stays unseen: NumPy converting a device array in
C (e.g. ``np.float32(x)``), and converters imported by name (``from numpy import asarray``) before
``install``; a host array made that way is still caught where it meets a device array.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
import types
from dataclasses import dataclass

import numpy as np

import minimaskrcnn

_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (minimaskrcnn.__file__, __import__("minimaskrcnn.kernels", fromlist=["_"]).__file__)
)


class HostDeviceMixError(TypeError):
    """A host NumPy array met a device array in one operation (CuPy raises TypeError there)."""


@dataclass(frozen=True)
class Transfer:
    """One copy from the device to the host: what kind, and the library line that asked for it."""

    kind: str  # "get", "float", "int", "bool", "item", "tolist", "index"
    site: str  # "minimaskrcnn/ops/boxes.py:123 in nms" (innermost frame inside the library)
    nbytes: int

    @property
    def where(self) -> str:
        """'path/file.py:function' without the line number, stable under edits above the line."""
        if " in " not in self.site:
            return self.site  # "<outside minimaskrcnn>"
        path, rest = self.site.split(":", 1)
        return f"{path}:{rest.split(' in ', 1)[1]}"


# frames that only pass a transfer on: the site reported is their caller's
_PASS_THROUGH = {
    ("minimaskrcnn/backend.py", None),  # to_numpy
    ("minimaskrcnn/tensor.py", "numpy"),
    ("minimaskrcnn/tensor.py", "item"),
}


def _library_site() -> str:
    """The innermost stack frame inside minimaskrcnn (library or kernels), as 'relpath:line in func'."""
    for frame in reversed(traceback.extract_stack()):
        filename = os.path.abspath(frame.filename)
        for root in _LIBRARY_DIRS:
            if filename.startswith(root):
                rel = os.path.relpath(filename, os.path.dirname(root.rstrip(os.sep))).replace(os.sep, "/")
                if (rel, None) in _PASS_THROUGH or (rel, frame.name) in _PASS_THROUGH:
                    break
                if frame.name in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"):
                    break  # report the function around the comprehension (Python 3.12 inlines them)
                return f"{rel}:{frame.lineno} in {frame.name}"
    return "<outside minimaskrcnn>"


def _in_kernel() -> bool:
    """True inside a kernel run by Numba's simulator (one Python thread per CUDA thread): there the
    arrays are the kernel's own device memory and behave as plain NumPy arrays."""
    return type(threading.current_thread()).__name__ == "BlockThread"


def simulated() -> bool:
    """True when the CUDA kernels run in Numba's simulator (no GPU with CuPy): the fake is used then."""
    from minimaskrcnn.backend import cupy_or_none

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    cupy = sys.modules.get("cupy")
    return isinstance(cupy, _FakeCuPyModule) or cupy_or_none() is None


# --------------------------------------------------------------------------------- the array
class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy array (see the module docstring)."""

    __array_priority__ = 100.0  # below Tensor's 1000, so that ``array * Tensor`` is Tensor.__rmul__

    # ------------------------------------------------------------------ host transfers
    def _transfer(self, kind: str) -> None:
        if not _in_kernel():
            FakeCuPy.record(kind, self)

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        """The host copy (CuPy's ``ndarray.get``)."""
        self._transfer("get")
        host = np.array(self.view(np.ndarray), copy=True, order=order)
        if out is not None:
            out[...] = host
            return out
        return host

    def __float__(self):
        self._transfer("float")
        return float(self.view(np.ndarray))

    def __int__(self):
        self._transfer("int")
        return int(self.view(np.ndarray))

    def __bool__(self):
        self._transfer("bool")
        return bool(self.view(np.ndarray))

    def __index__(self):
        self._transfer("index")
        return self.view(np.ndarray).__index__()

    def item(self, *args):
        self._transfer("item")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        self._transfer("tolist")
        return self.view(np.ndarray).tolist()

    # ---------------------------------------------------------------------- CuPy-like
    def __getitem__(self, index):
        if _in_kernel():  # a kernel reading its memory: plain NumPy, as fast as it gets
            return super().__getitem__(index)
        return _as_device(super().__getitem__(_to_host_index(index)))

    def __setitem__(self, index, value):
        if _in_kernel():
            return super().__setitem__(index, value)
        # assigning a host array is a host-to-device copy, which CuPy allows
        if isinstance(value, DeviceArray):
            value = value.view(np.ndarray)
        super().__setitem__(_to_host_index(index), value)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def argsort(self, axis=-1, kind=None, order=None):
        return _as_device(self.view(np.ndarray).argsort(axis, kind or "stable", order))  # CuPy sorts stably

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        in_kernel = _in_kernel()
        if not in_kernel:
            _check_no_mix((ufunc.__name__, inputs, kwargs.get("out", ())))
        inputs = _unwrap(inputs)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if method == "at":
            return None
        return result if in_kernel else _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _check_no_mix((func.__name__, args, kwargs))
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __repr__(self) -> str:  # printing is for debugging: no transfer recorded
        return "DeviceArray(" + repr(self.view(np.ndarray))[6:]


DeviceArray.__module__ = "cupy"  # what backend.get_array_module looks at


def _is_host_array(a) -> bool:
    return isinstance(a, np.ndarray) and not isinstance(a, DeviceArray)


def _walk(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _walk(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _walk(o)
    else:
        yield obj


def _check_no_mix(what) -> None:
    name, *objs = what
    leaves = list(_walk(objs))
    if any(isinstance(a, DeviceArray) for a in leaves):
        host = [a for a in leaves if _is_host_array(a)]
        if host:
            shapes = ", ".join(str(h.shape) for h in host)
            raise HostDeviceMixError(
                f"{name}: host NumPy array(s) of shape {shapes} mixed with device arrays at "
                f"{_library_site()} (CuPy raises TypeError here: move them with xp.asarray first)"
            )


def _unwrap(obj):
    if isinstance(obj, DeviceArray):
        return obj.view(np.ndarray)
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _as_device(a):
    if isinstance(a, DeviceArray):
        return a
    if isinstance(a, np.ndarray):
        return a.view(DeviceArray)
    if isinstance(a, np.generic):  # CuPy reductions and integer indexing give 0-d arrays
        return _NUMPY_ASARRAY(a).view(DeviceArray)
    return a


def _wrap(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        return _as_device(obj)
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _to_host_index(index):
    """Indices may be device or host arrays (CuPy copies host ones to the device): plain views."""
    return _unwrap(index)


# -------------------------------------------------------------------------------- the module
# functions that take host data and make device arrays: the explicit host-to-device copies
_FROM_HOST = {"asarray", "array", "ascontiguousarray", "asanyarray", "copy"}


class _FakeCuPyModule(types.ModuleType):
    """``import cupy`` while the fake is installed: NumPy's namespace, making DeviceArrays."""

    ndarray = DeviceArray

    def __init__(self):
        super().__init__("cupy", "A NumPy-backed stand-in for CuPy (tests/gpu/fake_cupy.py).")
        self.transfers: list[Transfer] = []
        self.recording = True
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None),
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        )

    def record(self, kind: str, array) -> None:
        if self.recording:
            self.transfers.append(Transfer(kind, _library_site(), int(array.nbytes)))

    def clear(self) -> None:
        self.transfers.clear()

    def asnumpy(self, a, stream=None, order="C", out=None):
        if isinstance(a, DeviceArray):
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    def get_array_module(self, *arrays):
        return self if any(isinstance(a, DeviceArray) for a in arrays) else np

    def __getattr__(self, name: str):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, constants (np.float32, np.inf, np.newaxis, ...)
        if name in _FROM_HOST:

            def from_host(a, *args, **kwargs):
                return _as_device(np.array(_unwrap(a), *args, copy=True, **kwargs) if name == "copy"
                                  else attr(_unwrap(a), *args, **kwargs))

            return from_host

        if isinstance(attr, np.ufunc):
            return _FakeUfunc(attr)
        if name == "argsort":  # CuPy's sort is stable (a radix sort); NumPy's default is not
            return _device_function(lambda a, axis=-1, kind=None: np.argsort(a, axis, kind or "stable"), name)
        return _device_function(attr, name)


def _device_function(func, name: str, index_args: tuple[int, ...] = ()):
    """``func`` on device arrays only (host arrays raise), giving device arrays; the positional
    arguments in ``index_args`` are indices, which may be host arrays (CuPy copies those over)."""

    def device_function(*args, **kwargs):
        checked = [a for i, a in enumerate(args) if i not in index_args]
        host = [a for a in _walk((checked, kwargs)) if _is_host_array(a)]
        if host:
            raise HostDeviceMixError(
                f"cupy.{name}: got host NumPy array(s) of shape "
                f"{', '.join(str(h.shape) for h in host)} at {_library_site()} "
                "(CuPy functions take device arrays: move them with xp.asarray first)"
            )
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    return device_function


class _FakeUfunc:
    """``cupy.add`` and friends: callable, with ``at`` / ``reduce`` / ... on device arrays."""

    def __init__(self, ufunc: np.ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__
        self._call = _device_function(ufunc, ufunc.__name__)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        attr = getattr(self._ufunc, name)
        if not callable(attr):
            return attr
        return _device_function(attr, f"{self.__name__}.{name}", index_args=(1,) if name == "at" else ())


FakeCuPy = _FakeCuPyModule()

# NumPy's own converters, kept before ``install`` wraps them
_NUMPY_ASARRAY, _NUMPY_ARRAY, _NUMPY_ASCONTIGUOUSARRAY = np.asarray, np.array, np.ascontiguousarray


def _called_from_library() -> bool:
    """True when the caller of the wrapped NumPy converter is library code (not a test, not Numba)."""
    frame = sys._getframe(2)
    filename = os.path.abspath(frame.f_code.co_filename)
    return any(filename.startswith(root) for root in _LIBRARY_DIRS)


def _refuse_implicit_conversion(numpy_function):
    """``np.asarray`` & co. that raise, as CuPy's ``__array__`` does, when library code hands them a
    device array (NumPy would silently give a host view of a subclass, so this is the only hook)."""

    def converter(a, *args, **kwargs):
        if isinstance(a, DeviceArray) and not kwargs.get("subok") and not _in_kernel() and _called_from_library():
            raise HostDeviceMixError(
                f"np.{numpy_function.__name__} on a device array of shape {a.shape} at {_library_site()}: "
                "CuPy raises TypeError (implicit conversion to a NumPy array is not allowed); use "
                "xp = backend.get_array_module(...) to stay on the device, or backend.to_numpy for an "
                "explicit copy"
            )
        return numpy_function(a, *args, **kwargs)

    converter.__name__ = numpy_function.__name__
    converter.__doc__ = numpy_function.__doc__
    return converter


def to_device(a):
    """A host array (or array-like) as a DeviceArray copy (``cupy.asarray``)."""
    return FakeCuPy.asarray(a)


def install(monkeypatch) -> _FakeCuPyModule:
    """Until ``monkeypatch`` is undone: ``import cupy`` gives ``FakeCuPy``, and ``np.asarray``,
    ``np.array`` and ``np.ascontiguousarray`` refuse device arrays coming from library code.

    Returns:
        ``FakeCuPy`` with an empty transfer record, recording.
    """
    monkeypatch.setitem(sys.modules, "cupy", FakeCuPy)
    monkeypatch.setattr(np, "asarray", _refuse_implicit_conversion(_NUMPY_ASARRAY))
    monkeypatch.setattr(np, "array", _refuse_implicit_conversion(_NUMPY_ARRAY))
    monkeypatch.setattr(np, "ascontiguousarray", _refuse_implicit_conversion(_NUMPY_ASCONTIGUOUSARRAY))
    FakeCuPy.clear()
    FakeCuPy.recording = True
    return FakeCuPy
