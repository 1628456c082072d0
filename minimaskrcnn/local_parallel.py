"""Data-parallel training on one machine without MPI: ``minimaskrcnn train --processes N``.

A small model on a CPU keeps one core busy: its matrix products are too small for two BLAS threads
and most of a step is one op after another in Python. Two processes of half the batch each, with
their gradients summed after the backward pass, use both cores of a 2-core machine (measured on
this project's 2-core machine with benchmarks/bench_processes.py, the default run's step: 172 ms of
wall time in one process with two kernel threads, 112 ms in two processes of one thread each; 307
and 173 ms late in training).

This is the MPI data-parallel run (``distributed.py``) with another transport: the same command
line runs in N processes (``python -m minimaskrcnn.local_parallel``), rank 0 in the process the
user started, and a ``LocalCommunicator`` gives them ``distributed.Communicator``'s collectives:
small Python objects travel through one socket pair per worker (rank 0 in the middle), gradients
through a buffer in shared memory that every rank sums in rank order (the same bits everywhere).
The run is the one-process run of the same global batch up to the order of float sums
(``distributed.global_losses``), and the run of ``mpiexec -n 2`` bit for bit, whose sums are the same
(tests/test_local_parallel.py).

``default_processes`` is how many ``minimaskrcnn train`` starts when ``--processes`` is not given:
one per core when the batch splits over them, on the CPU, for models that do not normalise with
batch statistics; the environment variable MINIMASKRCNN_PROCESSES overrides it (the test suite
sets 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import numpy as np

from minimaskrcnn import distributed
from minimaskrcnn.backend import is_cupy

ENV_PROCESSES = "MINIMASKRCNN_PROCESSES"
_ENV_WORKER = "MINIMASKRCNN_LOCAL_WORKER"  # "rank,size,fd" in a worker's environment


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def uses_batch_statistics(config) -> bool:
    """True when the model ``config`` (a TrainConfig) names normalises with batch statistics (a norm
    "bn" anywhere in its configuration); False also when the model cannot be configured (the
    trainer then says why)."""
    from minimaskrcnn.checkpoint import model_config

    try:
        model = model_config(config, num_classes=2)
    except (KeyError, TypeError, ValueError):  # a bad model name or argument: the trainer reports it
        return False

    def bn(obj) -> bool:
        if not dataclasses.is_dataclass(obj):
            return False
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (f.name.endswith("norm") and value == "bn") or bn(value):
                return True
        return False

    return bn(model)


def default_processes(config) -> int:
    """How many processes ``minimaskrcnn train`` runs when ``--processes`` is not given.

    MINIMASKRCNN_PROCESSES when set; else 1 on the "cuda" backend (one GPU: see docs/DISTRIBUTED.md
    for several), for a model that normalises with batch statistics (norm "bn", which would see
    part of the batch) and off POSIX systems (``launch`` hands each worker a socket by its file
    descriptor); else the most processes, up to the available cores, over which
    ``config.batch_size`` splits evenly (2 for the default run on 2 cores).

    Raises:
        ValueError: MINIMASKRCNN_PROCESSES is not a positive integer.
    """
    value = os.environ.get(ENV_PROCESSES) or None  # empty: unset
    if value is not None:
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_PROCESSES}={value!r}: expected a positive integer")
        return int(value)
    from minimaskrcnn.backend import get_backend

    if os.name != "posix" or (config.backend or get_backend()) == "cuda" or uses_batch_statistics(config):
        return 1
    cores = min(available_cores(), max(1, int(config.batch_size)))
    return max(n for n in range(1, cores + 1) if config.batch_size % n == 0)


class LocalError(distributed.DistributedError):
    """A process of a local data-parallel run stopped (its own error is printed above)."""


class LocalCommunicator(distributed.Communicator):
    """The processes of a local data-parallel run (see the module docstring).

    Args:
        rank, size: this process's index and the number of processes.
        peers: on rank 0, {rank: (Connection, subprocess.Popen)} of every worker; elsewhere, the
            Connection to rank 0.

    Every collective is called by all ranks in the same order (``distributed.Communicator``).
    """

    def __init__(self, rank: int, size: int, peers):
        self.rank, self.size = int(rank), int(size)
        self.local_rank, self.local_size = self.rank, self.size
        self._peers = peers
        self._shared: dict[tuple[str, int], np.ndarray] = {}  # (dtype, length) -> (size, length) slots

    # ------------------------------------------------------------------ objects, through sockets
    def _lost(self, rank: int) -> NoReturn:
        how = "stopped"
        if self.rank == 0:  # how the worker ended, once it has
            with contextlib.suppress(subprocess.TimeoutExpired):
                how = _ended(self._peers[rank][1].wait(timeout=5))
        elif rank == 0:
            how = "stopped (its message is above)"
        raise LocalError(f"process {rank} of the {self.size} processes of this run {how}")

    def allgather(self, obj: Any) -> list:
        if self.rank == 0:
            gathered = [obj]
            for r, (conn, _) in sorted(self._peers.items()):
                try:
                    gathered.append(conn.recv())
                except (EOFError, OSError):
                    self._lost(r)
            for r, (conn, _) in sorted(self._peers.items()):
                try:
                    conn.send(gathered)
                except OSError:
                    self._lost(r)
            return gathered
        try:
            self._peers.send(obj)
            return self._peers.recv()
        except (EOFError, OSError):
            self._lost(0)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.allgather(obj if self.rank == root else None)[root]

    def barrier(self) -> None:
        self.allgather(None)  # waits in a blocking read: no spinning

    # ---------------------------------------------------------------- arrays, in shared memory
    def _slots(self, buf: np.ndarray) -> np.ndarray:
        """(size, len(buf)) arrays of buf's dtype that every rank maps: made once per buffer shape."""
        key = (buf.dtype.str, int(buf.size))
        if key in self._shared:
            return self._shared[key]
        path = None
        try:
            if self.rank == 0:  # in memory (/dev/shm) where there is room, else in the temporary folder
                from minimaskrcnn.io import shared_scratch_file

                try:
                    path = shared_scratch_file(self.size * buf.nbytes, prefix="minimaskrcnn-allreduce-")
                except OSError as e:
                    raise LocalError(f"{e.strerror or e}: the {self.size} processes sum their gradients there; "
                                     "free some memory or run with --processes 1") from None
            path = self.bcast(path)
            self._shared[key] = np.memmap(path, dtype=buf.dtype, mode="r+", shape=(self.size, buf.size))
            self.barrier()  # every rank has mapped it: the name can go (the mappings stay)
        finally:
            if self.rank == 0 and path is not None:  # also when a worker stopped meanwhile: nothing is left
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return self._shared[key]

    def allreduce_buffer_(self, buf) -> None:
        if is_cupy(buf):
            raise LocalError("local data-parallel processes sum host arrays only; for GPUs run under mpiexec "
                             "(docs/DISTRIBUTED.md)")
        slots = self._slots(buf)
        slots[self.rank] = buf
        self.barrier()  # every rank's part is in
        np.copyto(buf, slots[0])
        for r in range(1, self.size):  # in rank order on every rank: the same bits everywhere
            buf += slots[r]
        self.barrier()  # every rank has read every part before any writes the next

    # --------------------------------------------------------------------------------- ending
    def abort(self, code: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        if self.rank != 0:
            os._exit(int(code))  # rank 0 sees the closed socket at its next collective
        self._stop_workers()
        raise SystemExit(code)

    def _stop_workers(self) -> None:
        for conn, process in self._peers.values():
            if process.poll() is None:
                process.terminate()
            conn.close()
        for _, process in self._peers.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def finish(self) -> int:
        """Rank 0, after its share of a run that succeeded: wait for every worker to end.

        Returns:
            0 when every worker ended with 0.

        Raises:
            LocalError: naming the first worker that ended otherwise (an exit code or a signal).
        """
        for rank, (conn, process) in sorted(self._peers.items()):
            returncode = process.wait()
            conn.close()
            if returncode != 0:
                raise LocalError(f"process {rank} of the {self.size} processes of this run {_ended(returncode)}")
        return 0


def _ended(returncode: int | None) -> str:
    """How a worker ended, for a message: "ended with exit code 3", "was killed by signal 9 (SIGKILL)"."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = f" ({signal.Signals(-returncode).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-returncode}{name}"
    return f"ended with exit code {returncode} (its message is above)"


def launch(size: int, argv: Sequence[str]) -> LocalCommunicator:
    """Start ``size - 1`` workers running ``minimaskrcnn`` with ``argv``; returns rank 0's communicator.

    Each worker is ``python -m minimaskrcnn.local_parallel`` with its rank, the size and one end of
    a socket pair in its environment (``_ENV_WORKER``); it runs the same command line as rank 0.
    The caller runs rank 0's share and then calls ``finish()`` (or ``abort()``).
    """
    if os.name != "posix":
        raise LocalError(f"{size} local processes need a POSIX system (Linux, macOS); elsewhere run under mpiexec "
                         "(docs/DISTRIBUTED.md) or with --processes 1")
    peers: dict[int, tuple[Connection, subprocess.Popen]] = {}
    env = {**os.environ, ENV_PROCESSES: str(size)}
    # the workers ignore SIGINT (an ignored signal stays ignored through exec and Python's start): Ctrl-C
    # reaches every process of the terminal's job, and rank 0 alone answers it, ending the workers
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for rank in range(1, size):
            mine, theirs = socket.socketpair()
            try:
                env[_ENV_WORKER] = f"{rank},{size},{theirs.fileno()}"
                process = subprocess.Popen([sys.executable, "-m", "minimaskrcnn.local_parallel", *argv],
                                           env=env, pass_fds=(theirs.fileno(),))
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
            peers[rank] = (Connection(mine.detach()), process)
    except BaseException:
        LocalCommunicator(0, size, peers)._stop_workers()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return LocalCommunicator(0, size, peers)


def _worker() -> int:
    """A worker's life: join the run as its rank, run the command line, end with its exit code."""
    rank, size, fd = (int(v) for v in os.environ.pop(_ENV_WORKER).split(","))
    distributed._world = LocalCommunicator(rank, size, Connection(fd))
    from minimaskrcnn.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_worker())
