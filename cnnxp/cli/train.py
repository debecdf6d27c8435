"""``scripts/train.py``: train a network, with a checkpoint after every epoch, then metrics, history and pictures.

The steps of `train_main`, each a function below:

1. parse the flags (``--show-recipe`` prints the settings and ends here: `config.show_recipe`); read
   the checkpoint to resume (``--resume``) and keep its configuration (`config.resumed_config`);
2. find the device and the data (`load_data`, with its fallback to the bundled sample), resolve a
   new run's configuration from the recipe of its model and that dataset, with the flags given over
   it (`config.new_config`), then make and claim the output folder (`_make_folder`: one live run
   per folder); bad input ends here with one line and status 2, before any folder is made;
3. build the run (`_build`: model, optimizer, loaders) and restore a resumed one (`_resume`);
4. train (`_train_epochs`: `cnnxp.train.fit`, `_save_epoch` after every epoch; the pictures of
   earlier epochs in the folder go after the first new one);
5. evaluate, write ``metrics.json`` and ``history.json`` (`report.metrics`), draw the
   pictures (`report.draw_pictures`) and report.

Ctrl-C and SIGTERM save the last finished epoch (`runs.LastEpoch`, `runs.interrupted`) and end with
status 130 and 143 (`stop.StopSignals`); a diverged run ends with one line and status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np  # host side: the arrays of the data, and the floating-point warnings of a diverged run

from .. import distributed, models
from ..backend import keep_freed_host_memory
from ..checkpoint import Checkpoint, CheckpointError, checkpoint_arrays, write_checkpoint
from ..data import DataLoader, parse_augment
from ..optim import SGD, Adam
from ..train import DivergedError, History, cosine_lr, evaluate, exponential_lr, fit
from . import parallel, report
from .common import (
    DEFAULTS,
    EVAL_BATCH_SIZE,
    OPTIMIZERS,
    Parser,
    RunError,
    UsageError,
    add_place_flags,
    broken_pipe,
    class_names,
    find_device,
    note,
    one_line,
    plural,
    read_checkpoint,
    restore_or_refuse,
    say,
    seed_int,
    set_silent,
    write_json,
)
from .config import (
    OLDER_DEFAULTS,
    RESUMED_KEYS,
    add_recipe_flags,
    describe,
    flag_notes,
    new_config,
    resumed_config,
    schedule_note,
    show_recipe,
    with_commands,
)
from .datasets import load_data
from .runs import (
    LastEpoch,
    RunFolder,
    check_writable,
    claim_run_folder,
    diverged,
    interrupted,
    new_run_dir,
    remove_temporaries,
    resume_hint,
)
from .stop import StopSignals, Terminated

__all__ = ["train_main", "train_parser", "DEFAULTS", "RESUMED_KEYS", "OLDER_DEFAULTS"]

PROG = "train.py"
CHECKPOINT_NAME = "checkpoint.npz"
#: The pictures a run draws; a later run into the folder removes them once it has trained an epoch.
PICTURES = ("samples.png", "history.png", "feature_maps.png", "filters.png", "confusion_matrix.png",
            "misclassified.png")
#: The pictures inspect.py draws into a run folder (feature_maps_<index>.png): removed alike.
INSPECT_PICTURES = "feature_maps_*.png"


# -- flags and the run's configuration -------------------------------------------------------------


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Train a CNN on MNIST-family digits or garments; write a checkpoint, metrics, history and plots. "
                    "The training settings come from the recipe of the model and dataset (docs/training.md); each "
                    "one given as a flag overrides that setting; --show-recipe prints them and where each came from.",
    )
    add_place_flags(p, "default: mnist when it is on disk or downloadable, else the bundled mnist-sample; with "
                       "--resume, the checkpoint's",
                    "directory with the dataset's IDX files (raw or .gz), searched before $CNNXP_DATA and "
                    "~/.cache/cnnxp; downloads go there (default: none)")
    p.add_argument("--model", choices=tuple(models.MODELS),
                   help=f"network preset (default: {DEFAULTS['model']}; with --resume, the checkpoint's)")
    p.add_argument("--seed", type=seed_int,
                   help=f"seed of the weights, the shuffling and dropout (default: {DEFAULTS['seed']}; with --resume, "
                        "the checkpoint's)")
    add_recipe_flags(p)
    p.add_argument("--show-recipe", action="store_true",
                   help="print the settings this run would use, each with where it came from, and exit")
    p.add_argument("--out", help="output directory (default: a new runs/<dataset>-<model>-<time>, "
                                 "or the checkpoint's directory with --resume)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint.npz (or the run folder holding it) with the settings it "
                        "recorded (default: none, a new run)")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --out that holds another run's checkpoint, replacing it")
    p.add_argument("--no-plots", action="store_true",
                   help="draw no pictures; those of earlier epochs in the run folder are removed once this run "
                        "has trained one")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (for logs and CI)")
    p.add_argument("--distributed", choices=("auto", "mpi", "nccl", "off"), default="auto",
                   help="data-parallel training when an MPI launcher started the processes (mpiexec -n N python "
                        "-m mpi4py scripts/train.py): auto (MPI), mpi, nccl (GPUs) or off (default: auto)")
    return p


# -- the program -----------------------------------------------------------------------------------


def train_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py``: returns the exit status (0; 1 when a file cannot be written or training
    diverged; 2 for bad arguments, with any folder it made for them removed again; 130 after Ctrl-C,
    143 after SIGTERM; 141, quietly, when stdout's reader went away). Under an MPI launcher every
    process runs it and they train data-parallel (`parallel`)."""
    set_silent(distributed.launcher_rank() not in (None, 0))  # one line per error, not one per process
    holder = {"comm": distributed.SingleProcess()}
    try:
        status = _train_main(argv, holder)
        sys.stdout.flush()  # here, not at exit, where a reader that went away would end in a traceback
    except BrokenPipeError:
        return broken_pipe()
    except KeyboardInterrupt as exc:  # a signal as the run ended, after its files were written
        status = 143 if isinstance(exc, Terminated) else 130
    if status != 0 or holder["comm"].size > 1:  # every process got here with the same status (a failure of
        return holder["comm"].exit_together(status)  # one aborts them all); MPI finalised, then exit
    return status


def _train_main(argv, holder: dict) -> int:
    comm, stop, folders = holder["comm"], None, RunFolder()
    try:
        try:
            args = train_parser().parse_args(argv)
            if args.show_recipe:
                return show_recipe(args)
            comm = parallel.start(args, holder)
            stop = StopSignals(comm)
            stop.install()
            checkpoint, config, device, train_data, test_data = _prepare(args, comm, folders)
            if device.name == "cpu":  # every step allocates the same arrays again: keep them at hand
                keep_freed_host_memory()
        except KeyboardInterrupt as exc:
            folders.close(remove=True)
            note(PROG, f"{stop.word(exc) if stop else 'interrupted'} before training started: nothing was written")
            status = stop.status(exc) if stop else 130
            if comm.size > 1:  # the others may be waiting in a collective this process will never join
                comm.abort(status)
            if isinstance(comm, distributed.SingleProcess):  # or in MPI's start-up, for this one
                parallel.abort_before_start(status, argv)
            return status
        return _train(args, config, checkpoint, device, folders, train_data, test_data, comm, stop)
    except UsageError as exc:
        folders.close(remove=True)
        note(PROG, f"error: {exc}")
        return 2
    except BrokenPipeError:
        raise
    except (RunError, OSError) as exc:  # a picture or the last checkpoint that cannot be written
        return parallel.fail(comm, PROG, f"error: {parallel.failure_line(exc)}")
    finally:
        folders.close()
        if stop is not None:
            stop.restore()


def _prepare(args, comm, folders: RunFolder):
    """The checkpoint, configuration, device and data every process reads alike; then rank 0 alone makes
    and claims the run folder. Any process's UsageError ends every process (`parallel.agree`)."""
    error = checkpoint = config = device = train_data = test_data = None
    try:
        checkpoint = read_checkpoint(args.resume) if args.resume else None
        if checkpoint is not None:
            args.resume = str(checkpoint.path)  # a run folder given for --resume: its checkpoint.npz
        config = resumed_config(checkpoint, args) if checkpoint is not None else None
        args.device = parallel.local_device(args.device, comm)
        device = find_device(args.device)
        dataset, train_data, test_data = load_data(config["dataset"] if config else args.dataset, args.data_dir,
                                                   PROG, args.trust_data)
        if config is None:  # the recipe follows the dataset actually used (the sample, when MNIST cannot be had)
            config = new_config(args, dataset)
        with_commands(config, checkpoint, args, device.name, comm.size)
    except UsageError as exc:
        error = exc
    same = parallel.fingerprint(config, train_data, test_data) if error is None and comm.size > 1 else None
    parallel.agree(comm, error, same=same)  # every process read alike, or every one stops here
    try:
        if comm.rank == 0:
            _make_folder(args, checkpoint, config, folders)
    except UsageError as exc:
        error = exc
    folders.out = Path(parallel.agree(comm, error, str(folders.out) if folders.out else None))
    return checkpoint, config, device, train_data, test_data


def _make_folder(args, checkpoint, config, folders: RunFolder) -> None:
    """Make (or check) the run folder and claim it: `runs.claim_run_folder`."""
    if args.out is not None or checkpoint is not None:
        folders.out = Path(args.out) if args.out is not None else Path(args.resume).resolve().parent
        what = "--out" if args.out is not None else "the checkpoint's directory"
        created = check_writable(folders.out, what)
        folders.created = created if args.out is not None else None
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        what = "the run folder"
        folders.out, folders.created = new_run_dir(Path("runs") / f"{config['dataset']}-{config['model']}-{stamp}")
    folders.lock = claim_run_folder(folders.out, what, args.resume, args.overwrite, PROG)


def _train(args, config, checkpoint, device, folders: RunFolder, train_data, test_data, comm, stop) -> int:
    """`_run`; after Ctrl-C or SIGTERM, the last finished epoch saved by rank 0 (`interrupted`); after
    divergence, one line."""
    last = LastEpoch(folders.out / CHECKPOINT_NAME)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is said in one line
            return _run(args, config, checkpoint, device, folders.out, train_data, test_data, last, comm, stop)
    except KeyboardInterrupt as exc:
        stop.stopping()
        failed = distributed.agreed_stop() == "fail" or last.failure is not None  # rank 0 could not write a file
        if comm.rank == 0:
            remove_temporaries(folders.out)  # those of a write the signal cut short
            if last.arrays is None:
                folders.close(remove=True)  # the folders this run made, if nothing went into them yet
            if failed:
                note(PROG, f"error: {last.failure}")
            else:
                interrupted(last, PROG, resume_hint(args, device, last.path, comm.size), args.resume, stop.word(exc))
        return distributed.STOP_STATUS["fail"] if failed else stop.status(exc)
    except DivergedError as exc:
        stop.stopping()
        if comm.rank == 0:
            if last.arrays is None:
                folders.close(remove=True)
            note(PROG, f"error: {diverged(exc, last, args.resume, config)}")
        return 1


def _run(args, config, checkpoint, device, out: Path, train_data, test_data, last: LastEpoch, comm, stop) -> int:
    """Build, train, evaluate, write and report: the steps of a run once its inputs are checked.
    Every process trains and evaluates; rank 0 alone writes and reports."""
    run = _build(config, device, out, train_data, test_data, comm)
    run.stop = stop
    if checkpoint is not None:
        _resume(run, checkpoint, last, Path(args.resume))
    if comm.size > 1:  # after the resume, so that rank 0's restored state is what every process starts from
        run.optimizer = distributed.DistributedOptimizer(run.optimizer, comm)
    names = class_names(config["dataset"])
    _report_start(run, args, checkpoint)
    written: list[str] = []
    earlier = _earlier_pictures(out) if comm.rank == 0 else []
    plots_ok = False
    with parallel.agreed_failure(comm, last):
        plots_ok = not args.no_plots and comm.rank == 0 and report.draw_samples(run, names, written)
    run.stale, run.drawing = [out / name for name in earlier if name not in written], plots_ok
    epochs_before = len(run.history)
    _train_epochs(run, args.quiet, last)
    result = evaluate(run.model, run.test_loader, return_predictions=True)
    if comm.rank == 0 and last.failure is None:
        with parallel.agreed_failure(comm, last):
            _write_results(run, result, names, checkpoint, last, epochs_before, written, plots_ok)
    return parallel.end_together(comm, last.failure, PROG) if comm.size > 1 else 0


def _write_results(run: _Run, result, names, checkpoint, last: LastEpoch, epochs_before: int, written: list[str],
                   plots_ok: bool) -> None:
    """Rank 0's last files (metrics, history, the checkpoint if out of date, the pictures), and its report."""
    config, out = run.config, run.out
    metrics = report.metrics(run, result, names)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", run.history.rows)
    rewrite = _checkpoint_out_of_date(run, checkpoint, last, trained=len(run.history) > epochs_before)
    if rewrite:
        write_checkpoint(last.path, _arrays(run, len(run.history)))
    if plots_ok:
        report.draw_pictures(run, result, names, written)
    wrote_checkpoint = rewrite or len(run.history) > epochs_before
    files = ", ".join([*([CHECKPOINT_NAME] if wrote_checkpoint else []), "metrics.json", "history.json", *written])
    print(f"test accuracy {100 * result.accuracy:.2f}% (loss {result.loss:.4f}) after {plural(len(run.history), 'epoch')} "
          f"on {config['dataset']}, {metrics['train_seconds']:.1f} s of training", flush=True)
    print(f"wrote {out}/: {files}", flush=True)


def _earlier_pictures(out: Path) -> list[str]:
    """The pictures in the run folder from before this run: a run's own, and inspect.py's feature maps."""
    own = [name for name in PICTURES if (out / name).is_file()]
    return own + sorted(path.name for path in out.glob(INSPECT_PICTURES) if path.is_file())


def _checkpoint_out_of_date(run: _Run, checkpoint: Checkpoint | None, last: LastEpoch, trained: bool) -> bool:
    """Whether the checkpoint must be written once more at the end, so that it and metrics.json agree:
    when it is not where this run writes (resumed into a new --out with nothing left to train), or
    when nothing was trained and its configuration is not the run's (resumed with --epochs equal to
    the epochs done, from a run that was to train more, or from a checkpoint in an older form)."""
    if not last.saved:
        return True
    return checkpoint is not None and not trained and checkpoint.config != run.config


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
    stop: Any = None  # the run's `StopSignals`
    stale: list[Path] = field(default_factory=list)  # pictures of earlier epochs, removed after the first new one
    drawing: bool = False  # whether this run draws its pictures at the end


def _make_optimizer(config: dict[str, Any], model):
    if config["optimizer"] == "adam":
        return Adam(model, lr=config["lr"], weight_decay=config["weight_decay"])
    if config["optimizer"] == "sgd":
        return SGD(model, lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"])
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


def _report_start(run: _Run, args, checkpoint: Checkpoint | None) -> None:
    """The run's first lines: model, data and device; its settings and folder; where it resumes from, and
    how its schedule changed (`config.schedule_note`); and on stderr, the flags without effect
    (`config.flag_notes`)."""
    config, quiet, resumed_from = run.config, args.quiet, args.resume
    (_, y_train), (_, y_test) = run.train_data, run.test_data
    say(quiet, f"{config['model']} ({run.model.num_parameters():,} parameters) on {config['dataset']} "
               f"({len(y_train):,} training / {len(y_test):,} test images), device {run.device.name}")
    say(quiet, describe(config) + "; "
               + (f"{run.comm.size} processes (data-parallel, batch {config['batch_size']} in all); "
                  if run.comm.size > 1 else "")
               + f"writing to {run.out}")
    if checkpoint is not None:
        say(quiet, f"resuming from {resumed_from} after epoch {checkpoint.epoch}")
        if schedule_note(config, checkpoint):
            say(quiet, schedule_note(config, checkpoint))
    for line in flag_notes(config, args):
        note(PROG, line)


def _schedule(config: dict[str, Any]):
    return {"exponential": lambda: exponential_lr(config["lr"], config["gamma"]),
            "cosine": lambda: cosine_lr(config["lr"]),
            "constant": lambda: None}[config["schedule"]]()


def _save_epoch(run: _Run, last: LastEpoch, history: History) -> None:
    """After each epoch: its checkpoint (RunError naming it when it cannot be written), then history.json,
    both whole even when a signal arrives meanwhile; rank 0's job alone (every process holds the same state)."""
    epoch = history.last["epoch"]
    if run.comm.rank != 0:
        last.epoch = epoch
        return
    if last.failure is not None:  # an earlier epoch's write failed: the processes are stopping
        return
    on_disk = last.epoch if last.saved else None
    arrays = _arrays(run, epoch)
    with run.stop.deferred(), parallel.agreed_failure(run.comm, last):
        try:
            write_checkpoint(last.path, arrays)
        except CheckpointError as exc:  # state `fit` found finite, but not all of it: never written
            raise RunError(one_line(exc)) from None
        except OSError as exc:
            kept = f"; the checkpoint of epoch {on_disk} there is intact" if on_disk else ""
            raise RunError(f"cannot write the checkpoint of epoch {epoch} to {str(last.path)!r}: "
                           f"{exc.strerror or exc}{kept}") from None
        last.keep(arrays, epoch, saved=True)
        write_json(run.out / "history.json", history.rows)
    if last.failure is None:
        _remove_stale_pictures(run)


def _remove_stale_pictures(run: _Run) -> None:
    """Once the folder holds a newer epoch, the pictures of the earlier ones go: a run that draws its own
    replaces them at the end; one that does not (--no-plots, no matplotlib) says so in one line."""
    removed = []
    for path in run.stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    run.stale = []
    if removed and not run.drawing:
        note(PROG, f"removed the earlier epochs' pictures from {run.out} ({', '.join(removed)}): this run draws none")


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
        say(quiet, f"the checkpoint already has {plural(len(run.history), 'epoch')} (--epochs {config['epochs']}): "
                   "nothing to train, evaluating")
