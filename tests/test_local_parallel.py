"""Local data-parallel training (``minimaskrcnn train --processes N``, local_parallel.py).

The communicator's collectives (three ranks in threads of this process: the same code as in
processes), how many processes ``minimaskrcnn train`` starts by default, and the command itself:
two processes give the weights of one process to float32 rounding, the weights of ``mpiexec -n 2``
bit for bit (the same sums in the same order), and a batch that does not split ends the run with
one error per process and no traceback.
"""
import dataclasses
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from minimaskrcnn import local_parallel
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.local_parallel import LocalCommunicator, LocalError, default_processes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_distributed import ROOT  # noqa: E402
from test_distributed_train import cli_options, relative_difference, tiny_config, weights  # noqa: E402


# ----------------------------------------------------------------------- the communicator
class _Done:
    """A finished worker's stand-in for its subprocess.Popen (the ranks here are threads)."""

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


def run_ranks(size: int, body):
    """body(comm) on ``size`` ranks, each in a thread with its LocalCommunicator; their results."""
    import socket
    from multiprocessing.connection import Connection

    pairs = [socket.socketpair() for _ in range(size - 1)]
    peers = {r: (Connection(a.detach()), _Done()) for r, (a, _) in enumerate(pairs, start=1)}
    comms = [LocalCommunicator(0, size, peers)]
    comms += [LocalCommunicator(r, size, Connection(b.detach())) for r, (_, b) in enumerate(pairs, start=1)]
    results, errors = [None] * size, []

    def run(rank):
        try:
            results[rank] = body(comms[rank])
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append((rank, e))

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results, errors, comms


def shared_files() -> set:
    return {f for f in os.listdir("/dev/shm") if f.startswith("minimaskrcnn-")} if os.path.isdir("/dev/shm") else set()


def test_collectives_gather_broadcast_and_sum_in_rank_order():
    before = shared_files()
    parts = [np.random.default_rng(r).standard_normal(1001).astype(np.float32) * 10 ** r for r in range(3)]

    def body(comm):
        gathered = comm.allgather({"rank": comm.rank})
        value = comm.bcast(f"from {comm.rank}", root=2)
        comm.barrier()
        buf = parts[comm.rank].copy()
        comm.allreduce_buffer_(buf)
        small = np.full(7, comm.rank + 1.0)  # another shape and dtype: other shared slots
        comm.allreduce_buffer_(small)
        again = parts[comm.rank] * 2  # the same shape again: the slots are reused
        comm.allreduce_buffer_(again)
        return gathered, value, buf, small, again

    results, errors, comms = run_ranks(3, body)
    assert not errors, errors
    expected = (parts[0] + parts[1]) + parts[2]  # rank order
    for gathered, value, buf, small, again in results:
        assert gathered == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
        assert value == "from 2"
        assert buf.dtype == np.float32 and np.array_equal(buf, expected)  # the same bits on every rank
        assert small.dtype == np.float64 and np.array_equal(small, np.full(7, 6.0))
        assert np.array_equal(again, (parts[0] * 2 + parts[1] * 2) + parts[2] * 2)
    assert len(comms[0]._shared) == 2
    assert shared_files() == before  # the shared buffers' names are gone once every rank mapped them


def test_a_stopped_worker_is_named_by_rank_0():
    def body(comm):
        if comm.rank == 1:
            comm._peers.close()  # rank 1 ends without taking part
            return None
        try:
            return comm.allgather(comm.rank)
        except LocalError:
            if comm.rank == 0:
                comm._stop_workers()  # as its abort does: the other workers see rank 0 go
            raise

    results, errors, _ = run_ranks(3, body)
    errors = dict(errors)
    assert isinstance(errors[0], LocalError) and "process 1 of the 3 processes" in str(errors[0])
    assert isinstance(errors[2], LocalError) and "process 0 of the 3 processes" in str(errors[2])


def test_no_shared_file_is_left_when_a_worker_stops_before_mapping_it():
    before = shared_files()

    def body(comm):
        if comm.rank == 1:
            comm._peers.close()  # gone before the first sum
            return None
        comm.allreduce_buffer_(np.ones(1000, np.float32))

    _, errors, _ = run_ranks(2, body)
    assert isinstance(dict(errors)[0], LocalError)
    assert shared_files() == before


def test_no_room_for_the_shared_file_is_an_error_that_says_so(tmp_path):
    from minimaskrcnn.io import shared_scratch_file

    with pytest.raises(OSError, match=r"no room for a .* MB shared file in"):
        shared_scratch_file(1 << 60, prefix="minimaskrcnn-test-", folders=(str(tmp_path), "/no/such/folder"))
    assert list(tmp_path.iterdir()) == []
    path = shared_scratch_file(4096, prefix="minimaskrcnn-test-", folders=("/no/such/folder", str(tmp_path)))
    assert os.path.dirname(path) == str(tmp_path) and os.path.getsize(path) == 4096


class _Ended:
    def __init__(self, returncode):
        self.returncode = returncode

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode


@pytest.mark.parametrize("returncode, says", [(-9, "was killed by signal 9 (SIGKILL)"),
                                              (3, "ended with exit code 3")])
def test_finish_names_a_worker_that_did_not_end_well(returncode, says):
    import socket
    from multiprocessing.connection import Connection

    a, b = socket.socketpair()
    peers = {1: (Connection(a.detach()), _Ended(0)), 2: (Connection(b.detach()), _Ended(returncode))}
    comm = LocalCommunicator(0, 3, peers)
    with pytest.raises(LocalError, match=re.escape(f"process 2 of the 3 processes of this run {says}")):
        comm.finish()


def test_gpu_buffers_are_refused_with_the_way_out():
    comm = LocalCommunicator(1, 2, None)
    device_array = type("ndarray", (), {"__module__": "cupy._core.core"})()  # what backend.is_cupy reads
    with pytest.raises(LocalError, match="mpiexec"):
        comm.allreduce_buffer_(device_array)


# ------------------------------------------------------------------ the default number
def test_default_processes_one_per_core_where_the_batch_splits(monkeypatch):
    monkeypatch.delenv(local_parallel.ENV_PROCESSES, raising=False)
    for cores, batch, expected in [(2, 4, 2), (4, 4, 4), (3, 4, 2), (8, 4, 4), (2, 3, 1), (1, 4, 1), (16, 6, 6)]:
        monkeypatch.setattr(local_parallel, "available_cores", lambda c=cores: c)
        assert default_processes(TrainConfig(batch_size=batch)) == expected, (cores, batch)


def test_default_processes_stay_one_for_gpus_batch_norm_and_windows(monkeypatch):
    monkeypatch.delenv(local_parallel.ENV_PROCESSES, raising=False)
    monkeypatch.setattr(local_parallel, "available_cores", lambda: 2)
    assert default_processes(TrainConfig()) == 2
    assert default_processes(TrainConfig(backend="cuda")) == 1
    assert default_processes(TrainConfig(model_kwargs={"backbone.norm": "bn"})) == 1
    assert default_processes(TrainConfig(model="maskrcnn_resnet50_fpn")) == 2  # frozen batch norm: per image
    monkeypatch.setattr(local_parallel.os, "name", "nt")  # no file descriptors to hand to workers
    assert default_processes(TrainConfig()) == 1
    with pytest.raises(LocalError, match="POSIX"):
        local_parallel.launch(2, ["train"])


def test_the_environment_overrides_the_default(monkeypatch):
    monkeypatch.setenv(local_parallel.ENV_PROCESSES, "3")
    assert default_processes(TrainConfig()) == 3
    monkeypatch.setenv(local_parallel.ENV_PROCESSES, "two")
    with pytest.raises(ValueError, match="MINIMASKRCNN_PROCESSES"):
        default_processes(TrainConfig())


# ------------------------------------------------------------------------- the command
def run_train(config: TrainConfig, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "minimaskrcnn", "train", *cli_options(config), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("local")


@pytest.fixture(scope="module")
def two_processes(root):
    config = tiny_config(root, "two-local")
    out = run_train(config, "--processes", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    return config, out


def test_two_processes_give_the_weights_of_one_process(root, two_processes):
    from minimaskrcnn.train import Trainer

    one = tiny_config(root, "one-local")
    Trainer(one).fit()
    config, out = two_processes
    assert relative_difference(weights(one), weights(config)) < 1e-4
    # rank 0 alone speaks and writes
    assert out.stderr.count("run folder:") == 1 and "2 processes of 2 images per step" in out.stderr
    assert out.stdout.count("done: step 4") == 1
    assert not [f for f in os.listdir(config.run_dir) if f.startswith("minimaskrcnn-")]


def test_two_processes_equal_two_mpi_ranks_bit_for_bit(root, two_processes):
    from test_distributed import mpiexec
    from test_distributed_train import run_cli

    mpiexec()  # skips without the distributed extra
    config = tiny_config(root, "two-mpi")
    out = run_cli(2, config)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = weights(two_processes[0]), weights(config)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_a_batch_that_does_not_split_ends_every_process_with_one_line(root):
    config = dataclasses.replace(tiny_config(root, "bad-local"), batch_size=3)
    out = run_train(config, "--processes", "2", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --batch-size 3 (the global batch) does not split evenly over 2 processes: " \
                                 "use a multiple of 2"  # said once, before any worker started
    assert not os.path.exists(config.run_dir)


def test_batch_norm_with_processes_is_refused_once(root):
    config = dataclasses.replace(tiny_config(root, "bn-local"), model_kwargs={"backbone.norm": "bn"})
    out = run_train(config, "--processes", "2", timeout=120)
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "[rank" not in out.stderr
    assert "batch statistics" in out.stderr and "--processes 1" in out.stderr


def test_processes_must_be_positive(root):
    out = run_train(tiny_config(root, "zero"), "--processes", "0", timeout=120)
    assert out.returncode == 2 and "error: --processes 0: at least 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_validation_split_over_processes_scores_like_one_process(root):
    # two ranks (threads) each run the model over half the validation images; rank 0's numbers are
    # those of one process running all of them with the same weights
    from minimaskrcnn.evaluate import evaluate
    from minimaskrcnn.train import Trainer

    config = dataclasses.replace(tiny_config(root, "val-split"), num_val_images=5, val_max_images=5,
                                 val_iou_types=("bbox", "segm"))
    Trainer(config)  # the data, made once before the ranks read it

    def body(comm):
        trainer = Trainer(config, comm=comm)
        return trainer, trainer.validate()

    results, errors, _ = run_ranks(2, body)
    assert not errors, errors
    (trainer, row), (_, other) = results
    assert other == {}  # rank 1 ran its share; rank 0 scores and logs
    expected = evaluate(trainer.model, trainer.val_dataset, iou_types=("bbox", "segm"), verbose=False)
    import json

    with open(os.path.join(config.run_dir, "results_segm.json")) as f:
        saved = json.load(f)  # written by rank 0: the detections of both ranks' images
    assert len({r["image_id"] for r in saved}) == 5
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            assert row[f"val_{t}_{k}"] == expected[t][k], (t, k)


def test_ctrl_c_ends_every_process_and_the_run_resumes(root):
    import json
    import signal
    import time

    config = dataclasses.replace(tiny_config(root, "ctrl-c"), steps=200, lr_milestones=(150,), checkpoint_every=2)
    cmd = [sys.executable, "-m", "minimaskrcnn", "train", *cli_options(config), "--processes", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as a terminal's job
    log = os.path.join(config.run_dir, "log.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the job gets it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("error: interrupted") == 1 and "Traceback" not in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of the job is left
    stopped = [json.loads(line)["step"] for line in open(log) if '"loss"' in line][-1]
    assert stopped < config.steps

    from minimaskrcnn.io import load_checkpoint

    saved = int(load_checkpoint(os.path.join(config.run_dir, "checkpoint.npz")).extra["step"])
    assert saved % 2 == 0 and 2 <= saved <= stopped  # the last checkpoint is whole
    resumed = subprocess.run([*cmd[:-2], "--resume", "--steps", str(saved + 2), "--processes", "2"], cwd=ROOT,
                             env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"done: step {saved + 2}" in resumed.stdout
