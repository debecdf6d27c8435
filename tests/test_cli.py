"""scripts/train.py, evaluate.py and inspect.py: errors, the offline fallback, Ctrl-C, resume and accuracy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnxp import cli
from cnnxp.backend import cuda_available, get_device
from cnnxp.checkpoint import load_checkpoint
from cnnxp.cli import common, runs
from cnnxp.cli import train as train_cli
from cnnxp.data import datasets
from cnnxp.recipes import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _script(name: str, *args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def _offline(monkeypatch, tmp_path):
    """No full MNIST anywhere, and every download fails at once."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for var in ("CNNXP_DATA", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(empty))
    monkeypatch.setitem(datasets.DATASETS["mnist"], "mirrors", ["http://127.0.0.1:9/"])


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 this is not a whole zip file")
    return path


def _error_cases(tmp_path, corrupt):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        "zero epochs": ["--epochs", "0"],
        "negative epochs": ["--epochs", "-3"],
        "epochs not a number": ["--epochs", "many"],
        "unknown model": ["--model", "resnet"],
        "unknown dataset": ["--dataset", "cifar10"],
        "unknown device": ["--device", "tpu"],
        "negative lr": ["--lr", "-0.1"],
        "seed beyond int64": ["--seed", str(2**63)],
        "infinite momentum": ["--optimizer", "sgd", "--momentum", "inf"],
        "negative weight decay": ["--weight-decay", "-1"],
        "out is a file": ["--out", a_file],
        "out below a file": ["--out", a_file / "run"],
        "missing resume": ["--resume", tmp_path / "nope.npz"],
        "corrupt resume": ["--resume", corrupt],
    }
    if not cuda_available():
        cases["cuda without a GPU"] = ["--device", "cuda"]
    return cases


def test_bad_flags_fail_with_one_line(tmp_path, corrupt):
    """Each bad value: non-zero exit, one 'train.py: error:' line on stderr, no traceback, nothing trained."""
    cases = _error_cases(tmp_path, corrupt)
    procs = {name: subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), "--dataset", "mnist-sample",
                                     *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=tmp_path)
             for name, args in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode not in (0, None), name
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"{name}: {err!r}"
        assert lines[0].startswith("train.py: error: "), f"{name}: {err!r}"
        assert "Traceback" not in err and "epoch 1" not in out, name
    assert not (tmp_path / "runs").exists()


def test_bad_flags_of_evaluate_and_inspect(tmp_path, corrupt):
    for script, args in [("evaluate.py", [tmp_path / "missing.npz"]), ("evaluate.py", [corrupt]), ("evaluate.py", []),
                         ("inspect.py", ["--index", "-1"]), ("inspect.py", ["--checkpoint", corrupt]),
                         ("inspect.py", [corrupt])]:
        proc = _script(script, *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith(f"{script}: error: ")


def test_offline_fallback_to_the_bundled_sample(tmp_path, monkeypatch, capsys):
    """One line, not one per URL tried and failed; the recipe is the sample's."""
    _offline(monkeypatch, tmp_path)
    out = tmp_path / "run"
    assert cli.train_main(["--model", "seed", "--epochs", "1", "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "train.py: full MNIST is not on this machine; downloading it ... not possible ([Errno 111] Connection "
        "refused); training on the bundled sample (--dataset mnist-sample) instead"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist-sample" and metrics["epochs"] == 1
    assert metrics["config"]["recipe"] == "seed on mnist-sample"


def test_explicit_dataset_that_cannot_be_had_is_an_error(tmp_path, monkeypatch, capsys):
    """One line in all: the downloader's lines (each URL tried, each failure) are kept back, and the first
    failure's reason is in the error (evaluate.py and inspect.py load their split alike)."""
    _offline(monkeypatch, tmp_path)
    status = cli.train_main(["--dataset", "mnist", "--model", "seed", "--epochs", "1", "--out",
                             str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines() == [
        "train.py: error: dataset 'mnist' is not available (mnist train split not found: looked for "
        "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]; not downloadable: [Errno 111] Connection "
        "refused): pass --data-dir DIR with its IDX files, set CNNXP_DATA, or use --dataset mnist-sample"]
    assert not (tmp_path / "run").exists()
    assert cli.inspect_main(["--dataset", "mnist", "--out", str(tmp_path / "maps")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inspect.py: error: dataset 'mnist' is not available (mnist "
                                                   "test split not found"), lines


def test_ctrl_c_saves_the_last_finished_epoch(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), "--dataset", "mnist-sample", "--model", "seed",
                             "--epochs", "500", "--out", str(out), "--no-plots"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.npz").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert str(out / "checkpoint.npz") in stderr and "--resume" in stderr
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.epoch >= 1 and len(ckpt.history) == ckpt.epoch
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_resume_from_the_command_line_matches_a_straight_run(tmp_path):
    """With a schedule that does not depend on the total (cosine ends at --epochs, so extending a run changes it)."""
    common = ["--dataset", "mnist-sample", "--model", "seed", "--quiet", "--no-plots", "--seed", "7",
              "--schedule", "exponential"]
    assert cli.train_main([*common, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert cli.train_main([*common, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    ckpt = tmp_path / "resumed" / "checkpoint.npz"
    assert cli.train_main(["--resume", str(ckpt), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    a = np.load(tmp_path / "straight" / "checkpoint.npz", allow_pickle=False)
    b = np.load(ckpt, allow_pickle=False)
    keys = [k for k in a.files if k.startswith(("model/", "optimizer/state."))]
    assert keys
    for k in keys:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=k)
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    # a flag that contradicts the checkpoint is refused
    assert cli.train_main(["--resume", str(ckpt), "--model", "lenet5", "--quiet"]) == 2


def test_evaluate_and_inspect_take_the_checkpoint_alike(tmp_path, one_epoch, capsys):
    """Positional or --checkpoint, a file or its run folder; two different ones, or none for evaluate.py, refused."""
    out, ckpt = one_epoch
    accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    for given in ([str(ckpt)], [str(out)], ["--checkpoint", str(ckpt)], ["--checkpoint", str(out)]):
        assert cli.evaluate_main([*given, "--batch-size", "1000"]) == 0, given
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"seed from {ckpt} (epoch 1) on mnist-sample test (1,000 images, device cpu, ")
        assert lines[1].startswith(f"test accuracy {100 * accuracy:.2f}%  loss ")
        assert cli.inspect_main([*given, "--index", "3", "--repeats", "1", "--out", str(tmp_path)]) == 0, given
        printed = capsys.readouterr().out
        assert re.search(rf"^seed \({re.escape(str(ckpt))} \(epoch 1\)\) on mnist-sample test image 3: true 0, "
                         r"predicted \d \(\d+\.\d%\)$", printed, re.M), printed
        assert "per-layer time on cpu, batch of 64, median of 1 run (" in printed
    for main, prog in ((cli.evaluate_main, "evaluate.py"), (cli.inspect_main, "inspect.py")):
        # the same checkpoint given both ways (its run folder stands for it) is one checkpoint
        extra = ["--out", str(tmp_path), "--repeats", "1"] if prog == "inspect.py" else []
        assert main([str(out), "--checkpoint", str(ckpt), *extra]) == 0, capsys.readouterr().err
        assert main([str(ckpt), "--checkpoint", f"{out}/./checkpoint.npz", *extra]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert main([str(ckpt), "--checkpoint", str(tmp_path / "other.npz")]) == 2
        assert capsys.readouterr().err.strip() == (f"{prog}: error: two checkpoints given ({str(ckpt)!r} and "
                                                   f"--checkpoint {str(tmp_path / 'other.npz')!r}): pass one")
    assert cli.evaluate_main([]) == 2
    assert capsys.readouterr().err.strip() == ("evaluate.py: error: expected a checkpoint: evaluate.py CHECKPOINT (a "
                                               "checkpoint.npz written by train.py, or the run folder holding it)")


@pytest.mark.parametrize("parser", [cli.train_parser, cli.evaluate_parser, cli.inspect_parser])
def test_help_shows_every_default(parser):
    """Every option that takes a value says its default in --help (evaluate.py's checkpoint, that it is needed)."""
    actions = [a for a in parser()._actions if a.nargs != 0]
    assert len(actions) >= 8
    for action in actions:
        assert "default: " in (action.help or "") or "(needed: " in (action.help or ""), (action.dest, action.help)
    recipe = [a.dest for a in actions if "default: the recipe of --model and --dataset, see --show-recipe" in a.help]
    assert recipe == ([*SETTINGS] if parser is cli.train_parser else [])
    if parser is cli.train_parser:  # a resumed run's model and dataset are its checkpoint's
        helps = {a.dest: a.help for a in actions}
        assert all(helps[name].endswith("with --resume, the checkpoint's)") for name in ("model", "seed")), helps
        assert helps["dataset"].endswith("; with --resume, the checkpoint's"), helps["dataset"]


@pytest.mark.parametrize(("args", "flag"), [
    (["--augment", "bogus"], "--augment"),
    (["--augment", "affine:1,2"], "--augment"),
    (["--augment", "affine:200,1,0.1"], "--augment"),
    (["--augment", "-1"], "--augment"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "-0.1"], "--label-smoothing"),
    (["--label-smoothing", "nan"], "--label-smoothing"),
    (["--label-smoothing", "much"], "--label-smoothing"),
])  # fmt: skip
def test_bad_augment_and_label_smoothing(tmp_path, monkeypatch, capsys, args, flag):
    monkeypatch.chdir(tmp_path)
    status = cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--quiet", "--no-plots", *args])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"train.py: error: argument {flag}: "), lines[0]
    assert args[1] in lines[0] and "Traceback" not in captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_augment_messages_name_the_accepted_forms(capsys):
    assert cli.train_main(["--augment", "bogus"]) == 2
    assert capsys.readouterr().err.strip() == (
        "train.py: error: argument --augment: 'bogus': expected none, N or shift:N (whole-pixel shifts), "
        "affine or affine:DEGREES,PIXELS,SCALE, flip, or several joined by + (shift:2+flip)")
    assert cli.train_main(["--label-smoothing", "1"]) == 2
    assert capsys.readouterr().err.strip() == "train.py: error: argument --label-smoothing: must be in [0, 1), got 1"


@pytest.mark.parametrize(("text", "spec"), [
    ("none", "none"), ("0", "none"), ("shift:0", "none"), ("1", "shift:1"), ("shift:3", "shift:3"),
    ("affine", "affine:12,2,0.12"), ("AFFINE:10,1.50,0.1", "affine:10,1.5,0.1"), ("affine:0,0,0", "affine:0,0,0"),
])  # fmt: skip
def test_augment_is_stored_as_its_canonical_spec(text, spec):
    assert train_cli.train_parser().parse_args(["--augment", text]).augment == spec


def test_label_smoothing_flag_and_defaults():
    assert train_cli.train_parser().parse_args(["--label-smoothing", "0.2"]).label_smoothing == 0.2
    assert train_cli.train_parser().parse_args(["--label-smoothing", "0"]).label_smoothing == 0.0
    assert train_cli.train_parser().parse_args([]).label_smoothing is None  # the default comes from the recipe
    assert cli.DEFAULTS == {"model": "lenet5", "seed": 0}  # the training settings are the recipes'
    assert set(train_cli.RESUMED_KEYS) == {"dataset", "model", "seed", *SETTINGS} - {"epochs"}
    assert train_cli.OLDER_DEFAULTS == {"label_smoothing": 0.0, "weight_decay": 0.0}


def _as_older_checkpoint(path: Path) -> None:
    """Rewrite a checkpoint as one written before --label-smoothing existed: no such key, and the
    augmentation as the old integer number of pixels."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["config"]["augment"] == "shift:1"
    for key in ("label_smoothing", "weight_decay", "recipe", "sources"):
        del meta["config"][key]
    meta["config"]["augment"] = 1
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


def test_resume_a_checkpoint_from_before_label_smoothing(tmp_path, capsys):
    """It resumes with label smoothing 0.0, what it trained with, and matches a straight run."""
    common = ["--dataset", "mnist-sample", "--model", "seed", "--quiet", "--no-plots", "--seed", "3"]
    old = ["--augment", "1", "--label-smoothing", "0", "--schedule", "exponential"]  # (cosine depends on --epochs)
    assert cli.train_main([*common, *old, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert straight["config"]["augment"] == "shift:1" and straight["config"]["label_smoothing"] == 0.0
    assert cli.train_main([*common, *old, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    ckpt = tmp_path / "resumed" / "checkpoint.npz"
    _as_older_checkpoint(ckpt)
    assert "label_smoothing" not in load_checkpoint(ckpt).config
    # a flag that contradicts what the old run did is refused, naming the flag
    capsys.readouterr()
    assert cli.train_main(["--resume", str(ckpt), "--label-smoothing", "0.1", "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: --label-smoothing 0.1 differs from the checkpoint's 0.0"), err
    assert len(err.splitlines()) == 1
    assert cli.train_main(["--resume", str(ckpt), "--augment", "2", "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: --augment shift:2 differs from the checkpoint's shift:1"), err
    assert cli.train_main(["--resume", str(ckpt), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["config"]["label_smoothing"] == 0.0 and metrics["config"]["augment"] == "shift:1"
    assert load_checkpoint(ckpt).config["label_smoothing"] == 0.0  # written back in today's form
    a = np.load(tmp_path / "straight" / "checkpoint.npz", allow_pickle=False)
    b = np.load(ckpt, allow_pickle=False)
    keys = [k for k in a.files if k.startswith("model/")]
    assert keys
    for k in keys:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=k)


def _rewrite_meta(path: Path, edit) -> None:
    """Change a checkpoint's JSON 'meta' entry in place, as a damaged or hand-edited file would be."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished one-epoch run of the notebook network on the sample: (its folder, its checkpoint)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--quiet", "--no-plots",
                           "--out", str(out)]) == 0
    return out, out / "checkpoint.npz"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["config"].update(model="resnet"), "has a bad model: expected one of 'lenet5', 'seed', 'fashion', "
                                                   "got 'resnet'"),
    (lambda m: m["config"].update(optimizer="rmsprop"), "has a bad optimizer: expected one of 'adam', 'sgd'"),
    (lambda m: m["config"].update(batch_size=0), "has a bad batch_size: expected a positive integer, got 0"),
    (lambda m: m["config"].update(lr=-1), "has a bad lr: expected a positive number, got -1"),
    (lambda m: m["config"].update(gamma=None), "has a bad gamma: expected a number in (0, 1], got None"),
    (lambda m: m["config"].update(gamma=1e300), "has a bad gamma: expected a number in (0, 1], got 1e+300"),
    (lambda m: m["config"].update(seed=-3), "has a bad seed: expected an integer in [0, 2**63), got -3"),
    (lambda m: m["config"].update(schedule="step"), "has a bad schedule: expected one of"),
    (lambda m: m.update(history=[{"epoch": 3}]), "has a bad history row 1"),
    (lambda m: m.update(history=5), "has a bad 'history' in its 'meta' entry: expected a list, got int"),
    (lambda m: m.update(model_rng=["x"]), "has a bad 'model_rng' in its 'meta' entry"),
])
def test_a_checkpoint_with_a_bad_configuration_is_refused(tmp_path, one_epoch, capsys, edit, message):
    """Every value is checked as its flag would be, by train.py, evaluate.py and inspect.py alike."""
    ckpt = tmp_path / "checkpoint.npz"
    ckpt.write_bytes(one_epoch[1].read_bytes())
    _rewrite_meta(ckpt, edit)
    for main, args in [(cli.train_main, ["--resume", str(ckpt), "--epochs", "2", "--quiet", "--no-plots"]),
                       (cli.evaluate_main, [str(ckpt)]),
                       (cli.inspect_main, ["--checkpoint", str(ckpt), "--out", str(tmp_path)])]:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_a_refused_run_removes_the_folders_it_made(tmp_path, one_epoch, capsys):
    """--out is created to check it is writable; when the run is refused later (here: a checkpoint whose
    weights do not fit its model), the empty folders go again, and a folder that existed before stays."""
    ckpt = tmp_path / "ckpt.npz"
    ckpt.write_bytes(one_epoch[1].read_bytes())
    _rewrite_meta(ckpt, lambda m: m["config"].update(model="lenet5"))  # the weights are the seed network's
    out = tmp_path / "new" / "deeper"
    for main, args in [(cli.train_main, ["--resume", str(ckpt), "--out", str(out), "--quiet"]),
                       (cli.evaluate_main, [str(ckpt), "--out", str(out)]),
                       (cli.inspect_main, ["--checkpoint", str(ckpt), "--out", str(out)])]:
        assert main(args) == 2
        assert "does not fit the model" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.train_main(["--resume", str(ckpt), "--out", str(kept), "--quiet"]) == 2
    assert kept.is_dir()


def test_runs_started_together_get_folders_of_their_own(tmp_path):
    base = tmp_path / "runs" / "mnist-sample-seed-20261129-120000"
    (first, made), (second, _), (third, _) = (runs.new_run_dir(base) for _ in range(3))
    assert [first.name, second.name, third.name] == [base.name, base.name + "-2", base.name + "-3"]
    assert all(p.is_dir() for p in (first, second, third))
    assert made == tmp_path / "runs"  # the outermost folder it created, removed again if the run stops early


def test_metrics_and_history_are_strict_json_when_training_diverges(tmp_path):
    path = tmp_path / "metrics.json"
    common.write_json(path, {"test_loss": float("nan"), "rows": [{"loss": float("inf")}, {"loss": 1.5}]})

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"test_loss": None,
                                                                   "rows": [{"loss": None}, {"loss": 1.5}]}


def test_a_checkpoint_that_cannot_be_written_ends_with_one_line(tmp_path, monkeypatch, capsys):
    """Disk full at the end of an epoch: status 1, one line naming the file and the reason, no traceback."""
    def full(path, arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_cli, "write_checkpoint", full)
    out = tmp_path / "run"
    status = cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--quiet",
                             "--no-plots", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err == (f"train.py: error: cannot write the checkpoint of epoch 1 to {str(out / 'checkpoint.npz')!r}: "
                   "No space left on device")


def test_ctrl_c_before_training_starts(tmp_path, monkeypatch, capsys, one_epoch):
    """Interrupted while loading data or building the model: status 130, one line, no traceback,
    nothing left behind; a resumed run says its checkpoint is as it was."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(train_cli, "load_data", interrupt)
    assert cli.train_main(["--dataset", "mnist-sample", "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "train.py: interrupted before training started: nothing was written"
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(train_cli.models, "build", interrupt)
    assert cli.train_main(["--dataset", "mnist-sample", "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == ("train.py: interrupted before the first epoch finished: "
                                               "no checkpoint was written")
    assert not out.exists()
    ckpt = tmp_path / "checkpoint.npz"
    ckpt.write_bytes(one_epoch[1].read_bytes())
    assert cli.train_main(["--resume", str(ckpt), "--epochs", "2", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == f"train.py: interrupted before training resumed: {ckpt} is as it was"


def test_a_runs_folder_that_cannot_be_made_is_an_error_not_a_loop(tmp_path):
    """`runs` a dangling link: mkdir says the name exists for every -2, -3, ... (it looped forever)."""
    (tmp_path / "runs").symlink_to(tmp_path / "nowhere")
    done = _script("train.py", "--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--quiet",
                   "--no-plots", cwd=tmp_path, timeout=60)  # a subprocess: the old code never returned
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("train.py: error: cannot create the run folder 'runs/mnist-sample-seed-"), err
    assert err.endswith(": File exists") and len(err.splitlines()) == 1


def test_ctrl_c_before_the_first_epoch_leaves_no_runs_folder(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_cli.models, "build", interrupt)
    assert cli.train_main(["--dataset", "mnist-sample", "--quiet", "--no-plots"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_the_last_checkpoint_write_names_the_checkpoint(tmp_path, one_epoch, capsys):
    """Resumed into a new --out with nothing left to train, the checkpoint is written once at the end;
    a failure there names that file, not the temporary one."""
    out = tmp_path / "again"
    (out / "checkpoint.npz").mkdir(parents=True)
    assert cli.train_main(["--resume", str(one_epoch[1]), "--out", str(out), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"train.py: error: cannot write {str(out / 'checkpoint.npz')!r}: Is a directory", err


def test_the_resume_hint_carries_the_flags_a_checkpoint_does_not_hold(tmp_path):
    args = train_cli.train_parser().parse_args(["--data-dir", "/data/my mnist"])
    hint = runs.resume_hint(args, get_device("cpu"), tmp_path / "checkpoint.npz")
    assert hint == f"python scripts/train.py --resume {tmp_path / 'checkpoint.npz'} --data-dir '/data/my mnist'"
    args = train_cli.train_parser().parse_args(["--data-dir", "/data", "--trust-data"])
    hint = runs.resume_hint(args, get_device("cpu"), tmp_path / "checkpoint.npz")
    assert hint == f"python scripts/train.py --resume {tmp_path / 'checkpoint.npz'} --data-dir /data --trust-data"
    hint = runs.resume_hint(args, get_device("cpu"), tmp_path / "checkpoint.npz", processes=2)  # exact on as many
    assert hint == (f"mpiexec -n 2 python -m mpi4py scripts/train.py --resume {tmp_path / 'checkpoint.npz'} "
                    "--data-dir /data --trust-data")


def test_ctrl_c_hint_of_a_run_with_trust_data(tmp_path, monkeypatch, capsys):
    """The hint after Ctrl-C is a command that works: it keeps --trust-data (the checkpoint does not hold it)."""
    real_save = train_cli._save_epoch

    def save_then_interrupt(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "_save_epoch", save_then_interrupt)
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "3", "--out", str(out),
                           "--quiet", "--no-plots", "--trust-data", "--data-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: interrupted: the checkpoint of epoch 1 is {out / 'checkpoint.npz'}; continue with: python "
        f"scripts/train.py --resume {out / 'checkpoint.npz'} --data-dir {tmp_path} --trust-data"]


def test_a_resume_with_no_plots_removes_the_feature_maps_inspect_drew(tmp_path, one_epoch, capsys):
    """inspect.py's feature_maps_<index>.png in a run folder are pictures of the old weights: they go with
    the run's own once a newer epoch is there; files that do not match feature_maps_*.png stay."""
    out = tmp_path / "run"
    out.mkdir()
    for file in one_epoch[0].iterdir():
        if file.is_file():
            (out / file.name).write_bytes(file.read_bytes())
    assert cli.inspect_main([str(out), "--index", "3", "--repeats", "1"]) == 0
    (out / "feature_maps_12.png").write_bytes(b"png")
    kept = [out / "feature_maps_notes.txt", out / "my_feature_maps_3.png"]
    for path in kept:
        path.write_text("mine")
    (out / "feature_maps_7.png").mkdir()  # a folder, not a picture: left alone
    assert (out / "feature_maps_3.png").is_file()
    capsys.readouterr()
    assert cli.train_main(["--resume", str(out), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    assert not (out / "feature_maps_3.png").exists() and not (out / "feature_maps_12.png").exists()
    assert all(path.is_file() for path in kept) and (out / "feature_maps_7.png").is_dir()
    assert (f"train.py: removed the earlier epochs' pictures from {out} (feature_maps_12.png, "
            "feature_maps_3.png): this run draws none") in capsys.readouterr().err


@pytest.mark.skipif(cuda_available(), reason="needs a machine without a usable GPU")
def test_a_missing_gpu_is_advised_with_the_flag(capsys):
    """The library says "device 'cpu'"; the command line names its own flag instead."""
    assert cli.train_main(["--device", "cuda", "--dataset", "mnist-sample", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: device 'cuda'") and err.endswith("or use the CPU (--device cpu)"), err
