"""train.py under an MPI launcher: which process speaks and writes, and how they agree.

Every process parses the same flags, reads the same checkpoint and data and trains its share;
rank 0 alone prints, makes the run folder (and tells the others where it is), writes
checkpoints, JSON files and pictures. A bad argument found by any process ends every process
with the same one line (printed once) and status 2; a failure while training (a checkpoint that
cannot be written) ends the whole job at once instead of leaving the others waiting.
Ctrl-C and SIGTERM, which the launcher forwards to every process, are agreed on at the next step
(`cnnxp.distributed.request_stop`, through `stop.StopSignals`): all stop after the same step, rank 0
saves, status 130 or 143 on every process. A diverged run ends every process alike (the epoch's
loss is summed over all of them before it is checked), with status 1.
"""

from __future__ import annotations

import sys

from .. import distributed
from .common import UsageError, note, set_silent

__all__ = ["start", "agree", "fail"]


def start(args, prog: str):
    """The job's communicator (a single process unless an MPI launcher started this one); quiets
    every rank but 0 and shares the node's cores among its processes."""
    try:
        comm = distributed.init(args.distributed)
    except distributed.DistributedUnavailableError as exc:
        raise UsageError(str(exc)) from None
    set_silent(comm.rank != 0)  # --distributed off under a launcher: every process is a run of its own
    if comm.size > 1:
        distributed.limit_threads(comm)
        try:
            args.device = distributed.local_device(args.device, comm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return comm


def agree(comm, error: UsageError | None, value=None):
    """Every process learns whether any of them refused to go on (``error``), and rank 0's ``value``.

    Raises the first refusal's UsageError on every process (rank 0 prints it), so that they
    all end alike; returns rank 0's ``value`` otherwise.
    """
    if comm.size == 1:
        if error is not None:
            raise error
        return value
    verdicts = comm.allgather(None if error is None else str(error))
    first = next((v for v in verdicts if v is not None), None)
    if first is not None:
        raise UsageError(first)
    return comm.bcast(value)


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
