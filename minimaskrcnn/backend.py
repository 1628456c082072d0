"""Backends: which implementation of the hot loops runs, and on which arrays.

"numpy" is the readable reference (kernels/<op>/reference.py), "numba" the compiled CPU kernels
(kernels/<op>/cpu.py, the default when Numba is installed) and "cuda" the CUDA kernels
(kernels/<op>/cuda.py) on CuPy arrays; without a GPU, "cuda" runs its kernels through Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1) on NumPy arrays, which is how CI tests them.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np

BACKENDS = ("numpy", "numba", "cuda")
# which file of kernels/<op>/ each backend runs
_KERNEL_MODULE = {"numpy": "reference", "numba": "cpu", "cuda": "cuda"}


def _default_backend() -> str:
    name = os.environ.get("MINIMASKRCNN_BACKEND")
    if name:
        if name not in BACKENDS:
            raise ValueError(f"MINIMASKRCNN_BACKEND={name!r}: expected one of {BACKENDS}")
        return name
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


_backend = _default_backend()


def get_backend() -> str:
    """The name of the backend in use: "numpy", "numba" or "cuda"."""
    return _backend


def set_backend(name: str) -> None:
    """Choose the backend for every op that runs from now on (see the module docstring)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
    if name == "cuda":
        _use_simulator_without_gpu()
    _backend = name


def _use_simulator_without_gpu() -> None:
    """Without a GPU, run the CUDA kernels through Numba's simulator (NumPy arrays, slow, exact).

    NUMBA_ENABLE_CUDASIM is read when numba.cuda is first imported, so this only helps before that;
    an explicit setting of the variable is always respected.
    """
    if "NUMBA_ENABLE_CUDASIM" in os.environ or "numba.cuda" in sys.modules:
        return
    if cupy_or_none() is None:
        warnings.warn(
            "backend 'cuda' without a GPU: running the CUDA kernels in Numba's simulator "
            "(NUMBA_ENABLE_CUDASIM=1), which is very slow; use it for checking, not training",
            stacklevel=3,
        )
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the block with backend ``name``, then restore the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def kernel(op: str) -> ModuleType:
    """The module that implements ``op`` (e.g. "roi_align") for the current backend.

    Every backend module of an op defines the same functions with the same arguments, so callers
    write ``kernel("roi_align").roi_align_forward(...)`` whatever the backend.
    """
    module = _kernel_modules.get((op, _backend))
    if module is None:  # imported once per (op, backend): import_module's own lookup costs microseconds
        module = _kernel_modules[op, _backend] = importlib.import_module(
            f"minimaskrcnn.kernels.{op}.{_KERNEL_MODULE[_backend]}")
    return module


_kernel_modules: dict[tuple[str, str], ModuleType] = {}


# ---------------------------------------------------------------------------------------------
# Arrays: NumPy on the CPU, CuPy on the GPU. Code that must run on both takes its array module
# from its inputs (``xp = get_array_module(x)``) and uses only what NumPy and CuPy share.


def cupy_or_none() -> ModuleType | None:
    """CuPy if it is installed and sees a GPU, else None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no driver, no device
        return None
    return cupy


def is_cupy(a) -> bool:
    """True for a CuPy array. Read from its type, so CuPy is never imported just to ask."""
    return type(a).__module__.startswith("cupy")


def unwrap(x):
    """The array inside a Tensor (or Parameter); anything else unchanged."""
    if type(x) is np.ndarray:  # the common case, before the import below
        return x
    from minimaskrcnn.tensor import Tensor

    return x.data if isinstance(x, Tensor) else x


def as_array(x):
    """The NumPy/CuPy array of ``x``: a Tensor's ``.data``, an array as it is (no copy, no device
    change), anything else (lists, numbers) through ``np.asarray``."""
    x = unwrap(x)
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x
    return np.asarray(x)


def get_array_module(*arrays) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (Tensors are looked through)."""
    for a in arrays:
        if type(a) is not np.ndarray and is_cupy(unwrap(a)):
            import cupy

            return cupy
    return np


def default_array_module() -> ModuleType:
    """The array module new arrays are made with: CuPy under "cuda" when a GPU is present, else NumPy.

    Under the "cuda" backend without a GPU (Numba's CUDA simulator) this is NumPy, so the very same
    code path runs in CI.
    """
    if _backend == "cuda":
        cp = cupy_or_none()
        if cp is not None:
            return cp
    return np


def to_numpy(a) -> np.ndarray:
    """A host NumPy array from a NumPy or CuPy array, a Tensor, or anything ``np.asarray`` takes.

    NumPy arrays are returned as they are (no copy); CuPy arrays are copied to the host.
    """
    a = unwrap(a)
    if is_cupy(a):
        return a.get()
    return np.asarray(a)


if _backend == "cuda":  # chosen through MINIMASKRCNN_BACKEND
    _use_simulator_without_gpu()


# ---------------------------------------------------------------------------------------------
# Threads


def limit_threads(threads: int | None = None, blas_threads: int | None = None) -> dict[str, bool]:
    """Set how many threads Numba's kernels and OpenBLAS (NumPy's matrix products) may use.

    Args:
        threads: Numba's kernels (im2col, RoIAlign, ...) run on this many threads (capped at the
            number Numba started with, which is every core); None: leave Numba alone.
        blas_threads: OpenBLAS threads (or MKL's); None: leave BLAS alone.

    Why two numbers: both pools spin while they wait for work, so on a small machine the two
    fighting over the same cores can make a training step 2-20x slower. Measured on 2 cores with
    the default ``minimaskrcnn train`` (100 steps): Numba 2 + BLAS 1 took 36 s, Numba 1 + BLAS 2
    38 s, 1 + 1 45 s, 2 + 2 (both spinning) about 90 s. The small models' matrix products are small;
    their copies (im2col, col2im) and RoI kernels gain more from the second core.

    Returns:
        which pools were set: {"blas": bool, "numba": bool}.
    """
    import ctypes

    done = {"blas": False, "numba": False}
    if threads is not None:
        try:
            import numba

            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
            done["numba"] = True
        except (ImportError, ValueError):
            pass
    if blas_threads is None:
        return done
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() and ".so" in line}
    except OSError:  # not Linux: leave BLAS alone
        pass
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(max(1, int(blas_threads))))
                done["blas"] = True
                break
    return done


# ---------------------------------------------------------------------------------------------
# Memory
REUSE_MAX_BYTES = 1 << 30  # arrays up to this size come from (and go back to) malloc's heap


def reuse_freed_memory(max_bytes: int = REUSE_MAX_BYTES) -> bool:
    """Let large arrays reuse memory freed by earlier ones instead of fresh pages from the kernel.

    glibc's malloc gives every block above 32 MiB its own ``mmap`` and hands it back to the kernel
    when it is freed, so each large array (an R50 feature map at 800x1066 is 56 MB; cols are
    larger) is page-faulted in and zero-filled by the kernel anew: 15% of an R50 forward on the CPU,
    5% of the default run's step. Raising malloc's mmap threshold to ``max_bytes`` (and its trim
    threshold, so that freed memory stays with the process) lets the next array of that size take
    the freed block as it is. The peak resident memory hardly changes (measured: +5% on R50
    inference); the process keeps the memory it has used until it exits.

    This sets the process's malloc (``mallopt``) for every library in it; the trainer and the
    command line call it. Linux with glibc only.

    Returns:
        whether the setting was applied (False elsewhere).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
    max_bytes = int(min(max_bytes, 2**31 - 1))  # mallopt takes a C int
    return bool(mallopt(M_MMAP_THRESHOLD, max_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
