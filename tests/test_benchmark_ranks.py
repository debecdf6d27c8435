"""scripts/benchmark.py --ranks N (scripts/benchmark_ranks.py): every configuration timed, the JSON and table, its errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=ROOT)


def _expected() -> list[str]:
    names = ["cnnxp-1t", "cnnxp-Nt", "cnnxp-mpi"]
    if HAVE_TORCH:
        import torch.distributed as dist

        names += ["torch-Nt"] + (["torch-ddp"] if dist.is_available() and dist.is_gloo_available() else [])
    return names


@pytest.mark.skipif(not HAVE_MPI, reason="mpi4py and mpiexec are not installed (pip install 'cnnxp[mpi]')")
def test_every_configuration_is_timed_and_the_json_holds_every_round(tmp_path):
    out = tmp_path / "ranks.json"
    done = _run("--ranks", "2", "--models", "seed", "--batch-sizes", "8", "--rounds", "1", "--round-seconds", "0.05",
                "--repeats", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "results", "launches", "failures", "epoch"}
    assert data["failures"] == [] and data["epoch"] is None and data["meta"]["ranks"] == 2
    expected = _expected()
    rows = {r["config"]: r for r in data["results"]}
    assert sorted(rows) == sorted(expected)
    for r in rows.values():
        assert (r["model"], r["batch"]) == ("seed", 8)
        assert len(r["rounds"]) == 1 and all(rate > 0 for rate in r["rounds"])
        assert 0 < r["min"] <= r["median"] <= r["max"]
        assert r["speedup"] == pytest.approx(r["median"] / rows["cnnxp-1t"]["median"])
        assert (r["efficiency"] is None) == (r["processes"] == 1)
        if "torch-Nt" in rows:
            assert r["ratio_torch"] == pytest.approx(r["median"] / rows["torch-Nt"]["median"])
    assert rows["cnnxp-1t"]["threads"] == 1 and rows["cnnxp-Nt"]["threads"] == 2
    launches = {launch["config"]: launch for launch in data["launches"]}
    assert sorted(launches) == sorted(expected)
    assert launches["cnnxp-1t"]["threads_seen"]["pools"].get("openblas", 1) == 1
    for launch in launches.values():
        (cell,) = launch["cells"]
        assert cell["steps"] >= 1 and len(cell["rates"]) == 1
    assert "launch 1/1" in done.stderr and "launch 1/1" not in done.stdout  # progress on stderr, the table on stdout
    table = done.stdout.split("load average")[-1]
    for name in expected:
        label = data["meta"]["configurations"][name]["label"]
        assert re.search(rf"^seed\s+8\s+{re.escape(label)}\s", table, re.M), (label, table)


@pytest.mark.parametrize("args, message", [
    (("--ranks", "0"), "--ranks takes an integer >= 2 (processes to compare with one), got 0"),
    (("--ranks", "1"), "--ranks takes an integer >= 2 (processes to compare with one), got 1"),
    (("--ranks", "x"), "argument --ranks: invalid int value: 'x'"),
    (("--rounds", "1.5"), "argument --rounds: invalid int value: '1.5'"),
    (("--ranks", str(CORES + 1), "--batch-sizes", str(8 * (CORES + 1))),
     f"--ranks {CORES + 1} is more than this machine's {CORES} cores: the timings would measure processes waiting "
     f"for a core; give at most {CORES}"),
    (("--ranks", "2", "--batch-sizes", "64,63"),
     "--batch-sizes 63 cannot be split evenly among --ranks 2 processes: give multiples of 2"),
    (("--ranks", "2", "--repeats", "0"), "--repeats takes an integer >= 1, got 0"),
    (("--ranks", "2", "--threads", "1"), "--ranks times the CPU with thread counts of its own: leave out --threads"),
    (("--epoch",), "--epoch goes with --ranks N"),
    (("--repeats", "3", "--epoch"), "--epoch and --repeats go with --ranks N"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    done = _run(*args, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"benchmark.py: error: {message}"]


def test_the_file_runs_on_its_own_and_refuses_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_ranks.py"), "--ranks", "3"],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "benchmark_ranks.py: error: --batch-sizes 64,256 cannot be split evenly among --ranks 3 processes: "
        "give multiples of 3"]


def test_a_json_that_names_a_folder_is_refused_before_timing(tmp_path):
    done = _run("--ranks", "2", "--json", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"benchmark.py: error: --json {str(tmp_path)!r} is a folder: give a "
                                                "file name"]


def test_without_mpiexec_ranks_is_refused_in_one_line(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_ranks_t", ROOT / "scripts" / "benchmark_ranks.py")
    ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ranks)
    monkeypatch.setattr(ranks, "find_mpiexec", lambda: None)
    args = ranks.parse_args(["--ranks", "2", "--no-torch"])
    assert ranks.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "benchmark.py: error: --ranks 2 needs mpi4py and mpiexec: pip install 'cnnxp[mpi]'"]


def _workers_of(parent: int) -> list[int]:
    """The benchmark workers started by process ``parent``'s launches (found by their command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--_worker" in cmd and any(f"cnnxp-ranks-{parent}-".encode() in part for part in cmd):
            found.append(int(pid))
    return found


@pytest.mark.skipif(not HAVE_MPI or not os.path.isdir("/proc"), reason="needs mpiexec and /proc")
def test_ctrl_c_ends_the_benchmark_and_every_process_it_started(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--ranks", "2", "--no-torch", "--models", "lenet5",
                             "--batch-sizes", "64", "--rounds", "40", "--warmup", "0", "--repeats", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 60
    while not _workers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers_of(proc.pid), "no worker started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "benchmark.py: interrupted" and "Traceback" not in err
    time.sleep(0.5)
    assert _workers_of(proc.pid) == []


@pytest.mark.parametrize("failures_in_a_row", [1, 2])
def test_a_failed_launch_is_tried_once_more(monkeypatch, capsys, failures_in_a_row):
    """A launcher's start-up that fails now and then (torchrun's rendezvous) costs one more launch; a
    second failure in a row is reported, with the line that says what went wrong."""
    spec = importlib.util.spec_from_file_location("benchmark_ranks_r", ROOT / "scripts" / "benchmark_ranks.py")
    ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ranks)
    calls = []

    def launch(cmd, env, timeout):
        calls.append(cmd)
        if len(calls) <= failures_in_a_row:
            return "exit status 1: RuntimeError: the rendezvous timed out", 0.1
        with open(cmd[cmd.index("--_worker") + 1]) as f:
            out = json.load(f)["out"]
        with open(out, "w") as f:
            json.dump({"cells": [{"model": "seed", "batch": 8, "steps": 1, "rates": [1.0]}], "threads_seen": {}}, f)
        return None, 0.1

    monkeypatch.setattr(ranks, "launch", launch)
    monkeypatch.setattr(ranks, "runnable", lambda config, found: config["label"].startswith("torch DDP"))
    args = ranks.parse_args(["--ranks", "2", "--models", "seed", "--batch-sizes", "8", "--repeats", "1"])
    with tempfile.TemporaryDirectory() as tmp:
        launches, failed = ranks.run_steps(args, {"mpiexec": None, "torch": "x", "gloo": True}, tmp)
    err = capsys.readouterr().err
    assert "failed, trying it once more: exit status 1: RuntimeError: the rendezvous timed out" in err
    assert len(calls) == 2
    if failures_in_a_row == 1:
        assert [launch["config"] for launch in launches] == ["torch-ddp"] and failed == []
    else:
        assert launches == [] and [f["error"] for f in failed] == ["exit status 1: RuntimeError: the rendezvous "
                                                                   "timed out"]


def test_a_failed_launch_is_said_by_its_error_line_not_a_banner():
    spec = importlib.util.spec_from_file_location("benchmark_ranks_l", ROOT / "scripts" / "benchmark_ranks.py")
    ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ranks)
    code = ("import sys; print('RuntimeError: the store could not start', file=sys.stderr); "
            "print('  root cause: see above', file=sys.stderr); print('=' * 40, file=sys.stderr); sys.exit(1)")
    problem, _ = ranks.launch([sys.executable, "-c", code], _env(), timeout=60)
    assert problem == "exit status 1: RuntimeError: the store could not start"
