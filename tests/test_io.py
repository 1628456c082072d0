"""Checkpoint I/O: PyTorch state_dicts read without torch or code execution; our .npz checkpoints."""
import argparse
import collections
import json
import os
import pickle
import random
import zipfile

import numpy as np
import pytest

from minimaskrcnn import io as mio
from minimaskrcnn.errors import CheckpointError, DataError

# ---------------------------------------------------------------------------------------------------
# load_torch_state_dict against files written by torch.save
# ---------------------------------------------------------------------------------------------------


def _torch_state_dict(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return collections.OrderedDict(
        f32=base,
        f64=torch.randn(3, 2, dtype=torch.float64, generator=g),
        f16=torch.randn(5, generator=g).half(),
        bf16=torch.randn(5, generator=g).bfloat16(),
        i64=torch.randint(-(2**40), 2**40, (3,), generator=g),
        i32=torch.randint(-1000, 1000, (2, 2), dtype=torch.int32, generator=g),
        i8=torch.tensor([-128, 0, 127], dtype=torch.int8),
        u8=torch.tensor([0, 200, 255], dtype=torch.uint8),
        boolean=torch.tensor([True, False, True]),
        transposed=base.t(),  # shares base's storage, strides (1, 6)
        sliced=base[1:3, 2:5],  # storage offset 8
        strided=base[:, ::2],
        scalar=torch.tensor(7),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.ones(2, 3)),
    )


def _reference(torch, value):
    value = value.detach()
    if value.dtype == torch.bfloat16:
        value = value.float()  # exact: bfloat16 is a truncated float32
    return value.contiguous().numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dict_dtypes_views_and_shared_storage(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    state = _torch_state_dict(torch)
    path = tmp_path / "weights.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = mio.load_torch_state_dict(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        expected = _reference(torch, value)
        assert isinstance(loaded[key], np.ndarray), key
        assert loaded[key].dtype == expected.dtype, key
        assert loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
        assert loaded[key].flags.c_contiguous and loaded[key].flags.writeable
    # views were copied out: writing one does not change another
    loaded["transposed"][0, 0] += 1
    assert loaded["f32"][0, 0] == state["f32"][0, 0].item()


def test_module_state_dict_with_metadata_and_buffers(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 5, 5))  # training mode: running stats and num_batches_tracked move
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    loaded = mio.load_torch_state_dict(path)
    assert list(loaded) == list(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded[key], value.numpy(), err_msg=key)
    assert loaded["1.num_batches_tracked"].dtype == np.int64 and loaded["1.num_batches_tracked"].shape == ()


def test_nested_training_checkpoint(tmp_path):
    """torchvision's reference scripts save {"model", "optimizer", "lr_scheduler", "epoch", "args"}."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(lr=0.1, epochs=26, data_path="/coco")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "args": args}, path)

    loaded = mio.load_torch_state_dict(path)
    assert set(loaded) == {"weight", "bias"}
    np.testing.assert_array_equal(loaded["weight"], model.weight.detach().numpy())

    everything = mio.load_torch_pickle(path)
    assert everything["epoch"] == 3
    assert isinstance(everything["args"], mio.TorchNamespace)
    assert (everything["args"].lr, everything["args"].epochs, everything["args"].data_path) == (0.1, 26, "/coco")
    buf = everything["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(buf, opt.state_dict()["state"][0]["momentum_buffer"].numpy())
    assert everything["optimizer"]["param_groups"][0]["lr"] == 0.1


def test_state_dict_rejects_non_tensor_entries(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "mixed.pth"
    torch.save({"weight": torch.ones(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError) as err:
        mio.load_torch_state_dict(path)
    assert str(path) in str(err.value) and "'note'" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# hostile and broken files
# ---------------------------------------------------------------------------------------------------


def _torch_like_zip(path, data_pkl: bytes, storages=None):
    """A zip laid out like torch.save's: archive/data.pkl, archive/data/<key>, byteorder, version."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")


class _Call:
    """Pickles as a call of ``fn(*args)``: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _malicious_payloads(marker):
    import builtins

    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.eval": _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, payload, zip_format):
    marker = tmp_path / "pwned"
    call = _malicious_payloads(marker)[payload]
    # hide the call inside an otherwise ordinary state_dict
    body = pickle.dumps(collections.OrderedDict(weight=call), protocol=2)
    path = tmp_path / "evil.pth"
    if zip_format:
        _torch_like_zip(path, body)
    else:  # legacy: magic number, protocol version, sys info, then the object
        header = b"".join(pickle.dumps(x, protocol=2) for x in
                          (mio._LEGACY_MAGIC_NUMBER, mio._LEGACY_PROTOCOL_VERSION, {"little_endian": True}))
        path.write_bytes(header + body)
    with pytest.raises(CheckpointError) as err:
        mio.load_torch_state_dict(path)
    message = str(err.value)
    global_name = f"{call.fn.__module__}.{call.fn.__name__}"  # os.system pickles as posix.system
    assert global_name in message and str(path) in message
    assert not marker.exists()


def test_out_of_bounds_view_is_refused(tmp_path):
    """A tensor whose size/stride reach past its storage must not read foreign memory."""
    torch = pytest.importorskip("torch")

    class StorageRef:
        pass

    class FakeTensor:
        def __init__(self, offset, size, stride):
            self.args = (offset, size, stride)

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (StorageRef(), *self.args, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, StorageRef) else None

    def write(offset, size, stride, name):
        import io

        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump({"w": FakeTensor(offset, size, stride)})
        path = tmp_path / name
        _torch_like_zip(path, buf.getvalue(), {"0": np.arange(4, dtype="<f4").tobytes()})
        return path

    ok = mio.load_torch_state_dict(write(1, (3,), (1,), "ok.pth"))
    np.testing.assert_array_equal(ok["w"], [1, 2, 3])
    for args in [(2, (3,), (1,)), (0, (2,), (4,)), (0, (2, 2), (1, 3))]:
        path = write(*args, "bad.pth")
        with pytest.raises(CheckpointError, match="reaches element"):
            mio.load_torch_state_dict(path)


def test_missing_non_zip_and_truncated_files(tmp_path):
    torch = pytest.importorskip("torch")
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as err:
        mio.load_torch_state_dict(missing)
    assert str(missing) in str(err.value) and "no such file" in str(err.value)

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError) as err:
        mio.load_torch_state_dict(text)
    assert str(text) in str(err.value) and "not a PyTorch checkpoint" in str(err.value)

    for zip_format in (True, False):
        full = tmp_path / "full.pth"
        torch.save({"w": torch.randn(1000)}, full, _use_new_zipfile_serialization=zip_format)
        cut = tmp_path / f"cut_{zip_format}.pth"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(CheckpointError) as err:
            mio.load_torch_state_dict(cut)
        assert str(cut) in str(err.value)


def test_checkpoint_error_is_a_data_error():
    err = CheckpointError("/x/ckpt.npz", "truncated", record="key 'w'")
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    assert str(err) == "/x/ckpt.npz: key 'w': truncated"
    assert pickle.loads(pickle.dumps(err)).record == "key 'w'"


# ---------------------------------------------------------------------------------------------------
# our own checkpoints
# ---------------------------------------------------------------------------------------------------


def _training_state():
    rng = np.random.default_rng(123)
    model = {
        "backbone.body.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "backbone.body.bn1.num_batches_tracked": np.array(17, dtype=np.int64),
        "head.bias": rng.standard_normal(5),  # float64
        "mask": rng.random((2, 3)) > 0.5,
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    optimizer = {
        "state": {
            0: {"momentum_buffer": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "step": np.int64(5)},
            1: {"momentum_buffer": None},
        },
        "param_groups": [{"lr": 0.02, "momentum": 0.9, "nesterov": False, "betas": (0.9, 0.999), "params": [0, 1]}],
    }
    return rng, model, optimizer


def _assert_same(a, b, where="root"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where  # bit-exact
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    rng, model, optimizer = _training_state()
    rng.standard_normal(10)
    random.seed(7)
    python_state = random.getstate()
    extra = {
        "step": 1234,
        "config": {"model": "tiny", "lr": 0.02, "milestones": [10, 20], "run_dir": None, "flip": True},
        "rng": rng.bit_generator.state,  # PCG64: 128-bit Python ints
        "mt19937": np.random.MT19937(5).state,  # holds a uint32 array
        "python_random": python_state,  # (3, tuple of 625 ints, None)
        "loss": float("nan"),
        "best": np.float32(0.25),
        "__array__": "a key that looks like a marker",
    }
    path = tmp_path / "run" / "checkpoint.npz"
    assert mio.save_checkpoint(path, model, optimizer, extra) == path
    ckpt = mio.load_checkpoint(path)
    _assert_same(ckpt.model_state, model)
    _assert_same(ckpt.optimizer_state, optimizer)
    _assert_same(ckpt.extra, extra)
    model_state, optimizer_state, extra_loaded = ckpt  # unpacks as a tuple too
    assert extra_loaded["best"].dtype == np.float32

    # the restored generator continues exactly where the saved one was
    expected = rng.standard_normal(5)
    restored = np.random.default_rng()
    restored.bit_generator.state = ckpt.extra["rng"]
    np.testing.assert_array_equal(restored.standard_normal(5), expected)
    expected = random.random()
    random.seed(99)
    random.setstate(ckpt.extra["python_random"])
    assert random.random() == expected

    # the file is a plain npz: no pickle inside
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["__metadata__"].tobytes())
        assert meta["format"] == "minimaskrcnn-checkpoint"
        assert "model/backbone.body.conv1.weight" in npz.files


def test_checkpoint_without_optimizer_and_extra(tmp_path):
    path = tmp_path / "weights.npz"
    mio.save_checkpoint(path, {"w": np.ones(3, np.float32)})
    ckpt = mio.load_checkpoint(path)
    assert ckpt.optimizer_state is None and ckpt.extra == {}


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    _, model, optimizer = _training_state()
    mio.save_checkpoint(path, model, optimizer, {"step": 1})
    before = path.read_bytes()

    def crash_half_way(f, arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise RuntimeError("power cut")

    monkeypatch.setattr(mio, "_write_npz", crash_half_way)
    newer = {k: v + 1 for k, v in model.items()}
    with pytest.raises(RuntimeError, match="power cut"):
        mio.save_checkpoint(path, newer, optimizer, {"step": 2})
    assert path.read_bytes() == before
    assert mio.load_checkpoint(path).extra["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # no temporary file left


def test_unstorable_values_are_refused_before_writing(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(CheckpointError) as err:
        mio.save_checkpoint(path, {"w": np.ones(2)}, extra={"callback": lambda: 0})
    assert "'extra/callback'" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="object arrays"):
        mio.save_checkpoint(path, {"w": np.array([{}, 1], dtype=object)})
    assert not path.exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped bytes", "not a zip", "no metadata", "npy"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "checkpoint.npz"
    _, model, optimizer = _training_state()
    mio.save_checkpoint(path, model, optimizer, {"step": 3})
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped bytes":
        offset = data.find(np.ascontiguousarray(model["backbone.body.conv1.weight"]).tobytes()[:16])
        assert offset > 0
        data[offset : offset + 8] = bytes(b ^ 0xFF for b in data[offset : offset + 8])
        path.write_bytes(bytes(data))
    elif damage == "not a zip":
        path.write_text("hello")
    elif damage == "no metadata":
        with path.open("wb") as f:
            np.savez(f, w=np.ones(3))
    else:
        with path.open("wb") as f:
            np.save(f, np.ones(3))
    with pytest.raises(CheckpointError) as err:
        mio.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        mio.load_checkpoint(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------------------------
# atomic_write: the package's one file writer
# ---------------------------------------------------------------------------------------------------


def test_atomic_write_uses_a_unique_temporary_file_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "results.json"
    with mio.atomic_write(target, "w") as first, mio.atomic_write(target, "w") as second:
        # two writers of the same file (two runs) never share a temporary file: both are there
        temporary = sorted(p.name for p in target.parent.iterdir())
        assert len(temporary) == 2
        assert all(name.startswith(".results.json.") and name.endswith(".tmp") for name in temporary)
        assert not target.exists()  # nothing is visible until the block ends
        first.write('{"run": 1}')
        second.write('{"run": 2}')
    assert json.loads(target.read_text()) == {"run": 1}  # the last to finish wins, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "log.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with mio.atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
    with mio.atomic_write(tmp_path / "new.bin") as f:  # binary by default
        f.write(b"\x00\x01")
    assert (tmp_path / "new.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"):
        with mio.atomic_write(target, "a"):
            pass
    assert target.read_text() == "old\n"


def test_the_package_writes_files_only_through_atomic_write():
    """No second copy of the writer: renames and temporary files appear only in io.atomic_write."""
    import pathlib

    import minimaskrcnn

    root = pathlib.Path(minimaskrcnn.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        for needle in ("os.replace(", "os.rename(", "mkstemp(", "NamedTemporaryFile(", ".write_text(", ".write_bytes("):
            if needle in text and path.name != "io.py":
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
