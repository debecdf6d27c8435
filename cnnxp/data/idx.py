"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, an element type code, the
number of dimensions), one big-endian uint32 per dimension, then the elements
in C order, big-endian. Files whose name ends in ``.gz`` are gzip-compressed.

Every check names the file, because a dataset is four files and "truncated"
alone does not say which one to fetch again.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .._files import atomic_write

__all__ = ["read_idx", "write_idx", "parse_idx", "idx_bytes", "IDX_DTYPES"]

#: Element type code -> big-endian NumPy dtype, as in the IDX specification.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def idx_bytes(data: bytes, path: Path) -> bytes:
    """The IDX bytes of a file's ``data``: decompressed when gzip (by name or by its first bytes)."""
    is_gz_name = path.name.endswith(".gz")
    if not is_gz_name and not data.startswith(_GZIP_MAGIC):
        return data
    if not data.startswith(_GZIP_MAGIC):
        raise ValueError(f"{path}: not a gzip file (a .gz name, but the first bytes are {data[:2]!r})")
    try:
        return gzip.decompress(data)
    except EOFError:
        raise ValueError(f"{path}: truncated gzip stream; delete the file and fetch it again") from None
    except (OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip file ({exc}); delete the file and fetch it again") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed when the name ends in ``.gz``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order with the file's shape and element type
        (``uint8`` for MNIST images and labels).

    Raises
    ------
    ValueError
        Naming the file, when it is not gzip though named ``.gz``, is empty, has a bad
        magic number or an unknown element type, or when its payload is shorter
        (truncated) or longer (trailing bytes) than its dimensions say.
    """
    path = Path(path)
    return parse_idx(idx_bytes(path.read_bytes(), path), path)


def parse_idx(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file's (decompressed) ``data``; ``path`` names the file in errors (`read_idx`)."""
    if len(data) == 0:
        raise ValueError(f"{path}: empty file, expected an IDX header")
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected at least 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(
            f"{path}: bad magic number 0x{data[:4].hex()}: an IDX file starts with two zero bytes"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX element type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    if ndim > 64:  # NumPy's limit
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions, more than an array can have (64)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow for absurd headers
    payload = len(data) - header_len
    if payload < expected:
        raise ValueError(
            f"{path}: truncated: shape {shape} of {dtype.newbyteorder('=')} needs {expected} bytes "
            f"of data, the file has {payload}"
        )
    if payload > expected:
        raise ValueError(
            f"{path}: {payload - expected} trailing bytes after the {expected} bytes that shape {shape} needs"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The file is written whole or not at all (`cnnxp._files.atomic_write`).

    Raises
    ------
    ValueError
        When the array's dtype has no IDX element type code or it has no dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        names = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code (supported: {names})")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: expected an array with 1 to 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_write(path) as f:
        f.write(data)
    return path
