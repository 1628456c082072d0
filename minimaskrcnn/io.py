"""Checkpoints in and out, without ever running code from a file.

A PyTorch ``.pth`` file is a pickle, and ``pickle.load`` calls whatever function the file names. We read
one with a restricted unpickler that knows only the names a tensor state_dict uses and rebuilds each
tensor as a NumPy array itself (torch is never imported). Our own checkpoints are ``.npz`` archives of
arrays plus one JSON entry, loaded with ``allow_pickle=False``: a format that cannot carry code.
``atomic_write`` is the package's one way to write a file (a unique temporary file, fsync, rename).
Lesson: lessons/ (loading torchvision's weights into the NumPy model).
"""
from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import io
import json
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from minimaskrcnn.backend import is_cupy, to_numpy, unwrap
from minimaskrcnn.errors import CheckpointError, PathLike

__all__ = [
    "Checkpoint",
    "TorchNamespace",
    "atomic_write",
    "load_checkpoint",
    "load_torch_pickle",
    "load_torch_state_dict",
    "save_checkpoint",
]

# ----------------------------------------------------------------------------------------------------
# PyTorch checkpoints
# ----------------------------------------------------------------------------------------------------

# torch's storage class name -> the NumPy dtype of its elements as stored in the file. bfloat16 has
# no NumPy dtype: its raw 16 bits are read as uint16 and widened to float32 (exactly) afterwards.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
_BFLOAT16 = "BFloat16Storage"
# the first pickle of a legacy (pre-1.6, non-zip) torch.save file holds this number
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class _Refused(Exception):
    """Raised inside the unpickler; turned into a CheckpointError that names the file."""

    def __init__(self, problem: str, record: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.record = record


class _Frozen(type):
    """Metaclass of the stand-in classes: a pickle cannot set attributes on them (BUILD on a class)."""

    def __setattr__(cls, name, value):
        raise AttributeError(f"{cls.__name__} is read-only")


class _StandIn:
    """A callable the unpickler hands out for an allowed global; a pickle cannot modify it.

    A new instance per ``find_class`` call, with no ``__dict__`` and no attribute setting, so a hostile
    pickle (BUILD on the global) cannot change what later loads call.
    """

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Callable, name: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __setattr__(self, name, value):
        raise AttributeError(f"{self._name} is read-only")

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stand-in for {self._name}>"


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only its name is used, to look up the dtype."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __setattr__(self, name, value):
        raise AttributeError("storage types are read-only")


class _Storage:
    """One storage read from the file: a read-only 1-D array of its elements (in file byte order)."""

    __slots__ = ("array", "bfloat16")

    def __init__(self, array: np.ndarray | None, bfloat16: bool):
        self.array = array  # None during the first pass over a legacy file
        self.bfloat16 = bfloat16


class TorchNamespace(metaclass=_Frozen):
    """Stand-in for ``argparse.Namespace`` (torchvision's reference scripts save ``args`` with the
    weights): a bag of attributes, nothing else."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _Refused(f"argparse.Namespace state is a {type(state).__name__}, not a dict")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _tensor_from_storage(storage, storage_offset, size, stride) -> np.ndarray | None:
    """Build the array a torch tensor views: ``storage[offset + sum_i idx_i * stride_i]``.

    Args:
        storage: a _Storage.
        storage_offset: int, in elements.
        size, stride: tuples of ints, in elements (torch strides are never negative).

    Returns:
        An owned, C-contiguous array in native byte order (bfloat16 widened to float32), or None during
        the first pass over a legacy file (storage bytes not read yet).
    """
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise _Refused("tensor offset, size or stride has the wrong type")
    if not all(_is_int(v) for v in size + stride) or len(size) != len(stride):
        raise _Refused(f"tensor size {size} and stride {stride} do not match")
    if storage_offset < 0 or min(size + stride, default=0) < 0:
        raise _Refused(f"negative tensor offset, size or stride: {storage_offset}, {size}, {stride}")
    if storage.array is None:
        return None
    flat = storage.array
    if int(np.prod(size, dtype=np.int64)) == 0:
        out = np.empty(size, dtype=flat.dtype)
    else:
        # the last element the view reads must lie inside the storage: as_strided does not check
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise _Refused(f"tensor reaches element {last} of a storage of {flat.size} elements")
        strides = tuple(s * flat.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=size, strides=strides, writeable=False)
        out = view.copy()
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if storage.bfloat16:
        # bfloat16 is the upper half of a float32: shift the 16 stored bits up
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor (PyTorch < 1.0 pickles)."""
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2: the tensor; requires_grad, hooks and metadata are dropped."""
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is just its data here."""
    if data is not None and not isinstance(data, np.ndarray):
        raise _Refused(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


def _allowed_global(module: str, name: str):
    """What the unpickler may return for ``module.name``; None for everything else."""
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name)
    if (module, name) == ("collections", "OrderedDict"):
        return _StandIn(collections.OrderedDict, "collections.OrderedDict")
    if (module, name) == ("argparse", "Namespace"):
        return TorchNamespace
    if module == "torch._utils":
        fn = {
            "_rebuild_tensor": _rebuild_tensor,
            "_rebuild_tensor_v2": _rebuild_tensor_v2,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }.get(name)
        if fn is not None:
            return _StandIn(fn, f"torch._utils.{name}")
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of ``_allowed_global`` and never imports anything.

    Args:
        file: the pickle bytes.
        load_storage: persistent id tuple -> _Storage (reads the storage bytes from the checkpoint).
    """

    def __init__(self, file, load_storage: Callable[[tuple], _Storage]):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        # protocol-2 pickles spell Python 3 modules the Python 2 way (builtins -> __builtin__)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _allowed_global(module, name)
        if found is None:
            raise _Refused(
                "refused: a tensor checkpoint may only name tensors, storages, OrderedDict and "
                "argparse.Namespace, and nothing from the file is ever run",
                record=f"global '{module}.{name}'",
            )
        return found

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"unknown persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise _Refused(f"persistent id of kind {kind!r} (only 'storage' is allowed)")
        return self._load_storage(pid[1:])


def _storage_dtype(storage_type) -> tuple[np.dtype, bool]:
    if not isinstance(storage_type, _StorageType):
        raise _Refused(f"storage type is a {type(storage_type).__name__}, not a torch storage class")
    return _STORAGE_DTYPES[storage_type.name], storage_type.name == _BFLOAT16


def _unpickle(data: bytes, load_storage: Callable[[tuple], _Storage]) -> tuple[Any, int]:
    """Run the restricted unpickler over ``data``; returns (object, number of bytes consumed)."""
    f = io.BytesIO(data)
    obj = _RestrictedUnpickler(f, load_storage).load()
    return obj, f.tell()


def _no_storage(pid):
    raise _Refused("unexpected storage in a header pickle")


def _load_zip(path: Path) -> Any:
    """torch.save's default format (PyTorch >= 1.6): a zip with <prefix>/data.pkl, <prefix>/data/<key>."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl_names = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl_names:
            raise _Refused("zip archive without <name>/data.pkl: not a torch.save checkpoint")
        prefix = pkl_names[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise _Refused(f"unknown byteorder {byteorder!r}", record="byteorder")
        storages: dict[str, _Storage] = {}

        def load_storage(args: tuple) -> _Storage:
            if len(args) != 4:
                raise _Refused(f"storage id with {len(args)} fields (expected 4)")
            storage_type, key, _location, numel = args
            dtype, bfloat16 = _storage_dtype(storage_type)
            if not isinstance(key, str):
                raise _Refused(f"storage key {key!r} is not a string")
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise _Refused("storage missing from the archive", record=f"storage {entry!r}")
                raw = zf.read(entry)
                dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) % dtype.itemsize or (_is_int(numel) and numel * dtype.itemsize > len(raw)):
                    raise _Refused(f"storage has {len(raw)} bytes, expected {numel} x {dtype.itemsize}",
                                   record=f"storage {entry!r}")
                storages[key] = _Storage(np.frombuffer(raw, dtype=dtype), bfloat16)
            return storages[key]

        obj, _ = _unpickle(zf.read(prefix + "data.pkl"), load_storage)
        return obj


def _load_legacy(data: bytes) -> Any:
    """The pre-1.6 format: pickles of magic number, protocol, sys info, the object, the storage keys,
    then for each key an int64 element count and the raw elements.

    The object's pickle names storages before their bytes come, so it is read twice: once to learn the
    storages, once (now that their bytes are read) to build the arrays. Nothing in it can run code,
    so reading it twice is harmless.
    """
    magic, pos = _unpickle(data, _no_storage)
    if magic != _LEGACY_MAGIC_NUMBER:
        raise _Refused("not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    protocol, n = _unpickle(data[pos:], _no_storage)
    pos += n
    if protocol != _LEGACY_PROTOCOL_VERSION:
        raise _Refused(f"legacy checkpoint of unknown protocol version {protocol!r}")
    sys_info, n = _unpickle(data[pos:], _no_storage)
    pos += n
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    main_start = pos

    # pass 1: which storages exist (dtype, element count); views of a root storage are resolved later
    roots: dict[str, tuple[np.dtype, bool, int]] = {}
    views: dict[str, tuple[str, int, int]] = {}

    def record_storage(args: tuple) -> _Storage:
        if len(args) != 5:
            raise _Refused(f"legacy storage id with {len(args)} fields (expected 5)")
        storage_type, root_key, _location, numel, view_metadata = args
        dtype, bfloat16 = _storage_dtype(storage_type)
        if not (isinstance(root_key, str) and _is_int(numel)):
            raise _Refused("malformed legacy storage id")
        roots.setdefault(root_key, (dtype, bfloat16, numel))
        if view_metadata is not None:
            view_key, offset, view_size = view_metadata
            views[view_key] = (root_key, offset, view_size)
        return _Storage(None, bfloat16)

    _, n = _unpickle(data[main_start:], record_storage)
    pos = main_start + n
    keys, n = _unpickle(data[pos:], _no_storage)
    pos += n
    if not isinstance(keys, list):
        raise _Refused("legacy storage key list is missing")

    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in roots:
            raise _Refused("storage listed but never used", record=f"storage {key!r}")
        dtype, _bfloat16, _numel = roots[key]
        dtype = dtype.newbyteorder("<" if little else ">")
        if pos + 8 > len(data):
            raise _Refused("file ends inside the storage data (truncated?)", record=f"storage {key!r}")
        (count,) = struct.unpack("<q" if little else ">q", data[pos : pos + 8])
        pos += 8
        end = pos + count * dtype.itemsize
        if count < 0 or end > len(data):
            raise _Refused("file ends inside the storage data (truncated?)", record=f"storage {key!r}")
        arrays[key] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos = end
    missing = set(roots) - set(arrays)
    if missing:
        raise _Refused("storage bytes missing (truncated?)", record=f"storage {sorted(missing)[0]!r}")

    # pass 2: build the arrays
    def load_storage(args: tuple) -> _Storage:
        storage_type, root_key, _location, _numel, view_metadata = args
        _, bfloat16 = _storage_dtype(storage_type)
        array = arrays[root_key]
        if view_metadata is not None:
            _, offset, view_size = view_metadata
            if not (_is_int(offset) and _is_int(view_size) and 0 <= offset and offset + view_size <= array.size):
                raise _Refused("storage view outside its storage", record=f"storage {root_key!r}")
            array = array[offset : offset + view_size]
        return _Storage(array, bfloat16)

    obj, _ = _unpickle(data[main_start:], load_storage)
    return obj


def load_torch_pickle(path: PathLike) -> Any:
    """Read any object saved with ``torch.save`` whose leaves are tensors and plain Python values.

    Tensors become NumPy arrays (C-contiguous copies in native byte order; bfloat16 -> float32;
    requires_grad dropped); ``argparse.Namespace`` becomes a :class:`TorchNamespace`. Both the zip
    format (torch >= 1.6, the default) and the legacy format (``_use_new_zipfile_serialization=False``)
    are read; the tar format of PyTorch < 0.4 is not.

    Args:
        path: the .pth / .pt file.

    Returns:
        The unpickled object (e.g. an OrderedDict of arrays).

    Raises:
        CheckpointError: the file is missing, truncated, not a torch checkpoint, or names any global
            other than OrderedDict, argparse.Namespace, torch's tensor-rebuild functions and storage
            classes. No function named in the file is ever called.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        data = path.read_bytes()
        if data[:1] != b"\x80":
            raise _Refused("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
        return _load_legacy(data)
    except _Refused as e:
        raise CheckpointError(path, e.problem, record=e.record) from None
    except CheckpointError:
        raise
    except Exception as e:  # whatever pickle or zipfile raise on damaged bytes
        problem = f"cannot read the checkpoint, truncated or corrupt? ({type(e).__name__}: {e})"
        raise CheckpointError(path, problem) from e


def load_torch_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state_dict (``torch.save(model.state_dict(), path)``) as NumPy arrays, safely.

    The file is never executed: see :func:`load_torch_pickle`. A checkpoint that nests the state_dict
    as ``{"model": state_dict, ...}`` (torchvision's reference training scripts, which also store the
    optimizer, scheduler, epoch and args) or ``{"state_dict": ...}`` gives that inner state_dict.

    Args:
        path: the .pth / .pt file.

    Returns:
        ``{name: array}`` in the file's order, e.g. ``"backbone.body.conv1.weight"``: (64, 3, 7, 7)
        float32. Integer buffers (``num_batches_tracked``) come back as int64 arrays of shape ().

    Raises:
        CheckpointError: as load_torch_pickle; also when the content is not a mapping of names to
            tensors (the message names the first offending key).
    """
    obj = load_torch_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state_dict")
    if not all(isinstance(v, np.ndarray) for v in obj.values()):
        for inner in ("model", "state_dict"):
            if isinstance(obj.get(inner), Mapping):
                obj = obj[inner]
                break
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(
                path, f"entry is a {type(value).__name__}, not a tensor (top-level keys: {list(obj)[:8]})",
                record=f"key {key!r}",
            )
    return dict(obj)


# ----------------------------------------------------------------------------------------------------
# Our own checkpoints: arrays in .npz, everything else in one JSON entry
# ----------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "minimaskrcnn-checkpoint"
CHECKPOINT_VERSION = 1
_METADATA_KEY = "__metadata__"
# markers of the JSON encoding; a dict using one of them as a key is stored as a list of items
_ARRAY, _SCALAR, _TUPLE, _ITEMS = "__array__", "__scalar__", "__tuple__", "__items__"
_MARKERS = frozenset((_ARRAY, _SCALAR, _TUPLE, _ITEMS))


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns (unpacks as ``model_state, optimizer_state, extra``)."""

    model_state: dict  # {name: array}
    optimizer_state: dict | None  # as given to save_checkpoint, or None
    extra: dict  # step, config, RNG states, ... as given ({} when None was given)


def _as_array(obj) -> np.ndarray | None:
    """obj as a host NumPy array if it is an array (NumPy, CuPy) or a Tensor, else None."""
    obj = unwrap(obj)
    if isinstance(obj, np.ndarray) or is_cupy(obj):
        return to_numpy(obj)  # CuPy -> NumPy
    return None


class _Encoder:
    """Splits a nested structure into arrays (for the .npz) and a JSON tree that references them.

    Arrays are stored under keys made of the path joined with "/" (parameter names keep their dots:
    ``model/backbone.body.conv1.weight``, ``optimizer/state/<name>/momentum_buffer``); the JSON tree
    keeps the structure, so the key only has to be unique.
    """

    def __init__(self, path: Path):
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}

    def _key(self, key_path: str) -> str:
        key, i = key_path, 1
        while key in self.arrays or key == _METADATA_KEY:
            key, i = f"{key_path}~{i}", i + 1
        return key

    def encode(self, obj, key_path: str):
        array = _as_array(obj)
        if array is not None:
            if array.dtype.hasobject:
                raise CheckpointError(self.path, "object arrays cannot be stored", record=f"key {key_path!r}")
            key = self._key(key_path)
            self.arrays[key] = array
            return {_ARRAY: key}
        if isinstance(obj, np.generic):
            key = self._key(key_path)
            self.arrays[key] = np.asarray(obj)
            return {_SCALAR: key}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj) and not _MARKERS.intersection(obj):
                return {k: self.encode(v, f"{key_path}/{k}") for k, v in obj.items()}
            return {_ITEMS: [[self.encode(k, f"{key_path}/key"), self.encode(v, f"{key_path}/{k}")]
                             for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {_TUPLE: [self.encode(v, f"{key_path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{key_path}/{i}") for i, v in enumerate(obj)]
        raise CheckpointError(self.path, f"cannot store a {type(obj).__name__} in a checkpoint",
                              record=f"key {key_path!r}")


def _decode(tree, arrays: Mapping[str, np.ndarray], path: Path):
    """Inverse of _Encoder.encode."""
    if isinstance(tree, list):
        return [_decode(v, arrays, path) for v in tree]
    if isinstance(tree, dict):
        if len(tree) == 1 and _MARKERS.intersection(tree):
            (marker, value), = tree.items()
            if marker in (_ARRAY, _SCALAR):
                if value not in arrays:
                    raise CheckpointError(path, "array referenced by the metadata is missing", record=f"key {value!r}")
                return arrays[value] if marker == _ARRAY else arrays[value][()]
            if marker == _TUPLE:
                return tuple(_decode(v, arrays, path) for v in value)
            return {_decode(k, arrays, path): _decode(v, arrays, path) for k, v in value}
        return {k: _decode(v, arrays, path) for k, v in tree.items()}
    return tree


def _write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the archive (a separate function so that tests can make it fail half-way)."""
    np.savez(f, **arrays)


def shared_scratch_file(nbytes: int, prefix: str, folders: tuple = ("/dev/shm", None)) -> str:
    """A new private file of ``nbytes`` bytes, its space reserved, for processes to map and share.

    Tried in ``folders`` in turn (None: the temporary folder, ``tempfile.gettempdir()``): on Linux
    /dev/shm holds it in memory. The space is allocated now (``os.posix_fallocate`` where the system
    has it), so that a full folder fails here rather than with a bus error at the first write into
    the mapping. The caller removes the file once every process has mapped it (the mappings stay).

    Returns:
        the file's path.

    Raises:
        OSError: no folder had room (the last folder's error, naming the size and the folders).
    """
    error = None
    for folder in folders:
        if folder is not None and not os.path.isdir(folder):
            continue
        fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:
                os.ftruncate(fd, nbytes)
            return path
        except OSError as e:
            error = e
            os.unlink(path)
        finally:
            os.close(fd)
    where = ", ".join(f or tempfile.gettempdir() for f in folders)
    raise OSError(getattr(error, "errno", None), f"no room for a {nbytes / 2**20:.1f} MB shared file in {where}"
                  + (f" ({error.strerror})" if error is not None else ""))


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Write ``path`` so that it is either the old file or the complete new one, never half of one.

    ``with atomic_write(path, "w") as f: json.dump(data, f)``. Steps: 1. open a temporary file
    with a unique name (``.<name>.<random>.tmp``) in the same folder, so that two runs writing the
    same file never share one; 2. the block writes it; 3. flush and fsync it; 4. ``os.replace`` it
    onto ``path`` (atomic on POSIX and Windows); 5. fsync the folder so that the rename survives a
    crash. On any error in the block the temporary file is removed and ``path`` is untouched.
    Every file the package writes goes through here (checkpoints, logs, configurations, results,
    images, downloads); only the run log's appends do not.

    Args:
        path: the file to write (its folder is created).
        mode: "wb" (binary) or "w" (text).
        encoding: for text mode (default UTF-8).

    Yields:
        the open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can open a folder
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: PathLike,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a training checkpoint atomically, in a format that cannot carry code.

    The file is an ``.npz`` archive: every array under a key made of its path (``model/<name>``,
    ``optimizer/state/<name>/momentum_buffer``, ...) plus ``__metadata__``, a UTF-8 JSON document
    holding the structure and every non-array value (step, config, optimizer hyper-parameters, RNG
    states: ``np.random.Generator.bit_generator.state`` is a dict of Python ints and stores exactly).

    Args:
        path: destination, conventionally ending in ``.npz`` (used as given; folders are created).
        model_state: ``{name: array}`` (NumPy arrays, minimaskrcnn Tensors or CuPy arrays).
        optimizer_state: nested dicts / lists / tuples of arrays and plain values, or None.
        extra: the same kinds of values, e.g. ``{"step": 100, "rng": rng.bit_generator.state}``.

    Returns:
        The path written.

    Raises:
        CheckpointError: a value that cannot be stored (an object array, a function, ...), naming its key.
    """
    path = Path(path)
    encoder = _Encoder(path)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": encoder.encode(dict(model_state), "model"),
        "optimizer": encoder.encode(optimizer_state, "optimizer"),
        "extra": encoder.encode(dict(extra or {}), "extra"),
    }
    text = json.dumps(metadata, indent=1)
    arrays = dict(encoder.arrays)
    arrays[_METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as f:
        _write_npz(f, arrays)
    return path


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (``allow_pickle=False``: no code runs).

    Args:
        path: the ``.npz`` file.

    Returns:
        ``Checkpoint(model_state, optimizer_state, extra)``: the values as saved, bit for bit (arrays
        keep dtype and shape; NumPy scalars, tuples and non-string dict keys are restored).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not a minimaskrcnn checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(path, "is a single .npy array, not a checkpoint archive")
        with npz:
            if _METADATA_KEY not in npz.files:
                raise CheckpointError(path, "not a minimaskrcnn checkpoint (no __metadata__ entry)")
            metadata = json.loads(npz[_METADATA_KEY].tobytes().decode("utf-8"))
            arrays = {k: npz[k] for k in npz.files if k != _METADATA_KEY}
    except CheckpointError:
        raise
    except Exception as e:  # BadZipFile, EOFError, ValueError, zlib.error, ... on damaged bytes
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, "not a minimaskrcnn checkpoint (wrong format tag)", record="__metadata__")
    if metadata.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(path, f"checkpoint version {metadata.get('version')!r} is not supported "
                              f"(this library reads version {CHECKPOINT_VERSION})", record="__metadata__")
    return Checkpoint(
        model_state=_decode(metadata["model"], arrays, path),
        optimizer_state=_decode(metadata["optimizer"], arrays, path),
        extra=_decode(metadata["extra"], arrays, path),
    )
