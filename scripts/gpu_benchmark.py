"""GPU benchmark: cnnxp on CuPy against PyTorch CUDA and against cnnxp on the CPU.

LeNet-5 (SGD, momentum 0.9) and the ``fashion`` preset (Adam; BatchNorm, Dropout) at each batch size:

- **step**: forward, loss, backward, update on one fixed batch on the device; untimed warm-up (CuPy
  compiles kernels on first use), then rounds of a calibrated number of steps from the initial weights,
  the device synchronised before every clock read; cnnxp once per convolution algorithm (``auto``,
  ``im2col``, ``toeplitz``, set on every Conv2D).
- **epoch**: ``cnnxp.train.fit``, one epoch over ``--epoch-images`` seeded random uint8 images through
  ``DataLoader(..., device=)`` with shuffling, no eval loader; timed whole between two synchronisations
  after an untimed warm-up epoch of a few batches.
- **PyTorch**: the layers in the presets' order (Conv, BatchNorm, MaxPool, ReLU), cnnxp's initial weights,
  the same optimizer; its epoch indexes uint8 images on the device with a new permutation per epoch,
  casts and normalises (0.1307, 0.3081).
- **cnnxp on the CPU** (NumPy): the LeNet-5 step at the largest batch; the **operation count** of one
  step per preset (``cnnxp.opcount``, on array_api_strict).

TF32 is off on both sides: ``CUPY_TF32=0`` before CuPy is imported (CuPy's default), PyTorch's
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` False (read back,
printed, saved). ``python scripts/gpu_benchmark.py --json gpu.json``: about 3 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

_CUPY_TF32_BEFORE = os.environ.get("CUPY_TF32")
os.environ["CUPY_TF32"] = "0"  # read by CuPy when it first picks a compute type: set before any import of it

# This checkout's cnnxp, installed or not: the repository root on the path, not scripts/ (whose
# inspect.py would shadow the standard library's module).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

import cnnxp  # noqa: E402
from cnnxp import models  # noqa: E402
from cnnxp._files import atomic_write  # noqa: E402
from cnnxp.data import NORMALIZE_MEAN, NORMALIZE_STD, DataLoader  # noqa: E402
from cnnxp.layers import Conv2D  # noqa: E402
from cnnxp.losses import softmax_cross_entropy  # noqa: E402
from cnnxp.optim import SGD, Adam  # noqa: E402
from cnnxp.timing import synchronize  # noqa: E402
from cnnxp.train import fit  # noqa: E402

PROG = "gpu_benchmark.py"
PRESETS = ("lenet5", "fashion")
ALGORITHMS = ("auto", "im2col", "toeplitz")
SGD_LR, MOMENTUM, ADAM_LR = 0.01, 0.9, 1e-3
SETTINGS = {  # rounds per measurement, untimed warm-up rounds, seconds per round, timed epochs, CPU rounds
    "full": {"rounds": 5, "warmup": 1, "round_seconds": 0.4, "epoch_rounds": 2, "cpu_rounds": 3},
    "quick": {"rounds": 3, "warmup": 1, "round_seconds": 0.15, "epoch_rounds": 1, "cpu_rounds": 2},
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, not argparse's usage block
        self.exit(2, f"{PROG}: error: {message}\n")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--batch-sizes", default="256,1024", help="comma-separated (default: 256,1024)")
    p.add_argument("--models", default=",".join(PRESETS), help="comma-separated: lenet5, fashion (default: both)")
    p.add_argument("--epoch-images", type=int, default=60000, help="images in the timed epoch (default: 60000)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds and one timed epoch")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--json", help="also write every round and the settings here")
    args = p.parse_args(argv)
    sizes = [b.strip() for b in args.batch_sizes.split(",")]
    if not all(b.isascii() and b.isdigit() and int(b) > 0 for b in sizes):
        p.error(f"--batch-sizes takes positive integers (comma-separated), got {args.batch_sizes!r}")
    args.batch_sizes = [int(b) for b in sizes]
    args.models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in args.models if m not in PRESETS]
    if unknown:
        p.error(f"--models takes {' and/or '.join(PRESETS)} (comma-separated), got {', '.join(map(repr, unknown))}")
    if args.epoch_images < 1:
        p.error(f"--epoch-images takes an integer >= 1, got {args.epoch_images}")
    if args.json is not None:  # found out now, not after minutes of timing
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            p.error(f"--json {args.json!r}: cannot write into {folder!r}")
    try:
        args.device = cnnxp.get_device(args.device).name
    except (ValueError, TypeError) as exc:
        p.error(str(exc))
    except cnnxp.DeviceUnavailableError as exc:
        sys.exit(f"{PROG}: error: {exc}")  # status 1
    args.settings = SETTINGS["quick" if args.quick else "full"]
    return args


# -- PyTorch: TF32 off, the same layers and weights ------------------------------------------------------
def load_torch(device: str, skip: bool):
    """``(torch, None, tf32)`` when PyTorch can run on ``device`` (TF32 turned off), else ``(None, why not,
    tf32)``; ``tf32`` is what each library was told about TF32, read back."""
    tf32 = {"cupy_tf32_env": os.environ["CUPY_TF32"], "cupy_tf32_env_before": _CUPY_TF32_BEFORE,
            "nvidia_tf32_override_env": os.environ.get("NVIDIA_TF32_OVERRIDE")}  # =0 turns TF32 off everywhere
    if skip:
        return None, "--no-torch", tf32
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed", tf32
    if device.startswith("cuda") and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA here", tf32
    with warnings.catch_warnings():  # newer PyTorch prefers fp32_precision and may warn about these
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tf32["torch_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        tf32["torch_cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return torch, None, tf32


def torch_layers(torch, name: str):
    nn = torch.nn
    if name == "lenet5":  # as cnnxp.models.lenet5 declares it: each pool before its ReLU
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
                             nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return nn.Sequential(  # as cnnxp.models.fashion_cnn: Conv, BatchNorm, MaxPool, ReLU
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU(),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))


def torch_preset(torch, name: str, device):
    """The PyTorch twin of cnnxp's preset (seed 0), its weights copied from cnnxp's, and its optimizer."""
    model = torch_layers(torch, name).to(device)
    ours = models.build(name, seed=0)
    weights = [cnnxp.to_numpy(layer.params[p]) for _, layer, p in ours.parameter_slots()]
    params = list(model.parameters())
    if [tuple(p.shape) for p in params] != [w.shape for w in weights]:
        raise RuntimeError(f"the PyTorch {name} does not match cnnxp's parameter shapes")
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return model, torch_optimizer(torch, name, model)


def torch_sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_optimizer(torch, name: str, model):
    optim, params = torch.optim, model.parameters()
    return optim.Adam(params, lr=ADAM_LR) if name == "fashion" else optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM)


# -- the contenders' training steps, timed ---------------------------------------------------------------
def make_batch(batch: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def synthetic_images(n: int):
    """The epoch's images: seeded noise (the speed does not depend on the pixels) and labels."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def cnnxp_optimizer(name: str, model):
    return Adam(model, lr=ADAM_LR) if name == "fashion" else SGD(model, lr=SGD_LR, momentum=MOMENTUM)


class CnnxpStep:
    """cnnxp's training step on a fixed batch, with every Conv2D forced to ``algorithm``."""

    def __init__(self, name: str, batch: int, device: str, algorithm: str = "auto"):
        self.name, self.device = name, cnnxp.get_device(device)
        self.model = models.build(name, seed=0, device=self.device)
        for conv in (layer for layer in self.model if isinstance(layer, Conv2D)):
            conv.algorithm = algorithm
        self.initial = {k: np.array(cnnxp.to_numpy(v), copy=True) for k, v in self.model.state_dict().items()}
        self.x, self.y = (cnnxp.to_device(a, self.device) for a in make_batch(batch))
        self.reset()

    def reset(self) -> None:
        """The initial weights again, and a fresh optimizer."""
        self.model.load_state_dict(self.initial)
        self.opt = cnnxp_optimizer(self.name, self.model)

    def step(self) -> None:
        logits = self.model(self.x)
        with self.device.activate():  # the loss's arrays on the model's GPU, as in fit
            _, grad = softmax_cross_entropy(logits, self.y, check_labels=False)  # labels checked once, as fit
        self.model.backward(grad, need_input_grad=False)
        self.opt.step()

    def sync(self) -> None:
        synchronize(self.device)


class TorchStep:
    """PyTorch's training step on the same batch, from the same weights."""

    def __init__(self, torch, name: str, batch: int, device: str):
        self.torch, self.name, self.device = torch, name, torch.device(device)
        self.model, _ = torch_preset(torch, name, self.device)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.x, self.y = (torch.from_numpy(a).to(self.device) for a in make_batch(batch))
        self.reset()

    def reset(self) -> None:
        self.model.load_state_dict(self.initial)
        self.model.train()
        self.opt = torch_optimizer(self.torch, self.name, self.model)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        torch_sync(self.torch, self.device)


def run_round(runner, steps: int) -> float:
    """Seconds for ``steps`` steps, the device synchronised before each clock read."""
    runner.sync()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    runner.sync()
    return time.perf_counter() - start


def calibrate(runner, seconds: float) -> int:
    """Steps per round so that a round lasts about ``seconds`` (at least one)."""
    steps = 1
    while (took := run_round(runner, steps)) < seconds / 4 and steps < 1024:
        steps *= 4
    return max(1, round(steps * seconds / max(took, 1e-9)))


def summary(rates: list[float], **extra) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "rounds": rates, **extra}


def time_steps(runner, batch: int, settings: dict, rounds: int | None = None) -> dict:
    """Images per second of ``runner``'s step: first use, calibration, warm-up and timed rounds, each reset."""
    runner.step()  # first use: CuPy compiles its kernels, cuBLAS and cuDNN pick theirs
    steps = calibrate(runner, settings["round_seconds"])
    rates = []
    for k in range(settings["warmup"] + (rounds or settings["rounds"])):
        runner.reset()
        took = run_round(runner, steps)
        if k >= settings["warmup"]:
            rates.append(steps * batch / took)
    return summary(rates, steps_per_round=steps)


# -- one epoch, timed whole ------------------------------------------------------------------------------
def cnnxp_epoch_seconds(name: str, batch: int, device: str, images, labels, seed: int) -> float:
    """``fit`` for one epoch over ``images`` (loader made before the clock starts), synchronised both ends."""
    model = models.build(name, seed=0, device=device)
    opt, loader = cnnxp_optimizer(name, model), DataLoader(images, labels, batch, shuffle=True, seed=seed, device=device)
    synchronize(device)
    start = time.perf_counter()
    fit(model, opt, loader, 1, progress=False, log=None)
    synchronize(device)
    return time.perf_counter() - start


def torch_epoch_seconds(torch, name: str, batch: int, device, images, labels, seed: int) -> float:
    """PyTorch's epoch: a permutation on the device, then per batch index, cast, normalise, train;
    the loss sum and correct count kept on the device and read once at the end, as ``fit`` does."""
    model, opt = torch_preset(torch, name, device)
    model.train()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    functional = torch.nn.functional
    n = int(images.shape[0])
    torch_sync(torch, device)
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator, device=device)
    loss_sum = correct = 0
    for first in range(0, n, batch):
        index = order[first:first + batch]
        x = (images[index].float() / 255.0 - NORMALIZE_MEAN) / NORMALIZE_STD
        y = labels[index]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        loss_sum = loss_sum + loss.detach() * y.shape[0]
        correct = correct + (logits.argmax(dim=1) == y).sum()
    loss_sum.item(), correct.item()  # the one read back of the epoch, as fit's history row
    torch_sync(torch, device)
    return time.perf_counter() - start


def time_epochs(run, images, labels, batch: int, rounds: int) -> dict:
    """Images per second of whole epochs; one untimed warm-up epoch on a few batches first."""
    few = min(len(labels), 2 * batch + max(1, batch // 2))  # full batches and a partial one
    run(images[:few], labels[:few], 0)
    rates = [len(labels) / run(images, labels, r + 1) for r in range(rounds)]
    return summary(rates, images=len(labels))


# -- the run, the table and the JSON ---------------------------------------------------------------------
def measure_preset(name: str, batch: int, args, torch, data) -> list[dict]:
    """Every row of one preset at one batch size: the step per algorithm, PyTorch's step, both epochs."""
    settings, device = args.settings, args.device
    rows = []

    def add(what, framework, rate, algorithm=None):
        rows.append({"model": name, "batch": batch, "what": what, "framework": framework, "algorithm": algorithm,
                     "device": device, "images_per_second": rate})
        label = f"{framework} {what}" + (f" ({algorithm})" if algorithm else "")
        print(f"  {name} b{batch} {label}: {fmt_rate(rate)} img/s", flush=True)

    for algorithm in ALGORITHMS:
        add("step", "cnnxp", time_steps(CnnxpStep(name, batch, device, algorithm), batch, settings), algorithm)
    if torch is not None:
        add("step", "torch", time_steps(TorchStep(torch, name, batch, device), batch, settings))
    images, labels = data
    add("epoch", "cnnxp", time_epochs(lambda i, l, s: cnnxp_epoch_seconds(name, batch, device, i, l, s),
                                      images, labels, batch, settings["epoch_rounds"]), "auto")
    if torch is not None:
        where = torch.device(device)
        images_t = torch.from_numpy(images).reshape(-1, 1, 28, 28).to(where)  # uint8 on the device
        labels_t = torch.from_numpy(labels).to(where)
        add("epoch", "torch", time_epochs(lambda i, l, s: torch_epoch_seconds(torch, name, batch, where, i, l, s),
                                          images_t, labels_t, batch, settings["epoch_rounds"]))
    return rows


def cpu_reference(args) -> dict:
    """cnnxp's LeNet-5 step on the CPU (NumPy) at the largest batch size, a few rounds."""
    batch = max(args.batch_sizes)
    rate = time_steps(CnnxpStep("lenet5", batch, "cpu"), batch, args.settings, rounds=args.settings["cpu_rounds"])
    print(f"  lenet5 b{batch} cnnxp step on the CPU: {fmt_rate(rate)} img/s", flush=True)
    return {"model": "lenet5", "batch": batch, "what": "step", "framework": "cnnxp-cpu", "algorithm": "auto",
            "device": "cpu", "images_per_second": rate}


def add_ratios(rows: list[dict]) -> None:
    """``ratio_torch`` (cnnxp over PyTorch, same model, batch and measurement) and ``ratio_cpu`` (cnnxp's
    step over cnnxp's CPU step at the same model and batch); None where there is nothing to compare."""
    medians = {(r["framework"], r["model"], r["batch"], r["what"]): r["images_per_second"]["median"] for r in rows}
    for row in rows:
        rate, mine = row["images_per_second"]["median"], row["framework"] == "cnnxp"
        torch_rate = medians.get(("torch", row["model"], row["batch"], row["what"])) if mine else None
        cpu_rate = medians.get(("cnnxp-cpu", row["model"], row["batch"], "step")) if mine else None
        row["ratio_torch"] = rate / torch_rate if torch_rate else None
        row["ratio_cpu"] = rate / cpu_rate if cpu_rate and row["what"] == "step" else None


def op_counts(batch: int):
    """Operations of one training step per preset (`cnnxp.opcount`), or why they were not counted."""
    try:
        from cnnxp.opcount import count_presets

        rows = count_presets((batch,), PRESETS)
    except ImportError as exc:
        return {"skipped": f"array_api_strict is missing ({exc}): pip install array-api-strict"}
    return [{k: r[k] for k in ("model", "batch", "optimizer", "ops", "kernels", "views", "to_device", "to_host")}
            for r in rows]


def environment(args, torch, tf32: dict) -> dict:
    meta = {"device": args.device, "numpy": np.__version__, "cnnxp": cnnxp.__version__,
            "python": platform.python_version(), "quick": args.quick, **args.settings,
            "batch_sizes": args.batch_sizes, "models": args.models, "epoch_images": args.epoch_images,
            "optimizers": {"lenet5": f"SGD(lr={SGD_LR}, momentum={MOMENTUM})", "fashion": f"Adam(lr={ADAM_LR})"},
            "torch": torch.__version__ if torch is not None else None, "tf32": tf32}
    if args.device.startswith("cuda"):
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cnnxp.get_device(args.device).native.id)
        meta["device_name"] = props["name"].decode()
        meta["cupy"] = cupy.__version__
        meta["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        meta["torch_cuda"] = torch.version.cuda if torch is not None else None
    else:
        meta["device_name"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return meta


def tf32_line(tf32: dict) -> str:
    before = "unset" if tf32["cupy_tf32_env_before"] is None else repr(tf32["cupy_tf32_env_before"])
    return f"TF32 off: CuPy CUPY_TF32={tf32['cupy_tf32_env']} (was {before})" + (
        f"; torch matmul.allow_tf32={tf32['torch_matmul_allow_tf32']}, cudnn.allow_tf32="
        f"{tf32['torch_cudnn_allow_tf32']}" if "torch_matmul_allow_tf32" in tf32 else "")


def fmt_rate(rate: dict | None) -> str:
    return "-" if not rate else f"{rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f})"


def print_table(rows: list[dict], meta: dict, counts) -> None:
    head = ["model", "batch", "what", "img/s median (min-max)", "vs torch", "vs cnnxp CPU"]
    table = [head]
    for r in rows:
        what = f"{r['framework']} {r['what']}" + (f" {r['algorithm']}" if r["what"] == "step" and r["algorithm"] else "")
        table.append([r["model"], str(r["batch"]), what, fmt_rate(r["images_per_second"]),
                      f"{r['ratio_torch']:.2f}x" if r.get("ratio_torch") else "-",
                      f"{r['ratio_cpu']:.1f}x" if r.get("ratio_cpu") else "-"])
    widths = [max(len(t[c]) for t in table) for c in range(len(head))]
    print(f"\n== results: {meta['device']} ({meta['device_name']}), torch {meta['torch']}; {tf32_line(meta['tf32'])}")
    for i, t in enumerate(table):
        print("  ".join(c.rjust(w) if k in (1, 3, 4, 5) else c.ljust(w)
                        for k, (c, w) in enumerate(zip(t, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("operations per step (array_api_strict): " + (counts["skipped"] if isinstance(counts, dict) else "; ".join(
        f"{c['model']} {c['optimizer']} {c['ops']} ({c['kernels']} computing, {c['views']} views, "
        f"{c['to_device']} to device, {c['to_host']} to host)" for c in counts)))


def main(args) -> int:
    started = time.perf_counter()
    torch, why_not, tf32 = load_torch(args.device, args.no_torch)
    meta = environment(args, torch, tf32)
    print(f"device {args.device} ({meta['device_name']}), numpy {meta['numpy']}, cupy {meta.get('cupy', '-')}, "
          f"torch {meta['torch'] or '- (' + why_not + ')'}; {tf32_line(meta['tf32'])}", flush=True)
    data = synthetic_images(args.epoch_images)
    rows = [row for name in args.models for batch in args.batch_sizes
            for row in measure_preset(name, batch, args, torch, data)]
    rows.append(cpu_reference(args))
    add_ratios(rows)
    counts = op_counts(min(64, min(args.batch_sizes)))
    meta["seconds"] = time.perf_counter() - started
    print_table(rows, meta, counts)
    print(f"total {meta['seconds']:.0f} s", flush=True)
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "op_counts": counts}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
