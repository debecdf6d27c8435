"""Run folders, and what stays in them when a training run stops early.

A run's folder is checked before any work, and each run gets one of its own. A folder
a program creates for its output and then leaves empty (bad arguments found later,
Ctrl-C before the first epoch) is removed again, up to the outermost folder it made;
a folder that existed before is never removed. Ctrl-C during training saves the last
finished epoch (`LastEpoch`, `interrupted`) and names the command that continues.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..checkpoint import write_checkpoint
from .common import UsageError, note


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


def resume_hint(args, device, ckpt_path: Path) -> str:
    """The command that continues this run, with the flags it cannot take from the checkpoint."""
    words = ["python", "scripts/train.py", "--resume", str(ckpt_path)]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    if device.name != "cpu":
        words += ["--device", device.name]
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

    def keep(self, arrays: dict[str, np.ndarray], epoch: int, saved: bool = False) -> None:
        self.arrays, self.epoch, self.saved = arrays, epoch, saved


def interrupted(last: LastEpoch, prog: str, hint: str, resumed_from: str | None) -> int:
    """After Ctrl-C: save the last finished epoch unless it is on disk, say where it is; status 130."""
    if last.arrays is None:
        if resumed_from:
            note(prog, f"interrupted before training resumed: {resumed_from} is as it was")
        else:
            note(prog, "interrupted before the first epoch finished: no checkpoint was written")
        return 130
    if not last.saved:
        try:
            write_checkpoint(last.path, last.arrays)
            last.saved = True
        except KeyboardInterrupt:
            pass
    if last.saved:
        note(prog, f"interrupted: the checkpoint of epoch {last.epoch} is {last.path}; continue with: {hint}")
    else:
        note(prog, f"interrupted: could not write the checkpoint of epoch {last.epoch}")
    return 130
