"""The three small things every lesson uses: QUICK mode, ``log(name, array)`` and exercise checks.

Lessons import the library for everything else; this file stays tiny on purpose.
"""
from __future__ import annotations

import os

import numpy as np

# MINIMASKRCNN_QUICK=1 (set by tests/test_lessons.py) makes the lessons use fewer iterations and
# smaller data so that CI runs every notebook top to bottom in a few minutes.
QUICK = os.environ.get("MINIMASKRCNN_QUICK") == "1"

# exercise number -> "correct" or "not attempted": the CI run checks the solutions through this
RESULTS: dict = {}


def log(name: str, x=None) -> None:
    """Print ``name`` with the shape, dtype, min and max of ``x`` (an array, a Tensor or a number).

    With ``x`` None just print the name (a heading). Borrowed from matterport's inspect notebooks.
    """
    if x is None:
        print(name)
        return
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    a = np.asarray(x)
    if a.size == 0:
        print(f"{name:26s} shape {str(a.shape):16s} {str(a.dtype):8s} (empty)")
    elif a.dtype == bool or a.dtype.kind in "iu":
        print(f"{name:26s} shape {str(a.shape):16s} {str(a.dtype):8s} min {a.min():>10d}  max {a.max():>10d}")
    else:
        print(f"{name:26s} shape {str(a.shape):16s} {str(a.dtype):8s} min {a.min():10.5g}  max {a.max():10.5g}")


class exercise:
    """A check cell: ``with exercise(1): assert ...``.

    Inside the block call the learner's code and assert what it must give. If that code still raises
    ``NotImplementedError`` the cell says the exercise is not attempted yet; a failed assertion is an
    error (the answer is not right yet); otherwise it prints "correct".
    """

    def __init__(self, number, lesson: str = ""):
        self.number = number
        self.lesson = lesson

    def __enter__(self) -> exercise:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is NotImplementedError:
            RESULTS[self.number] = "not attempted"
            where = f"solutions/{self.lesson}.py" if self.lesson else "solutions/"
            print(f"Exercise {self.number}: not attempted yet (a solution is in {where})")
            return True
        if exc_type is None:
            RESULTS[self.number] = "correct"
            print(f"Exercise {self.number}: correct")
        return False
