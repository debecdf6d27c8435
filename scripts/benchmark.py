"""Throughput and peak memory of cnnxp against PyTorch and a per-image loop version.

For each model (``seed``: the notebook's network, ``lenet5``) and batch size it
times training steps (forward, softmax cross-entropy, backward, SGD with
momentum) and inference (forward in eval mode) in images per second: warm-up
rounds first, then several timed rounds, reported as median and min-max. The
same architecture in PyTorch (when installed) runs on the same device, batch
and optimizer, with ``torch.set_num_threads`` equal to NumPy's BLAS thread
count. Each library runs in a worker process of its own (as it would for a user):
in one shared process, whichever runs second works in the heap the first left
behind, which cost PyTorch up to a third of its speed here (docs/performance.md).
The parent alternates the workers' rounds, so background load hits both alike.
Both libraries start from the same weights (cnnxp's preset, seed 0, copied into
PyTorch's modules), and every round starts from them again with a fresh
optimizer: training one fixed batch for a thousand steps or more leaves momentum
entries stuck at subnormal values (about half of cnnxp's after 1,000 steps,
which slowed its steps by 15%), and how many depends on the weights, so without
the reset the ratio would drift with the round count.

The per-image loop version is written here as a teaching notebook would write
it: pure NumPy with Python loops over filters and output positions, one image
at a time. It stands for where learners start and is timed on a few hundred
images only.

Peak memory is measured per configuration in a fresh subprocess: peak resident
set size (``VmHWM``) and its rise over the process after imports, model and
data (CPU), or what the caching allocator holds on the model's GPU (CuPy's memory pool,
``torch.cuda.max_memory_reserved``).

Examples
--------
    python scripts/benchmark.py                      # CPU, full run
    python scripts/benchmark.py --quick              # a short run
    python scripts/benchmark.py --device cuda --models lenet5 --batch-sizes 256,1024 --json gpu.json
    python scripts/benchmark.py --ranks 2 --json ranks.json  # data-parallel scaling (scripts/benchmark_ranks.py)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

# Benchmark this checkout's cnnxp, installed or not: the repository root on the path, not scripts/
# (which holds an inspect.py that would shadow the standard library's module).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


def parse_args(argv=None):
    p = load_ranks().OneLineParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--models", default="seed,lenet5", help="comma-separated: seed, lenet5")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated batch sizes (default 64,256; with --count-ops 64,1024)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per measurement (median, min-max)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--round-seconds", type=float, default=0.5, help="approximate length of one round")
    p.add_argument("--pause", type=float, default=0.2,
                   help="seconds between rounds, so the idle library's threads stop spinning (default 0.2)")
    p.add_argument("--loop-images", type=int, default=300, help="images for the per-image loop version")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-loop", action="store_true", help="skip the per-image loop version")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--compare-cpu", action="store_true",
                   help="also time cnnxp on the CPU for the same configurations (for a cuda --device)")
    p.add_argument("--profile", action="store_true",
                   help="also print cnnxp's per-layer forward/backward times for each configuration")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/torch threads (default: whatever NumPy's BLAS uses, i.e. all cores)")
    p.add_argument("--quick", action="store_true", help="a short run: 3 rounds of ~0.2 s, 100 loop images")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--count-ops", action="store_true",
                   help="count the array operations, host-to-device copies and reads of one training step of "
                        "each preset (the GPU's cost model, measured on array_api_strict) instead of timing")
    p.add_argument("--ranks", type=int, default=None, metavar="N",
                   help="instead: data-parallel training speed of cnnxp on N MPI processes against one process "
                        "(1 and N threads) and PyTorch (N threads, DDP on N processes): scripts/benchmark_ranks.py")
    p.add_argument("--repeats", type=int, default=None,
                   help="with --ranks: launches of every configuration, in alternating order (default 2)")
    p.add_argument("--epoch", action="store_true",
                   help="with --ranks: also one Fashion-MNIST LeNet-5 epoch of train.py (N processes and one) "
                        "against a PyTorch loop")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = "64,1024" if args.count_ops else "64,256"
    unknown = [m for m in args.models.split(",") if m not in ("seed", "lenet5")]
    if unknown:
        p.error(f"--models takes seed and/or lenet5 (comma-separated), got {', '.join(map(repr, unknown))}")
    if not all(b.strip().isascii() and b.strip().isdigit() and int(b) > 0 for b in args.batch_sizes.split(",")):
        p.error(f"--batch-sizes takes positive integers (comma-separated), got {args.batch_sizes!r}")
    for flag, value, least in (("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0),
                               ("--round-seconds", args.round_seconds, 0), ("--pause", args.pause, 0),
                               ("--loop-images", args.loop_images, 1), ("--threads", args.threads, 1)):
        if value is not None and not least <= value < math.inf:  # also refuses nan
            kind = "a finite number" if isinstance(value, float) else "an integer"
            p.error(f"{flag} takes {kind} >= {least}, got {value}")
    if args.json is not None:  # find out now, not after minutes of timing
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            p.error(f"--json {args.json!r}: cannot write into {folder!r}")
        if os.path.isdir(args.json):
            p.error(f"--json {args.json!r} is a folder: give a file name")
    if args.quick:
        args.rounds, args.warmup, args.round_seconds, args.loop_images, args.pause = 3, 1, 0.2, 100, 0.1
    _check_ranks(args)
    return args


def _check_ranks(args) -> None:
    """The flags of a ``--ranks`` run (scripts/benchmark_ranks.py): one line and status 2 when they do not fit."""
    problem = None
    if args.ranks is None:
        extra = [flag for flag, given in (("--epoch", args.epoch), ("--repeats", args.repeats is not None)) if given]
        problem = f"{' and '.join(extra)} go{'es' if len(extra) == 1 else ''} with --ranks N" if extra else None
    else:
        clash = [flag for flag, given in (("--device", args.device.strip().lower() != "cpu"),
                                          ("--threads", args.threads is not None), ("--profile", args.profile),
                                          ("--compare-cpu", args.compare_cpu), ("--count-ops", args.count_ops)) if given]
        args.repeats = 2 if args.repeats is None else args.repeats
        problem = (f"--ranks times the CPU with thread counts of its own: leave out {', '.join(clash)}" if clash
                   else load_ranks().check(args))
    if problem:
        print(f"benchmark.py: error: {problem}", file=sys.stderr)
        sys.exit(2)


_RANKS = {}


def load_ranks():
    """scripts/benchmark_ranks.py, loaded by its file path (scripts/ is off sys.path: see above)."""
    if "module" not in _RANKS:
        import importlib.util

        spec = importlib.util.spec_from_file_location("benchmark_ranks", os.path.join(_HERE, "benchmark_ranks.py"))
        _RANKS["module"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_RANKS["module"])
    return _RANKS["module"]


ARGS = parse_args()
if ARGS.threads is not None:  # before NumPy loads its BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import cnnxp  # noqa: E402
from cnnxp._files import atomic_write  # noqa: E402
from cnnxp.losses import softmax_cross_entropy  # noqa: E402
from cnnxp.models import lenet5, seed_cnn  # noqa: E402
from cnnxp.optim import SGD  # noqa: E402
from cnnxp.timing import format_layer_times, layer_times  # noqa: E402

LR, MOMENTUM = 0.01, 0.9
MODELS = {"seed": seed_cnn, "lenet5": lenet5}

torch = None  # imported by load_torch() only where PyTorch is used, so cnnxp's memory is measured without it


def load_torch():
    global torch
    if torch is None:
        try:
            import torch as _torch
        except ImportError:  # the comparison is optional
            return None
        torch = _torch
    return torch


# -- environment ---------------------------------------------------------------------


def blas_threads() -> int:
    """Threads NumPy's BLAS uses (asked from OpenBLAS when possible, else the environment or the core count)."""
    try:
        import ctypes
        import glob

        libdir = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs")
        for lib in glob.glob(os.path.join(libdir, "*openblas*")):
            handle = ctypes.CDLL(lib)
            for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                         "openblas_get_num_threads"):
                if hasattr(handle, name):
                    return int(getattr(handle, name)())
    except OSError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def device_label(device: str) -> str:
    if device == "cpu":
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    import cupy

    dev = cnnxp.get_device(device).native
    return cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()


# -- the contenders ------------------------------------------------------------------


def make_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    return x, y


def initial_weights(model_name: str) -> list:
    """cnnxp's preset weights (seed 0) as NumPy arrays, in order: both libraries start from them."""
    model = MODELS[model_name](seed=0)
    return [cnnxp.to_numpy(layer.params[name]) for _, layer, name in model.parameter_slots()]


class CnnxpRunner:
    def __init__(self, model_name: str, batch: int, device: str):
        self.dev = cnnxp.get_device(device)
        self.model = MODELS[model_name](seed=0, device=device)
        self.initial = {key: cnnxp.to_numpy(value).copy() for key, value in self.model.state_dict().items()}
        self.reset()
        x, y = make_data(batch)
        self.x, self.y = cnnxp.to_device(x, self.dev), cnnxp.to_device(y, self.dev)

    def reset(self):
        """The initial weights again, and a fresh optimizer (no momentum yet)."""
        self.model.load_state_dict(self.initial)
        self.opt = SGD(self.model, lr=LR, momentum=MOMENTUM)

    def train_step(self):
        self.model.train()
        logits = self.model.forward(self.x)
        with self.dev.activate():  # the loss's arrays on the model's GPU (as in fit)
            # labels checked once, as fit does: the check reads a value back from the device
            _, grad = softmax_cross_entropy(logits, self.y, check_labels=False)
        self.model.backward(grad, need_input_grad=False)
        self.opt.step()

    def infer_step(self):
        self.model.eval()
        self.model.forward(self.x)

    def sync(self):
        if self.dev.name.startswith("cuda"):
            self.dev.native.synchronize()


def torch_model(model_name: str):
    nn = torch.nn
    if model_name == "seed":
        return nn.Sequential(nn.Conv2d(1, 8, 2, stride=2, padding=1), nn.MaxPool2d(2, stride=2, padding=1),
                             nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),  # as cnnxp.models.lenet5 declares it
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


class TorchRunner:
    def __init__(self, model_name: str, batch: int, device: str):
        self.device = torch.device(device)
        self.model = torch_model(model_name).to(self.device)
        params = list(self.model.parameters())
        weights = initial_weights(model_name)
        if [tuple(p.shape) for p in params] != [w.shape for w in weights]:
            raise RuntimeError(f"the PyTorch {model_name} does not match cnnxp's parameter shapes")
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(torch.from_numpy(w))
        self.initial = {key: value.clone() for key, value in self.model.state_dict().items()}
        self.reset()
        x, y = make_data(batch)
        self.x, self.y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def reset(self):
        """The initial weights again, and a fresh optimizer (no momentum yet)."""
        self.model.load_state_dict(self.initial)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    def infer_step(self):
        self.model.eval()
        with torch.no_grad():
            self.model(self.x)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class LoopCNN:
    """The notebook's network one image at a time, with Python loops (the starting point learners know).

    Conv(1 -> 8, 2x2, stride 2, padding 1) -> MaxPool(2x2, stride 2, padding 1) -> dense softmax(512 -> 10),
    trained by plain SGD. Written for this benchmark; nothing is vectorised across positions or filters.
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.filters = (rng.standard_normal((8, 2, 2)) / 4).astype(np.float32)
        self.conv_bias = np.zeros(8, np.float32)
        self.weights = (rng.standard_normal((512, 10)) / 512).astype(np.float32)
        self.biases = np.zeros(10, np.float32)

    def forward(self, image):
        padded = np.zeros((30, 30), np.float32)
        padded[1:29, 1:29] = image
        conv = np.zeros((8, 15, 15), np.float32)
        for f in range(8):
            for i in range(15):
                for j in range(15):
                    region = padded[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    conv[f, i, j] = np.sum(region * self.filters[f]) + self.conv_bias[f]
        pooled = np.zeros((8, 8, 8), np.float32)
        where = np.zeros((8, 8, 8, 2), np.int64)
        for f in range(8):
            for i in range(8):
                for j in range(8):
                    best, bi, bj = -np.inf, 0, 0
                    for a in range(2):
                        for b in range(2):
                            r, c = 2 * i + a - 1, 2 * j + b - 1
                            if 0 <= r < 15 and 0 <= c < 15 and conv[f, r, c] > best:
                                best, bi, bj = conv[f, r, c], r, c
                    pooled[f, i, j] = best
                    where[f, i, j] = (bi, bj)
        logits = pooled.reshape(-1) @ self.weights + self.biases
        e = np.exp(logits - np.max(logits))
        return padded, where, pooled, e / np.sum(e)

    def train_image(self, image, label, lr=LR):
        padded, where, pooled, probs = self.forward(image)
        d_logits = probs.copy()
        d_logits[label] -= 1.0
        d_pooled = (self.weights @ d_logits).reshape(8, 8, 8)
        self.weights -= lr * np.outer(pooled.reshape(-1), d_logits)
        self.biases -= lr * d_logits
        d_conv = np.zeros((8, 15, 15), np.float32)
        for f in range(8):
            for i in range(8):
                for j in range(8):
                    r, c = where[f, i, j]
                    d_conv[f, r, c] += d_pooled[f, i, j]
        d_filters = np.zeros_like(self.filters)
        for f in range(8):
            for i in range(15):
                for j in range(15):
                    d_filters[f] += d_conv[f, i, j] * padded[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        self.filters -= lr * d_filters
        self.conv_bias -= lr * np.sum(d_conv, axis=(1, 2))

    def predict(self, image):
        return int(np.argmax(self.forward(image)[3]))


def time_loop(images: int, train: bool) -> list[float]:
    """Images per second of the loop version, in a few rounds over ``images`` images in total."""
    x, y = make_data(max(images, 1), seed=1)
    net = LoopCNN()
    net.train_image(x[0, 0], int(y[0]))  # warm-up
    rounds = min(3, max(images, 1))
    per = max(1, images // rounds)
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for k in range(r * per, (r + 1) * per):
            if train:
                net.train_image(x[k, 0], int(y[k]))
            else:
                net.predict(x[k, 0])
        rates.append(per / (time.perf_counter() - start))
    return rates


# -- timing --------------------------------------------------------------------------


def calibrate(step, sync, seconds: float) -> int:
    """Steps per round so that a round lasts about ``seconds``."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(seconds / once))


class Worker:
    """One contender in a process of its own, driven line by line over a pipe (JSON requests and replies).

    Separate processes keep each library's timings free of the heap the other leaves behind: in one
    process, PyTorch after cnnxp ran at 9.9-14.9k img/s (LeNet-5, batch 64, training) against
    12.8-17.3k alone (docs/performance.md).
    """

    def __init__(self, framework: str, device: str, threads: int | None):
        self.name = f"{framework} on {device}"
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", f"{framework},{device}"]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **request):
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:  # BrokenPipeError: it has exited
            line = ""
        else:
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (status {self.proc.wait()}); its error is above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the {self.name} worker failed: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def serve(spec: str) -> None:
    """The worker side (``--_worker framework,device``): set up a configuration, calibrate, run rounds."""
    framework, device = spec.split(",")
    if framework == "torch":
        load_torch().set_num_threads(blas_threads())
    elif device == "cpu":  # as scripts/train.py runs
        cnnxp.backend.keep_freed_host_memory()
    runner = step = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "setup":
                runner = (CnnxpRunner if framework == "cnnxp" else TorchRunner)(
                    request["model"], request["batch"], device)
                step = getattr(runner, f"{request['mode']}_step")
                reply = {}
            elif request["op"] == "calibrate":
                reply = {"steps": calibrate(step, runner.sync, request["seconds"])}
            else:  # "run": one timed round, from the initial weights
                runner.reset()
                runner.sync()
                start = time.perf_counter()
                for _ in range(request["steps"]):
                    step()
                runner.sync()
                reply = {"seconds": time.perf_counter() - start}
        except Exception as exc:  # reported to the parent, which stops with the message
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


def time_interleaved(workers: dict, config: dict, args) -> dict[str, list[float]]:
    """Images per second of each worker's step for ``config``, with their rounds alternating."""
    steps = {}
    for name, worker in workers.items():
        worker.call(op="setup", **config)
        for _ in range(args.warmup):
            worker.call(op="run", steps=worker.call(op="calibrate", seconds=args.round_seconds)["steps"])
        steps[name] = worker.call(op="calibrate", seconds=args.round_seconds)["steps"]
    rates: dict[str, list[float]] = {name: [] for name in workers}
    for _ in range(args.rounds):
        for name, worker in workers.items():
            time.sleep(args.pause)
            seconds = worker.call(op="run", steps=steps[name])["seconds"]
            rates[name].append(steps[name] * config["batch"] / seconds)
    return rates


def summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "rounds": rates}


# -- peak memory (fresh subprocess per configuration) -----------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident set size. ``VmHWM``, not ``ru_maxrss``: on Linux the latter keeps
    the parent's peak across fork and exec, so a child of a large benchmark process would report it."""
    try:
        return _status_kb("VmHWM") * 1024
    except (OSError, KeyError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_memory(spec: str) -> None:
    """Run one configuration a few steps and print its peak memory as JSON (the ``--_child`` mode)."""
    framework, model_name, batch, mode, device = spec.split(",")
    batch = int(batch)
    if framework == "torch":
        load_torch().set_num_threads(blas_threads())
    elif device == "cpu":  # as the timed workers run
        cnnxp.backend.keep_freed_host_memory()
    runner = (CnnxpRunner if framework == "cnnxp" else TorchRunner)(model_name, batch, device)
    step = runner.train_step if mode == "train" else runner.infer_step
    runner.sync()
    out = {}
    if device == "cpu":
        base = rss_bytes()
        for _ in range(3):
            step()
        peak = peak_rss_bytes()
        out = {"peak_rss_mb": peak / 2**20, "step_rise_mb": max(0, peak - base) / 2**20}
    elif framework == "cnnxp":  # what CuPy's pool holds on the model's GPU (it keeps freed blocks)
        import cupy

        pool = cupy.get_default_memory_pool()
        with runner.dev.native:  # the pool reports the current GPU's share
            before = pool.total_bytes()
            for _ in range(3):
                step()
            runner.sync()
            held = pool.total_bytes()
        out = {"peak_device_mb": held / 2**20, "step_rise_mb": (held - before) / 2**20}
    else:  # the same for PyTorch: the peak its caching allocator reserved on that GPU
        torch.cuda.reset_peak_memory_stats(runner.device)
        before = torch.cuda.memory_reserved(runner.device)
        for _ in range(3):
            step()
        runner.sync()
        peak = torch.cuda.max_memory_reserved(runner.device)
        out = {"peak_device_mb": peak / 2**20, "step_rise_mb": (peak - before) / 2**20}
    print(json.dumps(out))


def measure_memory(framework, model_name, batch, mode, device, threads) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", f"{framework},{model_name},{batch},{mode},{device}"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"  (memory measurement failed for {framework} {model_name} {batch} {mode}: {exc})", file=sys.stderr)
        return None


# -- the run -------------------------------------------------------------------------


def fmt_rate(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def fmt_mem(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{m['peak_rss_mb'] if 'peak_rss_mb' in m else m['peak_device_mb']:.0f}"


def count_ops(args) -> int:
    """``--count-ops``: a table of the operations of one training step per preset and batch size."""
    try:
        from cnnxp.opcount import BUDGETS, count_presets
        rows = count_presets(tuple(int(b) for b in args.batch_sizes.split(",")))
    except ImportError as exc:
        print(f"benchmark.py: --count-ops needs array_api_strict ({exc}): pip install array-api-strict",
              file=sys.stderr)
        return 1
    print("one training step (forward, loss, backward, update) on array_api_strict; computing operations are "
          "kernel launches or allocations on a GPU, views only re-describe memory")
    print(f"{'model':8s} {'optimizer':9s} {'batch':>5s} {'operations':>10s} {'computing':>9s} {'views':>5s} "
          f"{'to device':>9s} {'to host':>7s}  budget (computing/views)")
    for r in rows:
        budget = BUDGETS.get(r["model"])
        said = f"{budget['kernels']}/{budget['views']}" if budget else "-"
        print(f"{r['model']:8s} {r['optimizer']:9s} {r['batch']:5d} {r['ops']:10d} {r['kernels']:9d} {r['views']:5d} "
              f"{r['to_device']:9d} {r['to_host']:7d}  {said}")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump({"count_ops": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(args) -> int:
    if args.count_ops:
        return count_ops(args)
    if args._child:
        child_memory(args._child)
        return 0
    if args._worker:
        serve(args._worker)
        return 0
    threads = blas_threads()
    try:  # cnnxp's spelling of the device ("CPU" -> "cpu", "cuda" -> "cuda:0") for everything below
        args.device = cnnxp.get_device(args.device).name
    except ValueError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    except cnnxp.DeviceUnavailableError as exc:
        print(f"benchmark.py: {exc}", file=sys.stderr)
        return 1
    use_torch = not args.no_torch and _torch_status(args.device)
    meta = {
        "device": args.device, "device_name": device_label(args.device), "threads": threads,
        "numpy": np.__version__, "torch": use_torch or None,
        "python": platform.python_version(), "load_average_before": load_average(),
        "rounds": args.rounds, "warmup": args.warmup, "round_seconds": args.round_seconds,
        "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM})",
    }
    print(f"device {args.device} ({meta['device_name']}), BLAS/torch threads {threads}, "
          f"numpy {meta['numpy']}, torch {meta['torch']}, load average {meta['load_average_before']}")
    rows = []
    profiles = []
    loop = {}
    if not args.no_loop and "seed" in args.models.split(","):
        loop = {"train": summary(time_loop(args.loop_images, train=True)),
                "infer": summary(time_loop(args.loop_images, train=False))}
        progress(f"per-image loop version (seed network, {args.loop_images} images): "
                 f"train {fmt_rate(loop['train'])} img/s, infer {fmt_rate(loop['infer'])} img/s")
    workers = {"cnnxp": Worker("cnnxp", args.device, args.threads)}
    if use_torch:
        workers["torch"] = Worker("torch", args.device, args.threads)
    if args.compare_cpu:
        workers["cnnxp_cpu"] = Worker("cnnxp", "cpu", args.threads)
    try:
        for model_name in args.models.split(","):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                if args.profile:
                    mine = CnnxpRunner(model_name, batch, args.device)
                    rows_ms = layer_times(mine.model, mine.x, mine.y, repeats=max(3, args.rounds))
                    del mine
                    print(f"  per-layer profile, cnnxp {model_name} batch {batch} on {args.device}:")
                    print("    " + format_layer_times(rows_ms, batch).replace("\n", "\n    "))
                    profiles.append({"model": model_name, "batch": batch, "layers": rows_ms})
                for mode in ("train", "infer"):
                    rows.append(measure(workers, model_name, batch, mode, loop, args))
    finally:
        for worker in workers.values():
            worker.close()
    meta["load_average_after"] = load_average()
    print_table(rows, meta)
    if args.json:  # whole or not at all: an earlier result is never left half-overwritten
        with atomic_write(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "profiles": profiles}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _torch_status(device: str) -> str | None:
    """PyTorch's version when it can run on ``device``, asked in a subprocess (this process never imports it)."""
    code = ("import sys, torch; d = sys.argv[1]; "
            "print(torch.__version__ if d == 'cpu' or torch.cuda.is_available() else '')")
    try:
        done = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=300)
    except subprocess.SubprocessError:
        return None
    version = done.stdout.strip() if done.returncode == 0 else ""
    if not version and done.returncode == 0:
        print("PyTorch has no CUDA here: skipping the PyTorch column", file=sys.stderr)
    return version or None


def measure(workers, model_name, batch, mode, loop, args) -> dict:
    """One row of the table: every worker's rates for a configuration, the ratios and the memory."""
    rates = time_interleaved(workers, {"model": model_name, "batch": batch, "mode": mode}, args)
    row = {"model": model_name, "batch": batch, "mode": mode, **{name: summary(r) for name, r in rates.items()}}
    if "torch" in row:
        row["ratio_torch"] = row["cnnxp"]["median"] / row["torch"]["median"]
    if "cnnxp_cpu" in row:
        row["ratio_cpu"] = row["cnnxp"]["median"] / row["cnnxp_cpu"]["median"]
    if model_name == "seed" and loop:
        row["loop"] = loop[mode]
        row["ratio_loop"] = row["cnnxp"]["median"] / loop[mode]["median"]
    if not args.no_memory:
        row["memory_cnnxp"] = measure_memory("cnnxp", model_name, batch, mode, args.device, args.threads)
        if "torch" in workers:
            row["memory_torch"] = measure_memory("torch", model_name, batch, mode, args.device, args.threads)
    progress(f"  {model_name} b{batch} {mode}: cnnxp {fmt_rate(row['cnnxp'])}"
             + (f", torch {fmt_rate(row['torch'])}, {fmt_ratio(row['ratio_torch'])}" if "torch" in row else ""))
    return row


def progress(line: str) -> None:
    """A line of progress while the table is measured: on stderr, so stdout holds one table."""
    print(line, file=sys.stderr, flush=True)


def fmt_ratio(ratio: float) -> str:
    """Every ratio of the table alike: ``1.21x``, ``595.43x``."""
    return f"{ratio:.2f}x"


def print_table(rows, meta) -> None:
    memory = "peak memory, MB" if meta["device"] == "cpu" else "peak GPU memory, MB"
    head = ["model", "batch", "mode", "cnnxp img/s", "PyTorch img/s", "cnnxp vs PyTorch"]
    if any("cnnxp_cpu" in r for r in rows):
        head += ["cnnxp on CPU img/s", "vs CPU"]
    if any("loop" in r for r in rows):
        head += ["per-image loop img/s", "vs loop"]
    measured_memory = any("memory_cnnxp" in r for r in rows)
    if measured_memory:
        head += [f"cnnxp {memory}", f"PyTorch {memory}"]
    table = [head]
    for r in rows:
        line = [r["model"], str(r["batch"]), r["mode"], fmt_rate(r["cnnxp"]), fmt_rate(r.get("torch")),
                fmt_ratio(r["ratio_torch"]) if "ratio_torch" in r else "-"]
        if "cnnxp on CPU img/s" in head:
            line += [fmt_rate(r.get("cnnxp_cpu")), fmt_ratio(r["ratio_cpu"]) if "ratio_cpu" in r else "-"]
        if "per-image loop img/s" in head:
            line += [fmt_rate(r.get("loop")), fmt_ratio(r["ratio_loop"]) if "ratio_loop" in r else "-"]
        if measured_memory:
            line += [fmt_mem(r.get("memory_cnnxp")), fmt_mem(r.get("memory_torch"))]
        table.append(line)
    widths = [max(len(t[c]) for t in table) for c in range(len(head))]
    print()
    print(f"device {meta['device']} ({meta['device_name']}), threads {meta['threads']}, "
          f"{meta['optimizer']}, {meta['rounds']} rounds: median (min-max); "
          f"load average {meta['load_average_before']} -> {meta['load_average_after']}")
    for i, t in enumerate(table):
        print("  ".join(c.rjust(w) if k >= 3 else c.ljust(w) for k, (c, w) in enumerate(zip(t, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    try:
        if ARGS.ranks is not None:  # the data-parallel benchmark: scripts/benchmark_ranks.py
            sys.exit(load_ranks().main(ARGS))
        sys.exit(main(ARGS))
    except RuntimeError as exc:  # a worker failed: its traceback, if any, is above
        print(f"benchmark.py: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("benchmark.py: interrupted", file=sys.stderr)
        sys.exit(130)
