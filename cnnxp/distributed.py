"""Data-parallel training: one model on several processes, each on its share of every batch.

Start the processes with an MPI launcher; nothing else changes::

    mpiexec -n 2 python -m mpi4py scripts/train.py --dataset fashion-mnist

Every process holds the whole model and draws the same order of the data; each global batch
of ``--batch-size`` samples is split among them (`cnnxp.data.DataLoader`'s ``comm=``), each
computes the gradient of its share, and one allreduce of the flat gradient buffer
(`DistributedOptimizer`) gives every process the gradient of the whole batch, weighted by how
many samples each had, so the weights stay those of one process with the same batch.
BatchNorm's statistics are synchronised (`BatchNorm2D.comm`) and Dropout masks and
augmentation are drawn for the global batch, so the result does not depend on the number of
processes. The transport is an existing engine: MPI through mpi4py (imported only when an MPI
launcher started the process: importing it initialises MPI) and, between GPUs, NCCL through
CuPy, bootstrapped over MPI.

No process waits forever: every collective (Python objects too, pickled) is started
non-blocking and waited for with a deadline (``CNNXP_RANK_TIMEOUT`` seconds, 300 by default,
`STOP_GRACE` once a stop was asked for); a process that waits longer says so in one line and
aborts the job, and MPI's finalisation has a watchdog of its own (`MPICommunicator.exit_together`).
Ctrl-C (which the launcher forwards to every process) and a file rank 0 cannot write are agreed
on at the next step: all processes stop after the same step (`request_stop`, `STOP_KINDS`).
NCCL's collectives run on the GPU without a deadline of their own; the per-step exchange of
sample counts over MPI, which has one, comes first, so a stalled process is noticed there.
"""

from __future__ import annotations

import ctypes
import math
import os
import pickle
import subprocess
import sys
import time

import numpy as np  # host side: staging buffers and the small counts every step agrees on

from .backend import array_device, to_device, to_numpy
from .stopping import (  # re-exported: how the processes agree to stop is part of this module's interface
    STOP_GRACE,
    STOP_KINDS,
    STOP_STATUS,
    agree_on_stop,
    agreed_stop,
    request_stop,
    requested_stop,
    stop_asked_at,
)

__all__ = ["launched", "init", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "DistributedOptimizer",
           "DistributedUnavailableError", "STOP_KINDS", "STOP_STATUS", "STOP_GRACE", "agreed_stop", "agree_on_stop",
           "request_stop", "requested_stop", "stop_asked_at", "limit_threads", "local_device", "abort_launched_job"]

#: Variables an MPI launcher sets in every process it starts (MPICH/Hydra, Open MPI, PMIx).
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

class DistributedUnavailableError(RuntimeError):
    """Data-parallel training was asked for, but what it needs (mpi4py, NCCL) is not installed."""


def launched() -> bool:
    """True when an MPI launcher (``mpiexec``, ``mpirun``, ``srun``) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def launcher_rank() -> int | None:
    """This process's rank as the launcher's environment says it (None: no launcher), read without
    starting MPI: it decides who speaks before anything else runs."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def rank_timeout() -> float:
    """``CNNXP_RANK_TIMEOUT`` in seconds (300 when unset); ValueError unless a positive finite number."""
    text = os.environ.get("CNNXP_RANK_TIMEOUT")
    if text is None:
        return 300.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"CNNXP_RANK_TIMEOUT must be a positive number of seconds, got {text!r} "
                         "(unset, it is 300)")
    return value


def init(backend: str = "auto"):
    """The communicator of this job: `MPICommunicator` (or `NCCLCommunicator` for ``"nccl"``) when an
    MPI launcher started the process, else `SingleProcess`. ``backend="off"``: a single process.

    A bad ``CNNXP_RANK_TIMEOUT`` is a ValueError, raised before MPI starts."""
    if backend == "off" or (backend == "auto" and not launched()):
        return SingleProcess()
    timeout = rank_timeout()
    try:
        from mpi4py import MPI  # noqa: F401  (initialises MPI)
    except ImportError:
        raise DistributedUnavailableError("data-parallel training needs mpi4py and an MPI: "
                                          "pip install 'cnnxp[mpi]' (mpi4py and MPICH, with mpiexec)") from None
    comm = MPICommunicator(timeout=timeout)
    return NCCLCommunicator(comm) if backend == "nccl" else comm


class SingleProcess:
    """The communicator of a job of one process: every collective is the identity."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    def allreduce(self, x):
        return x

    def broadcast(self, x, root: int = 0):
        return x

    def bcast(self, obj, root: int = 0):
        return obj

    def allgather(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1):
        raise SystemExit(code)

    def exit_together(self, code: int) -> int:
        return code


#: `MPICommunicator.exit_together`'s watchdog: if its parent, process argv[1], still runs after argv[2]
#: seconds, say argv[3] and kill it (it leaves as soon as its parent is gone: no other process is hit).
_WATCHDOG = """import os, signal, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    if os.getppid() != parent:
        sys.exit()
    time.sleep(0.2)
print(sys.argv[3], file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


class MPICommunicator:
    """Collectives over MPI (mpi4py's ``COMM_WORLD``), each with a deadline.

    Arrays are summed (``allreduce``) or sent from ``root`` (``broadcast``) in place when they are
    contiguous NumPy arrays; other libraries' arrays are staged through the host, GPU arrays too
    unless ``CNNXP_CUDA_AWARE_MPI=1`` says the MPI reads GPU memory itself.
    """

    def __init__(self, comm=None, timeout: float | None = None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = rank_timeout() if timeout is None else timeout
        self.cuda_aware = os.environ.get("CNNXP_CUDA_AWARE_MPI") == "1"

    def _wait(self, request, what: str) -> None:
        """Wait for ``request``; past the deadline, say so once and abort the whole job.

        It spins for the first 20 ms (a step's allreduce takes tens of microseconds, and a sleep
        costs more than that), then checks every millisecond.
        """
        start = time.monotonic()
        deadline, spin = start + self.timeout, start + 0.02
        while not request.Test():
            now = time.monotonic()
            asked = stop_asked_at()
            if now > deadline or (asked is not None and now > max(asked, start) + STOP_GRACE):
                waited = f"{self.timeout:g} s" if now > deadline else f"{STOP_GRACE:g} s after the stop was asked for"
                print(f"cnnxp: rank {self.rank}: no answer from the other ranks in {what} for {waited} "
                      "(one stalled or died): ending the job", file=sys.stderr, flush=True)
                self.abort(1 if now > deadline else STOP_STATUS[requested_stop()])
            if now > spin:
                time.sleep(1e-3)

    def _host(self, x) -> tuple[np.ndarray, bool]:
        """A contiguous host buffer of ``x`` and whether it is ``x`` itself (else copy the result back)."""
        if isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable:
            return x, True
        if self.cuda_aware and hasattr(x, "__cuda_array_interface__"):
            return x, True
        return np.ascontiguousarray(to_numpy(x)), False

    def allreduce(self, x):
        """The sum of ``x`` over every process (in place where it can be), on ``x``'s device."""
        buf, same = self._host(x)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "an allreduce")
        return x if same else to_device(buf, array_device(x))

    def broadcast(self, x, root: int = 0):
        """``x`` as ``root`` has it, on every process."""
        buf, same = self._host(x)
        self._wait(self.comm.Ibcast(buf, root=root), "a broadcast")
        return x if same else to_device(buf, array_device(x))

    def bcast(self, obj, root: int = 0):
        """A Python object from ``root`` (small things: a run folder's name, a message), pickled and
        sent in two non-blocking broadcasts (its length, then its bytes), each with the deadline."""
        data = _pickled(obj) if self.rank == root else None
        length = np.array([0 if data is None else data.size], dtype=np.int64)
        self._wait(self.comm.Ibcast(length, root=root), "an exchange of objects")
        buf = data if data is not None else np.empty(int(length[0]), dtype=np.uint8)
        self._wait(self.comm.Ibcast([buf, self.MPI.BYTE], root=root), "an exchange of objects")
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather(self, obj) -> list:
        """Every process's ``obj``, in rank order: pickled, the lengths then the bytes gathered by two
        non-blocking collectives, each with the deadline."""
        data = _pickled(obj)
        lengths = np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(np.array([data.size], dtype=np.int64), lengths), "an exchange of objects")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        buf = np.empty(int(starts[-1]), dtype=np.uint8)
        counts, displacements = lengths.tolist(), starts[:-1].tolist()
        self._wait(self.comm.Iallgatherv([data, self.MPI.BYTE], [buf, (counts, displacements), self.MPI.BYTE]),
                   "an exchange of objects")
        return [pickle.loads(buf[starts[r]:starts[r + 1]].tobytes()) for r in range(self.size)]

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier(), "a barrier")

    def abort(self, code: int = 1):
        """End every process of the job now (the launcher exits with a non-zero status)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)  # let the launcher pass on what was just said before it tears the job down
        self.comm.Abort(code)

    def exit_together(self, code: int):
        """Every process ends with ``code``, having agreed to (the run's end, a refused argument,
        Ctrl-C): MPI is finalised first, so the launcher reports no abort (``python -m mpi4py`` aborts
        the job when a process exits with a non-zero status, adding a line of its own to the one
        already said). Finalising waits for the others; one that stalls now ends the job when the
        rank timeout has passed."""
        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Finalize blocks, holding the interpreter, until every process arrives: the watchdog is a
        # process of its own, which ends this one (and the launcher then the job) if it never returns
        message = (f"cnnxp: rank {self.rank}: no answer from the other ranks at the end for {self.timeout:g} s "
                   "(one stalled or died): ending the job")
        watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout), message])
        self.MPI.Finalize()
        watchdog.kill()
        watchdog.wait()
        # C's exit, not os._exit: MPICH tells the launcher it finished in a C exit handler (without it the
        # launcher takes the process for a crash and kills the others); Python's own teardown is skipped
        ctypes.CDLL(None).exit(code)


class NCCLCommunicator(MPICommunicator):
    """Collectives on GPU arrays through NCCL (CuPy's ``cupy.cuda.nccl``), bootstrapped over MPI.

    NCCL's unique id is made by rank 0 and broadcast over MPI; objects and host arrays still go
    over MPI. Each process uses the GPU of its rank on its node (``cuda:<local rank>``).
    """

    def __init__(self, mpi: MPICommunicator):
        super().__init__(mpi.comm, mpi.timeout)
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError:
            raise DistributedUnavailableError("the nccl backend needs CuPy with NCCL: pip install "
                                              "'cnnxp[cuda12]' or 'cnnxp[cuda13]', or use --distributed mpi") from None
        self.cupy, self.nccl = cupy, nccl
        uid = self.bcast(nccl.get_unique_id() if self.rank == 0 else None)
        with cupy.cuda.Device(self.local_rank):
            self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _nccl_type(self, x):
        types = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64,
                 "int64": self.nccl.NCCL_INT64, "int32": self.nccl.NCCL_INT32}
        return types[str(x.dtype)]

    def allreduce(self, x):
        if self.cupy.get_array_module(x) is not self.cupy:
            return super().allreduce(x)
        with x.device:
            buf = self.cupy.ascontiguousarray(x)
            stream = self.cupy.cuda.get_current_stream()
            self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._nccl_type(buf),
                                     self.nccl.NCCL_SUM, stream.ptr)
        return buf

    def broadcast(self, x, root: int = 0):
        if self.cupy.get_array_module(x) is not self.cupy:
            return super().broadcast(x, root)
        with x.device:
            buf = self.cupy.ascontiguousarray(x)
            stream = self.cupy.cuda.get_current_stream()
            self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_type(buf), root, stream.ptr)
        return buf


class DistributedOptimizer:
    """An optimizer whose every step uses the gradient of the global batch, on every process.

    Wrapping checks that every process has the same parameters (names, shapes, dtypes), then
    gives every process rank 0's parameters, buffers (BatchNorm's running statistics), optimizer
    state and Dropout generators, and synchronises BatchNorm's statistics (``local_batchnorm=True``
    keeps them per process). Each `step` agrees on the sample counts and on stopping (one small
    allreduce), weighs this process's flat gradient by its share of the global batch, sums the
    weighted gradients (one allreduce of the flat buffer) and updates. Everything else (``lr``,
    ``state_dict``, ...) is the wrapped optimizer's.
    """

    def __init__(self, optimizer, comm, local_batchnorm: bool = False):
        self.__dict__["optimizer"] = optimizer
        self.comm, self.model = comm, optimizer.model
        self._send = None  # the host buffer of each step's allreduce, kept between steps
        self._check_same_parameters()
        self._share_from_rank0()
        for layer in self.model.layers:
            if hasattr(layer, "comm"):  # BatchNorm2D
                layer.comm = None if local_batchnorm else comm

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("lr", "step_count", "weight_decay"):  # the wrapped optimizer's settings
            setattr(self.optimizer, name, value)
        else:
            self.__dict__[name] = value

    def _check_same_parameters(self) -> None:
        mine = [(key, tuple(layer.params[name].shape), str(layer.params[name].dtype))
                for key, layer, name in self.model.parameter_slots()]
        for rank, theirs in enumerate(self.comm.allgather(mine)):
            if theirs != mine:
                diff = next((f"{a} against {b}" for a, b in zip(mine, theirs, strict=False) if a != b),
                            f"{len(mine)} parameters against {len(theirs)}")
                raise ValueError(f"the processes train different models: rank {self.comm.rank} and rank {rank} "
                                 f"differ ({diff}); every process must build the same model")

    def _share_from_rank0(self) -> None:
        """Rank 0's parameters, buffers, optimizer state and Dropout generators, on every process."""
        opt, comm = self.optimizer, self.comm
        flat = opt.flat_params()
        received = comm.broadcast(flat)
        if received is not flat:
            with self.model.device.activate():
                flat[...] = received
        for layer in self.model.layers:
            for key, value in layer.buffers.items():
                layer.buffers[key] = comm.broadcast(value)
        host = {k: to_numpy(v) if hasattr(v, "shape") else v for k, v in opt.state_dict().items()}
        opt.load_state_dict(comm.bcast(host if comm.rank == 0 else None))
        self.model.set_rng_state(comm.bcast(self.model.rng_state()))

    def step(self) -> None:
        """One update from the gradients of every process's share of the batch: the sum of each
        process's flat gradient times its rows, over the sum of the rows, in one allreduce that also
        carries the rows and whether a process was asked to stop (on the host; a GPU's gradient
        goes in an allreduce of its own, so that nothing is read back from it)."""
        n = self.model.last_batch_size
        asked = [int(requested_stop() == kind) for kind in STOP_KINDS]
        extra = 1 + len(asked)
        opt = self.optimizer
        with self.model.device.activate():
            grad = opt.flat_grads()
            if isinstance(grad, np.ndarray):  # one buffer, kept: no allocation, no extra pass
                send = self._send
                if send is None or send.shape[0] != grad.shape[0] + extra or send.dtype != grad.dtype:
                    send = self._send = np.empty(grad.shape[0] + extra, dtype=grad.dtype)
                np.multiply(grad, n, out=send[:-extra])
                send[-extra:] = (n, *asked)
                summed = self.comm.allreduce(send)
                total, stops, grad = int(summed[-extra]), summed[1 - extra:], summed[:-extra]
            else:
                counts = self.comm.allreduce(np.array([n, *asked], dtype=np.int64))
                total, stops = int(counts[0]), counts[1:]
                grad = self.comm.allreduce(grad * n)
            if agree_on_stop(stops):  # some process was asked to stop: all stop here, before updating, alike
                raise KeyboardInterrupt
            if isinstance(grad, np.ndarray):
                np.divide(grad, total, out=grad)  # a view of the kept buffer: nothing holds it past apply
            else:
                grad = grad / total
            opt.apply(grad)


def limit_threads(comm) -> int | None:
    """One process's share of this node's cores for its BLAS (cores / processes on the node), unless
    the user set a thread count (``OMP_NUM_THREADS`` and the like). Returns the count it set, or None."""
    if comm.local_size <= 1 or any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                              "MKL_NUM_THREADS")):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // comm.local_size)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    threadpool_limits(threads)
    return threads


def local_device(name: str, comm) -> str:
    """``cuda`` becomes ``cuda:<local rank>``: one GPU per process on each node; CPUs are shared.
    Without any GPU (or CuPy) the name is returned as it is, for the device lookup to say why."""
    if name.strip().lower() != "cuda" or comm.size == 1:
        return name
    from .backend import get_device

    count = _gpu_count()
    if count == 0:
        return name
    if comm.local_rank >= count:
        raise ValueError(f"{comm.local_size} processes on this node but {count} GPU(s): start at most one process "
                         "per GPU (mpiexec -n ...), or name the devices")
    return get_device(f"cuda:{comm.local_rank}").name


def _pickled(obj) -> np.ndarray:
    """``obj`` as a writable byte array (MPI sends it from, and receives into, memory it may write)."""
    return np.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=np.uint8)


def abort_launched_job(status: int) -> None:
    """End the whole job an MPI launcher started, from a process that stops before its communicator:
    the others would otherwise wait for it in MPI's start-up or a first collective. Does nothing
    without a launcher or mpi4py (a job whose processes never join MPI must not call it)."""
    if not launched():
        return
    try:
        from mpi4py import MPI  # joins the others' start-up if this process had not
    except ImportError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(status)


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver
        return 0
