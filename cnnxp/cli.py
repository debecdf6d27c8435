"""The command-line programs behind ``scripts/train.py``, ``scripts/evaluate.py`` and ``scripts/inspect.py``.

Each ``*_main(argv)`` parses its arguments, does its work and returns the exit
status, so tests call them in-process. Bad arguments end with one line on stderr
(``train.py: error: ...``) and status 2 before any training starts; Ctrl-C during
training saves the last finished epoch and returns 130.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np  # host side: dataset arrays and one image for the pictures

from . import models
from .backend import DeviceUnavailableError, get_device, to_device
from .data import NORMALIZE_MEAN, NORMALIZE_STD, DataLoader, DatasetNotFoundError, load_dataset, parse_augment
from .optim import SGD, Adam
from .train import (
    Checkpoint,
    CheckpointError,
    History,
    checkpoint_arrays,
    cosine_lr,
    evaluate,
    exponential_lr,
    fit,
    load_checkpoint,
    predict,
    restore,
    write_arrays_atomic,
)

__all__ = ["train_main", "evaluate_main", "inspect_main", "DEFAULTS"]

DATASET_NAMES = ("mnist", "fashion-mnist", "mnist-sample")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("exponential", "cosine", "constant")

#: Defaults of the run's configuration; LeNet-5 with these reaches 97% on mnist-sample in 5 epochs.
DEFAULTS: dict[str, Any] = {
    "model": "lenet5",
    "epochs": 5,
    "batch_size": 16,
    "lr": 2e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "schedule": "exponential",
    "gamma": 0.7,
    "augment": "affine:12,2,0.12",
    "label_smoothing": 0.1,
    "seed": 0,
}
#: The configuration keys a resumed run takes from its checkpoint.
RESUMED_KEYS = ("dataset", "model", "batch_size", "lr", "optimizer", "momentum", "schedule", "gamma", "augment",
                "label_smoothing", "seed")
#: What a checkpoint written before a configuration key existed ran with.
OLDER_DEFAULTS = {"label_smoothing": 0.0}
EVAL_BATCH_SIZE = 500
CHECKPOINT_NAME = "checkpoint.npz"


class UsageError(Exception):
    """A bad argument or an unusable input, reported as one line before any work starts."""


class RunError(Exception):
    """A failure during the run (a file that cannot be written), reported as one line with status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


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


SEED_LIMIT = 2**63  # seeds are stored as int64 in checkpoints

_positive_int = _number(int, "a positive integer", lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, "a non-negative integer", lambda v: v >= 0, ">= 0")
_seed = _number(int, "a non-negative integer", lambda v: 0 <= v < SEED_LIMIT, "in [0, 2**63)")
_positive_float = _number(float, "a positive number", lambda v: v > 0 and math.isfinite(v), "a positive number")
_momentum = _number(float, "a number", lambda v: 0 <= v < math.inf, "a finite number >= 0")
_smoothing = _number(float, "a number", lambda v: 0 <= v < 1, "in [0, 1)")


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
    "gamma": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "seed": (lambda v: _is_int(v) and 0 <= v < SEED_LIMIT, "an integer in [0, 2**63)"),
}


def _augment_spec(text) -> str:
    """The canonical spelling of an augmentation (``none``, ``shift:N``, ``affine:D,P,S``)."""
    try:
        transform = parse_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bad augmentation ")) from None
    return "none" if transform is None else transform.spec()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(quiet: bool, *parts) -> None:
    if not quiet:
        print(*parts, flush=True)


def _note(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


def _device(name: str):
    try:
        return get_device(name)
    except (ValueError, DeviceUnavailableError) as exc:
        raise UsageError(_one_line(exc)) from None


def _check_writable(out: Path, what: str = "--out") -> Path | None:
    """Create ``out`` and prove a file can be written there, or raise UsageError.

    Returns the outermost directory this call created (None when ``out`` existed), for `_remove_empty`.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {str(out)!r} is a file, not a directory")
    created = None
    for folder in (out, *out.parents):
        if folder.exists():
            break
        created = folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _remove_empty(out, created)
        raise UsageError(f"cannot write to {what} {str(out)!r}: {exc.strerror or exc}") from None
    return created


def _new_run_dir(base: Path) -> tuple[Path, Path]:
    """Create ``base`` (or ``base-2``, ``base-3``, ...): a folder of this run's own, even for runs started together.

    Returns the folder and the outermost directory created for it (for `_remove_empty`).
    """
    for k in itertools.count(1):
        out = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if out.exists() or out.is_symlink():
            continue
        created = out
        for folder in out.parents:
            if folder.exists() or folder.is_symlink():
                break
            created = folder
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            if isinstance(exc, FileExistsError) and (out.exists() or out.is_symlink()):
                continue  # another run took this name a moment ago
            raise UsageError(f"cannot create the run folder {str(out)!r}: {exc.strerror or exc}") from None
        _check_writable(out)
        return out, created


def _remove_empty(out: Path | None, created: Path | None) -> None:
    """Remove the folders from ``out`` up to ``created`` that this run made and left empty."""
    if out is None or created is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()  # only succeeds on an empty directory
        except OSError:
            return
        if folder == created:
            return


def _load_checkpoint(path: str) -> Checkpoint:
    try:
        checkpoint = load_checkpoint(path)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path!r} does not exist") from None
    except CheckpointError as exc:
        raise UsageError(_one_line(exc)) from None
    _check_saved_config(checkpoint)
    return checkpoint


def _check_saved_config(checkpoint: Checkpoint) -> None:
    """UsageError for a configuration value in the checkpoint that no flag would have accepted."""
    for key, (valid, rule) in CONFIG_RULES.items():
        if key in checkpoint.config and not valid(checkpoint.config[key]):
            raise UsageError(f"checkpoint {str(checkpoint.path)!r} has a bad {key}: expected {rule}, "
                             f"got {checkpoint.config[key]!r}")


def _load_split(name: str, data_dir, split: str):
    try:
        return load_dataset(name, split, data_dir=data_dir)
    except DatasetNotFoundError as exc:
        first = str(exc).splitlines()[0].removesuffix(" in")
        raise UsageError(
            f"dataset {name!r} is not available ({first}; not downloadable): pass --data-dir DIR with its IDX "
            "files, set CNNXP_DATA, or use --dataset mnist-sample"
        ) from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"dataset {name!r} cannot be read: {_one_line(exc)}") from None


def _load_data(name: str | None, data_dir, prog: str):
    """(dataset name, train arrays, test arrays); without a name, full MNIST or else the bundled sample."""
    if name is not None:
        return name, _load_split(name, data_dir, "train"), _load_split(name, data_dir, "test")
    try:
        train = load_dataset("mnist", "train", data_dir=data_dir)
        test = load_dataset("mnist", "test", data_dir=data_dir)
        return "mnist", train, test
    except DatasetNotFoundError:
        _note(prog, "full MNIST is not on this machine and could not be downloaded; "
                    "training on the bundled sample (--dataset mnist-sample) instead")
    except (ValueError, OSError) as exc:
        _note(prog, f"full MNIST cannot be read ({_one_line(exc)}); training on the bundled sample instead")
    return "mnist-sample", load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")


def _make_optimizer(config: dict[str, Any], model):
    if config["optimizer"] == "adam":
        return Adam(model, lr=config["lr"])
    if config["optimizer"] == "sgd":
        return SGD(model, lr=config["lr"], momentum=config["momentum"])
    raise ValueError(f"unknown optimizer {config['optimizer']!r}: expected one of {', '.join(OPTIMIZERS)}")


def _normalise(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) as the loader feeds them: float32 (N, 1, 28, 28), normalised."""
    x = (images.astype(np.float32) / 255.0 - NORMALIZE_MEAN) / NORMALIZE_STD
    return x.reshape(x.shape[0], 1, *x.shape[1:])


def _plot(prog: str, quiet: bool, written: list[str], name: str, draw) -> bool:
    """Draw one plot; on a missing matplotlib print one note and return False (stop drawing).

    A picture that cannot be written raises RunError naming the file.
    """
    from .plots import PlotsUnavailable

    try:
        path = draw()
    except PlotsUnavailable as exc:
        _note(prog, f"note: {exc}")
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


def _write_json(path: Path, obj) -> None:
    """Write strict JSON (NaN and infinities as null) through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(_json_safe(obj), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _install_sigint():
    """Make Ctrl-C raise KeyboardInterrupt even when the shell started us with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return previous


# -- train.py ------------------------------------------------------------------------------------


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="train.py",
        description="Train a CNN on MNIST-family digits or garments; write a checkpoint, metrics, history and plots.",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dataset", choices=DATASET_NAMES,
                   help="default: mnist when it is on disk or downloadable, else the bundled mnist-sample")
    p.add_argument("--data-dir", help="directory with the dataset's IDX files (raw or .gz); searched first")
    p.add_argument("--model", choices=tuple(models.MODELS), help=f"network preset (default: {DEFAULTS['model']})")
    p.add_argument("--epochs", type=_positive_int,
                   help=f"total number of epochs (default: {DEFAULTS['epochs']}, or the resumed run's)")
    p.add_argument("--batch-size", type=_positive_int, help=f"default: {DEFAULTS['batch_size']}")
    p.add_argument("--lr", type=_positive_float, help=f"learning rate (default: {DEFAULTS['lr']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {DEFAULTS['optimizer']}")
    p.add_argument("--momentum", type=_momentum, help=f"SGD momentum (default: {DEFAULTS['momentum']})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate over the run: exponential (lr * gamma ** epochs done; resumes exactly), "
                        f"cosine (to 0 at --epochs) or constant (default: {DEFAULTS['schedule']})")
    p.add_argument("--gamma", type=_positive_float,
                   help=f"decay per epoch of the exponential schedule (default: {DEFAULTS['gamma']})")
    p.add_argument("--augment", type=_augment_spec, metavar="SPEC",
                   help="random distortions of the training images: none (or 0); N or shift:N (whole-pixel shifts "
                        "up to N); affine (rotations up to 12 degrees, shifts up to 2 pixels, zoom up to 12%%) or "
                        f"affine:DEGREES,PIXELS,SCALE (default: {DEFAULTS['augment']})")
    p.add_argument("--label-smoothing", type=_smoothing, metavar="EPS",
                   help="train against targets (1 - EPS) * one-hot + EPS / classes "
                        f"(default: {DEFAULTS['label_smoothing']})")
    p.add_argument("--seed", type=_seed, help="seed of the weights, the shuffling and dropout (default: 0)")
    p.add_argument("--out", help="output directory (default: a new runs/<dataset>-<model>-<time>, "
                                 "or the checkpoint's directory with --resume)")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint.npz")
    p.add_argument("--no-plots", action="store_true", help="skip the pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (for logs and CI)")
    return p


def _train_config(args, checkpoint: Checkpoint | None) -> dict[str, Any]:
    given = {key: getattr(args, key) for key in RESUMED_KEYS if getattr(args, key) is not None}
    if checkpoint is None:
        config = {**DEFAULTS, **given, "dataset": args.dataset}
    else:
        saved = {**OLDER_DEFAULTS, **checkpoint.config}
        if "augment" in saved:
            try:
                saved["augment"] = _augment_spec(saved["augment"])
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"checkpoint {str(checkpoint.path)!r} has a bad augmentation: {exc}") from None
        missing = [k for k in RESUMED_KEYS if k not in saved]
        if missing:
            raise UsageError(f"checkpoint {str(checkpoint.path)!r} lacks the run configuration ({', '.join(missing)})")
        _check_saved_config(checkpoint)
        for key, value in given.items():
            if value != saved[key]:
                flag = "--" + key.replace("_", "-")
                raise UsageError(
                    f"{flag} {value} differs from the checkpoint's {saved[key]}: a resumed run keeps its "
                    "configuration (leave the flag out, or start a new run)"
                )
        config = {**DEFAULTS, **{k: saved[k] for k in RESUMED_KEYS}}
        config["epochs"] = saved.get("epochs", DEFAULTS["epochs"])
    if args.epochs is not None:
        config["epochs"] = args.epochs
    return config


def train_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py``: returns the exit status (0; 1 when a file cannot be written; 2 for bad
    arguments, with any folder it made for them removed again; 130 after Ctrl-C)."""
    prog = "train.py"
    previous_handler = _install_sigint()
    out = created = None
    try:
        try:
            args = train_parser().parse_args(argv)
            checkpoint = _load_checkpoint(args.resume) if args.resume else None
            config = _train_config(args, checkpoint)
            device = _device(args.device)
            if args.out is not None:
                out = Path(args.out)
                created = _check_writable(out)
            elif checkpoint is not None:
                out = Path(args.resume).resolve().parent
                _check_writable(out, "the checkpoint's directory")
            dataset, (x_train, y_train), (x_test, y_test) = _load_data(config["dataset"], args.data_dir, prog)
            config["dataset"] = dataset
            if out is None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                out, created = _new_run_dir(Path("runs") / f"{dataset}-{config['model']}-{stamp}")
        except KeyboardInterrupt:
            _remove_empty(out, created)
            _note(prog, "interrupted before training started: nothing was written")
            return 130
        return _train(args, config, checkpoint, device, out, (x_train, y_train), (x_test, y_test), prog, created)
    except UsageError as exc:
        _remove_empty(out, created)
        _note(prog, f"error: {exc}")
        return 2
    except RunError as exc:
        _note(prog, f"error: {exc}")
        return 1
    except OSError as exc:  # a picture or the last checkpoint that cannot be written
        where = f"cannot write {exc.filename!r}: {exc.strerror}" if exc.filename else _one_line(exc)
        _note(prog, f"error: {where}")
        return 1
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)


def _train(args, config, checkpoint, device, out: Path, train_data, test_data, prog: str,
           created: Path | None) -> int:
    ckpt_path = out / CHECKPOINT_NAME
    # The last finished epoch as host arrays, and whether that state is on disk at ckpt_path.
    last = {"arrays": None, "epoch": 0, "saved": False}
    hint = _resume_hint(args, device, ckpt_path)
    try:
        return _run(args, config, checkpoint, device, out, train_data, test_data, prog, ckpt_path, last)
    except KeyboardInterrupt:
        if last["arrays"] is None:
            _remove_empty(out, created)  # the folders this run made, if nothing went into them yet
        return _interrupted(last, ckpt_path, prog, hint, args.resume)


def _resume_hint(args, device, ckpt_path: Path) -> str:
    """The command that continues this run, with the flags it cannot take from the checkpoint."""
    words = ["python", "scripts/train.py", "--resume", str(ckpt_path)]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    if device.name != "cpu":
        words += ["--device", device.name]
    return " ".join(shlex.quote(w) for w in words)


def _run(args, config, checkpoint, device, out: Path, train_data, test_data, prog: str, ckpt_path: Path,
         last: dict[str, Any]) -> int:
    quiet = args.quiet
    x_train, y_train = train_data
    x_test, y_test = test_data
    model = models.build(config["model"], seed=config["seed"], device=device)
    optimizer = _make_optimizer(config, model)
    train_loader = DataLoader(x_train, y_train, config["batch_size"], shuffle=True, seed=config["seed"], device=device,
                              augment=parse_augment(config["augment"]))
    test_loader = DataLoader(x_test, y_test, EVAL_BATCH_SIZE, shuffle=False, device=device)
    history = History()
    if checkpoint is not None:
        try:
            restore(checkpoint, model, optimizer, train_loader)
        except (CheckpointError, KeyError, ValueError) as exc:
            raise UsageError(_one_line(exc)) from None
        history = checkpoint.history
        last.update(arrays=checkpoint_arrays(model, optimizer, epoch=checkpoint.epoch, history=history,
                                             config=config, loader=train_loader),
                    epoch=checkpoint.epoch,
                    saved=ckpt_path.resolve() == Path(args.resume).resolve())

    names = _class_names(config["dataset"])
    plots_ok = not args.no_plots
    written: list[str] = []
    _say(quiet, f"{config['model']} ({model.num_parameters():,} parameters) on {config['dataset']} "
                f"({len(y_train):,} training / {len(y_test):,} test images), device {device.name}")
    _say(quiet, f"{config['optimizer']} lr {config['lr']:g} ({config['schedule']}), batch {config['batch_size']}, "
                f"augmentation {config['augment']}, label smoothing {config['label_smoothing']:g}, "
                f"{config['epochs']} epochs, seed {config['seed']}; "
                f"writing to {out}")
    if checkpoint is not None:
        _say(quiet, f"resuming from {args.resume} after epoch {checkpoint.epoch}")
    if plots_ok:
        from . import plots

        plots_ok = _plot(prog, quiet, written, "samples",
                         lambda: plots.plot_samples(x_train, y_train, out / "samples.png", names,
                                                    title=f"{config['dataset']} training images"))

    def on_epoch_end(hist: History) -> None:
        epoch = hist.last["epoch"]
        on_disk = last["epoch"] if last["saved"] else None
        last.update(arrays=checkpoint_arrays(model, optimizer, epoch=epoch, history=hist, config=config,
                                             loader=train_loader), epoch=epoch, saved=False)
        try:
            write_arrays_atomic(ckpt_path, last["arrays"])
        except OSError as exc:
            kept = f"; the checkpoint of epoch {on_disk} there is intact" if on_disk else ""
            raise RunError(f"cannot write the checkpoint of epoch {epoch} to {str(ckpt_path)!r}: "
                           f"{exc.strerror or exc}{kept}") from None
        last["saved"] = True
        _write_json(out / "history.json", hist.rows)

    schedule = {"exponential": lambda: exponential_lr(config["lr"], config["gamma"]),
                "cosine": lambda: cosine_lr(config["lr"]),
                "constant": lambda: None}[config["schedule"]]()
    if len(history) < config["epochs"]:
        fit(model, optimizer, train_loader, config["epochs"], test_loader, history=history,
            label_smoothing=config["label_smoothing"], lr_schedule=schedule, progress=not quiet,
            log=None if quiet else print,
            on_epoch_end=on_epoch_end)
    else:
        _say(quiet, f"the checkpoint already has {len(history)} epochs (--epochs {config['epochs']}): "
                    "nothing to train, evaluating")

    result = evaluate(model, test_loader, return_predictions=True)
    rows = history.rows
    train_seconds = sum(r.get("seconds") or 0.0 for r in rows)
    images = len(y_train) * len(rows)
    metrics = {
        "dataset": config["dataset"],
        "model": config["model"],
        "device": device.name,
        "epochs": len(rows),
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "train_seconds": train_seconds,
        "images_per_second": images / train_seconds if train_seconds else None,
        "train_accuracy": rows[-1].get("train_accuracy") if rows else None,
        "train_loss": rows[-1].get("train_loss") if rows else None,
        "per_class_accuracy": {names[i]: float(a) for i, a in enumerate(result.per_class_accuracy)},
        "num_parameters": model.num_parameters(),
        "train_samples": len(y_train),
        "test_samples": len(y_test),
        "config": config,
    }
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "history.json", history.rows)
    if not last["saved"]:  # e.g. resumed into a new --out with nothing left to train
        write_arrays_atomic(ckpt_path, checkpoint_arrays(model, optimizer, epoch=len(rows), history=history,
                                                         config=config, loader=train_loader))
    if plots_ok:
        from . import plots

        wrong = result.predictions != result.labels
        index = int(np.flatnonzero(~wrong)[0]) if (~wrong).any() else 0
        label = f"true {names[int(y_test[index])]}, test image {index}"
        draws = [
            ("history", lambda: plots.plot_history(history, out / "history.png",
                                                   title=f"{config['model']} on {config['dataset']}")),
            ("feature_maps", lambda: plots.plot_feature_maps(model, _normalise(x_test[index:index + 1]),
                                                             out / "feature_maps.png", label=label)),
            ("filters", lambda: plots.plot_filters(model, out / "filters.png")),
            ("confusion", lambda: plots.plot_confusion(result.confusion, out / "confusion_matrix.png", names)),
            ("misclassified", lambda: plots.plot_misclassified(
                x_test, result.labels, result.predictions, out / "misclassified.png", names)),
        ]
        for name, draw in draws:
            if not _plot(prog, quiet, written, name, draw):
                break

    files = ", ".join([CHECKPOINT_NAME, "metrics.json", "history.json", *written])
    print(f"test accuracy {100 * result.accuracy:.2f}% (loss {result.loss:.4f}) after {len(history)} epochs "
          f"on {config['dataset']}, {metrics['train_seconds']:.1f} s of training", flush=True)
    print(f"wrote {out}/: {files}", flush=True)
    return 0


def _interrupted(last: dict[str, Any], ckpt_path: Path, prog: str, hint: str, resumed_from: str | None) -> int:
    if last["arrays"] is None:
        if resumed_from:
            _note(prog, f"interrupted before training resumed: {resumed_from} is as it was")
        else:
            _note(prog, "interrupted before the first epoch finished: no checkpoint was written")
        return 130
    if not last["saved"]:
        try:
            write_arrays_atomic(ckpt_path, last["arrays"])
            last["saved"] = True
        except KeyboardInterrupt:
            pass
    if last["saved"]:
        _note(prog, f"interrupted: the checkpoint of epoch {last['epoch']} is {ckpt_path}; continue with: {hint}")
    else:
        _note(prog, f"interrupted: could not write the checkpoint of epoch {last['epoch']}")
    return 130


def _class_names(dataset: str | None) -> list[str]:
    from .plots import class_names  # plots imports matplotlib lazily, so this is cheap

    return class_names(dataset)


# -- evaluate.py -----------------------------------------------------------------------------------


def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="evaluate.py", description="Test accuracy, per-class accuracy and confusion matrix of a checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by train.py")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", help="directory with the dataset's IDX files")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=EVAL_BATCH_SIZE)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--out", help="also draw confusion_matrix.png and misclassified.png into this directory")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    prog = "evaluate.py"
    out = created = None
    try:
        args = evaluate_parser().parse_args(argv)
        checkpoint = _load_checkpoint(args.checkpoint)
        config = checkpoint.config
        if "model" not in config:
            raise UsageError(f"checkpoint {args.checkpoint!r} does not say which model it holds")
        dataset = args.dataset or config.get("dataset")
        if dataset is None:
            raise UsageError("the checkpoint does not name its dataset: pass --dataset")
        device = _device(args.device)
        if args.out:
            out = Path(args.out)
            created = _check_writable(out)
        images, labels = _load_split(dataset, args.data_dir, args.split)
        model = models.build(config["model"], seed=0, device=device)
        try:
            restore(checkpoint, model)
        except CheckpointError as exc:
            raise UsageError(_one_line(exc)) from None
    except UsageError as exc:
        _remove_empty(out, created)
        _note(prog, f"error: {exc}")
        return 2
    try:
        loader = DataLoader(images, labels, args.batch_size, shuffle=False, device=device)
        start = time.perf_counter()
        result = evaluate(model, loader, return_predictions=True)
        seconds = time.perf_counter() - start
        names = _class_names(dataset)
        print(f"{config['model']} from {args.checkpoint} (epoch {checkpoint.epoch}) on {dataset} {args.split} "
              f"({result.num_samples:,} images, device {device.name}, {seconds:.1f} s)")
        print(f"{args.split} accuracy {100 * result.accuracy:.2f}%  loss {result.loss:.4f}")
        print()
        width = max(len(n) for n in names)
        print(f"{'class':<{width}}  accuracy   images")
        for i, acc in enumerate(result.per_class_accuracy):
            print(f"{names[i]:<{width}}  {100 * acc:7.2f}%  {int(result.confusion[i].sum()):7,}")
        print()
        print("confusion matrix (rows: true class, columns: predicted class)")
        k = result.confusion.shape[0]
        cell = max(5, len(str(int(result.confusion.max()))) + 1)
        print(" " * (width + 1) + "".join(f"{j:>{cell}}" for j in range(k)))
        for i in range(k):
            print(f"{names[i]:<{width}} " + "".join(f"{int(v):>{cell}}" for v in result.confusion[i]))
        if args.out:
            from . import plots

            out = Path(args.out)
            written: list[str] = []
            if _plot(prog, False, written, "confusion",
                     lambda: plots.plot_confusion(result.confusion, out / "confusion_matrix.png", names,
                                                  title=f"Confusion matrix ({dataset} {args.split})")):
                _plot(prog, False, written, "misclassified",
                      lambda: plots.plot_misclassified(images, result.labels, result.predictions,
                                                       out / "misclassified.png", names,
                                                       title=f"Misclassified {args.split} images"))
            if written:
                print(f"wrote {', '.join(str(out / w) for w in written)}")
    except RunError as exc:
        _note(prog, f"error: {exc}")
        return 1
    return 0


# -- inspect.py ------------------------------------------------------------------------------------


def inspect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inspect.py",
                description="Per-layer forward/backward times and the feature maps of one test image.")
    p.add_argument("--checkpoint", help="a checkpoint.npz (default: a freshly initialised --model)")
    p.add_argument("--model", choices=tuple(models.MODELS), help="preset when no checkpoint is given (default: lenet5)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dataset", choices=DATASET_NAMES,
                   help="where the test image comes from (default: the checkpoint's dataset, else mnist-sample)")
    p.add_argument("--data-dir")
    p.add_argument("--index", type=_non_negative_int, default=0, help="index of the test image (default: 0)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch for the timings (default: 64)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per layer; the median is shown")
    p.add_argument("--out", help="directory for feature_maps_<index>.png (default: the checkpoint's directory, or .)")
    return p


def inspect_main(argv: Sequence[str] | None = None) -> int:
    prog = "inspect.py"
    out = created = None
    try:
        args = inspect_parser().parse_args(argv)
        checkpoint = _load_checkpoint(args.checkpoint) if args.checkpoint else None
        config = checkpoint.config if checkpoint is not None else {}
        model_name = config.get("model") or args.model or DEFAULTS["model"]
        if checkpoint is not None and args.model and args.model != model_name:
            raise UsageError(f"--model {args.model} differs from the checkpoint's {model_name}")
        dataset = args.dataset or config.get("dataset") or "mnist-sample"
        device = _device(args.device)
        if args.out:
            out = Path(args.out)
        elif checkpoint is not None:
            out = Path(args.checkpoint).resolve().parent
        else:
            out = Path(".")
        created = _check_writable(out)
        images, labels = _load_split(dataset, args.data_dir, "test")
        if args.index >= len(labels):
            raise UsageError(f"--index {args.index} is out of range: the {dataset} test set has {len(labels)} images")
        model = models.build(model_name, seed=args.seed, device=device)
        if checkpoint is not None:
            try:
                restore(checkpoint, model)
            except CheckpointError as exc:
                raise UsageError(_one_line(exc)) from None
    except UsageError as exc:
        _remove_empty(out, created)
        _note(prog, f"error: {exc}")
        return 2
    from .timing import format_layer_times, layer_times

    names = _class_names(dataset)
    source = f"{args.checkpoint} (epoch {checkpoint.epoch})" if checkpoint is not None else "fresh weights"
    print(model.summary())
    print()
    batch = min(args.batch_size, len(labels))
    x = to_device(_normalise(images[:batch]), device)
    y = to_device(labels[:batch], device)
    rows = layer_times(model, x, y, repeats=args.repeats)
    print(f"per-layer time on {device.name}, batch of {batch}, median of {args.repeats} runs "
          "(device synchronised around each layer)")
    print(format_layer_times(rows, batch_size=batch))
    print()
    image = _normalise(images[args.index:args.index + 1])
    classes, probs = predict(model, image)
    predicted = int(np.asarray(_host(classes))[0])
    p = np.asarray(_host(probs))[0]
    print(f"{model_name} ({source}) on {dataset} test image {args.index}: true {names[int(labels[args.index])]}, "
          f"predicted {names[predicted]} ({100 * p[predicted]:.1f}%)")
    try:
        from . import plots

        written: list[str] = []
        label = f"test image {args.index}, true {names[int(labels[args.index])]}, predicted {names[predicted]}"
        _plot(prog, False, written, "feature_maps",
              lambda: plots.plot_feature_maps(model, image, out / f"feature_maps_{args.index}.png", label=label))
        if written:
            print(f"wrote {out / written[0]}")
    except RunError as exc:
        _note(prog, f"error: {exc}")
        return 1
    return 0


def _host(x):
    from .backend import to_numpy

    return to_numpy(x)
