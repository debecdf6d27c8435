"""Ctrl-C (SIGINT) and SIGTERM during a training run: stop at a safe point, keep the last finished epoch.

SIGTERM is what a scheduler, ``timeout``, Docker or systemd sends; it is handled like Ctrl-C:
in one process the handler raises at once (`Terminated`, a KeyboardInterrupt, for SIGTERM),
except inside a `StopSignals.deferred` section (a checkpoint being written), which finishes
first; in several processes (an MPI launcher forwards the signal to each) it asks all of them
to stop after the same step (`cnnxp.distributed.request_stop`, which carries the kind of signal, so
all of them end alike even when only one was signalled), and a second signal raises at once. It raises once: signals that arrive while the run stops (saving the last epoch) are
noted only. The run then ends with 130 after Ctrl-C and 143 after SIGTERM (128 + the signal).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .. import distributed

__all__ = ["StopSignals", "Terminated"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where Ctrl-C raises KeyboardInterrupt, so both take the same way out."""


class StopSignals:
    """The handlers of SIGINT and SIGTERM for one run of train.py (`install`, then `restore`)."""

    def __init__(self, comm):
        self.comm = comm
        self.received: int | None = None  # the first signal that arrived
        self._previous: dict[int, object] = {}
        self._deferring = 0
        self._pending = False
        self._raised = False

    def install(self) -> None:
        """Take over both signals (only the main thread can; elsewhere the defaults stay)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        first = self.received is None  # this process's first signal (a stop may be asked for otherwise too)
        if first:
            self.received = signum
        if self._raised:  # the run is already stopping: a signal more must not cut its last writes short
            return
        if self.comm.size > 1 and first:
            # every process stops after the same step, and ends as the signalled one would (130 or 143)
            distributed.request_stop("terminate" if signum == signal.SIGTERM else "interrupt")
            return
        if self._deferring:
            self._pending = True
            return
        raise self.exception()

    def exception(self) -> KeyboardInterrupt:
        """The exception that stops the run (raised once: later signals are noted, not raised)."""
        self._raised = True
        return Terminated() if self.received == signal.SIGTERM else KeyboardInterrupt()

    def stopping(self) -> None:
        """The run is stopping (for whatever reason): from now on signals are noted, not raised."""
        self._raised = True

    def status(self, exc: BaseException) -> int:
        """The exit status after ``exc`` ended the run: 143 for SIGTERM, 130 for Ctrl-C; in several
        processes, what they agreed on (SIGTERM to any one of them ends them all with 143)."""
        terminated = (isinstance(exc, Terminated) or self.received == signal.SIGTERM
                      or distributed.agreed_stop() == "terminate")
        return distributed.STOP_STATUS["terminate" if terminated else "interrupt"]

    def word(self, exc: BaseException) -> str:
        return "terminated" if self.status(exc) == 143 else "interrupted"

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A section a signal does not cut short: one that arrives inside raises when it ends."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending:
            self._pending = False
            raise self.exception()
