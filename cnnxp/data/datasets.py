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

Files found on disk are checked too, on first use (`verify`): a ``.gz`` file against the
published SHA-256 of the upstream ``.gz``, and failing that (a recompressed ``.gz`` such as
Debian's, or a raw file) its IDX content against the published digest of the content. A file
that matches neither is refused with `DatasetMismatchError`, which says what it seems to be
(another known dataset's file, or an IDX file of some shape); ``trust_data=True`` uses it
anyway with an `UnverifiedDataWarning`. What was computed is remembered per file version
(path, size, modification time) in ``verified.json`` in the user cache, so a file is hashed
once, not at every run.

``mnist-sample`` is 5,000 real MNIST digits shipped inside the package
(``cnnxp/data/mnist_sample.npz``, built by ``scripts/make_mnist_sample.py``), so
training works on a machine with no network and no data.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from .._files import atomic_write
from .idx import idx_bytes, parse_idx

__all__ = ["DATASETS", "DatasetNotFoundError", "DatasetMismatchError", "UnverifiedDataWarning", "load_dataset",
           "cache_dir", "search_dirs", "verify"]

#: Per dataset: the mirrors tried in turn (base URLs), the published SHA-256 of each
#: ``.gz`` file (a download is used only when it matches), the published digest of each
#: file's IDX content (``"content"``: what a recompressed or raw file is checked against,
#: ``"sha256:..."`` or, where no SHA-256 is published, ``"md5:..."``, or a list of them), and system
#: directories that may hold the files. Tests replace entries here.
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
        # SHA-256 of the uncompressed files: the Git LFS object ids (an LFS oid is the file's SHA-256) of
        # torchvision's MNIST/raw files as uploaded to Hugging Face (spaces/chrisjay/mnist-adversarial,
        # files/MNIST/raw, whose .gz files carry the SHA-256 above; train-images and t10k-images also in
        # datasets/dmitva/the-mnist-database). No SHA-256 of the raw t10k-labels file was found published:
        # its MD5, listed with the other three files' raw MD5s by projects that check the raw files.
        "content": {
            "train-images-idx3-ubyte": "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "md5:27ae3e4e09519cfbb04c329615203637",
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
        # SHA-256 of the uncompressed files, computed from Debian's dataset-fashion-mnist package (Zalando's
        # data, recompressed): its decompressed files have the published MD5s of the raw files
        # (f4a8712d..., 9018921c..., 8181f547..., 15d48437...), so they are the genuine content.
        "content": {
            "train-images-idx3-ubyte": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        # Debian's dataset-fashion-mnist package. Its .gz files are recompressed (other
        # SHA-256 than upstream's), so they are checked by their content.
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


class DatasetMismatchError(ValueError):
    """A local file is not the published file it is named as; ``facts`` says which and what it seems to be."""

    def __init__(self, facts: str):
        self.facts = facts
        super().__init__(f"{facts}; put the published file there, or load it with trust_data=True to use it anyway")


class UnverifiedDataWarning(UserWarning):
    """A file that is not the published one was used as asked (``trust_data=True``)."""


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
            stat = (target_dir / filename).stat()  # its digest is known now: not computed again at first use
            _remember(str((target_dir / filename).resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                               "digests": [f"file:sha256:{sha256}"]})
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


# -- local files are what they claim to be -----------------------------------------------------------


def _memo_path() -> Path:
    """``verified.json`` in the user cache: the digests computed per file version."""
    return cache_dir("mnist").parent / "verified.json"


def _memo() -> dict:
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):  # none yet, or damaged: computed again
        return {}
    return memo if isinstance(memo, dict) else {}


def _remember(key: str, entry: dict) -> None:
    """Keep one file version's digests (written atomically; a cache that cannot be written is skipped)."""
    memo = _memo()
    memo[key] = entry
    try:
        with atomic_write(_memo_path(), "w") as f:
            json.dump(memo, f, indent=1, sort_keys=True)
    except OSError:
        pass


def _published() -> dict[str, tuple[str, str]]:
    """Every published digest (``file:sha256:<hex>`` of a .gz, ``content:<algorithm>:<hex>``) -> (dataset, file)."""
    known = {}
    for name, spec in DATASETS.items():
        for filename, digest in spec.get("sha256", {}).items():
            known[f"file:sha256:{digest}"] = (name, filename)
        for stem, digests in spec.get("content", {}).items():
            known.update({f"content:{d}": (name, stem) for d in _listed(digests)})
    return known


def _listed(digests) -> list[str]:
    return [digests] if isinstance(digests, str) else list(digests)


def _expected(name: str, stem: str, gz: bool) -> set[str]:
    """The digests that make ``stem`` of ``name`` genuine: its .gz's (for a .gz file) or its content's."""
    spec = DATASETS[name]
    expected = {f"content:{d}" for d in _listed(spec.get("content", {}).get(stem, ()))}
    if gz and f"{stem}.gz" in spec.get("sha256", {}):
        expected.add(f"file:sha256:{spec['sha256'][stem + '.gz']}")
    return expected


def verify(name: str, stem: str, path: str | os.PathLike, data: bytes | None = None,
           content: bytes | None = None) -> str | None:
    """None when ``path`` is dataset ``name``'s published file ``stem`` (or nothing published can tell);
    else one line saying what it is not and what it seems to be.

    ``data`` (the file's bytes) and ``content`` (its IDX bytes) are read when not given. A .gz file
    is checked by its own SHA-256 first, then by its content's digest (a recompressed .gz); a raw
    file by its content's. Digests are computed once per file version (`_remember`).
    """
    path = Path(path)
    gz = path.name.endswith(".gz")
    expected = _expected(name, stem, gz)
    if not expected:
        return None
    stat = path.stat()
    key = str(path.resolve())
    entry = _memo().get(key)
    fresh = isinstance(entry, dict) and [entry.get("size"), entry.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns]
    have = set(entry.get("digests", [])) if fresh else set()
    if not have & expected:
        data = path.read_bytes() if data is None else data
        computed = {f"file:sha256:{hashlib.sha256(data).hexdigest()}"} if gz else set()
        if not computed & expected:  # not the upstream .gz: its content, then
            content = idx_bytes(data, path) if content is None else content
            computed |= {f"content:{a}:{hashlib.new(a, content).hexdigest()}" for a in ("sha256", "md5")}
        if computed - have:
            have |= computed
            _remember(key, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digests": sorted(have)})
    if have & expected:
        return None
    return f"{path} is not the published {name} {stem}: {_what_it_seems(have, path, content)}"


def _what_it_seems(digests: set[str], path: Path, content: bytes | None) -> str:
    known = _published()
    for digest in sorted(digests):
        if digest in known:
            return "it seems to be {}'s {}".format(*known[digest])
    try:
        array = parse_idx(content if content is not None else idx_bytes(path.read_bytes(), path), path)
    except ValueError:
        return "it matches no published file"
    return f"it is an IDX file of shape {array.shape} that matches no published file"


def _read_checked(name: str, stem: str, path: Path, trust: bool) -> np.ndarray:
    """The array in ``path``, once `verify` found it genuine (or ``trust``, with a warning)."""
    data = path.read_bytes()
    content = idx_bytes(data, path)
    problem = verify(name, stem, path, data, content)
    if problem is not None:
        if not trust:
            raise DatasetMismatchError(problem)
        warnings.warn(f"{problem}; using it anyway, as asked", UnverifiedDataWarning, stacklevel=3)
    return parse_idx(content, path)


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
    trust_data: bool = False,
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
    trust_data : bool
        Use local files that are not the published ones (`verify`), with an `UnverifiedDataWarning`,
        instead of raising `DatasetMismatchError`.

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, 28, 28)
    labels : numpy.ndarray, int64, shape (N,)

    Raises
    ------
    DatasetNotFoundError
        When the files are not on disk and cannot be downloaded; the message names the
        files, the directories tried and the ways out.
    DatasetMismatchError
        When a local file is not the published one (another dataset's, say): the message says
        what it seems to be.
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
    labels = _read_checked(name, stems[1], paths[1], trust_data)  # the small file first: a wrong one is found at once
    images = _read_checked(name, stems[0], paths[0], trust_data)
    _check_pair(images, labels, paths)
    return images, labels.astype(np.int64)
