"""Run folders, and what stays in them when a training run stops early.

A run's folder is checked before any work, and each run gets one of its own. A folder
a program creates for its output and then leaves empty (bad arguments found later,
Ctrl-C before the first epoch) is removed again, up to the outermost folder it made;
a folder that existed before is never removed. One training run at a time writes into a
folder (`claim_run_folder`: an advisory lock, and another run's checkpoint is not
overwritten unless asked to); the temporary files a killed run left there are removed.
Ctrl-C or SIGTERM during training saves the last finished epoch (`LastEpoch`,
`interrupted`) and names the command that continues; a diverged run says which
checkpoint is kept (`diverged`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import FolderInUseError, FolderLock, describe_holder, lock_folder, temporary_files
from ..checkpoint import write_checkpoint
from .common import UsageError, launcher_words, note, place_words, plural

#: The files only a training run writes into its folder: their temporary files left by a killed
#: run are removed when the next run takes the folder (`claim_run_folder`) and when a run stops.
RUN_FILES = ("checkpoint.npz", "metrics.json", "history.json")


@contextlib.contextmanager
def output_folder(out: Path | None, what: str = "--out") -> Iterator[Path | None]:
    """``out`` made and proved writable for the block (`check_writable`; None: no folder); when the
    block refuses to go on (UsageError), the folders made here are removed again if still empty."""
    created = check_writable(out, what) if out is not None else None
    try:
        yield out
    except UsageError:
        remove_empty(out, created)
        raise


def check_writable(out: Path, what: str = "--out") -> Path | None:
    """Create ``out`` and prove a file can be written there, or raise UsageError.

    Returns the outermost directory this call created (None when ``out`` existed), for `remove_empty`.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {str(out)!r} is a file, not a directory")
    created = _outermost_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_empty(out, created)
        raise UsageError(f"cannot write to {what} {str(out)!r}: {exc.strerror or exc}") from None
    return created


def new_run_dir(base: Path) -> tuple[Path, Path]:
    """Create ``base`` (or ``base-2``, ``base-3``, ...): a folder of this run's own, even for runs started together.

    Returns the folder and the outermost directory created for it (for `remove_empty`).
    """
    for k in itertools.count(1):
        out = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if out.exists() or out.is_symlink():
            continue
        created = _outermost_missing(out)
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            if isinstance(exc, FileExistsError) and (out.exists() or out.is_symlink()):
                continue  # another run took this name a moment ago
            raise UsageError(f"cannot create the run folder {str(out)!r}: {exc.strerror or exc}") from None
        check_writable(out)
        return out, created


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist (None: ``folder`` exists)."""
    created = None
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        created = path
    return created


def remove_empty(out: Path | None, created: Path | None) -> None:
    """Remove the folders from ``out`` up to ``created`` that this run made and left empty."""
    if out is None or created is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()  # only succeeds on an empty directory
        except OSError:
            return
        if folder == created:
            return


def claim_run_folder(out: Path, what: str, resume: str | None, overwrite: bool, prog: str) -> FolderLock:
    """Lock ``out`` for this run and clear it of what killed runs left; UsageError when another live run
    holds it, or when it holds another run's checkpoint (unless ``resume`` names it or ``overwrite``)."""
    try:
        lock = lock_folder(out)
    except FolderInUseError as exc:
        raise UsageError(f"{what} {str(out)!r} is in use by another training run ({describe_holder(exc.holder)}): "
                         "wait until it ends, or choose another --out") from None
    except OSError as exc:
        raise UsageError(f"cannot lock {what} {str(out)!r}: {exc.strerror or exc}") from None
    checkpoint = out / RUN_FILES[0]
    if checkpoint.is_file() and not overwrite and not (resume and _same_file(resume, checkpoint)):
        lock.release()
        raise UsageError(f"{what} {str(out)!r} holds the checkpoint of another run: continue that run with --resume "
                         f"{checkpoint}, choose another --out, or pass --overwrite to replace it")
    removed = remove_temporaries(out)
    if removed:
        note(prog, f"removed {plural(len(removed), 'temporary file')} a killed run left in {out}: "
                   + ", ".join(p.name for p in removed))
    return lock


def _same_file(a, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remove_temporaries(out: Path) -> list[Path]:
    """Remove the temporary files of `RUN_FILES` in ``out`` (the caller holds its lock); returns them."""
    removed = []
    for name in RUN_FILES:
        for path in temporary_files(out / name):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


@dataclass
class RunFolder:
    """A training run's folder, the outermost folder the run created for it (removed again if left
    empty), and the run's lock on it (rank 0's: `claim_run_folder`)."""

    out: Path | None = None
    created: Path | None = None
    lock: FolderLock | None = None

    def close(self, remove: bool = False) -> None:
        """Give up the lock; with ``remove``, also the folders this run made, if they are empty."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if remove:
            remove_empty(self.out, self.created)


def resume_hint(args, device, ckpt_path: Path, processes: int = 1) -> str:
    """The command that continues this run, with the flags it cannot take from the checkpoint
    (`common.place_words`: ``--data-dir``, ``--trust-data``, ``--device``), under ``mpiexec -n N``
    for a run of N processes (`common.launcher_words`)."""
    words = [*launcher_words(processes), "scripts/train.py", "--resume", str(ckpt_path),
             *place_words(args.data_dir, args.trust_data, device.name, processes)]
    return " ".join(shlex.quote(w) for w in words)


class LastEpoch:
    """The last finished epoch as checkpoint arrays on the host, and whether that state is on disk at ``path``.

    Kept after every epoch (and from a resumed checkpoint), so that Ctrl-C in the
    middle of the next epoch can still save it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.arrays: dict[str, np.ndarray] | None = None
        self.epoch = 0
        self.saved = False
        self.failure: str | None = None  # with several processes: rank 0's failed write, said when all stop

    def keep(self, arrays: dict[str, np.ndarray], epoch: int, saved: bool = False) -> None:
        self.arrays, self.epoch, self.saved = arrays, epoch, saved


def interrupted(last: LastEpoch, prog: str, hint: str, resumed_from: str | None, word: str = "interrupted") -> None:
    """After Ctrl-C or SIGTERM (``word``: interrupted, terminated): save the last finished epoch unless it
    is on disk, and say where it is and how to continue."""
    if last.arrays is None:
        if resumed_from:
            note(prog, f"{word} before training resumed: {resumed_from} is as it was")
        else:
            note(prog, f"{word} before the first epoch finished: no checkpoint was written")
        return
    if not last.saved:
        try:
            write_checkpoint(last.path, last.arrays)
            last.saved = True
        except KeyboardInterrupt:
            pass
    if last.saved:
        note(prog, f"{word}: the checkpoint of epoch {last.epoch} is {last.path}; continue with: {hint}")
    else:
        note(prog, f"{word}: could not write the checkpoint of epoch {last.epoch}")


def diverged(exc, last: LastEpoch, resumed_from: str | None, config) -> str:
    """``diverged at epoch 3, step 120: loss nan; the checkpoint of epoch 2 is kept; lower --lr (...)``."""
    if last.saved:
        kept = f"the checkpoint of epoch {last.epoch} is kept ({last.path})"
    elif resumed_from:
        kept = f"{resumed_from} is as it was"
    else:
        kept = "no checkpoint was written"
    flag = "momentum" if config["optimizer"] == "sgd" and config["momentum"] >= 1 else "lr"  # >= 1: no decay
    advice = f"lower --{flag} (it was {config[flag]:g})"
    return f"{exc.facts}; {kept}; " + (f"start a new run and {advice}" if resumed_from else advice)
