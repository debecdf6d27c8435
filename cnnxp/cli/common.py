"""What the three programs share: errors and notes, argument types, device, checkpoint loading, output.

Every failure a user can cause ends as one line on stderr: `UsageError` (status 2,
before any work starts) or `RunError` (status 1, a file that cannot be written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np  # host side: dataset arrays and one image for the pictures

from .. import models
from .._files import atomic_write
from ..backend import DeviceUnavailableError, get_device, to_numpy
from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore
from ..data import NORMALIZE_MEAN, NORMALIZE_STD

DATASET_NAMES = ("mnist", "fashion-mnist", "mnist-sample")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("exponential", "cosine", "constant")
SEED_LIMIT = 2**63  # seeds are stored as int64 in checkpoints
EVAL_BATCH_SIZE = 500

#: Defaults of a run that no recipe holds; the training settings come from `cnnxp.recipes`.
DEFAULTS: dict[str, Any] = {"model": "lenet5", "seed": 0}


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``, ``4,000 images``."""
    return f"{count:,} {word}" + ("" if count == 1 else "s")


# -- a program's two halves -------------------------------------------------------------------------


@dataclass
class Job:
    """What evaluate.py and inspect.py work on: a model (restored from ``checkpoint``, or fresh),
    its device, a dataset split, and the folder for pictures (None: none drawn)."""

    checkpoint: Checkpoint | None
    model_name: str
    dataset: str
    device: Any
    images: np.ndarray
    labels: np.ndarray
    model: Any
    out: Path | None = None


def run_program(prog: str, argv: Sequence[str] | None, parser: Callable[[], argparse.ArgumentParser],
                prepare: Callable[[argparse.Namespace], Job], work: Callable[[argparse.Namespace, Job], None]) -> int:
    """Parse ``argv`` and ``prepare`` the `Job` (a `UsageError` ends it with one line, status 2), then
    ``work`` on it (a `RunError` ends it with one line, status 1); 0 when all went well, 141 (quietly)
    when stdout's reader went away (``| head``)."""
    try:
        args = parser().parse_args(argv)
        job = prepare(args)
    except UsageError as exc:
        note(prog, f"error: {exc}")
        return 2
    try:
        work(args, job)
        sys.stdout.flush()  # here, not at exit, where a reader that went away would end in a traceback
    except RunError as exc:
        note(prog, f"error: {exc}")
        return 1
    except BrokenPipeError:
        return broken_pipe()
    return 0


def broken_pipe() -> int:
    """stdout's reader went away (``... | head -2``): end quietly, as Unix tools do, with 141 (128 +
    SIGPIPE). stdout goes to the null device, so that Python's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's capture)
        pass
    return 141


# -- errors and one-line notes ---------------------------------------------------------------------


class UsageError(Exception):
    """A bad argument or an unusable input, reported as one line before any work starts."""


class RunError(Exception):
    """A failure during the run (a file that cannot be written), reported as one line with status 1."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


_OUTPUT = {"silent": False}


def set_silent(silent: bool) -> None:
    """Silence `say` and `note` (every process of a data-parallel job but rank 0)."""
    _OUTPUT["silent"] = bool(silent)


def is_silent() -> bool:
    return _OUTPUT["silent"]


def say(quiet: bool, *parts) -> None:
    if not quiet and not _OUTPUT["silent"]:
        print(*parts, flush=True)


def note(prog: str, message: str) -> None:
    if not _OUTPUT["silent"]:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)


# -- arguments -------------------------------------------------------------------------------------


def add_place_flags(p: argparse.ArgumentParser, dataset_help: str,
                    data_dir_help: str = "directory with the dataset's IDX files, searched before $CNNXP_DATA "
                                         "and ~/.cache/cnnxp (default: none)") -> None:
    """The flags every program has: ``--device``, ``--dataset``, ``--data-dir`` and ``--trust-data``."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help=dataset_help)
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--trust-data", action="store_true",
                   help="use local dataset files even when they are not the published ones (with a warning)")


def add_checkpoint_args(p: argparse.ArgumentParser, help: str) -> None:
    """The checkpoint, given as evaluate.py and inspect.py both take it: positional, or ``--checkpoint``."""
    p.add_argument("checkpoint", nargs="?", help=help)
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="PATH",
                   help="the same as CHECKPOINT, as a flag (default: none)")


def checkpoint_arg(args, prog: str, required: bool) -> str | None:
    """The checkpoint given positionally or with ``--checkpoint``; UsageError for two different ones, or none
    where one is ``required``. The same checkpoint given both ways (a run folder and its checkpoint.npz, say)
    is one checkpoint (`_checkpoint_file`)."""
    given = [path for path in (args.checkpoint, args.checkpoint_flag) if path is not None]
    if len(given) == 2 and _checkpoint_file(given[0]) != _checkpoint_file(given[1]):
        raise UsageError(f"two checkpoints given ({given[0]!r} and --checkpoint {given[1]!r}): pass one")
    if not given and required:
        raise UsageError(f"expected a checkpoint: {prog} CHECKPOINT (a checkpoint.npz written by train.py, or the "
                         "run folder holding it)")
    return given[0] if given else None


def _checkpoint_file(path: str) -> Path:
    """The checkpoint file ``path`` names, resolved: a run folder stands for the checkpoint.npz in it."""
    file = Path(path) / "checkpoint.npz" if os.path.isdir(path) else Path(path)
    return file.resolve()


def place_words(data_dir: str | None, trust_data: bool, device_name: str, processes: int = 1) -> list[str]:
    """The flags of a command that say where the data is and what runs it (no checkpoint holds them):
    ``--data-dir`` and ``--trust-data`` when they were given, ``--device`` when it is not the CPU
    (``cuda`` for a run of several processes, each of which takes the GPU of its rank on the node)."""
    words = ["--data-dir", data_dir] if data_dir else []
    words += ["--trust-data"] if trust_data else []
    if processes > 1 and device_name.startswith("cuda"):
        device_name = "cuda"
    return words + (["--device", device_name] if device_name != "cpu" else [])


def launcher_words(processes: int = 1) -> list[str]:
    """How a command starts: ``python``, or ``mpiexec -n N python -m mpi4py`` for a run of N processes
    (a run repeats, and a checkpoint resumes, exactly on as many processes as it had)."""
    return ["mpiexec", "-n", str(processes), "python", "-m", "mpi4py"] if processes > 1 else ["python"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)

    def print_help(self, file=None):  # --help under an MPI launcher: once, by rank 0
        if not is_silent():
            super().print_help(file)


def _number(cast, expected: str, valid, rule: str):
    """An argparse type: ``cast(text)``, then ``valid(value)``, each failure one line."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


positive_int = _number(int, "a positive integer", lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, "a non-negative integer", lambda v: v >= 0, ">= 0")
seed_int = _number(int, "a non-negative integer", lambda v: 0 <= v < SEED_LIMIT, "in [0, 2**63)")
positive_float = _number(float, "a positive number", lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _number(float, "a number", lambda v: 0 <= v < math.inf, "a finite number >= 0")
gamma_float = _number(float, "a number in (0, 1]", lambda v: 0 < v <= 1, "in (0, 1] (a decay)")
smoothing_float = _number(float, "a number", lambda v: 0 <= v < 1, "in [0, 1)")


def find_device(name: str):
    """The device named by ``--device``; UsageError whose advice names the flag (the library's names the device)."""
    try:
        return get_device(name)
    except (ValueError, DeviceUnavailableError) as exc:
        raise UsageError(one_line(exc).replace("the CPU (device 'cpu')", "the CPU (--device cpu)")) from None


# -- checkpoints and the configuration they carry ---------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _one_of(names) -> tuple:
    return (lambda v: isinstance(v, str) and v in names), "one of " + ", ".join(map(repr, names))


#: What a resumed checkpoint's configuration values must be: (test, rule) per key.
CONFIG_RULES = {
    "dataset": _one_of(DATASET_NAMES),
    "model": _one_of(tuple(models.MODELS)),
    "epochs": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "optimizer": _one_of(OPTIMIZERS),
    "momentum": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "schedule": _one_of(SCHEDULES),
    "gamma": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "recipe": (lambda v: v is None or isinstance(v, str), "a recipe's name or null"),
    "sources": (lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
                "an object naming where each setting came from"),
    "seed": (lambda v: _is_int(v) and 0 <= v < SEED_LIMIT, "an integer in [0, 2**63)"),
    "commands": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) for c in v),
                 "a list of the commands that repeat the run"),
}


def check_saved_config(checkpoint: Checkpoint) -> None:
    """UsageError for a configuration value in the checkpoint that no flag would have accepted."""
    for key, (valid, rule) in CONFIG_RULES.items():
        if key in checkpoint.config and not valid(checkpoint.config[key]):
            raise UsageError(f"checkpoint {str(checkpoint.path)!r} has a bad {key}: expected {rule}, "
                             f"got {checkpoint.config[key]!r}")


def read_checkpoint(path: str) -> Checkpoint:
    """`load_checkpoint` with its configuration checked; UsageError for a file that is missing or bad.
    A run folder stands for the ``checkpoint.npz`` in it."""
    if os.path.isdir(path):
        inside = os.path.join(path, "checkpoint.npz")
        if not os.path.isfile(inside):
            raise UsageError(f"{path!r} is a folder without a checkpoint.npz: pass a checkpoint file, "
                             "or the folder of a run that finished an epoch")
        path = inside
    try:
        checkpoint = load_checkpoint(path)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path!r} does not exist") from None
    except CheckpointError as exc:
        raise UsageError(one_line(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the checkpoint {path!r}: {exc.strerror or exc}") from None
    check_saved_config(checkpoint)
    return checkpoint


def restore_or_refuse(checkpoint: Checkpoint, model, optimizer=None, loader=None) -> None:
    """`restore`, with a checkpoint that does not fit the model (or its optimizer, its loader) a UsageError."""
    try:
        restore(checkpoint, model, optimizer, loader)
    except (CheckpointError, KeyError, ValueError) as exc:
        raise UsageError(one_line(exc)) from None


# -- images and names -----------------------------------------------------------------------------


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) as the loader feeds them: float32 (N, 1, 28, 28), normalised."""
    x = (images.astype(np.float32) / 255.0 - NORMALIZE_MEAN) / NORMALIZE_STD
    return x.reshape(x.shape[0], 1, *x.shape[1:])


def prediction_text(model, image: np.ndarray, names: list[str], true_label: int) -> tuple[str, int]:
    """What the model makes of one normalised image (1, 1, H, W): ``true 7, predicted 7 (98.2%)``, and the
    predicted class (inspect.py's line and the feature maps' title say it alike)."""
    from ..train import predict

    classes, probs = predict(model, image)
    predicted = int(np.asarray(to_numpy(classes))[0])
    p = float(np.asarray(to_numpy(probs))[0, predicted])
    return f"true {names[int(true_label)]}, predicted {names[predicted]} ({100 * p:.1f}%)", predicted


def class_names(dataset: str | None) -> list[str]:
    from ..plots import class_names as names  # plots imports matplotlib lazily, so this is cheap

    return names(dataset)


# -- output ----------------------------------------------------------------------------------------


def draw_plot(prog: str, written: list[str], name: str, draw) -> bool:
    """Draw one plot; on a missing matplotlib print one note and return False (stop drawing).

    A picture that cannot be written raises RunError naming the file.
    """
    from ..plots import PlotsUnavailable

    try:
        path = draw()
    except PlotsUnavailable as exc:
        note(prog, f"note: {exc}")
        return False
    except OSError as exc:
        where = repr(exc.filename) if exc.filename else f"the {name} picture"
        raise RunError(f"cannot write {where}: {exc.strerror or exc}") from None
    written.append(Path(path).name)
    return True


def _json_safe(obj):
    """``obj`` with every non-finite float (a diverged run's loss) as None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Write strict JSON (NaN and infinities as null) atomically, so a reader never sees half a file."""
    try:
        with atomic_write(path, "w") as f:
            json.dump(_json_safe(obj), f, indent=1, allow_nan=False)
    except OSError as exc:
        raise RunError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
