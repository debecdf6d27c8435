"""Data-parallel training on 2 MPI processes against one process, and what happens when things go wrong.

Each test starts ``mpiexec -n 2 python -m mpi4py <script>`` with a timeout (pytest itself is never
run under mpiexec: one rank's failed assertion would leave the other waiting). They skip where
mpi4py or mpiexec is missing; `.ci/run` installs the ``mpi`` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi_worker.py"
TRAIN = ROOT / "scripts" / "train.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))

pytestmark = pytest.mark.skipif(MPIEXEC is None or subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode,
                                reason="mpi4py and mpiexec are not installed (pip install 'cnnxp[mpi]')")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, **extra)
    return env


def mpirun(*args, ranks=2, timeout=120, **env) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def run_job(tmp_path, job: dict, ranks: int, launcher: bool = False) -> list[dict]:
    """The worker's results, one dict per rank (a plain process for ranks=1 unless ``launcher``)."""
    out = tmp_path / f"job{ranks}{'-mpiexec' if launcher else ''}"
    if ranks == 1 and not launcher:
        done = subprocess.run([sys.executable, str(WORKER), json.dumps(job), str(out)], capture_output=True,
                              text=True, timeout=120, env=_env(), cwd=ROOT)
    else:
        done = mpirun(WORKER, json.dumps(job), out, ranks=ranks)
    assert done.returncode == 0, done.stderr[-2000:]
    return [dict(np.load(f"{out}.{r}.npz")) for r in range(ranks)]


def max_rel(a: dict, b: dict) -> float:
    keys = [k for k in a if k.startswith("model/")]
    return max(float(np.max(np.abs(a[k] - b[k])) / (np.abs(a[k]).max() + 1e-30)) for k in keys)


JOBS = {  # 230 samples in batches of 64: 64, 64, 64, 38 (19 + 19 rows per process in the last)
    "lenet5-sgd-float64": ({"model": "lenet5", "optimizer": "sgd", "dtype": "float64"}, 1e-12),
    "lenet5-adam-float64": ({"model": "lenet5", "optimizer": "adam", "dtype": "float64"}, 1e-12),
    "lenet5-sgd-float32": ({"model": "lenet5", "optimizer": "sgd", "dtype": "float32"}, 1e-5),
    "lenet5-adam-float32": ({"model": "lenet5", "optimizer": "adam", "dtype": "float32"}, 1e-5),
    "fashion-adam-float64": ({"model": "fashion", "optimizer": "adam", "dtype": "float64", "augment": True}, 1e-12),
    "fashion-sgd-float32": ({"model": "fashion", "optimizer": "sgd", "dtype": "float32", "augment": True}, 1e-5),
    # 193 samples: a last global batch of 1, so rank 0 steps on no rows at all (BatchNorm synchronised over them)
    "lenet5-one-row-last": ({"model": "lenet5", "optimizer": "sgd", "dtype": "float64", "samples": 193}, 1e-12),
    "fashion-one-row-last": ({"model": "fashion", "optimizer": "sgd", "dtype": "float64", "samples": 193}, 1e-12),
}


@pytest.mark.parametrize("name", list(JOBS))
def test_two_processes_train_the_weights_of_one(tmp_path, name):
    """Global batch B on 2 processes == batch B in one: the gradient average is weighted by each process's
    rows (a short last batch stays exact), BatchNorm is synchronised, Dropout and augmentation are drawn
    for the global batch. Both processes end bit-identical, and the sharded evaluation is the whole one."""
    job, tolerance = JOBS[name]
    job = {"samples": 230, "batch": 64, "epochs": 2 if job["dtype"] == "float64" else 1, **job}
    (one,) = run_job(tmp_path, job, 1)
    first, second = run_job(tmp_path, job, 2)
    assert max_rel(one, first) < tolerance
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)  # both processes agree exactly
    np.testing.assert_allclose(first["train_loss"], one["train_loss"], rtol=tolerance)
    np.testing.assert_allclose(first["eval"], one["eval"], rtol=tolerance)
    np.testing.assert_array_equal(first["confusion"], one["confusion"])
    np.testing.assert_array_equal(first["labels"], one["labels"])  # gathered back in the loader's order
    np.testing.assert_array_equal(first["predictions"], one["predictions"])


@pytest.mark.parametrize("control", ["local_batchnorm", "seed_per_rank"])
def test_the_controls_differ(tmp_path, control):
    """The comparison above can fail: BatchNorm on each process's rows only, or a loader seed per
    process (each draws its own order), give other weights."""
    job = {"model": "fashion", "optimizer": "adam", "dtype": "float64", "samples": 230, "batch": 64, "epochs": 1,
           control: True}
    (one,) = run_job(tmp_path, {**job, control: False}, 1)
    first, _ = run_job(tmp_path, job, 2)
    assert max_rel(one, first) > 1e-6


def _train_args(out, *extra):
    return [TRAIN, "--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "64", "--no-plots", "--quiet",
            "--augment", "0", "--out", out, *extra]


def test_the_command_line_under_two_processes(tmp_path):
    """One run folder, every line printed once, world_size 2, and a checkpoint that resumes on one process."""
    done = mpirun(*_train_args(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test accuracy") == 1 and done.stdout.count("wrote ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test_accuracy"] > 0.5
    assert metrics["command"].startswith("mpiexec -n 2 python -m mpi4py scripts/train.py --dataset mnist-sample ")
    resumed = subprocess.run([sys.executable, str(TRAIN), "--resume", str(tmp_path / "run" / "checkpoint.npz"),
                              "--epochs", "2", "--quiet", "--no-plots"], capture_output=True, text=True, timeout=120,
                             env=_env(), cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--resume", "/nonexistent/checkpoint.npz"], "checkpoint '/nonexistent/checkpoint.npz' does not exist"),
    (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
])
def test_a_usage_error_ends_both_processes_with_one_line(tmp_path, extra, message):
    done = mpirun(*_train_args(tmp_path / "run"), *extra)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"train.py: error: {message}"], done.stderr


def test_an_unwritable_out_ends_both_processes_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = mpirun(*_train_args(blocker))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"train.py: error: --out {str(blocker)!r} is a file, not a directory"], done.stderr


def _error_lines(done) -> list[str]:
    return [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_a_bad_rank_timeout_is_one_line_before_mpi_starts(tmp_path, value):
    done = mpirun(*_train_args(tmp_path / "run"), CNNXP_RANK_TIMEOUT=value)
    assert done.returncode == 2
    assert _error_lines(done) == [f"train.py: error: CNNXP_RANK_TIMEOUT must be a positive number of seconds, got "
                                  f"{value!r} (unset, it is 300)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="checks the message of a machine without CuPy")
@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "cuda"], "device 'cuda' needs CuPy, which is not installed: pip install 'cnnxp[cuda12]' (CUDA 12) "
                           "or 'cnnxp[cuda13]' (CUDA 13), or use the CPU (--device cpu)"),
    (["--distributed", "nccl"], "the nccl backend needs CuPy with NCCL: pip install 'cnnxp[cuda12]' or "
                                "'cnnxp[cuda13]', or use --distributed mpi"),
])
def test_asking_two_processes_for_gpus_without_cupy_is_one_line_and_no_abort(tmp_path, extra, message):
    """Refused once MPI runs: every process finalises it and ends with 2 (no launcher's abort line)."""
    done = mpirun(*_train_args(tmp_path / "run"), *extra)
    assert done.returncode == 2
    assert _error_lines(done) == [f"train.py: error: {message}"]
    assert not (tmp_path / "run").exists()


def _mnist_files(folder: Path, seed: int) -> Path:
    from cnnxp.data.idx import write_idx

    rng = np.random.default_rng(seed)
    for images, labels, n in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 96),
                              ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 32)):
        write_idx(folder / f"{images}.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{labels}.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return folder


@pytest.mark.parametrize("differ", ["data", "settings"])
def test_processes_that_read_different_data_or_settings_stop_before_training(tmp_path, differ):
    """Node-local copies that differ, or a checkpoint that is not the same file everywhere, would have
    the processes step out of time until the rank timeout: they compare what they read first."""
    dirs = [_mnist_files(tmp_path / f"data{r}", seed=r if differ == "data" else 0) for r in range(2)]
    cmd = []
    for rank in range(2):
        extra = ["--dataset", "mnist", "--trust-data", "--data-dir", dirs[rank], "--lr", "0.01" if rank == 0 or
                 differ == "data" else "0.02"]
        cmd += [":"] * (rank > 0) + ["-n", "1", sys.executable, "-m", "mpi4py", *map(str, _train_args(tmp_path / "run",
                                                                                                    *extra))]
    done = subprocess.run([MPIEXEC, *cmd], capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert done.returncode == 2, done.stderr
    errors = [line for line in _error_lines(done) if "error" in line]
    if differ == "data":
        sums = re.fullmatch(r"train\.py: error: the processes would train on different data: rank 0 read mnist \(96 "
                            r"training and 32 test images, checksum (\w+)\), rank 1 mnist \(96 training and 32 test "
                            r"images, checksum (\w+)\); every process must read the same dataset and checkpoint "
                            r"\(--dataset, --data-dir, --resume on a shared disk\)", errors[0])
        assert len(errors) == 1 and sums and sums[1] != sums[2], errors
    else:
        assert errors == ["train.py: error: the processes would train on different settings: rank 0 and rank 1 "
                          "differ in lr; every process must read the same dataset and checkpoint (--dataset, "
                          "--data-dir, --resume on a shared disk)"]
    assert not (tmp_path / "run").exists()


def test_help_is_printed_once(tmp_path):
    done = mpirun(TRAIN, "--help")
    assert done.returncode == 0 and done.stdout.count("usage: train.py") == 1


@pytest.mark.parametrize("fault", ["raise", "stall", "stall_before"])
def test_a_failing_or_stalled_process_ends_the_job_within_seconds(tmp_path, fault):
    job = {"model": "lenet5", "optimizer": "sgd", "dtype": "float32", "samples": 230, "batch": 64, "epochs": 2,
           "fault": fault}
    start = time.monotonic()
    done = mpirun(WORKER, json.dumps(job), tmp_path / "out", timeout=90, CNNXP_RANK_TIMEOUT="3")
    assert done.returncode != 0, done
    assert time.monotonic() - start < 45
    said = done.stderr + done.stdout
    if fault == "raise":
        assert "rank 1 fails on purpose" in said
    else:
        what = "an exchange of objects" if fault == "stall_before" else "an allreduce"
        assert f"no answer from the other ranks in {what} for 3 s (one stalled or died): ending the job" in said


def test_ctrl_c_stops_both_processes_after_the_same_step(tmp_path):
    """SIGINT to mpiexec reaches every process; they agree at the next step, rank 0 saves the last
    finished epoch, all end with status 130."""
    args = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", *map(str, _train_args(tmp_path / "run"))]
    args[args.index("--epochs") + 1] = "30"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("interrupted: the checkpoint of epoch") == 1, err
    assert "continue with: mpiexec -n 2 python -m mpi4py scripts/train.py --resume" in err


def test_without_mpi_one_process_trains_and_asking_for_more_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import cnnxp, cnnxp.distributed as d\n"
            "assert 'mpi4py' not in sys.modules or sys.modules['mpi4py'] is None\n"
            "assert d.init().size == 1\n"
            "import os; os.environ['PMI_SIZE'] = '2'\n"
            "try:\n    d.init()\nexcept d.DistributedUnavailableError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "pip install 'cnnxp[mpi]'" in done.stdout
    plain = subprocess.run([sys.executable, "-c", "import sys, cnnxp; print('mpi4py' in sys.modules)"],
                           capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert plain.stdout.strip() == "False"  # import cnnxp never starts MPI


def test_every_dtype_is_summed_and_broadcast_on_the_host(tmp_path):
    """The collectives the GPU tests below check on CuPy arrays, here on NumPy ones over MPI."""
    job = {"model": "lenet5", "optimizer": "sgd", "dtype": "float32", "samples": 64, "batch": 64, "epochs": 1,
           "collectives": True}
    first, second = run_job(tmp_path, job, 2)
    for dtype in ("float32", "float64", "int32", "int64"):
        for got in (first, second):
            np.testing.assert_array_equal(got[f"allreduce/{dtype}"], got[f"expected/{dtype}"])
            np.testing.assert_array_equal(got[f"broadcast/{dtype}"], np.full(1000, 7, dtype))
            assert got[f"allreduce/{dtype}"].dtype == np.dtype(dtype)


# -- on a GPU (pytest -m cuda; scripts/check_gpu.sh runs them where a GPU is lent) ---------------------


def _gpu():
    from cnnxp.backend import cuda_available

    if not cuda_available():
        pytest.skip("CuPy with a CUDA GPU is not available on this machine")


@pytest.mark.cuda
def test_nccl_with_one_process_sums_broadcasts_and_trains_as_one_process(tmp_path):
    """NCCL's bootstrap (its id broadcast over MPI), every dtype it is given, on a stream of its own;
    and training through it (the optimizer wrapped even alone) as one process trains."""
    _gpu()
    job = {"model": "lenet5", "optimizer": "sgd", "dtype": "float32", "samples": 230, "batch": 64, "epochs": 1,
           "device": "cuda"}
    (one,) = run_job(tmp_path, job, 1)
    (nccl,) = run_job(tmp_path, {**job, "backend": "nccl", "wrap": True, "collectives": True}, 1, launcher=True)
    for dtype in ("float32", "float64", "int32", "int64"):
        np.testing.assert_array_equal(nccl[f"allreduce/{dtype}"], nccl[f"expected/{dtype}"])
        np.testing.assert_array_equal(nccl[f"broadcast/{dtype}"], np.full(1000, 7, dtype))
    assert max_rel(one, nccl) < 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_processes_sharing_one_gpu_train_the_weights_of_one(tmp_path, dtype):
    """Two processes on cuda:0, their CuPy gradients summed by MPI through the host (the path of any
    MPI that does not read GPU memory), against one process on the GPU."""
    _gpu()
    job = {"model": "fashion", "optimizer": "adam", "dtype": dtype, "samples": 230, "batch": 64, "epochs": 1,
           "device": "cuda:0", "augment": True, "collectives": True}
    (one,) = run_job(tmp_path, {**job, "collectives": False}, 1)
    first, second = run_job(tmp_path, job, 2)
    for dtype_ in ("float32", "float64", "int32", "int64"):
        np.testing.assert_array_equal(first[f"allreduce/{dtype_}"], first[f"expected/{dtype_}"])
        np.testing.assert_array_equal(second[f"broadcast/{dtype_}"], np.full(1000, 7, dtype_))
    assert max_rel(one, first) < (1e-12 if dtype == "float64" else 1e-5)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    np.testing.assert_array_equal(first["confusion"], one["confusion"])


def _rank_pid(marker: str, rank: int) -> int | None:
    """The process of ``rank`` whose command line holds ``marker`` (its launcher's environment says its rank)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmd and b"mpi4py" in cmd and f"PMI_RANK={rank}".encode() in env:
            return int(pid)
    return None


def _start_train(tmp_path, epochs: int = 30, **env):
    args = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", *map(str, _train_args(tmp_path / "run"))]
    args[args.index("--epochs") + 1] = str(epochs)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env), cwd=ROOT)


def _wait_for_file(path: Path, proc, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate(timeout=30)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes in /proc")
def test_ctrl_c_while_a_process_is_stalled_ends_the_job_after_the_grace(tmp_path):
    """The rank timeout is long (300 s by default); a signal shortens the wait to STOP_GRACE seconds."""
    from cnnxp.distributed import STOP_GRACE

    proc = _start_train(tmp_path)
    _wait_for_file(tmp_path / "run" / "checkpoint.npz", proc)
    stalled = _rank_pid(str(tmp_path / "run"), 1)
    assert stalled is not None
    os.kill(stalled, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=STOP_GRACE + 40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGKILL)
    assert proc.returncode != 0
    assert STOP_GRACE - 1 < time.monotonic() - start < STOP_GRACE + 30
    assert (f"no answer from the other ranks in an allreduce for {STOP_GRACE:g} s after the stop was asked for "
            "(one stalled or died): ending the job") in err


def test_a_checkpoint_that_cannot_be_written_ends_both_processes_with_one_line(tmp_path):
    """Rank 0 alone writes; the others learn of its failure at the next step and all end with 1, MPI
    finalised (no launcher's abort line)."""
    proc = _start_train(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    _wait_for_file(checkpoint, proc)
    checkpoint.unlink()
    checkpoint.mkdir()  # epoch 2's checkpoint cannot replace a folder
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = _error_lines(subprocess.CompletedProcess([], 1, out, err))
    assert len(lines) == 1 and lines[0].startswith(
        f"train.py: error: cannot write the checkpoint of epoch 2 to {str(checkpoint)!r}: Is a directory"), lines


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes in /proc")
def test_a_process_stalled_while_rank_0_writes_its_last_files_ends_the_job(tmp_path):
    """Rank 1 waits for rank 0's last files in an exchange of objects and stalls there: rank 0's side of
    the exchange is non-blocking too, so the rank timeout ends the job instead of a wait without end."""
    proc = _start_train(tmp_path, epochs=2, CNNXP_RANK_TIMEOUT="3")
    _wait_for_file(tmp_path / "run" / "history.json", proc)  # written after epoch 1
    stalled = None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if (tmp_path / "run" / "metrics.json").exists():  # rank 0 writes its last files: rank 1 waits for them
            stalled = _rank_pid(str(tmp_path / "run"), 1)
            if stalled is not None:
                os.kill(stalled, signal.SIGSTOP)
            break
        time.sleep(0.005)
    try:
        start = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if stalled is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stalled, signal.SIGKILL)
    if stalled is None:
        pytest.fail(f"rank 1 was not found while rank 0 wrote its files: {err}")
    assert time.monotonic() - start < 30
    if proc.returncode != 0:  # stopped in time: the job ends on the timeout (waiting for its last files, or
        said = re.search(r"no answer from the other ranks (in an exchange of objects|at the end) for 3 s", err)
        assert said, err  # in MPI's finalisation), not never


def test_a_picture_that_cannot_be_written_before_training_ends_both_processes_with_one_line(tmp_path):
    (tmp_path / "run" / "samples.png").mkdir(parents=True)
    args = [a for a in _train_args(tmp_path / "run") if a != "--no-plots"]
    done = mpirun(*args)
    assert done.returncode == 1
    assert _error_lines(done) == [f"train.py: error: cannot write {str(tmp_path / 'run' / 'samples.png')!r}: "
                                  "Is a directory"]


def test_a_process_that_stops_before_mpi_starts_ends_the_whole_job(tmp_path):
    """The others would wait for it in MPI's start-up: ``abort_before_start`` starts MPI and aborts."""
    stops = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from cnnxp.cli.parallel import abort_before_start; "
             "abort_before_start(130, ['--epochs', '1'])")
    waits = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    start = time.monotonic()
    done = subprocess.run([MPIEXEC, "-n", "1", sys.executable, "-c", stops, ":", "-n", "1", sys.executable, "-c", waits],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert done.returncode != 0 and time.monotonic() - start < 30


def test_a_first_signal_after_a_failed_write_asks_for_a_stop_and_a_second_raises(monkeypatch):
    """A failed write asks every process to stop (kind "fail"); the user's first Ctrl-C is still a first
    one (noted, agreed at the next step, "fail" keeping precedence), the second raises at once."""
    from cnnxp import distributed, stopping
    from cnnxp.cli.stop import StopSignals

    monkeypatch.setattr(stopping, "_stop", {"requested": None, "agreed": None, "at": None})

    class TwoProcesses:
        size = 2

    stop = StopSignals(TwoProcesses())
    distributed.request_stop("fail")
    stop._handle(signal.SIGINT, None)
    assert distributed.requested_stop() == "fail"
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_every_process_ends_with_the_agreed_status_and_no_launcher_banner(tmp_path):
    """``exit_together`` finalises MPI and leaves through C's exit, whose handlers tell the launcher the
    process finished: leaving without them, the launcher took a healthy end for a crash (status 9)."""
    script = tmp_path / "end.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                      "from cnnxp import distributed\n"
                      "comm = distributed.init(); comm.barrier(); comm.exit_together(int(sys.argv[1]))\n")
    for status in (0, 2, 0, 0, 2, 0):
        done = mpirun(script, status, ranks=3, timeout=60)
        assert done.returncode == status, done.stderr
        assert "BAD TERMINATION" not in done.stdout + done.stderr


def test_a_process_of_a_job_without_mpi_is_not_made_to_join_it():
    """Under ``--distributed off`` no process joins MPI: stopping one must not start it (the others
    would never come, and it would wait in MPI's start-up for ever)."""
    code = ("import sys; from cnnxp.cli.parallel import abort_before_start\n"
            "abort_before_start(130, ['--epochs', '1', '--distributed', 'off'])\n"
            "abort_before_start(130, ['--distributed=off'])\n"
            "print('mpi4py.MPI' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=_env(PMI_SIZE="2", PMI_RANK="1"), cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
