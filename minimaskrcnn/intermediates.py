"""Intermediate results of a forward pass, for looking inside the model (matterport's inspect_model).

``with record_intermediates() as rec: model(images)`` fills ``rec`` (a dict) with what every stage
computed on the way: the padded batch, the FPN features, the anchors and their labels, the proposals
before and after NMS, the sampled RoIs, the mask targets, the detections... Each stage calls
``record(key, value)``; outside a ``record_intermediates`` block that returns at once, so the model
pays nothing when nobody is looking. docs/INTERMEDIATES.md lists every key; lesson 13 draws them.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from minimaskrcnn.backend import is_cupy, unwrap


class Intermediates(dict):
    """What one ``record_intermediates`` block recorded: key -> NumPy array, or a list/dict of them.

    A plain dict (``rec["proposals"][0]``, ``list(rec)``, ``"mask_targets" in rec``) holding host
    NumPy copies made at the moment of recording (so later in-place changes, or GPU arrays, do not
    show through); integers and tuples (image sizes) as they are. Coordinates are in the pixels of
    the resized network input. A key recorded twice in one block (two forward passes) keeps the
    last value. Its repr lists the keys with their shapes instead of printing the arrays.
    """

    def __repr__(self) -> str:
        return "Intermediates(\n" + "".join(f"  {k}: {_describe(v)}\n" for k, v in self.items()) + ")"


class _State(threading.local):
    recorders: tuple[Intermediates, ...] = ()


_state = _State()


def is_recording() -> bool:
    """True inside a ``record_intermediates`` block (of this thread): a stage may then compute extras
    that it only needs for the record (guard them with this)."""
    return bool(_state.recorders)


def record(key: str, value: Any) -> None:
    """Store a host copy of ``value`` under ``key`` in every active recorder; without one, do nothing.

    Args:
        key: the name in the catalogue (docs/INTERMEDIATES.md), e.g. "proposals".
        value: an array (NumPy or CuPy), a Tensor (its values are taken, without the graph), or a
            list / tuple / dict of them, nested; numbers and other values are stored as they are.
    """
    if not _state.recorders:
        return
    snapshot = _snapshot(value)
    for recorder in _state.recorders:
        recorder[key] = snapshot


@contextlib.contextmanager
def record_intermediates() -> Iterator[Intermediates]:
    """Context manager: record every stage's intermediate results of the forward passes in the block.

    Yields:
        an empty ``Intermediates`` dict, filled as the block runs (see its docstring and
        docs/INTERMEDIATES.md for the keys, shapes and dtypes). Blocks nest: an inner block's
        records also go to the outer ones. Recording is per thread.

    Example::

        with record_intermediates() as rec:
            detections = model([image])
        rec["proposals"][0]  # (P, 4) float32 proposals of image 0 after NMS
    """
    recorder = Intermediates()
    previous = _state.recorders
    _state.recorders = previous + (recorder,)
    try:
        yield recorder
    finally:
        _state.recorders = previous


def _snapshot(value: Any) -> Any:
    """``value`` with every array (or Tensor) replaced by a host NumPy copy, containers rebuilt."""
    if isinstance(value, dict):
        return type(value)((k, _snapshot(v)) for k, v in value.items())  # keeps an OrderedDict ordered
    if type(value) in (list, tuple):
        return type(value)(_snapshot(v) for v in value)
    a = unwrap(value)
    if is_cupy(a):
        return a.get()  # a copy to the host
    if isinstance(a, np.ndarray):
        return a.copy()
    return value


def _describe(value: Any) -> str:
    """'(N, C, H, W) float32' for an array, '[2 x (R, 4) float32]' for a list of alike arrays, the
    items for other lists and for dicts, the repr of anything else."""
    if isinstance(value, np.ndarray):
        return f"{value.shape} {value.dtype}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and value and all(isinstance(v, (np.ndarray, dict)) for v in value):
        items = [_describe(v) for v in value]
        if len(set(items)) == 1:
            return f"[{len(items)} x {items[0]}]"
        return "[" + ", ".join(items) + "]"
    return repr(value)
