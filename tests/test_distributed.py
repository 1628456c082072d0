"""Data-parallel pieces: fusion buckets, the fused gradient allreduce, the one-process communicator,
launcher detection, and real MPI jobs of two ranks under mpiexec (allreduce, allgather, a failing
rank ending the job)."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minimaskrcnn import distributed
from minimaskrcnn.distributed import (
    Communicator,
    DistributedError,
    allreduce_gradients_,
    check_batch_split,
    fusion_buckets,
)
from minimaskrcnn.nn import Parameter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------ without MPI
def test_fusion_buckets_pack_runs_of_one_dtype_up_to_the_threshold():
    arrays = [np.zeros(n, dtype) for n, dtype in [(10, np.float32), (10, np.float32), (30, np.float32),
                                                   (5, np.float64), (5, np.float32)]]
    assert fusion_buckets(arrays, bucket_bytes=100) == [[0, 1], [2], [3], [4]]  # 30 floats = 120 bytes alone
    assert fusion_buckets(arrays, bucket_bytes=1 << 20) == [[0, 1, 2], [3], [4]]
    assert fusion_buckets([], 100) == []


class SimulatedRanks(Communicator):
    """Rank 0 of ``size`` ranks whose other ranks hold ``others`` (their buffers, in call order):
    allreduce adds them, and counts the calls."""

    def __init__(self, others):
        self.size = 1 + len(others)
        self.others = others
        self.calls = []

    def allreduce_buffer_(self, buf):
        k = len(self.calls)
        self.calls.append(buf.size)
        for other in self.others:
            buf += other[k]


def test_fused_allreduce_sums_every_gradient_in_few_buffers():
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(4, 3), (3,), (2, 2, 2), (5,)]]
    mine = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
    theirs = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
    for p, g in zip(params, mine):
        p.grad = g.copy()
    params[3].grad = None  # no gradient here (e.g. a rank without images): zeros travel in its place
    # the other rank's buffer as it packs it: its four gradients, then its four presence flags
    other = np.concatenate([g.reshape(-1) for g in theirs] + [np.ones(4, np.float32)])
    comm = SimulatedRanks([[other]])
    sent = allreduce_gradients_(comm, params)
    assert comm.calls == [12 + 3 + 8 + 5 + 4]  # one allreduce, of one buffer
    assert sent == (12 + 3 + 8 + 5 + 4) * 4
    for i, p in enumerate(params):
        expected = theirs[i] + (mine[i] if i != 3 else 0)
        assert np.array_equal(p.grad, expected), i


def test_a_parameter_without_gradient_anywhere_keeps_none():
    params = [Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))]
    params[0].grad = np.ones(3, np.float32)
    other = np.concatenate([np.ones(3, np.float32), np.zeros(2, np.float32), np.array([1, 0], np.float32)])
    allreduce_gradients_(SimulatedRanks([[other]]), params)
    assert np.array_equal(params[0].grad, np.full(3, 2.0)) and params[1].grad is None


def test_small_buckets_make_several_allreduces():
    params = [Parameter(np.ones(100, np.float32)) for _ in range(3)]
    for p in params:
        p.grad = np.ones(100, np.float32)
    others = [[np.ones(100, np.float32), np.ones(100, np.float32), np.ones(103, np.float32)]]
    comm = SimulatedRanks(others)
    allreduce_gradients_(comm, params, bucket_bytes=400)
    assert comm.calls == [100, 100, 103]  # three buckets; the presence flags ride in the last
    assert all(np.array_equal(p.grad, np.full(100, 2.0)) for p in params)


def test_one_process_communicator_changes_nothing():
    comm = Communicator()
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.arange(3, dtype=np.float32)
    assert allreduce_gradients_(comm, [p]) == 0 and np.array_equal(p.grad, [0, 1, 2])
    assert comm.allgather({"a": 1}) == [{"a": 1}] and comm.bcast(5) == 5 and comm.is_root
    with pytest.raises(ValueError, match="boom"), distributed.abort_on_error(comm):
        raise ValueError("boom")  # one process: the error passes through unchanged


def test_launcher_environment_gives_the_world_size(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_world_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched_world_size() == 4


def test_launched_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(DistributedError, match=r"mpi4py cannot be imported .*minimaskrcnn\[distributed\]"):
        distributed.init()


def test_batch_must_split_evenly():
    assert check_batch_split(4, 2) == 2
    with pytest.raises(DistributedError, match="--batch-size 3 .* over 2 processes: use a multiple of 2"):
        check_batch_split(3, 2)


# --------------------------------------------------------------------------- under mpiexec
def mpiexec() -> str:
    """The mpiexec of this environment (the distributed extra's MPICH puts it beside python)."""
    pytest.importorskip("mpi4py")
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec: pip install -e '.[distributed]'")
    return found


def run_mpi(n: int, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python program on n ranks; its output, exit code; fails the test on a hang."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    cmd = [mpiexec(), "-n", str(n), sys.executable, *(["-c", script] if "\n" in script else [script]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.mpi
def test_two_ranks_sum_fused_gradients_and_gather_objects():
    script = textwrap.dedent("""
        import numpy as np
        from minimaskrcnn import distributed
        from minimaskrcnn.nn import Parameter
        comm = distributed.init()
        assert comm.size == 2 and type(comm).__name__ == "MPICommunicator", comm
        params = [Parameter(np.zeros(s, np.float32)) for s in [(3, 2), (4,), (1,)]]
        for i, p in enumerate(params):
            p.grad = np.full(p.data.shape, 10.0 * i + comm.rank, np.float32)
        if comm.rank == 1:
            params[2].grad = None
        allreduce_bytes = distributed.allreduce_gradients_(comm, params, bucket_bytes=16)
        line = " ".join(str(v) for v in (
            comm.rank, [p.grad.tolist() for p in params], allreduce_bytes,
            comm.allgather(comm.rank * 7), comm.bcast("from0" if comm.rank == 0 else None),
            distributed.replica_checksum([p.grad for p in params]) == comm.bcast(
                distributed.replica_checksum([p.grad for p in params]))))
        # One writer: two ranks printing to the same pipe can interleave their bytes.
        lines = comm.allgather(line)
        if comm.rank == 0:
            print("\\n".join(lines), flush=True)
        comm.barrier()
    """)
    out = run_mpi(2, script)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.strip().splitlines())
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        expected = (f"{rank} [[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [21.0, 21.0, 21.0, 21.0], [20.0]] "
                    f"{(6 + 4 + 1 + 3) * 4} [0, 7] from0 True")
        assert line == expected


@pytest.mark.mpi
def test_a_failing_rank_ends_the_whole_job_with_its_error():
    script = textwrap.dedent("""
        import time
        from minimaskrcnn import distributed
        comm = distributed.init()
        with distributed.abort_on_error(comm):
            if comm.rank == 1:
                raise ValueError("rank one cannot go on")
            comm.allgather(0)  # rank 0 would wait here forever without the abort
            time.sleep(60)
    """)
    out = run_mpi(2, script, timeout=60)
    assert out.returncode != 0
    assert "[rank 1 of 2] ValueError: rank one cannot go on" in out.stderr
