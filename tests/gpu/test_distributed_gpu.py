"""The fused gradient allreduce on device arrays: the stream is synchronised before the buffer is handed
to NCCL or MPI, the gradients stay on the device, and only the "host" transport copies to the host.

Without a GPU this runs on ``fake_cupy`` with stand-ins for MPI and NCCL (two simulated ranks); on a
GPU it runs on CuPy with one rank of the real MPI and NCCL (``cupyx.distributed``).
"""
import types

import numpy as np
import pytest
from fake_cupy import simulated

from minimaskrcnn.distributed import MPICommunicator, allreduce_gradients_
from minimaskrcnn.nn import Parameter


class FakeMPIComm:
    """``Allreduce(IN_PLACE, buf)`` of two ranks whose other rank holds the same buffer (doubles it)."""

    def __init__(self, events):
        self.events = events

    def Allreduce(self, sendbuf, recvbuf, op=None):
        self.events.append(("mpi", type(recvbuf).__module__.split(".")[0]))
        recvbuf *= 2


class FakeNCCL:
    def __init__(self, events):
        self.events = events

    def all_reduce(self, in_array, out_array, op="sum", stream=None):
        assert op == "sum" and in_array is out_array
        self.events.append(("nccl", type(out_array).__module__.split(".")[0]))
        out_array *= 2


def simulated_communicator(transport, events, monkeypatch, xp):
    comm = MPICommunicator.__new__(MPICommunicator)  # no MPI in this process: stand-ins instead
    comm.MPI = types.SimpleNamespace(IN_PLACE=None, SUM="sum")
    comm.comm = FakeMPIComm(events)
    comm.rank, comm.size, comm.local_rank = 0, 2, 0
    comm.gpu_transport = transport
    comm._nccl = FakeNCCL(events)
    stream = types.SimpleNamespace(synchronize=lambda: events.append(("sync", None)))
    monkeypatch.setattr(xp.cuda, "get_current_stream", lambda: stream)
    return comm


def real_communicator(transport):
    pytest.importorskip("mpi4py")
    return MPICommunicator(gpu_transport=transport)


@pytest.mark.cuda
@pytest.mark.parametrize("transport", ["host", "nccl", "mpi"])
def test_device_gradients_are_summed_in_a_fused_buffer(device, transport, monkeypatch):
    xp = device.xp
    events = []
    if simulated():
        comm = simulated_communicator(transport, events, monkeypatch, xp)
        factor = 2
    else:
        if transport == "mpi":
            pytest.skip("needs a CUDA-aware MPI build (the PyPI MPICH wheel is not)")
        comm = real_communicator(transport)
        factor = comm.size
    rng = np.random.default_rng(0)
    params = [Parameter(device.to_device(rng.standard_normal(s).astype(np.float32))) for s in [(3, 4), (5,)]]
    host_grads = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
    for p, g in zip(params, host_grads):
        p.grad = device.to_device(g)
    if device.transfers is not None:
        device.transfers.clear()
    allreduce_gradients_(comm, params)
    for p, g in zip(params, host_grads):
        assert device.is_device_array(p.grad)  # the summed gradients stay on the device
        np.testing.assert_allclose(p.grad.get(), factor * g, rtol=1e-6)
    if simulated():
        kinds = [e[0] for e in events]
        assert kinds[0] == "sync"  # the stream is synchronised before the buffer leaves CuPy's hands
        reducer = {"host": "mpi", "nccl": "nccl", "mpi": "mpi"}[transport]
        assert kinds.count(reducer) == 1  # one fused buffer, one allreduce
        # NCCL and a CUDA-aware MPI get the device buffer; the host transport a host copy
        assert (reducer, "numpy" if transport == "host" else "cupy") in events
        copies = [t.where for t in device.transfers if t.kind == "get"]
        # one copy of the presence flags; the host transport also copies the buffer itself
        assert len([c for c in copies if "distributed.py" in c]) == (2 if transport == "host" else 1)


@pytest.mark.cuda
def test_each_rank_of_a_machine_takes_its_own_gpu(device, monkeypatch):
    if not simulated():
        pytest.skip("checks the device choice with stand-ins (a GPU machine has its own count)")
    from minimaskrcnn.distributed import Communicator, select_gpu

    used = []
    xp = device.xp
    monkeypatch.setattr(xp.cuda, "runtime", types.SimpleNamespace(getDeviceCount=lambda: 2))
    monkeypatch.setattr(xp.cuda, "Device", lambda i: types.SimpleNamespace(use=lambda: used.append(i)))
    comm = Communicator()
    for local_rank in range(4):
        comm.local_rank = local_rank
        select_gpu(comm)
    assert used == [0, 1, 0, 1]  # round robin over the machine's GPUs
