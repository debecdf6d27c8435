"""scripts/benchmark.py: each library timed in a worker process of its own, the JSON and table it writes, its errors."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_workers_time_both_libraries_and_the_json_holds_every_round(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    done = _run("--models", "seed", "--batch-sizes", "8", "--rounds", "2", "--warmup", "0",
                "--round-seconds", "0.02", "--pause", "0", "--no-loop", "--no-memory", "--json", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["device"] == "cpu"
    rows = data["results"]
    assert [(r["model"], r["batch"], r["mode"]) for r in rows] == [("seed", 8, "train"), ("seed", 8, "infer")]
    for r in rows:
        for name in ("cnnxp", "torch"):
            assert len(r[name]["rounds"]) == 2 and all(rate > 0 for rate in r[name]["rounds"])
            assert r[name]["min"] <= r[name]["median"] <= r[name]["max"]
        assert r["ratio_torch"] == pytest.approx(r["cnnxp"]["median"] / r["torch"]["median"])
    table = done.stdout.split("load average")[-1]
    assert re.search(r"^seed\s+8\s+train\s", table, re.M) and re.search(r"^seed\s+8\s+infer\s", table, re.M)
    head = table.splitlines()[1]
    assert re.split(r"\s{2,}", head.strip()) == ["model", "batch", "mode", "cnnxp img/s", "PyTorch img/s",
                                                  "cnnxp vs PyTorch"]
    assert re.search(r"^seed\s+8\s+train\s.*\s\d+\.\d\dx$", table, re.M)  # every ratio as 1.23x
    assert "seed b8 train: cnnxp" in done.stderr and "b8" not in done.stdout  # progress apart from the one table


@pytest.mark.parametrize("args, message", [
    (("--models", "vgg"), "--models takes seed and/or lenet5 (comma-separated), got 'vgg'"),
    (("--batch-sizes", "64,0"), "--batch-sizes takes positive integers (comma-separated), got '64,0'"),
    (("--rounds", "0"), "--rounds takes an integer >= 1, got 0"),
    (("--warmup", "-1"), "--warmup takes an integer >= 0, got -1"),
    (("--round-seconds", "nan"), "--round-seconds takes a finite number >= 0, got nan"),
    (("--pause", "-0.5"), "--pause takes a finite number >= 0, got -0.5"),
    (("--loop-images", "0"), "--loop-images takes an integer >= 1, got 0"),
    (("--threads", "0"), "--threads takes an integer >= 1, got 0"),
    (("--round-seconds", "inf"), "--round-seconds takes a finite number >= 0, got inf"),
    (("--batch-sizes", "\u00b2"), "--batch-sizes takes positive integers (comma-separated), got '\u00b2'"),
    (("--json", "/nonexistent/dir/x.json"), "--json '/nonexistent/dir/x.json': cannot write into '/nonexistent/dir'"),
    (("--device", "gpu"), "benchmark.py: error: unknown device 'gpu': expected 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    done = _run(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert "PyTorch" not in done.stderr  # nothing else said before the error


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed: cuda may work here")
def test_unavailable_device_exits_1_without_a_traceback():
    done = _run("--device", "cuda", "--no-torch", "--no-loop", "--no-memory")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "benchmark.py: device 'cuda' needs CuPy" in done.stderr


def test_both_libraries_train_from_the_same_weights_and_every_round_starts_from_them(monkeypatch):
    """Same weights, data and optimizer: the two contenders follow one trajectory (to rounding), and
    `reset` (run before every round) returns each to the initial weights with no momentum."""
    pytest.importorskip("torch")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    spec = importlib.util.spec_from_file_location("benchmark_under_test", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch = bench.load_torch()
    for model_name in ("seed", "lenet5"):
        ours, theirs = bench.CnnxpRunner(model_name, 8, "cpu"), bench.TorchRunner(model_name, 8, "cpu")
        start = [p.detach().numpy().copy() for p in theirs.model.parameters()]
        for mine, w in zip(bench.initial_weights(model_name), start, strict=True):
            assert (mine == w).all()
        for _ in range(5):
            ours.train_step()
            theirs.train_step()
        ours_now = [bench.cnnxp.to_numpy(layer.params[name]) for _, layer, name in ours.model.parameter_slots()]
        theirs_now = [p.detach().numpy() for p in theirs.model.parameters()]
        for a, b, w in zip(ours_now, theirs_now, start, strict=True):
            assert not (b == w).all()  # training moved them
            assert abs(a - b).max() < 1e-5
        ours.reset()
        theirs.reset()
        assert ours.opt.state == {} and theirs.opt.state_dict()["state"] == {}
        for key, layer, name in ours.model.parameter_slots():
            assert (bench.cnnxp.to_numpy(layer.params[name]) == ours.initial[key]).all()
        for p, w in zip(theirs.model.parameters(), start, strict=True):
            assert torch.equal(p.detach(), torch.from_numpy(w))


def test_a_short_loop_and_a_device_spelled_in_capitals(tmp_path):
    """--loop-images below the three rounds, and "CPU" (cnnxp's spelling is "cpu") run and say so."""
    out = tmp_path / "b.json"
    done = _run("--device", "CPU", "--models", "seed", "--batch-sizes", "4", "--rounds", "1", "--warmup", "0",
                "--round-seconds", "0.02", "--pause", "0", "--loop-images", "2", "--no-torch", "--no-memory",
                "--json", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu" and len(data["results"][0]["loop"]["rounds"]) == 2
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_a_worker_that_dies_ends_the_run_with_one_line(tmp_path):
    """A PyTorch worker exiting at startup (a broken install, say): one line, status 1, no traceback."""
    pytest.importorskip("torch")
    import os

    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if '--_worker' in sys.argv and sys.argv[sys.argv.index('--_worker') + 1].startswith('torch'):\n"
        "    os._exit(3)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "seed", "--batch-sizes", "4", "--rounds", "1",
                           "--warmup", "0", "--round-seconds", "0.02", "--no-loop", "--no-memory"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("benchmark.py: the torch on cpu worker exited (status 3); "
                                                   "its error is above")


def test_count_ops_prints_each_preset_within_its_budget(tmp_path):
    """--count-ops: the GPU's cost model as a table (and JSON), the same counts at both batch sizes."""
    pytest.importorskip("array_api_strict")
    out = tmp_path / "counts.json"
    done = _run("--count-ops", "--batch-sizes", "8,512", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["count_ops"]
    assert [(r["model"], r["batch"]) for r in rows] == [(m, b) for m in ("lenet5", "fashion", "seed") for b in (8, 512)]
    for small, large in zip(rows[::2], rows[1::2], strict=True):
        assert {k: small[k] for k in ("ops", "kernels", "views")} == {k: large[k] for k in ("ops", "kernels", "views")}
        assert small["to_device"] == small["to_host"] == 0
    assert rows[0]["kernels"] <= 150 and rows[2]["kernels"] <= 300
    lenet = next(line for line in done.stdout.splitlines() if line.startswith("lenet5"))
    assert re.match(rf"lenet5\s+SGD\s+8\s+{rows[0]['ops']}\s+{rows[0]['kernels']}\s+{rows[0]['views']}\s+0\s+0\s+150/100", lenet)
