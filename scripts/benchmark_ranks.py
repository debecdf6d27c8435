"""Data-parallel training speed: cnnxp on N MPI processes against one process and PyTorch (threads, DDP).

For each model (``seed``: the notebook's network, ``lenet5``) and global batch it times training
steps (forward, softmax cross-entropy, backward, SGD lr 0.01 momentum 0.9) of five configurations,
each in process(es) of its own:

1. cnnxp, one process, 1 BLAS thread (the scaling baseline);
2. cnnxp, one process, N threads (as users run it);
3. cnnxp, N processes (``mpiexec -n N python -m mpi4py``), 1 thread each, `cnnxp.distributed.DistributedOptimizer`;
4. PyTorch, one process, ``torch.set_num_threads(N)``;
5. PyTorch DDP (gloo), N processes (``python -m torch.distributed.run``), 1 thread each.

Every configuration trains the same network from the same weights (cnnxp's preset, seed 0, copied
into PyTorch's modules, as scripts/benchmark.py does) on one fixed random batch; the N-process
configurations give each process batch/N rows of it. A launch times every (model, batch) cell:
calibration, warm-up rounds, then ``--rounds`` rounds of about ``--round-seconds``; rank 0 decides
the step count and broadcasts it, every round starts from the initial weights with a fresh
optimizer (momentum on a fixed batch decays into slow subnormals otherwise), with a barrier before
and after the timed steps; rank 0's clock gives images/s = global batch * steps / seconds. The
configurations' launches alternate (the list forward, then backward, ``--repeats`` times), so
background load hits them alike; the table gives the median and min-max over every round.

``--epoch`` also trains one real Fashion-MNIST LeNet-5 epoch: ``scripts/train.py`` on N processes and
in one process (``images_per_second`` of its metrics.json) against a plain PyTorch loop with N threads.

    python scripts/benchmark.py --ranks 2 [--models ...] [--batch-sizes ...] [--json out.json] [--epoch]
    python scripts/benchmark_ranks.py --ranks 2 ...          # the same
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# This checkout's cnnxp, not scripts/ on the path (scripts/inspect.py would shadow the standard library).
_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SCRIPT = os.path.abspath(__file__)
TRAIN = os.path.join(_HERE, "train.py")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
LR, MOMENTUM, MEAN, STD = 0.01, 0.9, 0.1307, 0.3081
EPOCH_BATCH = 64
CONFIGS = ("cnnxp-1t", "cnnxp-Nt", "cnnxp-mpi", "torch-Nt", "torch-ddp")
EPOCH_CONFIGS = ("train-mpi", "train-Nt", "torch-Nt")


# -- arguments ---------------------------------------------------------------------------------------


def check(args) -> str | None:
    """What is wrong with the arguments of a ``--ranks`` run (one line), or None."""
    if not (isinstance(args.ranks, int) and args.ranks >= 2):
        return f"--ranks takes an integer >= 2 (processes to compare with one), got {args.ranks}"
    if args.repeats < 1:
        return f"--repeats takes an integer >= 1, got {args.repeats}"
    odd = [b for b in args.batch_sizes.split(",") if int(b) % args.ranks]
    if odd:
        return (f"--batch-sizes {','.join(odd)} cannot be split evenly among --ranks {args.ranks} processes: "
                f"give multiples of {args.ranks}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.ranks > cores:
        return (f"--ranks {args.ranks} is more than this machine's {cores} cores: the timings would measure "
                f"processes waiting for a core; give at most {cores}")
    if args.json is not None and os.path.isdir(args.json):
        return f"--json {args.json!r} is a folder: give a file name"
    return None


class OneLineParser(argparse.ArgumentParser):  # scripts/benchmark.py's too
    def error(self, message):  # one line, not argparse's usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    """The flags when this file runs on its own (scripts/benchmark.py --ranks N hands over the same ones)."""
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="processes (and threads) N (default 2)")
    p.add_argument("--models", default="seed,lenet5", help="comma-separated: seed, lenet5")
    p.add_argument("--batch-sizes", default="64,256", help="global batch sizes, comma-separated (default 64,256)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per launch (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--round-seconds", type=float, default=0.5, help="approximate length of a round (default 0.5)")
    p.add_argument("--repeats", type=int, default=2, help="launches of every configuration, alternating (default 2)")
    p.add_argument("--epoch", action="store_true", help="also a full Fashion-MNIST LeNet-5 epoch: train.py and PyTorch")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--json", default=None, help="write every round here")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_epoch_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker or args._epoch_worker:
        return args
    models = [m for m in args.models.split(",") if m not in ("seed", "lenet5")]
    if models:
        p.error(f"--models takes seed and/or lenet5 (comma-separated), got {', '.join(map(repr, models))}")
    if not all(b.strip().isascii() and b.strip().isdigit() and int(b) > 0 for b in args.batch_sizes.split(",")):
        p.error(f"--batch-sizes takes positive integers (comma-separated), got {args.batch_sizes!r}")
    for flag, value, least in (("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0),
                               ("--round-seconds", args.round_seconds, 0)):
        if not least <= value < math.inf:
            p.error(f"{flag} takes a number >= {least}, got {value}")
    folder = os.path.dirname(os.path.abspath(args.json or "."))
    if args.json and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        p.error(f"--json {args.json!r}: cannot write into {os.path.dirname(os.path.abspath(args.json))!r}")
    problem = check(args)
    if problem:
        p.error(problem)
    return args


# -- the configurations and what they need ----------------------------------------------------------


def configurations(n: int) -> dict[str, dict]:
    s = "es" if n > 1 else ""
    return {
        "cnnxp-1t": {"framework": "cnnxp", "launcher": "python", "processes": 1, "threads": 1,
                     "label": "cnnxp, 1 process, 1 thread"},
        "cnnxp-Nt": {"framework": "cnnxp", "launcher": "python", "processes": 1, "threads": n,
                     "label": f"cnnxp, 1 process, {n} threads"},
        "cnnxp-mpi": {"framework": "cnnxp", "launcher": "mpiexec", "processes": n, "threads": 1,
                      "label": f"cnnxp, {n} process{s} (mpiexec), 1 thread each"},
        "torch-Nt": {"framework": "torch", "launcher": "python", "processes": 1, "threads": n,
                     "label": f"torch, 1 process, {n} threads"},
        "torch-ddp": {"framework": "torch", "launcher": "torchrun", "processes": n, "threads": 1,
                      "label": f"torch DDP (gloo), {n} process{s}, 1 thread each"},
    }


def find_mpiexec() -> str | None:
    """The venv's mpiexec (next to this Python), else one on PATH; None without mpi4py or an mpiexec."""
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        return None
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec")


def probe_torch() -> dict:
    """PyTorch's version and whether torch.distributed has gloo, asked in a subprocess (never imported here)."""
    code = ("import torch, torch.distributed as d; "
            "print(torch.__version__, int(d.is_available() and d.is_gloo_available()))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=clean_env(1))
        version, gloo = done.stdout.split()
    except (subprocess.SubprocessError, ValueError, OSError):
        return {"version": None, "gloo": False}
    return {"version": version, "gloo": gloo == "1"}


def available(args) -> dict:
    """What each launcher needs, found or not; one line for each thing that is missing."""
    found = {"mpiexec": find_mpiexec(), "torch": None, "gloo": False}
    if args.no_torch:
        say("--no-torch: skipping the PyTorch rows")
        return found
    probed = probe_torch()
    found["torch"], found["gloo"] = probed["version"], probed["gloo"]
    if found["torch"] is None:
        say("PyTorch is not installed (pip install torch): skipping the PyTorch rows")
    elif not found["gloo"]:
        say("this PyTorch has no torch.distributed with gloo: skipping the DDP row")
    return found


def runnable(config: dict, found: dict) -> bool:
    if config["framework"] == "torch" and not found["torch"]:
        return False
    if config["launcher"] == "mpiexec":
        return found["mpiexec"] is not None
    return config["launcher"] != "torchrun" or found["gloo"]


def say(message: str) -> None:
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


# -- launching ----------------------------------------------------------------------------------------


def clean_env(threads: int, **extra) -> dict:
    """This environment without an outer launcher's variables, with ``threads`` BLAS/OpenMP threads."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL", "HYDRA_", "TORCHELASTIC_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def command(launcher: str, processes: int, mpiexec: str | None, program: list[str]) -> list[str]:
    """``program`` (a script and its arguments) under ``launcher``."""
    if launcher == "mpiexec":
        return [mpiexec, "-n", str(processes), sys.executable, "-m", "mpi4py", *program]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                *program]
    return [sys.executable, *program]


def launch(cmd: list[str], env: dict, timeout: float) -> tuple[str | None, float]:
    """Run ``cmd`` in a session of its own; returns (None or one line saying what went wrong, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)  # the whole group can be ended: a launcher and its processes
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_group(proc)
        return f"timed out after {timeout:.0f} s", time.perf_counter() - start
    except BaseException:  # Ctrl-C (its session of its own does not get the terminal's signal): nothing left running
        end_group(proc)
        raise
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return None, seconds
    lines = [line.strip() for line in (err + out).splitlines() if line.strip().strip("=-")]  # no banners
    ours = [line for line in lines if line.startswith("benchmark worker")]
    errors = [line for line in lines if re.search(r"(Error|Exception|error)\b", line)]
    said = (ours or errors or lines or ["no output"])[-1]
    return f"exit status {proc.returncode}: {said}", seconds


def end_group(proc: subprocess.Popen) -> None:
    """End ``proc``'s session (a launcher passes SIGTERM on to its processes; SIGKILL if that is not enough)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
            proc.communicate(timeout=grace)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def launch_timeout(args, cells: int) -> float:
    """A generous limit for one launch: start-up, and every cell's calibration, warm-up and rounds."""
    per_cell = (args.warmup + args.rounds + 3) * max(args.round_seconds, 0.05) * 4 + 10
    return 120 + cells * per_cell


# -- the parent: timed steps --------------------------------------------------------------------------


def run_steps(args, found: dict, tmp: str) -> tuple[list[dict], list[dict]]:
    """Every configuration launched ``--repeats`` times (the list forward, then backward, ...).

    Returns the launches (every round of every cell) and the failures (one line each)."""
    configs = configurations(args.ranks)
    names = [name for name in CONFIGS if runnable(configs[name], found)]
    spec = {"models": args.models.split(","), "batches": [int(b) for b in args.batch_sizes.split(",")],
            "warmup": args.warmup, "rounds": args.rounds, "round_seconds": args.round_seconds}
    timeout = launch_timeout(args, len(spec["models"]) * len(spec["batches"]))
    launches, failures = [], []
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            config = configs[name]
            out = os.path.join(tmp, f"{name}-{repeat}.json")
            spec_path = os.path.join(tmp, f"{name}-{repeat}.spec.json")
            with open(spec_path, "w") as f:
                json.dump({**spec, **config, "out": out, "timeout": timeout}, f)
            cmd = command(config["launcher"], config["processes"], found["mpiexec"], [SCRIPT, "--_worker", spec_path])
            env = clean_env(config["threads"], CNNXP_RANK_TIMEOUT=str(int(timeout)))
            for attempt in range(2):  # a launcher's start-up can fail now and then (torchrun's rendezvous): once more
                load = load_average()
                problem, seconds = launch(cmd, env, timeout)
                if problem is None and not os.path.exists(out):
                    problem = "the worker wrote no results"
                if problem is None or problem.startswith("timed out") or attempt == 1:
                    break
                say(f"{config['label']} (launch {repeat + 1}) failed, trying it once more: {problem}")
            if problem:
                failures.append({"config": name, "repeat": repeat, "error": problem})
                say(f"{config['label']} (launch {repeat + 1}) failed: {problem}")
                continue
            with open(out) as f:
                result = json.load(f)
            launches.append({"config": name, "repeat": repeat, "load_before": load, "wall_seconds": seconds,
                             **result})
            print(f"  launch {repeat + 1}/{args.repeats} {config['label']}: "  # progress: stderr, the table alone on stdout
                  + ", ".join(f"{c['model']} b{c['batch']} {statistics.median(c['rates']):,.0f}"
                              for c in result["cells"]) + " img/s", file=sys.stderr, flush=True)
    return launches, failures


def summarise(args, launches: list[dict]) -> list[dict]:
    """One row per (model, batch, configuration): every round, median, min-max, speed-up, efficiency, ratio."""
    configs, n = configurations(args.ranks), args.ranks
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            cell = {}
            for name in CONFIGS:
                rounds, comm = [], []
                for launch_ in (x for x in launches if x["config"] == name):
                    for c in launch_["cells"]:
                        if c["model"] == model and c["batch"] == batch:
                            rounds += c["rates"]
                            comm += c.get("comm_fraction") or []
                if rounds:
                    cell[name] = {"rounds": rounds, "median": statistics.median(rounds), "min": min(rounds),
                                  "max": max(rounds), "comm_fraction": statistics.median(comm) if comm else None}
            base = cell.get("cnnxp-1t", {}).get("median")
            ref = cell.get("torch-Nt", {}).get("median")
            for name, s in cell.items():
                config = configs[name]
                speedup = s["median"] / base if base else None
                rows.append({"model": model, "batch": batch, "config": name, "label": config["label"],
                             "processes": config["processes"], "threads": config["threads"], **s,
                             "speedup": speedup,
                             "efficiency": speedup / n if speedup and config["processes"] > 1 else None,
                             "ratio_torch": s["median"] / ref if ref else None})
    return rows


def fmt_rate(s: dict) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def print_table(rows: list[dict], meta: dict) -> None:
    n = meta["ranks"]
    head = ["model", "batch", "configuration", "img/s median (min-max)", "speed-up vs 1", "efficiency",
            f"vs torch {n} threads", "allreduce share"]
    table = [head] + [[r["model"], str(r["batch"]), r["label"], fmt_rate(r), fmt(r["speedup"], ".2f", "x"),
                       fmt(r["efficiency"], ".0%"), fmt(r["ratio_torch"], ".2f", "x"),
                       fmt(r["comm_fraction"], ".0%")] for r in rows]
    widths = [max(len(t[c]) for t in table) for c in range(len(head))]
    print()
    print(f"training steps, {meta['cores']} cores, SGD(lr={LR}, momentum={MOMENTUM}), {meta['repeats']} launches x "
          f"{meta['rounds']} rounds of ~{meta['round_seconds']} s per configuration: median (min-max) over every "
          f"round; load average {meta['load_before']} -> {meta['load_after']}")
    print("speed-up: over cnnxp, 1 process, 1 thread; efficiency: speed-up / N for the N-process rows; "
          "allreduce share: of rank 0's step time, in DistributedOptimizer's allreduce (waiting included)")
    for i, t in enumerate(table):
        print("  ".join(c.rjust(w) if k >= 3 else c.ljust(w) for k, (c, w) in enumerate(zip(t, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# -- the parent: one real epoch -----------------------------------------------------------------------


def epoch_data_missing() -> str | None:
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        if not any(os.path.exists(os.path.join(FASHION_DIR, name + ext)) for ext in ("", ".gz")):
            return f"{FASHION_DIR}/{name}[.gz] is missing (apt-get install dataset-fashion-mnist)"
    return None


def epoch_configs(n: int) -> dict[str, dict]:
    return {
        "train-mpi": {"launcher": "mpiexec", "processes": n, "threads": 1,
                      "label": f"cnnxp train.py, {n} processes (mpiexec), 1 thread each"},
        "train-Nt": {"launcher": "python", "processes": 1, "threads": n, "label": f"cnnxp train.py, 1 process, {n} threads"},
        "torch-Nt": {"launcher": "python", "processes": 1, "threads": n, "label": f"torch loop, 1 process, {n} threads"},
    }


def epoch_program(name: str, out: str) -> list[str]:
    if name == "torch-Nt":
        return [SCRIPT, "--_epoch_worker", out]
    return [TRAIN, "--dataset", "fashion-mnist", "--data-dir", FASHION_DIR, "--model", "lenet5", "--optimizer", "sgd",
            "--lr", str(LR), "--batch-size", str(EPOCH_BATCH), "--epochs", "1", "--augment", "0",
            "--label-smoothing", "0", "--schedule", "constant", "--no-plots", "--quiet", "--out", out]


def epoch_result(name: str, out: str) -> dict:
    """images/s and the training numbers of one epoch launch (train.py's metrics.json, or the torch worker's)."""
    path = out if name == "torch-Nt" else os.path.join(out, "metrics.json")
    with open(path) as f:
        m = json.load(f)
    return {"images_per_second": m["images_per_second"], "train_seconds": m["train_seconds"],
            "train_loss": m["train_loss"], "train_accuracy": m["train_accuracy"]}


def run_epoch(args, found: dict, tmp: str) -> dict | None:
    """One Fashion-MNIST LeNet-5 epoch per configuration, ``--repeats`` times alternating."""
    missing = epoch_data_missing()
    if missing:
        say(f"--epoch skipped: {missing}")
        return None
    configs = epoch_configs(args.ranks)
    names = [k for k in EPOCH_CONFIGS if (k != "train-mpi" or found["mpiexec"]) and (k != "torch-Nt" or found["torch"])]
    runs = []
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            config = configs[name]
            out = os.path.join(tmp, f"epoch-{name}-{repeat}" + (".json" if name == "torch-Nt" else ""))
            cmd = command(config["launcher"], config["processes"], found["mpiexec"], epoch_program(name, out))
            load = load_average()
            problem, seconds = launch(cmd, clean_env(config["threads"]), 900)
            if problem is None:
                try:
                    runs.append({"config": name, "repeat": repeat, "load_before": load, "wall_seconds": seconds,
                                 **epoch_result(name, out)})
                    print(f"  epoch {repeat + 1}/{args.repeats} {config['label']}: "
                          f"{runs[-1]['images_per_second']:,.0f} img/s", file=sys.stderr, flush=True)
                    continue
                except (OSError, ValueError, KeyError) as exc:
                    problem = f"no result: {exc}"
            say(f"epoch, {config['label']} (launch {repeat + 1}) failed: {problem}")
    return {"runs": runs, "summary": epoch_summary(args.ranks, runs)}


def epoch_summary(n: int, runs: list[dict]) -> dict:
    out = {}
    for name, config in epoch_configs(n).items():
        rates = [r["images_per_second"] for r in runs if r["config"] == name]
        if rates:
            out[name] = {"label": config["label"], "median": statistics.median(rates), "min": min(rates),
                         "max": max(rates), "rounds": rates,
                         "train_accuracy": statistics.median(r["train_accuracy"] for r in runs if r["config"] == name)}
    return out


def print_epoch(epoch: dict, n: int) -> None:
    s = epoch["summary"]
    print()
    print(f"one Fashion-MNIST LeNet-5 epoch (60,000 images, batch {EPOCH_BATCH}, SGD lr {LR} momentum {MOMENTUM}), "
          "training loop only: median (min-max) over the launches")
    width = max((len(v["label"]) for v in s.values()), default=10)
    for v in s.values():
        print(f"  {v['label']:{width}s}  {fmt_rate(v):>26s} img/s  (train accuracy {v['train_accuracy']:.3f})")
    pairs = (("train-mpi", "torch-Nt"), ("train-Nt", "torch-Nt"), ("train-mpi", "train-Nt"))
    for a, b in pairs:
        if a in s and b in s:
            print(f"  {s[a]['label']} / {s[b]['label']}: {s[a]['median'] / s[b]['median']:.2f}x")


# -- the parent: the run -----------------------------------------------------------------------------


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(args) -> int:
    """Run the benchmark (``args``: this file's flags, or scripts/benchmark.py's with ``--ranks``)."""
    problem = check(args)
    if problem:
        print(f"benchmark.py: error: {problem}", file=sys.stderr)
        return 2
    import numpy as np

    if find_mpiexec() is None:  # the N-process rows are what --ranks is for
        print(f"benchmark.py: error: --ranks {args.ranks} needs mpi4py and mpiexec: pip install 'cnnxp[mpi]'",
              file=sys.stderr)
        return 2
    found = available(args)
    meta = {"ranks": args.ranks, "cores": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
            "torch": found["torch"], "mpiexec": found["mpiexec"], "rounds": args.rounds, "warmup": args.warmup,
            "round_seconds": args.round_seconds, "repeats": args.repeats, "load_before": load_average(),
            "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM})",
            "configurations": configurations(args.ranks)}
    print(f"{args.ranks} ranks on {meta['cores']} cores, numpy {meta['numpy']}, torch {meta['torch']}, "
          f"mpiexec {meta['mpiexec']}, load average {meta['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"cnnxp-ranks-{os.getpid()}-") as tmp:  # named for whoever looks
        launches, failures = run_steps(args, found, tmp)
        meta["load_after"] = load_average()
        rows = summarise(args, launches)
        print_table(rows, meta)
        epoch = run_epoch(args, found, tmp) if args.epoch else None
    if epoch is not None:
        print_epoch(epoch, args.ranks)
    if args.json:
        from cnnxp._files import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "launches": launches, "failures": failures, "epoch": epoch},
                      f, indent=2)
        print(f"wrote {args.json}")
    return 1 if failures else 0


# -- the workers: timed steps in one process or N -----------------------------------------------------


class TimedComm:
    """A communicator that adds up the seconds its ``allreduce`` takes (waiting for the others included)."""

    def __init__(self, comm):
        self.comm, self.seconds = comm, 0.0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def allreduce(self, x):
        start = time.perf_counter()
        out = self.comm.allreduce(x)
        self.seconds += time.perf_counter() - start
        return out


class TorchComm:
    """rank, size, barrier and bcast over torch.distributed (the DDP worker's)."""

    def __init__(self):
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(os.environ.get("CNNXP_RANK_TIMEOUT",
                                                                                                 300))))
        self.dist, self.rank, self.size = dist, dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def bcast(self, obj, root: int = 0):
        box = [obj]
        self.dist.broadcast_object_list(box, src=root)
        return box[0]

    def abort(self, code: int = 1):
        os._exit(code)


def shard(batch: int, comm):
    """This process's rows of the fixed random batch (every process makes the whole batch, takes its share)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    lo, hi = comm.rank * batch // comm.size, (comm.rank + 1) * batch // comm.size
    return x[lo:hi], y[lo:hi]


def initial_weights(model_name: str) -> list:
    """cnnxp's preset weights (seed 0) as NumPy arrays, in order (as scripts/benchmark.py copies them)."""
    import cnnxp
    from cnnxp.models import lenet5, seed_cnn

    model = {"seed": seed_cnn, "lenet5": lenet5}[model_name](seed=0)
    return [cnnxp.to_numpy(layer.params[name]) for _, layer, name in model.parameter_slots()]


class CnnxpTrainer:
    """cnnxp's training step; with several processes the optimizer is a DistributedOptimizer."""

    def __init__(self, model_name: str, batch: int, comm):
        import cnnxp
        from cnnxp.models import lenet5, seed_cnn

        self.comm = comm
        self.model = {"seed": seed_cnn, "lenet5": lenet5}[model_name](seed=0)
        self.initial = {k: cnnxp.to_numpy(v).copy() for k, v in self.model.state_dict().items()}
        self.x, self.y = shard(batch, comm)
        self.reset()

    def reset(self) -> None:
        from cnnxp.distributed import DistributedOptimizer
        from cnnxp.optim import SGD

        self.model.load_state_dict(self.initial)
        self.opt = SGD(self.model, lr=LR, momentum=MOMENTUM)
        if self.comm.size > 1:
            self.opt = DistributedOptimizer(self.opt, self.comm)

    def step(self) -> None:
        from cnnxp.losses import softmax_cross_entropy

        self.model.train()
        logits = self.model.forward(self.x)
        _, grad = softmax_cross_entropy(logits, self.y, check_labels=False)  # labels checked once, as fit does
        self.model.backward(grad, need_input_grad=False)
        self.opt.step()


def torch_model(model_name: str):
    """The same networks as scripts/benchmark.py's, in the layer order of cnnxp's presets."""
    import torch.nn as nn

    if model_name == "seed":
        return nn.Sequential(nn.Conv2d(1, 8, 2, stride=2, padding=1), nn.MaxPool2d(2, stride=2, padding=1),
                             nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def torch_net(model_name: str):
    """PyTorch's network holding cnnxp's initial weights."""
    import torch

    model = torch_model(model_name)
    params, weights = list(model.parameters()), initial_weights(model_name)
    if [tuple(p.shape) for p in params] != [w.shape for w in weights]:
        raise RuntimeError(f"the PyTorch {model_name} does not match cnnxp's parameter shapes")
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(torch.from_numpy(w))
    return model


class TorchTrainer:
    """PyTorch's training step; with several processes the model is wrapped in DistributedDataParallel."""

    def __init__(self, model_name: str, batch: int, comm):
        import torch

        self.torch = torch
        module = torch_net(model_name)
        self.initial = {k: v.clone() for k, v in module.state_dict().items()}
        self.module = module
        self.model = torch.nn.parallel.DistributedDataParallel(module) if comm.size > 1 else module
        x, y = shard(batch, comm)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.reset()

    def reset(self) -> None:
        self.module.load_state_dict(self.initial)  # in place: DDP keeps its references to the parameters
        self.opt = self.torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def agreed(comm, value):
    """Rank 0's ``value``, on every process."""
    return comm.bcast(value if comm.rank == 0 else None)


def time_cell(trainer, comm, batch: int, spec: dict) -> dict:
    """Calibrate, warm up and time ``spec['rounds']`` rounds of one (model, batch); rank 0's clock decides."""

    def run_round(steps: int) -> float:
        trainer.reset()
        comm.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        comm.barrier()
        return time.perf_counter() - start

    seconds = spec["round_seconds"]
    once = run_round(1)
    probe = agreed(comm, max(1, int(0.1 * seconds / max(once, 1e-6))))
    steps = agreed(comm, max(1, round(seconds * probe / max(run_round(probe), 1e-6))))
    for k in range(spec["warmup"]):
        elapsed = run_round(steps)
        if k == spec["warmup"] - 1:  # the warm step time sets the rounds' length
            steps = agreed(comm, max(1, round(seconds * steps / max(elapsed, 1e-6))))
    rates, comm_fraction = [], []
    for _ in range(spec["rounds"]):
        before = getattr(comm, "seconds", 0.0)
        elapsed = run_round(steps)
        rates.append(batch * steps / elapsed)
        if isinstance(comm, TimedComm):
            comm_fraction.append((comm.seconds - before) / elapsed)
    return {"steps": steps, "rates": rates, "comm_fraction": comm_fraction or None}


def threads_seen() -> dict:
    """The thread counts in effect in this process (BLAS/OpenMP pools, torch's)."""
    seen = {}
    try:
        from threadpoolctl import threadpool_info

        seen["pools"] = {f"{i['internal_api']}": i["num_threads"] for i in threadpool_info()}
    except ImportError:
        pass
    if "torch" in sys.modules:
        seen["torch"] = sys.modules["torch"].get_num_threads()
    return seen


def open_comm(spec: dict):
    if spec["launcher"] == "torchrun":
        return TorchComm()
    from cnnxp import distributed

    comm = distributed.init()
    return TimedComm(comm) if comm.size > 1 else comm


def worker(spec_path: str) -> int:
    """One launch of one configuration: every (model, batch) cell, results written by rank 0."""
    with open(spec_path) as f:
        spec = json.load(f)
    comm = None
    try:
        if spec["framework"] == "torch":
            import torch

            torch.set_num_threads(spec["threads"])
        else:  # as scripts/train.py runs on the CPU
            from cnnxp.backend import keep_freed_host_memory

            keep_freed_host_memory()
        comm = open_comm(spec)
        if comm.size != spec["processes"]:
            raise RuntimeError(f"started {comm.size} processes, expected {spec['processes']}")
        make = CnnxpTrainer if spec["framework"] == "cnnxp" else TorchTrainer
        cells = []
        for model in spec["models"]:
            for batch in spec["batches"]:
                cells.append({"model": model, "batch": batch,
                              **time_cell(make(model, batch, comm), comm, batch, spec)})
        if comm.rank == 0:
            with open(spec["out"], "w") as f:
                json.dump({"cells": cells, "threads_seen": threads_seen()}, f)
    except Exception as exc:  # one line, then every process of the job ends
        rank = getattr(comm, "rank", "?")
        print(f"benchmark worker (rank {rank}): {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if comm is not None and getattr(comm, "size", 1) > 1:
            comm.abort(1)
        return 1
    if spec["launcher"] == "torchrun":
        comm.dist.destroy_process_group()
    return 0


# -- the worker: one PyTorch epoch --------------------------------------------------------------------


def torch_epoch(out: str) -> int:
    """One Fashion-MNIST LeNet-5 epoch in a plain PyTorch loop (threads from OMP_NUM_THREADS), as fit trains:
    a new permutation, uint8 rows normalised per batch, the loss and correct count summed as it goes."""
    import torch

    from cnnxp.data import load_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = load_dataset("fashion-mnist", "train", data_dir=FASHION_DIR, download=False)
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    model = torch_net("lenet5")
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    generator = torch.Generator().manual_seed(0)
    n = len(labels)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator)
    loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    for first in range(0, n, EPOCH_BATCH):
        index = order[first:first + EPOCH_BATCH]
        xb = (images[index].unsqueeze(1).to(torch.float32) / 255.0 - MEAN) / STD
        yb = labels[index]
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        with torch.no_grad():
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == yb).sum()
    seconds = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump({"images_per_second": n / seconds, "train_seconds": seconds, "train_loss": float(loss_sum) / n,
                   "train_accuracy": int(correct) / n, "threads_seen": threads_seen()}, f)
    return 0


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS._worker:
        sys.exit(worker(ARGS._worker))
    if ARGS._epoch_worker:
        sys.exit(torch_epoch(ARGS._epoch_worker))
    try:
        sys.exit(main(ARGS))
    except KeyboardInterrupt:
        print("benchmark_ranks.py: interrupted", file=sys.stderr)
        sys.exit(130)
