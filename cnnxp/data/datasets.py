"""MNIST-family datasets: local files first, checked downloads second, a bundled sample always.

Where the IDX files of ``mnist`` and ``fashion-mnist`` are looked for, in order:

1. ``data_dir`` (then ``data_dir/<name>``), when given;
2. ``$CNNXP_DATA/<name>``, then ``$CNNXP_DATA`` itself;
3. the user cache, ``$XDG_CACHE_HOME/cnnxp/<name>`` (``~/.cache/cnnxp/<name>`` by default);
4. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).

Each file may be raw (``train-images-idx3-ubyte``) or compressed (``...-ubyte.gz``).
When a file is missing and ``download`` is true, the ``.gz`` file is fetched from
the dataset's mirrors in turn into ``data_dir`` (when given) or the user cache.
A download is written to a temporary file, checked against its published SHA-256
and only then renamed into place: an interrupted or corrupt download never leaves
a file that later passes for data.

``mnist-sample`` is 5,000 real MNIST digits shipped inside the package
(``cnnxp/data/mnist_sample.npz``, built by ``scripts/make_mnist_sample.py``), so
training works on a machine with no network and no data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np

from .._files import atomic_write
from .idx import read_idx

__all__ = ["DATASETS", "DatasetNotFoundError", "load_dataset", "cache_dir", "search_dirs"]

#: Per dataset: the mirrors tried in turn (base URLs), the published SHA-256 of each
#: ``.gz`` file (a download is used only when it matches), and system directories
#: that may hold the files. Tests replace entries here.
DATASETS: dict[str, dict] = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        # The checksums TensorFlow Datasets lists for these files
        # (tensorflow_datasets/url_checksums/mnist.txt).
        "sha256": {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        "system_dirs": [],
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        # The checksums TensorFlow Datasets lists for these files
        # (tensorflow_datasets/url_checksums/fashion_mnist.txt).
        "sha256": {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        # Debian's dataset-fashion-mnist package. Its .gz files are recompressed (other
        # SHA-256 than upstream's), so local files are checked by their IDX structure.
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
    },
    "mnist-sample": {"bundled": "mnist_sample.npz"},
}

#: split -> (images file, labels file), without the ``.gz`` suffix.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are neither on disk nor downloadable; the message lists the ways out."""


def cache_dir(name: str) -> Path:
    """A dataset's user cache directory: ``$XDG_CACHE_HOME/cnnxp/<name>`` or ``~/.cache/cnnxp/<name>``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative paths are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cnnxp" / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for a dataset's files, in order (existing or not)."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("CNNXP_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(cache_dir(name))
    dirs += [Path(d) for d in DATASETS[name].get("system_dirs", [])]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find(stem: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _fetch(url: str, target: Path, sha256: str, timeout: float) -> None:
    """Download ``url`` to ``target`` through a temporary file; raise OSError/ValueError on any failure.

    Nothing is left behind unless the whole file arrived and its SHA-256 matches: the file is
    written through `cnnxp._files.atomic_write`, and a failed check inside it discards the file.
    """
    digest = hashlib.sha256()
    size = 0
    with atomic_write(target) as out, urllib.request.urlopen(url, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        # read(n) returns b"" when the server closes early instead of raising; compare with the header.
        if declared is not None and declared.isdigit() and size != int(declared):
            raise ConnectionError(f"connection closed after {size} of {declared} bytes")
        if digest.hexdigest() != sha256:
            raise ValueError(f"checksum mismatch ({size} bytes, sha256 {digest.hexdigest()}, expected {sha256})")


def _download(name: str, filename: str, target_dir: Path, mirrors: list[str], timeout: float) -> Path:
    """Fetch ``filename`` from the first mirror that serves it with the published checksum."""
    sha256 = DATASETS[name].get("sha256", {}).get(filename)
    if sha256 is None:
        raise OSError(f"no published SHA-256 for {filename}, refusing to download it unchecked")
    try:  # a local problem, not a mirror's: say so once
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create {str(target_dir)!r} for the download: {exc.strerror or exc}") from None
    failures = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += filename
        print(f"cnnxp: downloading {url}", file=sys.stderr, flush=True)
        try:
            _fetch(url, target_dir / filename, sha256, timeout)
            return target_dir / filename
        # URLError and timeouts are OSErrors; a connection closed early is an HTTPException.
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            elif isinstance(exc, urllib.error.URLError):
                reason = exc.reason
            else:
                reason = exc
            failures.append(f"{url}: {reason}")
            print(f"cnnxp: failed: {reason}", file=sys.stderr, flush=True)
    raise OSError("; ".join(failures) if failures else "no mirrors configured")


def _not_found(name: str, split: str, missing: list[str], dirs: list[Path], why: str,
               target_dir: Path) -> DatasetNotFoundError:
    looked = ", ".join(f"{stem}[.gz]" for stem in missing)
    tried = "\n".join(f"  {d}" for d in dirs)
    return DatasetNotFoundError(
        f"{name} {split} split not found: looked for {looked} in\n{tried}\n"
        f"and {why}.\n"
        f"Ways out: put the IDX files (raw or .gz) in a directory and pass --data-dir DIR "
        f"(data_dir= in Python) or set CNNXP_DATA=DIR; run once with network access so they are "
        f"downloaded into {target_dir}; or use the bundled sample: --dataset mnist-sample."
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, paths: tuple[Path, Path]) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{paths[1]}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{paths[1]}: labels must be 0..9, found {int(labels.max())}")


def _load_bundled(filename: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    with resources.files(__package__).joinpath(filename).open("rb") as f, np.load(f) as npz:
        images = np.array(npz[f"x_{split}"], dtype=np.uint8)
        labels = np.array(npz[f"y_{split}"], dtype=np.int64)
    return images, labels


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    mirrors: list[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of ``mnist``, ``fashion-mnist`` or the bundled ``mnist-sample``.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "mnist-sample"}
    split : {"train", "test"}
    data_dir : path, optional
        Searched first; missing files are downloaded into it (instead of the user cache).
    download : bool
        Fetch missing files from the dataset's mirrors (each checked against its SHA-256).
    mirrors : list of str, optional
        Base URLs to use instead of ``DATASETS[name]["mirrors"]``.
    timeout : float
        Seconds to wait on each network operation.

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, 28, 28)
    labels : numpy.ndarray, int64, shape (N,)

    Raises
    ------
    DatasetNotFoundError
        When the files are not on disk and cannot be downloaded; the message names the
        files, the directories tried and the ways out.
    ValueError
        For an unknown name or split, or a file that is not a valid IDX file of the dataset.

    Examples
    --------
    >>> from cnnxp.data import load_dataset
    >>> x, y = load_dataset("mnist-sample", "test")
    >>> x.shape, x.dtype, y.dtype
    ((1000, 28, 28), dtype('uint8'), dtype('int64'))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    spec = DATASETS[name]
    if "bundled" in spec:
        return _load_bundled(spec["bundled"], split)

    dirs = search_dirs(name, data_dir)
    stems = SPLIT_FILES[split]
    found = {stem: _find(stem, dirs) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        target_dir = Path(data_dir) if data_dir is not None else cache_dir(name)
        if not download:
            raise _not_found(name, split, missing, dirs, "download=False", target_dir)
        urls = list(spec.get("mirrors", []) if mirrors is None else mirrors)
        for stem in missing:
            try:
                found[stem] = _download(name, f"{stem}.gz", target_dir, urls, timeout)
            except OSError as exc:
                raise _not_found(name, split, missing, dirs, f"downloading failed: {exc}", target_dir) from exc

    paths = (found[stems[0]], found[stems[1]])
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    _check_pair(images, labels, paths)
    return images, labels.astype(np.int64)
