"""Data-parallel training over MPI: N processes, one model replica each, gradients summed by allreduce.

Horovod's recipe on NumPy and CuPy arrays: every process (an MPI *rank*) holds the same model,
computes the losses and gradients of its share of the global batch, and one allreduce sums the
gradients, so that the same optimizer step runs everywhere and the replicas stay equal. The
gradients travel in a few large contiguous buffers (Horovod's *tensor fusion*): one message of
many megabytes instead of a hundred small ones, whose fixed cost would dominate.

The same computation as one process: each loss is noted with its count (``global_batch``), the
counts are summed over the ranks, and each rank's loss is rescaled by ``local count / global
count`` (``loss_weights``), so that the summed gradients are the gradients of the whole batch.

Launch with ``mpiexec -n N minimaskrcnn train ...`` (or ``python -m mpi4py -m minimaskrcnn train``);
``pip install "minimaskrcnn[distributed]"`` brings mpi4py and an MPI runtime (MPICH) as wheels.
Without mpiexec, ``init()`` gives a one-process ``Communicator`` and mpi4py is never imported.
docs/DISTRIBUTED.md has the scaling model; lesson 19 shows the arithmetic.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from minimaskrcnn.backend import (
    cupy_or_none,
    get_array_module,
    get_backend,
    is_cupy,
    limit_threads,
    reuse_freed_memory,
    set_backend,
)

# Horovod's default fusion threshold: gradients are packed into buffers of up to this many bytes
DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024

# environment variables by which launchers give the number of processes of the job
_WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

INSTALL_HINT = 'pip install "minimaskrcnn[distributed]" (mpi4py and the MPICH runtime, as wheels)'


class DistributedError(RuntimeError):
    """Data-parallel training cannot run as asked (no mpi4py, a batch that does not split, ...)."""


# ------------------------------------------------------------------------------ communicators
class Communicator:
    """The job's processes as seen by one of them; this base class is the one-process job.

    Attributes:
        rank: this process's index, 0..size-1 (rank 0 writes the log, the curves and checkpoints).
        size: N, the number of processes.
        local_rank: the index among the processes of this machine (picks the GPU).
        local_size: the number of processes on this machine (they share its cores).

    Every method is collective: all ranks call it, in the same order.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self) -> bool:
        """True on rank 0, the one that writes files."""
        return self.rank == 0

    def allgather(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects, pickled)."""
        return [obj]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """``root``'s obj on every rank (pickled)."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def allreduce_buffer_(self, buf) -> None:
        """Sum a contiguous 1-D NumPy or CuPy array over the ranks, in place (the same bits on every rank)."""

    def abort(self, code: int = 1) -> NoReturn:
        """End the whole job with exit code ``code`` (one process: exit)."""
        raise SystemExit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class MPICommunicator(Communicator):
    """The processes of an MPI communicator (mpi4py), with a transport for GPU buffers.

    Args:
        comm: an ``mpi4py.MPI.Comm`` (default ``COMM_WORLD``).
        gpu_transport: how CuPy buffers are summed: "nccl" (NCCL through ``cupyx.distributed``),
            "mpi" (hand the device buffer to a CUDA-aware MPI), "host" (copy to the host, MPI, copy
            back) or "auto" (NCCL when CuPy has it, else "host"); chosen at the first GPU buffer.
            The environment variable MINIMASKRCNN_GPU_ALLREDUCE overrides "auto".
    """

    GPU_TRANSPORTS = ("auto", "nccl", "mpi", "host")

    def __init__(self, comm=None, gpu_transport: str = "auto"):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        gpu_transport = os.environ.get("MINIMASKRCNN_GPU_ALLREDUCE", gpu_transport)
        if gpu_transport not in self.GPU_TRANSPORTS:
            raise DistributedError(f"GPU allreduce transport {gpu_transport!r}: expected one of {self.GPU_TRANSPORTS}")
        self.gpu_transport = gpu_transport
        self._nccl = None

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        # a non-blocking barrier polled with short sleeps: ranks waiting for rank 0 (validating,
        # writing a checkpoint) leave the CPU to it instead of spinning in MPI's busy wait
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.002)

    def allreduce_buffer_(self, buf) -> None:
        if not is_cupy(buf):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return
        import cupy

        # the kernels that wrote the gradients run asynchronously on the current stream: finish them
        # before another library (NCCL on its stream, MPI on the host) reads the buffer
        stream = cupy.cuda.get_current_stream()
        stream.synchronize()
        transport = self._gpu_transport()
        if transport == "nccl":
            self._nccl.all_reduce(buf, buf, op="sum", stream=stream)
            stream.synchronize()
        elif transport == "mpi":  # a CUDA-aware MPI reads the device pointer (__cuda_array_interface__)
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            host = cupy.asnumpy(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf[...] = cupy.asarray(host)

    def _gpu_transport(self) -> str:
        """The GPU transport, NCCL's communicator made (collectively) on first use."""
        if self.gpu_transport == "auto":
            self.gpu_transport = "nccl" if _nccl_available() else "host"
            # every rank must take the same road (one may lack NCCL): the most basic one wins
            choices = self.allgather(self.gpu_transport)
            self.gpu_transport = "host" if "host" in choices else "nccl"
        if self.gpu_transport == "nccl" and self._nccl is None:
            import cupyx.distributed

            self._nccl = cupyx.distributed.init_process_group(self.size, self.rank, backend="nccl", use_mpi=True)
        return self.gpu_transport

    def abort(self, code: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: MPI_Abort ends every process of the job


def _nccl_available() -> bool:
    try:
        from cupy.cuda import nccl

        return bool(nccl.available) if hasattr(nccl, "available") else True
    except Exception:
        return False


def launched_world_size() -> int:
    """The number of processes a launcher (mpiexec, mpirun, srun with PMI) started, from its
    environment; 1 when started alone."""
    for name in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.strip().isdigit():
            return int(value)
    return 1


_world: Communicator | None = None


def init(gpu_transport: str = "auto") -> Communicator:
    """The job's communicator: MPI's world when launched by mpiexec with N > 1 processes (or under
    ``python -m mpi4py``), else the one-process ``Communicator`` (mpi4py is then never imported).
    The same object on every call.

    Raises:
        DistributedError: launched as N > 1 processes but mpi4py cannot be imported.
    """
    global _world
    if _world is not None:
        return _world
    size = launched_world_size()
    if size > 1 or "mpi4py.MPI" in sys.modules:
        try:
            import mpi4py.MPI  # noqa: F401
        except ImportError as e:
            raise DistributedError(f"launched as {size} processes, but mpi4py cannot be imported ({e}): "
                                   f"{INSTALL_HINT}") from None
        world = MPICommunicator(gpu_transport=gpu_transport)
        _world = world if world.size > 1 else Communicator()
    else:
        _world = Communicator()
    return _world


# ------------------------------------------------------------------------ setting up a run
@contextlib.contextmanager
def root_first(comm: Communicator) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a data set), the others after it, when it is done."""
    if not comm.is_root:
        comm.barrier()
    yield
    if comm.is_root:
        comm.barrier()


def threads_per_process(comm: Communicator, threads: int | None) -> int | None:
    """The kernel threads of each process: ``threads`` when given; else, in a job of several
    processes, this machine's cores shared among its processes (None alone: every core)."""
    if threads is not None or comm.local_size == 1:
        return threads
    return max(1, (os.cpu_count() or 1) // comm.local_size)


def select_gpu(comm: Communicator) -> int | None:
    """Make the GPU of this rank's local index CuPy's current device (ranks of one machine share its
    GPUs round robin); call before the model moves to the GPU. Returns the device, or None without
    CuPy and a GPU."""
    cupy = cupy_or_none()
    if cupy is None:
        return None
    device = comm.local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device


def setup_process(comm: Communicator, backend: str | None = None, threads: int | None = None,
                  blas_threads: int | None = None) -> None:
    """Prepare this process of a training run, before its model is built.

    Sets the array backend (``backend.set_backend``, when ``backend`` is given); in a job of several
    processes on the "cuda" backend, gives this rank its GPU (``select_gpu``); limits the kernel and
    BLAS threads to this process's share of the machine (``threads_per_process``,
    ``backend.limit_threads``); and lets large arrays take freed memory back instead of fresh pages
    (``backend.reuse_freed_memory``).

    Raises:
        ValueError: an unknown backend name (``backend.set_backend``).
    """
    if backend is not None:
        set_backend(backend)
    if comm.size > 1 and get_backend() == "cuda":
        select_gpu(comm)  # one GPU per rank of this machine
    limit_threads(threads_per_process(comm, threads), blas_threads)
    reuse_freed_memory()


def check_no_batch_statistics(model) -> None:
    """Refuse a model that normalises with batch statistics in training (``nn.BatchNorm2d``).

    Batch norm in training mode normalises each channel with the mean and variance of the images
    it sees: on N processes those are B/N images, so the run would not be the one-process run of
    the batch (synchronised batch norm is not implemented). GroupNorm and frozen batch norm look
    at one image at a time and need nothing.

    Raises:
        DistributedError: naming the first such layer.
    """
    from minimaskrcnn.nn import BatchNorm2d

    for name, module in model.named_modules():
        if isinstance(module, BatchNorm2d):
            raise DistributedError(
                f"the model normalises with batch statistics ({name}: BatchNorm2d, norm 'bn'), which differ "
                "when each process sees part of the batch; data-parallel training needs GroupNorm ('gn', as "
                "r18-shapes and r18-coco-tiny) or frozen batch norm ('frozen_bn', as maskrcnn_resnet50_fpn)")


def broadcast_state_(comm: Communicator, model) -> None:
    """Load rank 0's parameters and buffers into every rank's model (equal replicas from the start)."""
    if comm.size == 1:
        return
    state = comm.bcast(model.state_dict() if comm.is_root else None)
    if not comm.is_root:
        model.load_state_dict(state)


# ------------------------------------------------------------------------ the global batch
def shard_slots(batch_size: int, rank: int, size: int) -> range:
    """The slots (positions 0..batch_size-1 in the global batch) that ``rank`` of ``size`` processes
    holds: contiguous, rank order, as even as possible (the first ``batch_size % size`` ranks get one
    more; a last, smaller batch of an epoch may leave a rank none)."""
    base, extra = divmod(int(batch_size), int(size))
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def check_batch_split(batch_size: int, size: int) -> int:
    """The images per process of a global batch of ``batch_size`` over ``size`` processes.

    Raises:
        DistributedError: the batch does not split evenly.
    """
    if batch_size % size:
        raise DistributedError(f"--batch-size {batch_size} (the global batch) does not split evenly over "
                               f"{size} processes: use a multiple of {size}")
    return batch_size // size


def global_loss_stats(comm: Communicator, loss_values: Mapping[str, float], loss_counts: Mapping[str, int],
                      num_images: int) -> tuple[dict[str, float], dict[str, int]]:
    """Each loss over the whole global batch, and its global count: one allgather.

    A loss that noted no count (``global_batch.note_loss_count``) is taken as a mean over images.

    Args:
        loss_values: {name: this rank's loss value} (a mean over its ``loss_counts[name]`` terms).
        loss_counts: {name: this rank's count}.
        num_images: the images this rank holds (0 for a rank without a share of this batch).

    Returns:
        ({name: the loss of the whole batch}, {name: the global count}), the same on every rank:
        loss = sum over ranks of value * count / global count (0 where the global count is 0).
    """
    local = {k: (int(loss_counts.get(k, num_images)), float(v)) for k, v in loss_values.items()}
    gathered = comm.allgather(local)
    names = sorted({k for part in gathered for k in part})
    counts = {k: sum(part[k][0] for part in gathered if k in part) for k in names}
    values = {}
    for k in names:
        total = sum(part[k][1] * part[k][0] for part in gathered if k in part and part[k][0] > 0)
        values[k] = total / counts[k] if counts[k] > 0 else 0.0
    return values, counts


def loss_weights(local_counts: Mapping[str, int], global_counts: Mapping[str, int]) -> dict[str, float]:
    """Scale of each loss of this rank: local count / global count (0 when the global count is 0).

    A rank's loss L_r = S_r / n_r (its terms' sum over its count); the whole batch's loss is
    sum_r S_r / G = sum_r L_r * (n_r / G). Backpropagating L_r * n_r / G on each rank and summing
    the gradients gives the gradient of the whole batch's loss.
    """
    return {k: (local_counts.get(k, 0) / g if g > 0 else 0.0) for k, g in global_counts.items()}


def global_losses(comm: Communicator, loss_dict: Mapping[str, Any], loss_counts: Mapping[str, int], num_images: int,
                  warned: set[str] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """This rank's losses rescaled to the counts of the whole batch, and the whole batch's values.

    Each loss is a mean over this rank's count n of its terms; the whole batch's is the sum over
    ranks of loss * n / G (G the global count, ``global_loss_stats``), so this rank backpropagates
    loss * n / G (``loss_weights``) and the summed gradients are those of the whole batch. A loss
    that noted no count (``global_batch.note_loss_count``) is taken per image, with a warning (on
    rank 0, once per name: ``warned`` keeps the names already warned about).

    Args:
        loss_dict: {name: scalar Tensor} of this rank's share of the batch (the model's losses).
        loss_counts: {name: this rank's count}, as the losses noted them (``GlobalBatch.loss_counts``).
        num_images: the images this rank holds.

    Returns:
        ({name: the loss Tensor times its weight}, to be summed and backpropagated;
        {"loss": the total, each name: its value}: the whole batch's, floats, the same on every rank).
    """
    warned = set() if warned is None else warned
    local_values = {k: float(v.item()) for k, v in loss_dict.items()}
    unnoted = sorted(set(loss_dict) - set(loss_counts) - warned)
    if unnoted and comm.is_root:
        warnings.warn(f"losses {unnoted} noted no count (global_batch.note_loss_count): averaged over the "
                      "images of each process, so this run is not exactly the one-process run", stacklevel=2)
    warned.update(unnoted)
    counts = {k: loss_counts.get(k, num_images) for k in loss_dict}  # a loss that noted no count: per image
    global_values, global_counts = global_loss_stats(comm, local_values, counts, num_images)
    weights = loss_weights(counts, global_counts)
    weighted = {k: v * weights[k] for k, v in loss_dict.items()}
    return weighted, {"loss": sum(global_values.values()), **global_values}


# ------------------------------------------------------------------------- fused gradients
def fusion_buckets(arrays: Sequence, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Group arrays into fusion buckets: consecutive runs of one dtype of at most ``bucket_bytes``
    (an array larger than that gets a bucket of its own).

    Returns:
        lists of indices into ``arrays``, in order; the same on every rank for the same shapes.
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    current_bytes, current_dtype = 0, None
    for i, a in enumerate(arrays):
        nbytes = int(a.size) * a.dtype.itemsize
        if current and (a.dtype != current_dtype or current_bytes + nbytes > bucket_bytes):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += nbytes
        current_dtype = a.dtype
    if current:
        buckets.append(current)
    return buckets


def allreduce_gradients_(comm: Communicator, params: Sequence, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """Sum every parameter's ``.grad`` over the ranks, in place, through fused buffers.

    Each bucket of gradients is copied into one contiguous buffer, summed by one allreduce and
    copied back. A parameter without a gradient on a rank (``.grad`` None) adds zeros there; one
    without a gradient on every rank keeps None (so the optimizer skips it, as one process would).

    Args:
        params: the trainable parameters, in the same order on every rank.
        bucket_bytes: the fusion threshold.

    Returns:
        the bytes summed (the payload of this step's allreduce, per rank).
    """
    if type(comm) is Communicator or not params:  # one process: nothing to sum (an MPI job of one still runs)
        return 0
    grads = [p.grad if p.grad is not None else _zeros_like_param(p) for p in params]
    buckets = fusion_buckets(grads, bucket_bytes)
    total = 0
    present = None
    for b, bucket in enumerate(buckets):
        xp = get_array_module(grads[bucket[0]])
        parts = [grads[i].reshape(-1) for i in bucket]
        if b == len(buckets) - 1:
            # the last buffer also carries one flag per parameter: how many ranks have its gradient
            flags = np.array([p.grad is not None for p in params], dtype=grads[bucket[0]].dtype)
            parts.append(xp.asarray(flags))
        buf = xp.concatenate(parts)  # one copy in
        comm.allreduce_buffer_(buf)
        total += int(buf.nbytes)
        offset = 0
        for i in bucket:  # and one copy out: the gradients become views of the summed buffer
            n = int(grads[i].size)
            grads[i] = buf[offset : offset + n].reshape(grads[i].shape)
            offset += n
        if b == len(buckets) - 1:
            present = buf[offset:]
    present = present.get() if is_cupy(present) else present  # P numbers to the host, once per step
    for p, g, flag in zip(params, grads, present.tolist()):
        p.grad = g if flag > 0 else None
    return total


def _zeros_like_param(p):
    return get_array_module(p.data).zeros(p.data.shape, dtype=p.data.dtype)


def allreduce_bytes_per_step(params: Sequence) -> int:
    """The bytes each rank sends into the gradient allreduce per step: the trainable parameters'
    size (float32: 4 bytes each)."""
    return int(sum(int(p.data.size) * p.data.dtype.itemsize for p in params))


def replica_checksum(arrays: Sequence) -> int:
    """A CRC-32 of the arrays' bytes (host copies): equal on every rank while the replicas agree."""
    crc = 0
    for a in arrays:
        host = a.get() if is_cupy(a) else np.ascontiguousarray(a)
        crc = zlib.crc32(host.tobytes(), crc)
    return crc


# ------------------------------------------------------------------------------------ errors
@contextlib.contextmanager
def abort_on_error(comm: Communicator, exit_code: int = 1) -> Iterator[None]:
    """Let a failing rank end the whole job (no rank left waiting in a collective forever).

    Inside the block, an exception on a rank of a job of N > 1 processes prints ``[rank r] ...``
    (the traceback of an unexpected error, or the message already printed for a known one) on
    stderr and calls ``MPI_Abort``, which ends every process; ``SystemExit(code != 0)`` aborts with
    that code. One process: exceptions pass through unchanged.
    """
    try:
        yield
    except SystemExit as e:
        if comm.size > 1 and e.code not in (0, None):
            comm.abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:
        if comm.size == 1:
            raise
        sys.stderr.write(f"[rank {comm.rank} of {comm.size}] {type(e).__name__}: {e}\n")
        if not isinstance(e, KeyboardInterrupt):
            traceback.print_exc(file=sys.stderr)
        comm.abort(130 if isinstance(e, KeyboardInterrupt) else exit_code)
