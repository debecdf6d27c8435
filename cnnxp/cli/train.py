"""``scripts/train.py``: train a network, with a checkpoint after every epoch, then metrics, history and pictures.

The steps of `train_main`, each a function below:

1. parse the flags; read the checkpoint to resume (``--resume``) and resolve the run's
   configuration (`train_config`: the flags, else the checkpoint's, else `DEFAULTS`);
2. find the device, the output folder and the data (`load_data`, with its fallback to
   the bundled sample); bad input ends here with one line and status 2;
3. build the run (`_build`: model, optimizer, loaders) and restore a resumed one (`_resume`);
4. train (`_train_epochs`: `cnnxp.train.fit`, `_save_epoch` after every epoch);
5. evaluate, write ``metrics.json`` and ``history.json`` (`_metrics`), draw the
   pictures (`_draw_pictures`) and report.

Ctrl-C saves the last finished epoch (`runs.LastEpoch`, `runs.interrupted`) and ends with status 130.
"""

from __future__ import annotations

import argparse
import functools
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np  # host side: which test image the pictures show

from .. import distributed, models
from ..checkpoint import Checkpoint, checkpoint_arrays, write_checkpoint
from ..data import DataLoader, parse_augment
from ..optim import SGD, Adam
from ..train import EvalResult, History, cosine_lr, evaluate, exponential_lr, fit
from . import parallel
from .common import (
    DEFAULTS,
    EVAL_BATCH_SIZE,
    OPTIMIZERS,
    SCHEDULES,
    Parser,
    RunError,
    UsageError,
    add_place_flags,
    check_saved_config,
    class_names,
    draw_plot,
    find_device,
    load_data,
    momentum_float,
    normalise,
    note,
    one_line,
    positive_float,
    positive_int,
    read_checkpoint,
    restore_or_refuse,
    say,
    seed_int,
    set_silent,
    smoothing_float,
    write_json,
)
from .runs import LastEpoch, check_writable, interrupted, new_run_dir, remove_empty, resume_hint

__all__ = ["train_main", "train_parser", "train_config", "DEFAULTS", "RESUMED_KEYS", "OLDER_DEFAULTS"]

PROG = "train.py"
CHECKPOINT_NAME = "checkpoint.npz"
#: The configuration keys a resumed run takes from its checkpoint.
RESUMED_KEYS = ("dataset", "model", "batch_size", "lr", "optimizer", "momentum", "schedule", "gamma", "augment",
                "label_smoothing", "seed")
#: What a checkpoint written before a configuration key existed ran with.
OLDER_DEFAULTS = {"label_smoothing": 0.0}


# -- flags and the run's configuration -------------------------------------------------------------


def augment_spec(text) -> str:
    """The canonical spelling of an augmentation (``none``, ``shift:N``, ``affine:D,P,S``)."""
    try:
        transform = parse_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bad augmentation ")) from None
    return "none" if transform is None else transform.spec()


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Train a CNN on MNIST-family digits or garments; write a checkpoint, metrics, history and plots.",
    )
    add_place_flags(p, "default: mnist when it is on disk or downloadable, else the bundled mnist-sample",
                    "directory with the dataset's IDX files (raw or .gz); searched first")
    p.add_argument("--model", choices=tuple(models.MODELS), help=f"network preset (default: {DEFAULTS['model']})")
    p.add_argument("--epochs", type=positive_int,
                   help=f"total number of epochs (default: {DEFAULTS['epochs']}, or the resumed run's)")
    p.add_argument("--batch-size", type=positive_int, help=f"default: {DEFAULTS['batch_size']}")
    p.add_argument("--lr", type=positive_float, help=f"learning rate (default: {DEFAULTS['lr']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {DEFAULTS['optimizer']}")
    p.add_argument("--momentum", type=momentum_float, help=f"SGD momentum (default: {DEFAULTS['momentum']})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate over the run: exponential (lr * gamma ** epochs done; resumes exactly), "
                        f"cosine (to 0 at --epochs) or constant (default: {DEFAULTS['schedule']})")
    p.add_argument("--gamma", type=positive_float,
                   help=f"decay per epoch of the exponential schedule (default: {DEFAULTS['gamma']})")
    p.add_argument("--augment", type=augment_spec, metavar="SPEC",
                   help="random distortions of the training images: none (or 0); N or shift:N (whole-pixel shifts "
                        "up to N); affine (rotations up to 12 degrees, shifts up to 2 pixels, zoom up to 12%%) or "
                        f"affine:DEGREES,PIXELS,SCALE (default: {DEFAULTS['augment']})")
    p.add_argument("--label-smoothing", type=smoothing_float, metavar="EPS",
                   help="train against targets (1 - EPS) * one-hot + EPS / classes "
                        f"(default: {DEFAULTS['label_smoothing']})")
    p.add_argument("--seed", type=seed_int, help="seed of the weights, the shuffling and dropout (default: 0)")
    p.add_argument("--out", help="output directory (default: a new runs/<dataset>-<model>-<time>, "
                                 "or the checkpoint's directory with --resume)")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint.npz")
    p.add_argument("--no-plots", action="store_true", help="skip the pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (for logs and CI)")
    p.add_argument("--distributed", choices=("auto", "mpi", "nccl", "off"), default="auto",
                   help="data-parallel training when an MPI launcher started the processes (mpiexec -n N python "
                        "-m mpi4py scripts/train.py): auto (MPI), mpi, nccl (GPUs) or off (default: auto)")
    return p


def _resumed_config(checkpoint: Checkpoint, given: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's configuration, in today's form; UsageError when it is incomplete or a flag contradicts it."""
    saved = {**OLDER_DEFAULTS, **checkpoint.config}
    if "augment" in saved:
        try:
            saved["augment"] = augment_spec(saved["augment"])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"checkpoint {str(checkpoint.path)!r} has a bad augmentation: {exc}") from None
    missing = [k for k in RESUMED_KEYS if k not in saved]
    if missing:
        raise UsageError(f"checkpoint {str(checkpoint.path)!r} lacks the run configuration ({', '.join(missing)})")
    check_saved_config(checkpoint)
    for key, value in given.items():
        if value != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"{flag} {value} differs from the checkpoint's {saved[key]}: a resumed run keeps its "
                "configuration (leave the flag out, or start a new run)"
            )
    config = {**DEFAULTS, **{k: saved[k] for k in RESUMED_KEYS}}
    config["epochs"] = saved.get("epochs", DEFAULTS["epochs"])
    return config


def train_config(args, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The run's configuration: the flags given, over the resumed checkpoint's or `DEFAULTS`."""
    given = {key: getattr(args, key) for key in RESUMED_KEYS if getattr(args, key) is not None}
    if checkpoint is None:
        config = {**DEFAULTS, **given, "dataset": args.dataset}
    else:
        config = _resumed_config(checkpoint, given)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    return config


# -- the program -----------------------------------------------------------------------------------


def train_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py``: returns the exit status (0; 1 when a file cannot be written; 2 for bad
    arguments, with any folder it made for them removed again; 130 after Ctrl-C). Under an MPI
    launcher every process runs it and they train data-parallel (`parallel`)."""
    set_silent(distributed.launcher_rank() not in (None, 0))  # one line per error, not one per process
    holder = {"comm": distributed.SingleProcess()}
    status = _train_main(argv, holder)
    if status in (2, 130):  # every process got here with the same status
        return holder["comm"].exit_together(status)
    return status


def _train_main(argv, holder: dict) -> int:
    comm, previous_handler, folders = holder["comm"], None, _Folders()
    try:
        try:
            args = train_parser().parse_args(argv)
            comm = holder["comm"] = parallel.start(args, PROG)
            previous_handler = parallel.install_stop_handler(comm)
            checkpoint, config, device, train_data, test_data = _prepare(args, comm, folders)
        except KeyboardInterrupt:
            remove_empty(folders.out, folders.created)
            note(PROG, "interrupted before training started: nothing was written")
            return 130
        return _train(args, config, checkpoint, device, folders, train_data, test_data, comm)
    except UsageError as exc:
        remove_empty(folders.out, folders.created)
        note(PROG, f"error: {exc}")
        return 2
    except RunError as exc:
        return parallel.fail(comm, PROG, f"error: {exc}")
    except OSError as exc:  # a picture or the last checkpoint that cannot be written
        where = f"cannot write {exc.filename!r}: {exc.strerror}" if exc.filename else one_line(exc)
        return parallel.fail(comm, PROG, f"error: {where}")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)


@dataclass
class _Folders:
    """The run folder, and the outermost folder this run created for it (removed again if left empty)."""

    out: Path | None = None
    created: Path | None = None


def _prepare(args, comm, folders: _Folders):
    """The checkpoint, configuration, device and data every process reads alike; rank 0 alone makes
    the run folder. Any process's UsageError ends every process (`parallel.agree`)."""
    error = checkpoint = config = device = train_data = test_data = None
    try:
        checkpoint = read_checkpoint(args.resume) if args.resume else None
        config = train_config(args, checkpoint)
        device = find_device(args.device)
        if args.out is not None:
            folders.out = Path(args.out)
        elif checkpoint is not None:
            folders.out = Path(args.resume).resolve().parent
        if comm.rank == 0 and folders.out is not None:
            created = check_writable(folders.out, "--out" if args.out is not None else "the checkpoint's directory")
            folders.created = created if args.out is not None else None
        dataset, train_data, test_data = load_data(config["dataset"], args.data_dir, PROG)
        config["dataset"] = dataset
        if comm.rank == 0 and folders.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folders.out, folders.created = new_run_dir(Path("runs") / f"{dataset}-{config['model']}-{stamp}")
    except UsageError as exc:
        error = exc
    folders.out = Path(parallel.agree(comm, error, str(folders.out) if folders.out else None))
    return checkpoint, config, device, train_data, test_data


def _train(args, config, checkpoint, device, folders: _Folders, train_data, test_data, comm) -> int:
    """`_run`, and on Ctrl-C the last finished epoch saved by rank 0 (`interrupted`)."""
    out = folders.out
    last = LastEpoch(out / CHECKPOINT_NAME)
    hint = resume_hint(args, device, last.path)
    try:
        return _run(args, config, checkpoint, device, out, train_data, test_data, last, comm)
    except KeyboardInterrupt:
        if comm.rank != 0:
            return 130
        if last.arrays is None:
            remove_empty(out, folders.created)  # the folders this run made, if nothing went into them yet
        return interrupted(last, PROG, hint, args.resume)


def _run(args, config, checkpoint, device, out: Path, train_data, test_data, last: LastEpoch, comm) -> int:
    """Build, train, evaluate, write and report: the steps of a run once its inputs are checked.
    Every process trains and evaluates; rank 0 alone writes and reports."""
    run = _build(config, device, out, train_data, test_data, comm)
    if checkpoint is not None:
        _resume(run, checkpoint, last, Path(args.resume))
    if comm.size > 1:  # after the resume, so that rank 0's restored state is what every process starts from
        run.optimizer = distributed.DistributedOptimizer(run.optimizer, comm)
    names = class_names(config["dataset"])
    _report_start(run, args.quiet, checkpoint, args.resume)
    written: list[str] = []
    plots_ok = not args.no_plots and comm.rank == 0 and _draw_samples(run, names, written)
    _train_epochs(run, args.quiet, last)
    result = evaluate(run.model, run.test_loader, return_predictions=True)
    if comm.rank != 0:
        return 0
    metrics = _metrics(run, result, names)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", run.history.rows)
    if not last.saved:  # e.g. resumed into a new --out with nothing left to train
        write_checkpoint(last.path, _arrays(run, len(run.history)))
    if plots_ok:
        _draw_pictures(run, result, names, written)
    files = ", ".join([CHECKPOINT_NAME, "metrics.json", "history.json", *written])
    print(f"test accuracy {100 * result.accuracy:.2f}% (loss {result.loss:.4f}) after {len(run.history)} epochs "
          f"on {config['dataset']}, {metrics['train_seconds']:.1f} s of training", flush=True)
    print(f"wrote {out}/: {files}", flush=True)
    return 0


# -- the steps of a run ----------------------------------------------------------------------------


@dataclass
class _Run:
    """One training run: its configuration, where it writes, its data and what it trains."""

    config: dict[str, Any]
    device: Any
    out: Path
    train_data: tuple[np.ndarray, np.ndarray]
    test_data: tuple[np.ndarray, np.ndarray]
    model: Any
    optimizer: Any
    train_loader: DataLoader
    test_loader: DataLoader
    history: History
    comm: Any = None  # the job's communicator (`cnnxp.distributed`)


def _make_optimizer(config: dict[str, Any], model):
    if config["optimizer"] == "adam":
        return Adam(model, lr=config["lr"])
    if config["optimizer"] == "sgd":
        return SGD(model, lr=config["lr"], momentum=config["momentum"])
    raise ValueError(f"unknown optimizer {config['optimizer']!r}: expected one of {', '.join(OPTIMIZERS)}")


def _build(config: dict[str, Any], device, out: Path, train_data, test_data, comm) -> _Run:
    """The model (fresh weights from the seed), its optimizer and the loaders the configuration asks
    for; with several processes the loaders give each its share of every batch."""
    (x_train, y_train), (x_test, y_test) = train_data, test_data
    model = models.build(config["model"], seed=config["seed"], device=device)
    optimizer = _make_optimizer(config, model)
    train_loader = DataLoader(x_train, y_train, config["batch_size"], shuffle=True, seed=config["seed"], device=device,
                              augment=parse_augment(config["augment"]), comm=comm)
    test_loader = DataLoader(x_test, y_test, EVAL_BATCH_SIZE, shuffle=False, device=device, comm=comm)
    return _Run(config, device, out, train_data, test_data, model, optimizer, train_loader, test_loader, History(),
                comm)


def _arrays(run: _Run, epoch: int) -> dict[str, np.ndarray]:
    """The run's state now, as the host arrays of its checkpoint after ``epoch`` epochs."""
    return checkpoint_arrays(run.model, run.optimizer, epoch=epoch, history=run.history, config=run.config,
                             loader=run.train_loader)


def _resume(run: _Run, checkpoint: Checkpoint, last: LastEpoch, resumed_from: Path) -> None:
    """Weights, optimizer, loader and history from the checkpoint; it is the last finished epoch."""
    restore_or_refuse(checkpoint, run.model, run.optimizer, run.train_loader)
    run.history = checkpoint.history
    last.keep(_arrays(run, checkpoint.epoch), checkpoint.epoch, saved=last.path.resolve() == resumed_from.resolve())


def _report_start(run: _Run, quiet: bool, checkpoint: Checkpoint | None, resumed_from: str | None) -> None:
    config = run.config
    (_, y_train), (_, y_test) = run.train_data, run.test_data
    say(quiet, f"{config['model']} ({run.model.num_parameters():,} parameters) on {config['dataset']} "
               f"({len(y_train):,} training / {len(y_test):,} test images), device {run.device.name}")
    say(quiet, f"{config['optimizer']} lr {config['lr']:g} ({config['schedule']}), batch {config['batch_size']}, "
               f"augmentation {config['augment']}, label smoothing {config['label_smoothing']:g}, "
               f"{config['epochs']} epochs, seed {config['seed']}; "
               + (f"{run.comm.size} processes (data-parallel, batch {config['batch_size']} in all); "
                  if run.comm.size > 1 else "")
               + f"writing to {run.out}")
    if checkpoint is not None:
        say(quiet, f"resuming from {resumed_from} after epoch {checkpoint.epoch}")


def _schedule(config: dict[str, Any]):
    return {"exponential": lambda: exponential_lr(config["lr"], config["gamma"]),
            "cosine": lambda: cosine_lr(config["lr"]),
            "constant": lambda: None}[config["schedule"]]()


def _save_epoch(run: _Run, last: LastEpoch, history: History) -> None:
    """After each epoch: its checkpoint (RunError naming it when it cannot be written), then history.json;
    rank 0's job alone (every process holds the same state)."""
    epoch = history.last["epoch"]
    if run.comm.rank != 0:
        last.epoch = epoch
        return
    on_disk = last.epoch if last.saved else None
    last.keep(_arrays(run, epoch), epoch)
    try:
        write_checkpoint(last.path, last.arrays)
    except OSError as exc:
        kept = f"; the checkpoint of epoch {on_disk} there is intact" if on_disk else ""
        raise RunError(f"cannot write the checkpoint of epoch {epoch} to {str(last.path)!r}: "
                       f"{exc.strerror or exc}{kept}") from None
    last.saved = True
    write_json(run.out / "history.json", history.rows)


def _train_epochs(run: _Run, quiet: bool, last: LastEpoch) -> None:
    """Train until the configured number of epochs is done, a checkpoint after each."""
    config = run.config
    schedule = _schedule(config)
    if len(run.history) < config["epochs"]:
        speaks = not quiet and run.comm.rank == 0
        fit(run.model, run.optimizer, run.train_loader, config["epochs"], run.test_loader, history=run.history,
            label_smoothing=config["label_smoothing"], lr_schedule=schedule, progress=speaks,
            log=print if speaks else None,
            on_epoch_end=functools.partial(_save_epoch, run, last))
    else:
        say(quiet, f"the checkpoint already has {len(run.history)} epochs (--epochs {config['epochs']}): "
                   "nothing to train, evaluating")


def _metrics(run: _Run, result: EvalResult, names: list[str]) -> dict[str, Any]:
    """What ``metrics.json`` holds: the final test result, the training time and speed, the configuration."""
    config, rows = run.config, run.history.rows
    (_, y_train), (_, y_test) = run.train_data, run.test_data
    train_seconds = sum(r.get("seconds") or 0.0 for r in rows)
    images = len(y_train) * len(rows)
    return {
        "dataset": config["dataset"],
        "model": config["model"],
        "device": run.device.name,
        "epochs": len(rows),
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "train_seconds": train_seconds,
        "images_per_second": images / train_seconds if train_seconds else None,
        "world_size": run.comm.size,
        "train_accuracy": rows[-1].get("train_accuracy") if rows else None,
        "train_loss": rows[-1].get("train_loss") if rows else None,
        "per_class_accuracy": {names[i]: float(a) for i, a in enumerate(result.per_class_accuracy)},
        "num_parameters": run.model.num_parameters(),
        "train_samples": len(y_train),
        "test_samples": len(y_test),
        "config": config,
    }


def _draw_samples(run: _Run, names: list[str], written: list[str]) -> bool:
    """samples.png, before training; False when matplotlib is missing (no pictures at all then)."""
    from .. import plots

    x_train, y_train = run.train_data
    return draw_plot(PROG, written, "samples",
                     lambda: plots.plot_samples(x_train, y_train, run.out / "samples.png", names,
                                                title=f"{run.config['dataset']} training images"))


def _draw_pictures(run: _Run, result: EvalResult, names: list[str], written: list[str]) -> None:
    """The pictures after training: curves, feature maps of a well-classified test image, filters, mistakes."""
    from .. import plots

    config, out, model = run.config, run.out, run.model
    x_test, y_test = run.test_data
    wrong = result.predictions != result.labels
    index = int(np.flatnonzero(~wrong)[0]) if (~wrong).any() else 0
    label = f"true {names[int(y_test[index])]}, test image {index}"
    draws = [
        ("history", lambda: plots.plot_history(run.history, out / "history.png",
                                               title=f"{config['model']} on {config['dataset']}")),
        ("feature_maps", lambda: plots.plot_feature_maps(model, normalise(x_test[index:index + 1]),
                                                         out / "feature_maps.png", label=label)),
        ("filters", lambda: plots.plot_filters(model, out / "filters.png")),
        ("confusion", lambda: plots.plot_confusion(result.confusion, out / "confusion_matrix.png", names)),
        ("misclassified", lambda: plots.plot_misclassified(
            x_test, result.labels, result.predictions, out / "misclassified.png", names)),
    ]
    for name, draw in draws:
        if not draw_plot(PROG, written, name, draw):
            break
