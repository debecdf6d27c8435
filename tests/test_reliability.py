"""Nothing lost, nothing silent: each defect an adversarial user found, as its reproducer.

SIGTERM sent to a real train.py at chosen points (while the checkpoint is written, during training,
before the first epoch), divergence, checkpoints that lie, datasets that are not what they claim,
two runs into one folder, and a reader that went away. Each test failed before the change it tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cnnxp import cli
from cnnxp.checkpoint import load_checkpoint
from cnnxp.cli import train as train_cli
from cnnxp.data import write_idx
from cnnxp.data.datasets import SPLIT_FILES

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SEED_RUN = ["--dataset", "mnist-sample", "--model", "seed", "--no-plots", "--augment", "0"]


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    return {**env, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _train_process(tmp_path: Path, *args, pause_at_epoch: int | None = None) -> subprocess.Popen:
    """train.py in a process of its own; with ``pause_at_epoch``, its checkpoint writer stops for two
    seconds once that epoch's bytes are in the temporary file (after creating ``tmp_path/writing``)."""
    code = ("import json, sys, time, pathlib\n"
            "import cnnxp.checkpoint as C\n"
            "real = C._write_npz\n"
            "def paused(file, arrays):\n"
            "    real(file, arrays)\n"
            f"    if json.loads(str(arrays['meta']))['epoch'] == {pause_at_epoch}:\n"
            f"        pathlib.Path({str(tmp_path / 'writing')!r}).touch()\n"
            "        time.sleep(2)\n"
            "C._write_npz = paused\n"
            "from cnnxp.cli import train_main\n"
            "sys.exit(train_main(sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=tmp_path)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _dotfiles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- termination signals -------------------------------------------------------------------------------


def test_sigterm_while_the_checkpoint_is_written(tmp_path):
    """It used to die with -15 and leave a partial .checkpoint.npz.*.tmp: now the write finishes, the
    run stops with one line and 143, and nothing temporary is left."""
    out = tmp_path / "run"
    proc = _train_process(tmp_path, *SEED_RUN, "--epochs", "50", "--out", out, "--quiet", pause_at_epoch=2)
    _wait_for((tmp_path / "writing").exists, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == [f"train.py: terminated: the checkpoint of epoch 2 is {out / 'checkpoint.npz'}; "
                                           f"continue with: python scripts/train.py --resume {out / 'checkpoint.npz'}"]
    assert load_checkpoint(out / "checkpoint.npz").epoch == 2
    assert _dotfiles(out) == []


def test_sigterm_during_training_keeps_the_last_finished_epoch(tmp_path):
    out = tmp_path / "run"
    proc = _train_process(tmp_path, *SEED_RUN, "--epochs", "500", "--out", out, "--quiet")
    _wait_for((out / "checkpoint.npz").exists, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 143, stderr
    assert stderr.startswith("train.py: terminated: the checkpoint of epoch ") and len(stderr.splitlines()) == 1
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.epoch >= 1 and len(checkpoint.history) == checkpoint.epoch
    assert _dotfiles(out) == []


def test_sigterm_before_the_first_epoch_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    proc = _train_process(tmp_path, "--dataset", "mnist-sample", "--model", "lenet5", "--epochs", "5", "--out", out,
                          "--no-plots")
    _wait_for(lambda: proc.stdout.readline().startswith("lenet5"), proc)  # the run's first line: training starts
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "train.py: terminated before the first epoch finished: no checkpoint was written"
    assert not (tmp_path / "new").exists()


def test_a_signal_inside_a_deferred_section_raises_when_it_ends_and_only_once():
    from cnnxp.cli.stop import StopSignals, Terminated
    from cnnxp.distributed import SingleProcess

    stop = StopSignals(SingleProcess())
    stop.install()
    try:
        with pytest.raises(Terminated):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler ran here, and did not raise
                finished = True
        assert finished and stop.status(Terminated()) == 143
        os.kill(os.getpid(), signal.SIGINT)  # the run is stopping: noted, not raised
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_temporary_files_of_a_killed_run_are_removed_at_start(tmp_path, capsys):
    """kill -9 while writing leaves .checkpoint.npz.<random>.tmp; the next run into the folder removes it
    (only the writer's own pattern: other dotfiles stay)."""
    out = tmp_path / "run"
    out.mkdir()
    left = [out / ".checkpoint.npz.k7x2_q9a.tmp", out / ".metrics.json.ab12cd34.tmp"]
    kept = [out / ".checkpoint.npz.tmp", out / ".notes.tmp", out / ".checkpoint.npz.a.b.tmp"]
    for path in left + kept:
        path.write_bytes(b"partial")
    assert cli.train_main([*SEED_RUN, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert _dotfiles(out) == sorted(p.name for p in kept)
    assert "removed 2 temporary files a killed run left" in capsys.readouterr().err


# -- divergence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--lr", "1e6"], ["--lr", "1e6", "--optimizer", "sgd"], ["--lr", "1e300"],
                                   ["--momentum", "1e300", "--optimizer", "sgd"]],
                         ids=["adam-1e6", "sgd-1e6", "adam-1e300", "momentum-1e300"])
def test_divergence_stops_with_one_line_and_writes_no_checkpoint(tmp_path, capsys, flags):
    """Each of these exited 0 with a loss of NaN, NumPy's RuntimeWarnings, and a checkpoint of NaN weights."""
    out = tmp_path / "run"
    with _no_warnings():
        status = cli.train_main(["--dataset", "mnist-sample", "--model", "lenet5", "--batch-size", "64", "--epochs",
                                 "2", "--out", str(out), "--quiet", "--no-plots", *flags])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.startswith("train.py: error: diverged at epoch 1, step "), err
    advice = "lower --momentum (it was 1e+300" if "--momentum" in flags else f"lower --lr (it was {float(flags[1]):g})"
    assert "no checkpoint was written; " + advice in err and len(err.splitlines()) == 1
    assert not out.exists()


@contextlib.contextmanager
def _no_warnings():
    """Fail on any warning inside the block (NumPy's RuntimeWarnings of a diverged run among them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught] == []


def test_divergence_in_a_later_epoch_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """The rate jumps to 1e6 after the first epoch: the checkpoint of epoch 1 stays, finite."""
    def schedule(config):
        return lambda step, steps, epochs: config["lr"] if step < steps else 1e6

    monkeypatch.setattr(train_cli, "_schedule", schedule)
    out = tmp_path / "run"
    assert cli.train_main([*SEED_RUN, "--epochs", "3", "--out", str(out), "--quiet", "--optimizer", "sgd"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: diverged at epoch 2, step "), err
    assert f"the checkpoint of epoch 1 is kept ({out / 'checkpoint.npz'}); lower --lr" in err
    checkpoint = load_checkpoint(out / "checkpoint.npz")  # it would refuse NaN weights
    assert checkpoint.epoch == 1


def test_gamma_above_one_is_refused(tmp_path, capsys):
    assert cli.train_main([*SEED_RUN, "--gamma", "1e300", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "train.py: error: argument --gamma: must be in (0, 1] (a decay), got 1e300"


# -- checkpoints that lie ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A one-epoch run of the notebook network with Adam at batch 16 (250 steps) on the sample."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert cli.train_main([*SEED_RUN, "--optimizer", "adam", "--batch-size", "16", "--epochs", "1", "--quiet",
                           "--out", str(out)]) == 0
    return out


def _edited(good_run: Path, tmp_path: Path, edit) -> Path:
    with np.load(good_run / "checkpoint.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    edit(arrays)
    folder = tmp_path / "bad"
    folder.mkdir()
    np.savez(folder / "checkpoint.npz", **arrays)
    return folder / "checkpoint.npz"


def _nan(arrays):
    for key in arrays:
        if key.startswith("model/"):
            arrays[key][...] = np.nan


def _one_inf(arrays):
    arrays["model/3.weight"].flat[7] = np.inf


def _drop(*keys):
    return lambda arrays: [arrays.pop(key) for key in keys]


BAD_CHECKPOINTS = {  # edit, what the one line must say
    "all weights NaN": (_nan, "'model/0.weight': expected finite values, got 32 of 32 values NaN or infinite"),
    "one inf": (_one_inf, "'model/3.weight': expected finite values, got 1 of 5120 values NaN or infinite"),
    "complex": (lambda a: a.update({"model/0.bias": a["model/0.bias"].astype(np.complex64)}),
                "'model/0.bias': expected real floating-point values, got complex values"),
    "lr an array": (lambda a: a.update({"optimizer/lr": np.full(3, 0.002)}),
                    "'optimizer/lr': expected a finite number >= 0, got an array of shape (3,)"),
    "loader epoch an array": (lambda a: a.update({"loader/epoch": np.array([1, 1])}),
                              "'loader/epoch': expected an integer >= 0, got an array of shape (2,)"),
    "no step": (_drop("optimizer/step"), "lacks 'optimizer/step'"),
    "step not an integer": (lambda a: a.update({"optimizer/step": np.asarray("250.5")}),
                            "'optimizer/step': expected an integer >= 0, got '250.5'"),
    "a moment short of one parameter": (_drop("optimizer/state.v.3.bias"), "lacks 'optimizer/state.v.3.bias'"),
}


@pytest.mark.parametrize("form", list(BAD_CHECKPOINTS))
def test_a_checkpoint_that_lies_is_refused_by_all_three_scripts(good_run, tmp_path, capsys, form):
    """NaN, infinite or complex weights were trained on or evaluated (exit 0); arrays where scalars belong
    gave tracebacks. Now: one line naming the file and the entry, status 2, and the file as it was."""
    edit, message = BAD_CHECKPOINTS[form]
    path = _edited(good_run, tmp_path, edit)
    before = path.read_bytes()
    for main, args in [(cli.train_main, ["--resume", str(path), "--epochs", "2", "--quiet", "--no-plots"]),
                       (cli.evaluate_main, [str(path)]),
                       (cli.inspect_main, ["--checkpoint", str(path), "--out", str(tmp_path)])]:
        assert main(args) == 2, (main, args)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and message in err, err
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.npz"]


def test_a_checkpoint_missing_an_adam_moment_does_not_resume(good_run, tmp_path, capsys):
    """It resumed with that moment at zero, no longer exactly. The weights alone still evaluate."""
    path = _edited(good_run, tmp_path, lambda a: [a.pop(k) for k in list(a) if k.startswith("optimizer/state.v.")])
    assert cli.train_main(["--resume", str(path), "--epochs", "2", "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"train.py: error: checkpoint {str(path)!r} lacks 'optimizer/state.v.*' after 250 steps of Adam: "
                   "a resume would not be exact")
    assert cli.evaluate_main([str(path)]) == 0


def test_random_bytes_are_not_an_npz_checkpoint(tmp_path, capsys):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(os.urandom(2000).replace(b"PK", b"pk"))
    assert cli.evaluate_main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"evaluate.py: error: {str(path)!r} is not an npz checkpoint: it starts with b")
    assert "allow_pickle" not in err


def test_evaluate_takes_a_run_folder(good_run, tmp_path, capsys):
    assert cli.evaluate_main([str(good_run)]) == 0
    assert f"from {good_run / 'checkpoint.npz'} (epoch 1)" in capsys.readouterr().out
    assert cli.evaluate_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"evaluate.py: error: {str(tmp_path)!r} is a folder without a "
                                               "checkpoint.npz: pass a checkpoint file, or the folder of a run "
                                               "that finished an epoch")


def test_a_reader_that_goes_away_ends_evaluate_quietly(good_run, tmp_path):
    """``evaluate.py ... | head -2`` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "evaluate.py"), str(good_run / "checkpoint.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert stderr == "" and proc.returncode == 141


# -- datasets that are what they claim -----------------------------------------------------------------


def _write_split(folder: Path, split: str, n: int, size: int = 28) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = SPLIT_FILES[split]
    write_idx(folder / f"{images}.gz", np.zeros((n, size, size), np.uint8))
    write_idx(folder / f"{labels}.gz", np.zeros(n, np.uint8))


def test_an_empty_dataset_is_a_usage_error_before_any_folder(tmp_path, capsys, monkeypatch):
    """Valid IDX files of 0 images: a traceback ('the training loader yielded no batches') and an empty
    run folder. Such files are not the published MNIST either: said first, and with --trust-data the
    emptiness."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for split in SPLIT_FILES:
        _write_split(data, split, 0)
    out = tmp_path / "run"
    common = ["--dataset", "mnist", "--data-dir", str(data), "--out", str(out), "--quiet"]
    assert cli.train_main(common) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"train.py: error: {data / 'train-labels-idx1-ubyte.gz'} is not the published mnist "
                   "train-labels-idx1-ubyte: it is an IDX file of shape (0,) that matches no published file: pass "
                   "--data-dir with the mnist files, or --trust-data to use this one anyway"), err
    assert cli.train_main([*common, "--trust-data"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0:2] for line in lines[:2]] == [["train.py", " warning"]] * 2
    assert lines[2] == ("train.py: error: the mnist train split holds 0 images: expected at least one (are its IDX "
                        "files the right ones? see --data-dir)")
    assert not out.exists()


def test_images_of_the_wrong_size_are_a_usage_error_before_any_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for split in SPLIT_FILES:
        _write_split(data, split, 3, size=32)
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist", "--data-dir", str(data), "--out", str(out), "--trust-data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: dataset 'mnist' cannot be read: ") and "(N, 28, 28)" in err, err
    assert not out.exists()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_given_as_mnist_is_named(tmp_path, capsys, monkeypatch):
    """``--dataset mnist --data-dir .../fashion-mnist`` trained on Fashion-MNIST and called it mnist."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist", "--data-dir", str(DEBIAN_FASHION), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: {DEBIAN_FASHION / 'train-labels-idx1-ubyte.gz'} is not the published mnist "
        "train-labels-idx1-ubyte: it seems to be fashion-mnist's train-labels-idx1-ubyte: pass --data-dir with the "
        "mnist files, or --trust-data to use this one anyway")
    assert not out.exists()


# -- one run per folder --------------------------------------------------------------------------------


def test_a_second_run_into_a_live_runs_folder_is_refused(tmp_path):
    """Both runs exited 0 and both said they wrote runs/same/: one's results were gone."""
    out = tmp_path / "same"
    first = _train_process(tmp_path, *SEED_RUN, "--epochs", "500", "--out", out, "--quiet")
    _wait_for((out / "checkpoint.npz").exists, first)
    second = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *SEED_RUN, "--epochs", "1", "--out", str(out),
                             "--overwrite"], capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    first.send_signal(signal.SIGTERM)
    _finish(first)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"train.py: error: --out {str(out)!r} is in use by another training run "
                                     f"(process {first.pid} since " + second.stderr.split(" since ")[1].split(")")[0]
                                     + "): wait until it ends, or choose another --out")
    assert first.returncode == 143 and _dotfiles(out) == []


def test_a_folder_with_another_runs_checkpoint_needs_resume_or_overwrite(good_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    before = (out / "checkpoint.npz").read_bytes()
    assert cli.train_main([*SEED_RUN, "--epochs", "1", "--out", str(out), "--quiet", "--seed", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: --out {str(out)!r} holds the checkpoint of another run: continue that run with --resume "
        f"{out / 'checkpoint.npz'}, choose another --out, or pass --overwrite to replace it")
    assert (out / "checkpoint.npz").read_bytes() == before
    assert cli.train_main(["--resume", str(out), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 2
    assert cli.train_main([*SEED_RUN, "--epochs", "1", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1 and _dotfiles(out) == []


# -- data-parallel: every process ends alike -----------------------------------------------------------

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode != 0,
    reason="mpi4py and mpiexec are not installed (pip install 'cnnxp[mpi]')")


def _mpi_train(tmp_path, *args) -> list[str]:
    return [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPTS / "train.py"), "--dataset", "mnist-sample",
            "--batch-size", "64", "--no-plots", "--quiet", "--augment", "0", *map(str, args)]


@needs_mpi
def test_sigterm_stops_both_processes_with_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_mpi_train(tmp_path, "--epochs", "30", "--out", out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=ROOT)
    _wait_for((out / "checkpoint.npz").exists, proc, 90)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 143, stderr
    assert stderr.count("terminated: the checkpoint of epoch") == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert _dotfiles(out) == []


def _processes_running(marker: str) -> list[int]:
    """The pids of this interpreter's processes whose command line holds ``marker`` (the ranks of a job)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and argv[0] == sys.executable.encode() and marker.encode() in b" ".join(argv):
            pids.append(int(entry.name))
    return sorted(pids)


@needs_mpi
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' pids in /proc")
def test_sigterm_to_one_process_ends_every_process_with_143(tmp_path):
    """A scheduler may signal one rank, not the launcher: the kind of stop travels with the step's
    allreduce, so the other rank also ends as terminated (143), not as interrupted (130)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_mpi_train(tmp_path, "--epochs", "30", "--out", out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=ROOT)
    _wait_for((out / "checkpoint.npz").exists, proc, 90)
    ranks = _processes_running(str(out))
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGTERM)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 143, stderr
    assert stderr.count("terminated: the checkpoint of epoch") == 1 and "interrupted" not in stderr, stderr
    assert _dotfiles(out) == []


@needs_mpi
def test_divergence_ends_both_processes_with_one_line(tmp_path):
    done = subprocess.run(_mpi_train(tmp_path, "--model", "seed", "--optimizer", "sgd", "--epochs", "2", "--lr", "1e6", "--out",
                                     tmp_path / "run"), capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path), cwd=ROOT)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: diverged at epoch 1, step 63: loss "), lines
