"""The package's two cross-cutting helpers: argument checks (one error policy) and atomic file writes."""

from __future__ import annotations

import io
import json
import os
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from cnnxp._checks import check_choice, check_int, check_pair, check_real
from cnnxp._files import (
    LOCK_NAME,
    FolderInUseError,
    atomic_write,
    lock_folder,
    temporary_files,
    usual_file_mode,
)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: check_int(2.5, "DataLoader", "batch_size"), TypeError, "DataLoader batch_size must be an int, got 2.5 (float)"),
    (lambda: check_int(True, "Dense", "in_features"), TypeError, "Dense in_features must be an int, got True (bool)"),
    (lambda: check_int("3", "fit", "epochs"), TypeError, "fit epochs must be an int, got '3' (str)"),
    (lambda: check_int(0, "fit", "epochs"), ValueError, "fit epochs must be a positive int, got 0"),
    (lambda: check_int(-1, "DataLoader", "seed", least=0), ValueError, "DataLoader seed must be an int >= 0, got -1"),
    (lambda: check_real("1", "SGD", "momentum", 0.0), TypeError, "SGD momentum must be a number, got '1' (str)"),
    (lambda: check_real(None, "", "label_smoothing", 0.0, 1.0), TypeError,
     "label_smoothing must be a number, got None (NoneType)"),
    (lambda: check_real(float("nan"), "Adam", "eps", 0.0, low_open=True), ValueError,
     "Adam eps must be a finite number in (0, inf), got nan"),
    (lambda: check_real(1.0, "", "label_smoothing", 0.0, 1.0, high_open=True), ValueError,
     "label_smoothing must be a finite number in [0, 1), got 1.0"),
    (lambda: check_pair(1.5, "Conv2D", "stride", 1), TypeError, "Conv2D stride must be an int or a pair of ints, got 1.5"),
    (lambda: check_pair((1, 2, 3), "Conv2D", "stride", 1), ValueError,
     "Conv2D stride must be an int or a pair of ints, got (1, 2, 3)"),
    (lambda: check_pair((1, 0), "MaxPool2D", "stride", 1), ValueError, "MaxPool2D stride must be at least 1, got (1, 0)"),
    (lambda: check_pair(-1, "", "padding"), ValueError, "padding must be non-negative, got -1"),
    (lambda: check_choice("fft", "", "algorithm", ("auto", "im2col")), ValueError,
     "algorithm must be 'auto' or 'im2col', got 'fft'"),
    (lambda: check_choice(3, "Conv2D", "algorithm", ("auto",)), TypeError, "Conv2D algorithm must be 'auto', got 3"),
])  # fmt: skip
def test_one_error_policy(call, error, message):
    """TypeError for a wrong type, ValueError for a wrong value, and a message that names owner, rule and value."""
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_checks_return_plain_python_values():
    assert check_int(np.int64(3), "x", "n") == 3 and type(check_int(np.int64(3), "x", "n")) is int
    assert check_real(np.float32(0.5), "x", "p", 0.0, 1.0) == 0.5
    assert check_pair(np.int32(2), "x", "k", 1) == (2, 2) and check_pair([1, 2], "x", "k") == (1, 2)
    assert check_choice("auto", "", "algorithm", ("auto",)) == "auto"


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "a.json"  # the folder is made
    with atomic_write(target, "w") as f:
        f.write("first")
    with atomic_write(target) as f:
        f.write(b"second")
    assert target.read_text() == "second"
    assert stat.S_IMODE(os.stat(target).st_mode) == usual_file_mode()
    assert temporary_files(target) == [] and sorted(os.listdir(target.parent)) == ["a.json"]


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    for error in (ValueError("checksum mismatch"), urllib.error.URLError("no network"), KeyboardInterrupt()):
        with pytest.raises(type(error)) as info, atomic_write(target) as f:
            f.write(b"half")
            raise error
        assert info.value is error  # passed through as it was
        assert target.read_bytes() == b"old" and temporary_files(target) == []


def test_atomic_write_names_the_target_not_the_temporary_file(tmp_path):
    folder = tmp_path / "checkpoint.npz"
    folder.mkdir()  # the rename fails: a folder stands where the file should go
    with pytest.raises(IsADirectoryError) as info, atomic_write(folder) as f:
        f.write(b"x")
    assert info.value.filename == str(folder)
    with pytest.raises(OSError) as info, atomic_write(tmp_path / "full.bin") as f:
        raise OSError(28, "No space left on device")  # what a write on a full disk raises
    assert info.value.errno == 28 and info.value.filename == str(tmp_path / "full.bin")
    assert temporary_files(tmp_path / "full.bin") == []


def test_two_writers_of_one_file_do_not_collide(tmp_path):
    """Each writer has a temporary file of its own: both finish, the last rename wins, no half file."""
    target = tmp_path / "metrics.json"
    with atomic_write(target, "w") as first:
        first.write('{"a": 1}')
        with atomic_write(target, "w") as second:
            second.write('{"b": 2}')
        assert target.read_text() == '{"b": 2}'
    assert target.read_text() == '{"a": 1}'
    assert temporary_files(target) == []


def test_temporary_files_finds_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "checkpoint.npz"
    left = tmp_path / ".checkpoint.npz.abc123.tmp"
    left.write_bytes(b"partial")
    for other in (".other.npz.abc.tmp", ".checkpoint.npz.tmp", ".checkpoint.npz.a.b.tmp", ".checkpoint.npz.x.tmp~"):
        (tmp_path / other).write_bytes(b"")  # another file's, or not the writer's own pattern
    assert temporary_files(target) == [left]
    assert temporary_files(tmp_path / "missing" / "checkpoint.npz") == []


def _write_json_many(path: str, worker: int, count: int) -> None:
    from cnnxp.cli.common import write_json

    for i in range(count):
        write_json(Path(path), {"worker": worker, "i": i, "rows": list(range(200))})


def test_concurrent_json_writers_and_a_reader_never_see_half_a_file(tmp_path):
    """Four processes write one metrics.json over and over while this one reads it: every write
    succeeds, every read is a whole JSON document (with one fixed temporary name, about 8% of the
    writes failed and 18% of the reads saw invalid JSON), and no temporary file is left."""
    import multiprocessing

    path = tmp_path / "metrics.json"
    path.write_text("{}")
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    writers = [context.Process(target=_write_json_many, args=(str(path), w, 150)) for w in range(4)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers) or reads < 50:
        document = json.loads(path.read_text())  # raises on half a file
        assert document == {} or len(document["rows"]) == 200
        reads += 1
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert reads >= 50 and temporary_files(path) == []


def test_one_lock_per_folder(tmp_path):
    """A second taker is refused, naming the holder; releasing removes the lock file; a lock file a
    killed holder left is taken over."""
    first = lock_folder(tmp_path)
    assert first.locked and (tmp_path / LOCK_NAME).is_file()
    with pytest.raises(FolderInUseError) as info:
        lock_folder(tmp_path)  # flock: another open file description, refused even in this process
    assert info.value.holder["pid"] == os.getpid()
    assert f"is in use by process {os.getpid()} since " in str(info.value)
    first.release()
    first.release()  # twice is harmless
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text('{"pid": 999999999}')  # what a killed holder leaves
    with lock_folder(tmp_path) as again:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid() and again.locked
    assert list(tmp_path.iterdir()) == []


class _FullDisk(io.RawIOBase):
    """A raw stream that takes 10 bytes, then fails every write as a full disk does (ENOSPC)."""

    def __init__(self):
        self.taken = 0

    def writable(self):
        return True

    def write(self, data):
        if self.taken + len(data) > 10:
            raise OSError(28, "No space left on device")
        self.taken += len(data)
        return len(data)


def test_a_full_disk_names_the_target_even_when_the_buffer_fails_on_close(tmp_path, monkeypatch):
    """A write that fits the buffer fails only when the buffer is flushed (on close): the error still
    names the file, never the temporary one, and nothing is left behind."""
    import os as os_module

    real_fdopen = os_module.fdopen

    def fdopen(fd, mode="r", **kwargs):
        os_module.close(fd)
        return io.BufferedWriter(_FullDisk(), buffer_size=4096)

    monkeypatch.setattr("cnnxp._files.os.fdopen", fdopen)
    target = tmp_path / "checkpoint.npz"
    with pytest.raises(OSError) as info, atomic_write(target) as f:
        f.write(b"x" * 100)  # buffered: nothing has failed yet
    monkeypatch.setattr("cnnxp._files.os.fdopen", real_fdopen)
    assert info.value.errno == 28 and info.value.filename == str(target)
    assert temporary_files(target) == [] and not target.exists()
