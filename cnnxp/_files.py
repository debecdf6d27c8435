"""Files written whole or not at all.

Every file cnnxp writes (checkpoints, JSON, pictures, IDX files, downloads) goes
through `atomic_write`: the bytes go to a temporary file in the target's own folder
(``.<name>.<random>.tmp``), which is flushed to disk and then renamed over the
target. A reader sees the old file or the new one, never half of either; a crash
leaves at most a temporary file, which `temporary_files` finds again.

`lock_folder` takes an advisory lock on a folder (``fcntl.flock`` on a lock file in it), so
that one process at a time writes there: a training run's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here (see `lock_folder`)
    fcntl = None

__all__ = ["atomic_write", "usual_file_mode", "temporary_files", "lock_folder", "FolderLock", "FolderInUseError",
           "LOCK_NAME"]

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".cnnxp.lock"


def usual_file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open()`` gives a new file (``mkstemp`` gives ``0o600``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files `atomic_write` may have left beside ``path`` (a process killed mid-write):
    exactly its own pattern, ``.<name>.<random letters, digits or _>.tmp``, nothing else."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}")
    try:
        names = os.listdir(path.parent)
    except OSError:  # no folder: no files
        return []
    return sorted(path.parent / name for name in names if pattern.fullmatch(name))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Write ``path`` through a temporary file in its folder: ``with atomic_write(p) as f: f.write(...)``.

    On leaving the block the file is flushed, synced, given the usual permissions and renamed
    over ``path``; on any exception it is removed and ``path`` stays as it was. The folder is
    created when missing. Every OSError of the writing itself (a full disk, a folder that
    cannot be written, a target that is a folder) is re-raised with ``path`` as its
    ``filename``, never the temporary name; exceptions the block raises pass through as they
    are (a checksum that does not match, a network error), except a bare ``OSError`` from a
    write into the file, which is the disk's and names ``path`` too.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise _naming(exc, path) from None
    f = os.fdopen(fd, mode, **open_kwargs)
    try:
        try:
            yield f
        except OSError as exc:
            raise (_naming(exc, path) if type(exc) is OSError else exc) from None
        try:  # closing flushes what is buffered: on a full disk that is where the write fails
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, usual_file_mode())
            os.replace(tmp, path)
        except OSError as exc:
            raise _naming(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):  # a failed write's buffer fails again here: the first error stands
            f.close()
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of OSError (same errno) with ``path`` as its filename."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


# -- one writer per folder ---------------------------------------------------------------------------


class FolderInUseError(RuntimeError):
    """Another process holds a folder's lock; ``holder`` is what it wrote about itself (pid, host, since)."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        super().__init__(f"{str(folder)!r} is in use by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    """``process 1234 (on host h) since 12:00:05``, from what a lock holder wrote (parts may be missing)."""
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return "another process"
    text = f"process {holder['pid']}"
    if holder.get("host") not in (None, socket.gethostname()):
        text += f" on {holder['host']}"
    if isinstance(holder.get("since"), (int, float)):
        text += time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
    return text


class FolderLock:
    """A held folder lock (`lock_folder`); `release` (or leaving a ``with`` block) gives it up and removes
    its file. Without ``fcntl`` (Windows) it holds nothing and ``locked`` is False."""

    def __init__(self, folder: Path, fd: int | None = None):
        self.folder, self.path, self._fd = folder, folder / LOCK_NAME, fd

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # removed while held: a process that opens it next makes a new one
            self.path.unlink()
        os.close(self._fd)  # closing the last descriptor releases the lock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike) -> FolderLock:
    """Take ``folder``'s advisory lock (``fcntl.flock`` on ``folder/.cnnxp.lock``) without waiting.

    Raises FolderInUseError naming the process that holds it. The lock goes with the process: a
    killed holder leaves at most the file, which the next taker reuses. Advisory means only
    processes that ask for it are kept out (every cnnxp training run does). On NFS, Linux takes
    it as a POSIX lock the server sees; where Python has no ``fcntl`` (Windows), nothing is
    locked and the returned lock's ``locked`` is False.
    """
    folder = Path(folder)
    if fcntl is None:
        return FolderLock(folder)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, usual_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderInUseError(folder, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before may have removed the file between our open and our lock: then take the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    return FolderLock(folder, fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
