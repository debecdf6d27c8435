"""The datasets the programs load: a named split with one-line errors, and the choice a run makes without
``--dataset`` (full MNIST when it can be had, else the bundled sample, said in one line).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import sys
import urllib.request
import warnings

import numpy as np  # host side: dataset arrays

from ..data import DatasetNotFoundError, load_dataset
from ..data.datasets import DATASETS, SPLIT_FILES, DatasetMismatchError, UnverifiedDataWarning, search_dirs
from .common import UsageError, is_silent, note, one_line, plural

__all__ = ["load_split", "checked_split", "load_data", "mnist_on_disk", "mnist_downloadable", "default_dataset"]


def load_split(name: str, data_dir, split: str, trust: bool = False, prog: str = ""):
    """A named dataset's split, checked (`checked_split`); UsageError for one that cannot be had or used.

    The downloader's own lines (each URL tried, each failure) are kept back (`_OneLine.quiet_downloads`):
    a dataset that cannot be had is one error line, with the first failure's reason in it; one that was
    downloaded is one note."""
    line = _OneLine(prog or "cnnxp")
    try:
        with _data_warnings(prog), line.quiet_downloads():
            images, labels = load_dataset(name, split, data_dir=data_dir, trust_data=trust)
    except DatasetNotFoundError as exc:
        first = str(exc).splitlines()[0].removesuffix(" in")
        why = f"not downloadable: {line.failure}" if line.failure else "not downloadable"
        raise UsageError(
            f"dataset {name!r} is not available ({first}; {why}): pass --data-dir DIR with its IDX "
            "files, set CNNXP_DATA, or use --dataset mnist-sample"
        ) from None
    except DatasetMismatchError as exc:
        raise UsageError(f"{exc.facts}: pass --data-dir with the {name} files, or --trust-data to use this one "
                         "anyway") from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"dataset {name!r} cannot be read: {one_line(exc)}") from None
    if line.downloaded:
        note(prog or "cnnxp", f"downloaded the {name} {split} split ({plural(line.downloaded, 'file')})")
    return checked_split(name, split, images, labels)


def checked_split(name: str, split: str, images: np.ndarray, labels: np.ndarray):
    """``(images, labels)``, or UsageError for a split the models cannot take: empty, or not 28x28."""
    if len(images) == 0:
        raise UsageError(f"the {name} {split} split holds 0 images: expected at least one (are its IDX files "
                         "the right ones? see --data-dir)")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UsageError(f"the {name} {split} images are {images.shape[1:]}: the models take 28x28 images")
    return images, labels


@contextlib.contextmanager
def _data_warnings(prog: str):
    """Data used though unverified (``--trust-data``): each warning as one note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnverifiedDataWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, UnverifiedDataWarning):
            note(prog or "cnnxp", f"warning: {warning.message}")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def load_data(name: str | None, data_dir, prog: str, trust: bool = False):
    """(dataset name, train arrays, test arrays); without a name, full MNIST or else the bundled sample,
    said in one line (a full MNIST whose files are not the published ones is an error, not a reason to
    fall back)."""
    if name is not None:
        return name, load_split(name, data_dir, "train", trust, prog), load_split(name, data_dir, "test", trust, prog)
    line = _OneLine(prog)
    if not mnist_on_disk(data_dir):
        line.start("full MNIST is not on this machine; downloading it ...")
    try:
        with _data_warnings(prog), line.quiet_downloads():
            train = load_dataset("mnist", "train", data_dir=data_dir, trust_data=trust)
            test = load_dataset("mnist", "test", data_dir=data_dir, trust_data=trust)
        line.end("done")
        return "mnist", checked_split("mnist", "train", *train), checked_split("mnist", "test", *test)
    except DatasetNotFoundError:
        line.end(f"not possible ({line.failure or 'no mirror answered'}); training on the bundled sample "
                 "(--dataset mnist-sample) instead")
    except DatasetMismatchError as exc:
        line.end("stopped")
        raise UsageError(f"{exc.facts}: pass --data-dir with the MNIST files, --trust-data to use this one "
                         "anyway, or --dataset mnist-sample") from None
    except (ValueError, OSError) as exc:
        line.end(f"{'its files' if line.open else 'full MNIST'} cannot be read ({one_line(exc)}); training on the "
                 "bundled sample (--dataset mnist-sample) instead")
    return "mnist-sample", load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")


class _OneLine:
    """One note on stderr written in two halves (what is tried, then how it went), with the dataset
    loader's own lines (each URL tried, each failure) kept back: ``failure`` is the first reason given,
    ``downloaded`` the number of files that came."""

    def __init__(self, prog: str):
        self.prog, self.open, self.failure, self.downloaded = prog, False, None, 0

    def start(self, text: str) -> None:
        if not is_silent():
            print(f"{self.prog}: {text}", end="", file=sys.stderr, flush=True)
            self.open = True

    def end(self, text: str) -> None:
        """Finish the line begun by `start`; without one, ``text`` is a note of its own unless it is
        only "done" or "stopped"."""
        if self.open:
            print(f" {text}", file=sys.stderr, flush=True)
            self.open = False
        elif text not in ("done", "stopped"):
            note(self.prog, text)

    @contextlib.contextmanager
    def quiet_downloads(self):
        """Keep the downloader's lines back for the block; any other line on stderr is passed on after it."""
        kept = io.StringIO()
        try:
            with contextlib.redirect_stderr(kept):
                yield
        finally:
            lines = kept.getvalue().splitlines()
            tried = [line for line in lines if line.startswith("cnnxp: downloading ")]
            failures = [line.removeprefix("cnnxp: failed: ") for line in lines if line.startswith("cnnxp: failed: ")]
            self.failure = failures[0] if failures else None
            self.downloaded = len(tried) - len(failures)
            others = [line for line in lines if not line.startswith(("cnnxp: downloading ", "cnnxp: failed: "))]
            if others:
                print("\n".join(others), file=sys.stderr, flush=True)


def mnist_on_disk(data_dir) -> bool:
    """Whether all four files of full MNIST are where `load_dataset` looks, without reading them."""
    dirs = search_dirs("mnist", data_dir)
    stems = [stem for pair in SPLIT_FILES.values() for stem in pair]
    return all(any((d / stem).is_file() or (d / f"{stem}.gz").is_file() for d in dirs) for stem in stems)


def mnist_downloadable(timeout: float = 10.0) -> bool:
    """Whether a mirror of full MNIST answers for its first file (a HEAD request: nothing is downloaded)."""
    first = SPLIT_FILES["train"][0] + ".gz"
    for mirror in DATASETS["mnist"]["mirrors"]:
        url = (mirror if mirror.endswith("/") else mirror + "/") + first
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                if response.status == 200:
                    return True
        except (OSError, ValueError, http.client.HTTPException):
            continue
    return False


def default_dataset(data_dir) -> tuple[str, str]:
    """The dataset a run without ``--dataset`` trains on, and why, decided without reading or downloading
    it: full MNIST when it is on disk or a mirror answers, else the bundled sample."""
    if mnist_on_disk(data_dir):
        return "mnist", "full MNIST, found on this machine"
    if mnist_downloadable():
        return "mnist", "full MNIST: not on this machine, a run downloads it"
    return "mnist-sample", "full MNIST is neither on this machine nor downloadable"
