"""Stopping every process of a data-parallel job after the same step (re-exported by `cnnxp.distributed`).

A process is asked to stop (`request_stop`: a signal handler, or rank 0 that could not write a
file); each training step's allreduce carries what every process was asked for, and all stop at
that step as the strongest request says (`agree_on_stop`, `agreed_stop`), each ending with its
`STOP_STATUS`. One process alone needs none of this: it stops where it is.
"""

from __future__ import annotations

import time

__all__ = ["STOP_KINDS", "STOP_STATUS", "STOP_GRACE", "request_stop", "requested_stop", "stop_asked_at",
           "agreed_stop", "agree_on_stop"]

#: How a process was asked to stop, in rising precedence (``"interrupt"``: Ctrl-C; ``"terminate"``:
#: SIGTERM; ``"fail"``: rank 0 could not write a file).
STOP_KINDS = ("interrupt", "terminate", "fail")
#: The exit status of a job stopped so (128 + the signal; 1 for a failure).
STOP_STATUS = {"interrupt": 130, "terminate": 143, "fail": 1}
#: Seconds a process waits for the others once it was asked to stop, before it ends the job.
STOP_GRACE = 10.0
_stop: dict = {"requested": None, "agreed": None, "at": None}


def request_stop(kind: str = "interrupt") -> None:
    """Ask every process to stop after the current step; ``kind`` (one of `STOP_KINDS`) travels with
    the request, so every process ends as the one that was asked. A process that then waits for the
    others more than `STOP_GRACE` seconds ends the job (`MPICommunicator`)."""
    if kind not in STOP_KINDS:
        raise ValueError(f"request_stop kind must be one of {STOP_KINDS}, got {kind!r}")
    if _stop["requested"] is None or STOP_KINDS.index(kind) > STOP_KINDS.index(_stop["requested"]):
        _stop["requested"] = kind
    _stop["at"] = _stop["at"] or time.monotonic()


def requested_stop() -> str | None:
    """The strongest kind of stop this process was asked for (None: none)."""
    return _stop["requested"]


def stop_asked_at() -> float | None:
    """When (``time.monotonic()``) this process was first asked to stop (None: never)."""
    return _stop["at"]


def agreed_stop() -> str | None:
    """How the processes agreed to stop (None before they did)."""
    return _stop["agreed"]


def agree_on_stop(flags) -> str | None:
    """The kind of stop that wins among ``flags`` (per `STOP_KINDS`, how many processes asked for
    each), recorded as `agreed_stop`; None when none was asked for."""
    asked = [kind for kind, count in zip(STOP_KINDS, flags, strict=True) if count]
    if asked:
        _stop["agreed"] = asked[-1]
    return asked[-1] if asked else None
