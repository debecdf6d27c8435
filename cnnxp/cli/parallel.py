"""train.py under an MPI launcher: which process speaks and writes, and how they agree.

Every process parses the same flags, reads the same checkpoint and data and trains its share;
rank 0 alone prints, makes the run folder (and tells the others where it is), writes
checkpoints, JSON files and pictures. A bad argument found by any process ends every process
with the same one line (printed once) and status 2; a file rank 0 cannot write stops every process
at the next step, status 1 (`agreed_failure`), and any other failure while training ends the whole
job at once (`fail`) instead of leaving the others waiting.
Ctrl-C and SIGTERM, which the launcher forwards to every process, are agreed on at the next step
(`cnnxp.distributed.request_stop`, through `stop.StopSignals`): all stop after the same step, rank 0
saves, status 130 or 143 on every process. A diverged run ends every process alike (the epoch's
loss is summed over all of them before it is checked), with status 1.
"""

from __future__ import annotations

import contextlib
import sys
import zlib

import numpy as np  # host side: the data's checksum

from .. import distributed
from .common import RunError, UsageError, note, one_line, set_silent

__all__ = ["start", "abort_before_start", "local_device", "fingerprint", "agree", "agreed_failure", "end_together",
           "failure_line", "fail"]


def start(args, holder: dict):
    """The job's communicator (a single process unless an MPI launcher started this one), put in
    ``holder["comm"]`` as soon as MPI runs, so that a refusal from then on ends every process alike,
    MPI finalised (``MPICommunicator.exit_together``) rather than aborted with a second line. Quiets
    every rank but 0 and shares the node's cores among its processes."""
    nccl = args.distributed == "nccl"
    try:
        comm = holder["comm"] = distributed.init("mpi" if nccl else args.distributed)
    except (distributed.DistributedUnavailableError, ValueError) as exc:  # before MPI starts
        raise UsageError(str(exc)) from None
    set_silent(comm.rank != 0)  # --distributed off under a launcher: every process is a run of its own
    if nccl:
        try:
            comm = holder["comm"] = distributed.NCCLCommunicator(comm)
        except distributed.DistributedUnavailableError as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # NCCL or CUDA refusing to start (no GPU, a driver too old)
            raise UsageError(f"the nccl backend could not start: {one_line(exc)}; use --distributed mpi") from None
    if comm.size > 1:
        distributed.limit_threads(comm)
    return comm


def abort_before_start(status: int, argv=None) -> None:
    """A process that stops before its communicator exists (Ctrl-C while it loads): end the whole job,
    whose other processes would wait for it in MPI's start-up (`distributed.abort_launched_job`);
    not under ``--distributed off`` (``argv``, default ``sys.argv``), where none of them joins MPI."""
    words = sys.argv[1:] if argv is None else list(argv)
    pairs = zip(words, words[1:], strict=False)
    if "--distributed=off" not in words and ("--distributed", "off") not in pairs:
        distributed.abort_launched_job(status)


def local_device(name: str, comm) -> str:
    """``--device cuda`` as this process's GPU, ``cuda:<its rank on the node>`` (`distributed.local_device`)."""
    try:
        return distributed.local_device(name, comm)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def fingerprint(config: dict, train_data, test_data) -> dict:
    """What every process must have alike before training together: the run's settings (but the
    commands, which name each process's GPU) and a checksum of the data as each process read it
    (node-local copies, a download that failed on one node)."""
    def checksum(arrays) -> str:
        crc = 0
        for a in arrays:
            crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
        return f"{crc:08x}"

    return {
        "data": f"{config['dataset']} ({len(train_data[0])} training and {len(test_data[0])} test images, "
                f"checksum {checksum([*train_data, *test_data])})",
        "settings": {k: v for k, v in config.items() if k != "commands"},
    }


def agree(comm, error: UsageError | None, value=None, same: dict | None = None):
    """Every process learns whether any of them refused to go on (``error``), and rank 0's ``value``.

    Raises the first refusal's UsageError on every process (rank 0 prints it), so that they all end
    alike; then, if the processes' ``same`` (`fingerprint`) differ, a UsageError saying how; returns
    rank 0's ``value`` otherwise.
    """
    if comm.size == 1:
        if error is not None:
            raise error
        return value
    verdicts = comm.allgather((None if error is None else str(error), same))
    first = next((v for v, _ in verdicts if v is not None), None)
    if first is not None:
        raise UsageError(first)
    mine = verdicts[0][1]
    for rank, (_, theirs) in enumerate(verdicts):
        if theirs != mine:
            key = next(k for k in mine if mine[k] != theirs.get(k))
            if key == "data":
                what = f"rank 0 read {mine[key]}, rank {rank} {theirs[key]}"
            else:
                differ = sorted(k for k in set(mine[key]) | set(theirs[key]) if mine[key].get(k) != theirs[key].get(k))
                what = f"rank 0 and rank {rank} differ in {', '.join(differ)}"
            raise UsageError(f"the processes would train on different {key}: {what}; every process must read the "
                             "same dataset and checkpoint (--dataset, --data-dir, --resume on a shared disk)")
    return comm.bcast(value)


def failure_line(exc: Exception) -> str:
    """A failed write (RunError, or an OSError of a picture or the last files) in one line."""
    if isinstance(exc, OSError):
        return f"cannot write {exc.filename!r}: {exc.strerror}" if exc.filename else one_line(exc)
    return str(exc)


@contextlib.contextmanager
def agreed_failure(comm, last):
    """Rank 0's writes. A failure is raised in one process; with several, the others are already on
    their way to the next step, so it is kept (``last.failure``, a `runs.LastEpoch`) and a stop asked
    for: all stop at that step (or at the end, `end_together`), rank 0 says why, status 1."""
    try:
        yield
    except (RunError, OSError) as exc:
        if comm.size == 1 or isinstance(exc, BrokenPipeError):
            raise
        last.failure = failure_line(exc)
        distributed.request_stop("fail")


def end_together(comm, failure: str | None, prog: str) -> int:
    """Every process waits for rank 0's last files, then all end alike: 1 when rank 0 could not write
    one (said once, MPI finalised, no abort), 130 or 143 when a signal came after training, else 0."""
    said = comm.allgather((failure, distributed.requested_stop()))
    failure = said[0][0]
    if failure is not None:
        if comm.rank == 0:
            note(prog, f"error: {failure}")
        return distributed.STOP_STATUS["fail"]
    kind = distributed.agree_on_stop([sum(asked == kind for _, asked in said) for kind in distributed.STOP_KINDS])
    return 0 if kind is None else distributed.STOP_STATUS[kind]


def fail(comm, prog: str, message: str, code: int = 1) -> int:
    """A failure while the processes train (a file rank 0 cannot write): say it once, and with
    several processes end the whole job now, so that none is left waiting for the others."""
    if comm.rank == 0:
        note(prog, message)
    else:
        print(f"{prog}: rank {comm.rank}: {message}", file=sys.stderr, flush=True)
    if comm.size > 1:
        comm.abort(code)
    return code
