"""IDX files: round trips through write_idx/read_idx, and every corrupt form rejected by name."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from cnnxp.data import read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 28, 28)])
def test_round_trip(tmp_path, suffix, dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx{len(shape)}-ubyte{suffix}", a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.shape == shape
    np.testing.assert_array_equal(a, b)
    b[...] = 0  # writable, not a view of the file's bytes
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_known_bytes(tmp_path):
    """The header is big-endian as in the MNIST files: magic 0x00000803, then the dimensions."""
    path = write_idx(tmp_path / "x-idx3-ubyte", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    raw = path.read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 00000003 00000004")
    assert raw[16:] == bytes(range(24))
    i32 = write_idx(tmp_path / "y-idx1-ubyte", np.array([1, -2], dtype=np.int32)).read_bytes()
    assert i32 == bytes.fromhex("00000c01 00000002 00000001 fffffffe")


def test_gzip_detected_without_suffix(tmp_path):
    """A compressed file that lost its .gz suffix still reads."""
    gz = write_idx(tmp_path / "a.gz", np.arange(5, dtype=np.uint8))
    plain_name = tmp_path / "a-idx1-ubyte"
    plain_name.write_bytes(gz.read_bytes())
    np.testing.assert_array_equal(read_idx(plain_name), np.arange(5))


def _valid(n=6) -> bytes:
    return struct.pack(">HBBI", 0, 0x08, 1, n) + bytes(i % 256 for i in range(n))


CORRUPT = {
    "bad magic": (b"\x01\x02" + _valid()[2:], "bad magic"),
    "unknown dtype code": (struct.pack(">HBBI", 0, 0x07, 1, 3) + b"abc", "unknown IDX element type"),
    "truncated payload": (_valid()[:-1], "truncated"),
    "truncated header": (_valid()[:6], "truncated IDX header"),
    "short header": (b"\x00\x00", "truncated IDX header"),
    "trailing bytes": (_valid() + b"\x00\x00", "2 trailing bytes"),
    "empty file": (b"", "empty file"),
    "zero dimensions": (struct.pack(">HBB", 0, 0x08, 0), "0 dimensions"),
    "more dimensions than an array has": (struct.pack(">HBB", 0, 0x08, 65) + b"\x00\x00\x00\x01" * 65,
                                          "65 dimensions, more than an array can have"),
    # sizes whose product overflows int64, or wraps to exactly 0: still "truncated", with the true size
    "huge declared size": (struct.pack(">HBB2I", 0, 0x08, 2, 2**32 - 1, 2**32 - 1) + b"x" * 10,
                           "needs 18446744065119617025 bytes"),
    "size wrapping to zero": (struct.pack(">HBB3I", 0, 0x08, 3, 2**31, 2**31, 4),
                              "needs 18446744073709551616 bytes"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_name_the_file(tmp_path, case, gz):
    content, message = CORRUPT[case]
    path = tmp_path / ("broken-file.gz" if gz else "broken-file")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert "broken-file" in str(info.value)


def test_not_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(_valid())
    with pytest.raises(ValueError, match="not a gzip file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_valid(1000))[:-20])
    with pytest.raises(ValueError, match="cut.gz.*truncated gzip"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(bytes(range(256)) * 40))
    data[20:40] = b"\xff" * 20
    path = tmp_path / "garbled.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="garbled.gz"):
        read_idx(path)


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="int64 has no IDX type code"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a shared data directory stays readable, as with any file the user writes."""
    import os

    mask = os.umask(0o022)
    try:
        for name in ("a-idx1-ubyte", "b-idx1-ubyte.gz"):
            path = write_idx(tmp_path / name, np.arange(3, dtype=np.uint8))
            assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(mask)
