"""Files written whole or not at all.

Every file cnnxp writes (checkpoints, JSON, pictures, IDX files, downloads) goes
through `atomic_write`: the bytes go to a temporary file in the target's own folder
(``.<name>.<random>.tmp``), which is flushed to disk and then renamed over the
target. A reader sees the old file or the new one, never half of either; a crash
leaves at most a temporary file, which `temporary_files` finds again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "usual_file_mode", "temporary_files"]

TEMP_SUFFIX = ".tmp"


def usual_file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open()`` gives a new file (``mkstemp`` gives ``0o600``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files `atomic_write` may have left beside ``path`` (a process killed mid-write)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))


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
