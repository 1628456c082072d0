"""Compile a kernel's plain-Python scalar helpers once per backend.

The scalar helpers of an op (where a RoI lies on the feature map, where a sample falls, its
interpolation weights) are written once, in plain Python, in the op's ``_scalar.py``:
``reference.py`` calls them as they are, ``cpu.py`` compiles them with ``numba.njit`` and
``cuda.py`` with ``numba.cuda.jit(device=True)``, each backend keeping its own loop nest around them.
"""
from __future__ import annotations

import types
from collections.abc import Callable


def compile_helpers(jit: Callable, *helpers: Callable) -> tuple:
    """Compile ``helpers`` with ``jit``; a helper that calls another calls the other's compiled version.

    Decorating each function on its own would not do: inside a compiled helper, the name of another
    helper would still mean the plain Python function, which Numba cannot call. So each compiled
    helper is a copy of the function that looks its global names up in a copy of the module's
    namespace, in which the helpers' names are bound to their compiled versions.

    Args:
        jit: the decorator, e.g. ``numba.njit(cache=True)`` or ``numba.cuda.jit(device=True)``.
        helpers: plain Python functions, all of one module (an op's ``_scalar.py``).

    Returns:
        the compiled helpers, in the order given.

    Raises:
        ValueError: for helpers of different modules.
    """
    namespace = dict(helpers[0].__globals__)
    compiled = []
    for fn in helpers:
        if fn.__globals__ is not helpers[0].__globals__:
            raise ValueError(f"compile_helpers: {fn.__qualname__} is not in {helpers[0].__module__}")
        copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        namespace[fn.__name__] = jit(copy)
        compiled.append(namespace[fn.__name__])
    return tuple(compiled)
