"""The project's error types for bad input: annotation files, images and checkpoints.

Every message names the file, the record inside it (image id, annotation id, key) and the problem,
e.g. ``instances.json: annotation id 7 (image id 3): bbox has negative width -2.0``, so that a user
can open the file and fix the one entry.
"""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """Some input file (annotations, image, checkpoint) is malformed or does not match its records.

    Args:
        path: the file at fault.
        problem: what is wrong, one sentence without the file name.
        record: which entry of the file, e.g. ``"annotation id 7 (image id 3)"`` or ``"key 'w'"``;
            None when the whole file is at fault.

    Attributes ``path``, ``record`` and ``problem`` keep the three parts for code that handles them.
    """

    def __init__(self, path: PathLike | None, problem: str, record: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.record = record
        self.problem = problem
        parts = [p for p in (self.path, record) if p]
        super().__init__(": ".join(parts + [problem]))

    def __reduce__(self):
        # keep the three-argument constructor picklable (e.g. across multiprocessing)
        return (type(self), (self.path, self.problem, self.record))


class AnnotationError(DataError):
    """An annotation file (COCO instances JSON) is unreadable, incomplete or inconsistent."""


class ImageError(DataError):
    """An image file is missing, unreadable, or differs from its record (e.g. its size)."""


class CheckpointError(DataError):
    """A checkpoint is missing, truncated, corrupt, or asks to run code we refuse to run."""


class DownloadError(OSError):
    """A download failed (HTTP error, no network) or the downloaded file failed verification.

    An OSError rather than a DataError: the cause is usually the network, not a file's content.
    The message names the URL and, for images, the image id.
    """
