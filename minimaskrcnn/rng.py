"""Random generators: find every one a run depends on, capture their states and restore them exactly.

A resumed run goes on bit for bit only if every source of randomness continues where it stopped:
Python's ``random``, NumPy's global generator, and the generators that objects of this package own
(the samplers of the RPN and the RoI heads, the data loader's flips). ``find_generators`` finds the
latter by walking attributes; ``get_rng_state`` / ``set_rng_state`` capture and restore all of them
as plain JSON values, which a checkpoint stores exactly.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np

from minimaskrcnn.errors import CheckpointError

__all__ = ["find_generators", "find_run_generators", "generator_state", "get_rng_state", "set_generator_state",
           "set_rng_state"]


def find_generators(root: Any, prefix: str = "") -> dict[str, Any]:
    """Every NumPy random generator reachable from ``root`` through minimaskrcnn objects.

    Walks attributes, lists, tuples and dicts of objects defined in this package (modules,
    loaders, transforms, data sets) and returns {attribute path: Generator or RandomState}. The
    trainer saves and restores all of them, so that randomness the model or the data pipeline
    owns (anchor and RoI sampling, flips, data order) resumes exactly.
    """
    found: dict[str, Any] = {}
    seen: set[int] = set()
    stack = [(prefix, root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.random.Generator, np.random.RandomState)):
            found[path] = obj
            continue
        if isinstance(obj, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in obj.items() if isinstance(k, (str, int)))
        elif type(obj).__module__.startswith("minimaskrcnn") and hasattr(obj, "__dict__"):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in vars(obj).items())
    return dict(sorted(found.items()))


def find_run_generators(model: Any, loader: Any) -> dict[str, Any]:
    """{path: generator} of a training run: the model's ("model.*") and the data loader's ("loader.*").

    The loader's data set is left out: its thousands of annotation records hold no generator and
    the walk is not free.
    """
    gens = find_generators(model, "model")
    for name, value in vars(loader).items():
        if name != "dataset":
            gens.update(find_generators(value, f"loader.{name}"))
    return gens


def generator_state(g) -> dict:
    """The state of a ``np.random.Generator`` or ``RandomState`` as plain JSON values."""
    if isinstance(g, np.random.Generator):
        return {"kind": "Generator", "state": g.bit_generator.state}
    state = g.get_state(legacy=False)
    state["state"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state["state"].items()}
    return {"kind": "RandomState", "state": state}


def set_generator_state(g, saved: Mapping[str, Any]) -> None:
    """Restore what ``generator_state`` captured into ``g`` (of the same kind)."""
    if isinstance(g, np.random.Generator):
        g.bit_generator.state = saved["state"]
    else:
        state = dict(saved["state"])
        inner = dict(state["state"])
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
        state["state"] = inner
        g.set_state(state)


def get_rng_state(owned: Mapping[str, Any]) -> dict:
    """Python's, NumPy's global and the ``owned`` generators' states (JSON-serialisable).

    Args:
        owned: {name: generator}, e.g. from ``find_generators``.

    Returns:
        {"python": ..., "numpy_global": ..., "owned": {name: state}}.
    """
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy_global": generator_state(np.random.mtrand._rand),
        "owned": {name: generator_state(g) for name, g in owned.items()},
    }


def set_rng_state(states: Mapping[str, Any], owned: Mapping[str, Any], source: str | None = None) -> None:
    """Restore what ``get_rng_state`` captured.

    Args:
        states: as ``get_rng_state`` returns.
        owned: {name: generator}; its names must be those of ``states["owned"]``.
        source: the checkpoint the states come from, for the error message.

    Raises:
        CheckpointError: the generators differ from those saved (another model or loader).
    """
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    set_generator_state(np.random.mtrand._rand, states["numpy_global"])
    missing = set(owned) ^ set(states["owned"])
    if missing:
        raise CheckpointError(source, f"random generators differ from the model's: {sorted(missing)}")
    for name, g in owned.items():
        set_generator_state(g, states["owned"][name])
