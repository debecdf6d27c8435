"""scripts/gpu_benchmark.py, run on the CPU with tiny settings: the JSON it writes, its table, its errors."""

from __future__ import annotations

import importlib.util
import json
import numbers
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_benchmark.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def _numbers(value, path="$"):
    """Every number in a JSON value (booleans are not numbers here), with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, numbers.Number) and not isinstance(value, bool):
        yield path, value


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "gpu.json"
    done = _run("--device", "cpu", "--quick", "--batch-sizes", "8", "--epoch-images", "64", "--json", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_the_json_has_every_measurement(result):
    data, _ = result
    has_torch = importlib.util.find_spec("torch") is not None
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["batch_sizes"] == [8] and meta["epoch_images"] == 64 and meta["quick"]
    assert meta["tf32"]["cupy_tf32_env"] == "0"
    if has_torch:
        assert meta["tf32"]["torch_matmul_allow_tf32"] is False and meta["tf32"]["torch_cudnn_allow_tf32"] is False
    rows = data["results"]
    keys = {(r["model"], r["what"], r["framework"], r["algorithm"]) for r in rows}
    for model in ("lenet5", "fashion"):
        for algorithm in ("auto", "im2col", "toeplitz"):
            assert (model, "step", "cnnxp", algorithm) in keys
        assert (model, "epoch", "cnnxp", "auto") in keys
        if has_torch:
            assert {(model, "step", "torch", None), (model, "epoch", "torch", None)} <= keys
    assert ("lenet5", "step", "cnnxp-cpu", "auto") in keys
    assert len(rows) == len(keys) == (13 if has_torch else 9)  # 2 x (3 steps, epoch [, torch step, epoch]), CPU
    for r in rows:
        assert r["batch"] == 8
        rate = r["images_per_second"]
        assert rate["min"] <= rate["median"] <= rate["max"] and len(rate["rounds"]) >= 1
        if r["what"] == "epoch":
            assert rate["images"] == 64
        mine = r["framework"] == "cnnxp"
        assert (r["ratio_torch"] is not None) == (mine and has_torch)
        assert (r["ratio_cpu"] is not None) == (mine and r["what"] == "step" and r["model"] == "lenet5")


def test_every_number_is_positive(result):
    data, _ = result
    for path, value in _numbers({"meta": data["meta"], "results": data["results"]}):
        assert value > 0, path
    counts = data["op_counts"]
    if isinstance(counts, dict):  # array_api_strict missing: a note instead
        assert "array_api_strict" in counts["skipped"]
        return
    assert [c["model"] for c in counts] == ["lenet5", "fashion"]
    for c in counts:
        assert c["ops"] > 0 and c["kernels"] > 0 and c["ops"] == c["kernels"] + c["views"]
        assert c["to_device"] >= 0 and c["to_host"] >= 0


def test_the_table_has_a_row_per_measurement(result):
    data, stdout = result
    table = stdout.split("== results:")[-1]
    assert "TF32 off: CuPy CUPY_TF32=0" in table
    assert re.search(r"^lenet5\s+8\s+cnnxp step toeplitz\s", table, re.M)
    assert re.search(r"^fashion\s+8\s+cnnxp epoch\s", table, re.M)
    assert re.search(r"^lenet5\s+8\s+cnnxp-cpu step auto\s", table, re.M)
    assert len(re.findall(r"^(lenet5|fashion)\s+8\s", table, re.M)) == len(data["results"])


@pytest.mark.parametrize("args, message", [
    (("--batch-sizes", "8,0"), "--batch-sizes takes positive integers (comma-separated), got '8,0'"),
    (("--models", "vgg"), "--models takes lenet5 and/or fashion (comma-separated), got 'vgg'"),
    (("--epoch-images", "0"), "--epoch-images takes an integer >= 1, got 0"),
    (("--json", "/nonexistent/dir/x.json"), "--json '/nonexistent/dir/x.json': cannot write into '/nonexistent/dir'"),
    (("--device", "gpu"), "unknown device 'gpu'"),
])
def test_bad_flags_end_with_one_line(args, message):
    done = _run("--device", "cpu", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_benchmark.py: error: ") and message in lines[0]


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed: cuda may work here")
def test_cuda_without_cupy_ends_with_one_line():
    done = _run("--quick")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "gpu_benchmark.py: error: device 'cuda' needs CuPy" in done.stderr
