"""train.py's configuration: the recipe of its model and dataset with the flags given over it, or a resumed run's.

A new run starts from `cnnxp.recipes.resolve` for its ``--model`` and the dataset it trains on; each
setting given as a flag replaces that one setting. The configuration records the recipe's name and
where each setting came from (``recipe`` and ``sources``), in the checkpoint and in metrics.json,
with ``commands``, the commands that repeat the run (`with_commands`): the first run's with every
setting given (`repeat_command`), then one ``--resume`` per change of ``--epochs``. A resumed run
keeps the configuration its checkpoint recorded: a flag that contradicts it is refused, except
``--epochs``, which extends the run (never below the epochs done). A checkpoint from before recipes
resumes with the settings it recorded (their source: ``checkpoint``). ``--show-recipe`` prints all
of it and trains nothing (`show_recipe`). `flag_notes` says which flags given have no effect, and
`schedule_note` that a resumed cosine schedule now ends elsewhere.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import recipes
from ..checkpoint import Checkpoint
from ..data import parse_augment
from ..recipes import SETTINGS, Resolved
from .common import (
    DEFAULTS,
    OPTIMIZERS,
    SCHEDULES,
    UsageError,
    check_saved_config,
    gamma_float,
    launcher_words,
    non_negative_float,
    note,
    place_words,
    plural,
    positive_float,
    positive_int,
    read_checkpoint,
    say,
    smoothing_float,
)
from .datasets import default_dataset

__all__ = ["RESUMED_KEYS", "OLDER_DEFAULTS", "augment_spec", "add_recipe_flags", "new_config", "resumed_config", "resolved",
           "describe", "repeat_command", "resume_command", "with_commands", "flag_notes", "schedule_note", "show_recipe"]

#: The configuration keys a resumed run takes from its checkpoint (all but ``epochs``, which a flag may extend).
RESUMED_KEYS = ("dataset", "model", "seed", *(name for name in SETTINGS if name != "epochs"))
#: What a checkpoint written before a configuration key existed ran with.
OLDER_DEFAULTS = {"label_smoothing": 0.0, "weight_decay": 0.0}
RECIPE_DEFAULT = "default: the recipe of --model and --dataset, see --show-recipe"
PROG = "train.py"
#: The source recorded for the settings of a checkpoint that predates recipes.
FROM_CHECKPOINT = "checkpoint"


def augment_spec(text) -> str:
    """The canonical spelling of an augmentation (``none``, ``shift:N``, ``affine:D,P,S``)."""
    try:
        transform = parse_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bad augmentation ")) from None
    return "none" if transform is None else transform.spec()


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """One flag per recipe setting, each None unless given (so a flag given is known)."""
    d = RECIPE_DEFAULT
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"adam or sgd ({d})")
    p.add_argument("--lr", type=positive_float, help=f"learning rate ({d})")
    p.add_argument("--momentum", type=non_negative_float, help=f"SGD's momentum; Adam ignores it ({d})")
    p.add_argument("--weight-decay", type=non_negative_float, metavar="WD",
                   help=f"L2 penalty added to the gradient, as PyTorch's weight_decay ({d})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate over the run: exponential (lr * gamma ** epochs done; resumes exactly), "
                        f"cosine (to 0 at --epochs) or constant ({d})")
    p.add_argument("--gamma", type=gamma_float, help=f"decay per epoch of the exponential schedule ({d})")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"images per step; with several processes, in all ({d})")
    p.add_argument("--epochs", type=positive_int, help=f"total number of epochs ({d}; with --resume, the resumed run's)")
    p.add_argument("--augment", type=augment_spec, metavar="SPEC",
                   help="random distortions of the training images: none (or 0); N or shift:N (whole-pixel shifts "
                        "up to N); affine (rotations up to 12 degrees, shifts up to 2 pixels, zoom up to 12%%) or "
                        "affine:DEGREES,PIXELS,SCALE; flip (mirror half the images left to right); several joined "
                        f"by + (shift:2+flip) ({d})")
    p.add_argument("--label-smoothing", type=smoothing_float, metavar="EPS",
                   help=f"train against targets (1 - EPS) * one-hot + EPS / classes ({d})")


def new_config(args, dataset: str) -> dict[str, Any]:
    """A new run's configuration: the recipe of its model on ``dataset``, with the flags given over it."""
    model = args.model or DEFAULTS["model"]
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    given = {name: getattr(args, name) for name in SETTINGS}
    resolution = recipes.resolve(model, dataset, given)
    return {"dataset": dataset, "model": model, "seed": seed, **resolution.settings, "recipe": resolution.recipe,
            "sources": resolution.sources}


def resumed_config(checkpoint: Checkpoint, args) -> dict[str, Any]:
    """The checkpoint's configuration, in today's form, with ``--epochs`` if given; UsageError when it is
    incomplete, a flag contradicts it, or ``--epochs`` is below the epochs it has done (the history and
    the checkpoint would then disagree with the configuration)."""
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
    for key in RESUMED_KEYS:
        value = getattr(args, key)
        if value is not None and value != saved[key]:
            raise UsageError(
                f"--{key.replace('_', '-')} {value} differs from the checkpoint's {saved[key]}: a resumed run keeps "
                "its configuration (leave the flag out, or start a new run)")
    if args.epochs is not None and args.epochs < checkpoint.epoch:
        raise UsageError(f"--epochs {args.epochs} is below the {plural(checkpoint.epoch, 'epoch')} the checkpoint has "
                         f"done: give --epochs {checkpoint.epoch + 1} or more to train on, or evaluate it with "
                         "evaluate.py")
    config = {k: saved[k] for k in RESUMED_KEYS}
    config["epochs"] = _planned_epochs(checkpoint) if args.epochs is None else args.epochs
    recorded = saved.get("sources") if isinstance(saved.get("sources"), dict) else {}
    config["recipe"] = saved.get("recipe")
    config["sources"] = {name: recorded.get(name, FROM_CHECKPOINT) for name in SETTINGS}
    if config["epochs"] != _planned_epochs(checkpoint):
        config["sources"]["epochs"] = "flag"
    return config


def _planned_epochs(checkpoint: Checkpoint) -> int:
    """The epochs the checkpoint's run was to reach (a checkpoint that does not say: those it has done)."""
    return checkpoint.config.get("epochs", checkpoint.epoch)


def resolved(config: dict[str, Any]) -> Resolved:
    """The recipe part of a configuration: its name, settings and their sources."""
    return Resolved(config.get("recipe"), {name: config[name] for name in SETTINGS}, dict(config["sources"]))


def describe(config: dict[str, Any]) -> str:
    """The run's settings in one phrase, where they came from first: ``recipe seed on mnist-sample with
    --epochs: sgd lr 0.02 (cosine), momentum 0.9, batch 32, augmentation shift:1, label smoothing 0, 3 epochs,
    seed 0``."""
    c, resolution = config, resolved(config)
    flags = [resolution.source_of(name) for name in SETTINGS if resolution.sources[name] == "flag"]
    origin = f"recipe {c['recipe']}" if c.get("recipe") else "the checkpoint's settings (it predates recipes)"
    schedule = c["schedule"] + (f", gamma {c['gamma']:g}" if c["schedule"] == "exponential" else "")
    return (origin + (f" with {', '.join(flags)}" if flags else "") + f": {c['optimizer']} lr {c['lr']:g} ({schedule})"
            + (f", momentum {c['momentum']:g}" if c["optimizer"] == "sgd" else "")
            + (f", weight decay {c['weight_decay']:g}" if c["weight_decay"] else "")
            + f", batch {c['batch_size']}, augmentation {c['augment']}, label smoothing {c['label_smoothing']:g}, "
            + f"{plural(c['epochs'], 'epoch')}, seed {c['seed']}")


def repeat_command(config: dict[str, Any], place: Sequence[str] = (), processes: int = 1) -> str:
    """The command that repeats a new run, every setting given explicitly (recipes may change; this does
    not), then ``place``, the flags of where its data is and what ran it (`common.place_words`); under
    ``mpiexec -n N`` for a run of N processes."""
    words = [*launcher_words(processes), "scripts/train.py", "--dataset", config["dataset"], "--model", config["model"],
             "--seed", str(config["seed"])]
    for name in SETTINGS:
        words += ["--" + name.replace("_", "-"), str(config[name])]
    return " ".join(shlex.quote(w) for w in [*words, *place])


def resume_command(folder: Path, out: str | None, epochs: int, place: Sequence[str] = (), processes: int = 1) -> str:
    """The command of a resumed run that changed ``--epochs``: ``python scripts/train.py --resume FOLDER
    --epochs N``, with ``--out`` when it wrote elsewhere, and ``place`` (under ``mpiexec -n N`` for N
    processes)."""
    words = [*launcher_words(processes), "scripts/train.py", "--resume", str(folder), *(["--out", out] if out else []),
             "--epochs", str(epochs), *place]
    return " ".join(shlex.quote(w) for w in words)


def with_commands(config: dict[str, Any], checkpoint: Checkpoint | None, args, device_name: str,
                  processes: int = 1) -> None:
    """Add ``commands`` to the configuration: what repeats the run, one command after the other.

    A new run's one command is `repeat_command`. A resumed run keeps its checkpoint's list and adds
    `resume_command` when it changes ``--epochs``: a cosine schedule ends at ``--epochs``, so one run
    of 2 epochs resumed to 3 is not one run of 3 (without a change, the run goes on as its last
    command said, and the list stands). A checkpoint from before ``commands`` starts its list with the
    command of its own configuration."""
    place = place_words(args.data_dir, args.trust_data, device_name, processes)
    if checkpoint is None:
        config["commands"] = [repeat_command(config, place, processes)]
        return
    planned = _planned_epochs(checkpoint)
    commands = list(checkpoint.config.get("commands") or [repeat_command({**config, "epochs": planned})])
    if config["epochs"] != planned:
        commands.append(resume_command(checkpoint.path.parent, args.out, config["epochs"], place, processes))
    config["commands"] = commands


def flag_notes(config: dict[str, Any], args) -> list[str]:
    """A note for each flag given that has no effect: ``--gamma`` without the exponential schedule,
    ``--momentum`` with Adam (not an error: the run is still what the user asked for)."""
    notes = []
    if args.gamma is not None and config["schedule"] != "exponential":
        notes.append(f"note: --gamma {args.gamma:g} has no effect: it is the decay of the exponential schedule, "
                     f"and this run's is {config['schedule']}")
    if args.momentum is not None and config["optimizer"] != "sgd":
        notes.append(f"note: --momentum {args.momentum:g} has no effect: it is SGD's, and this run's optimizer is "
                     f"{config['optimizer']}")
    return notes


def schedule_note(config: dict[str, Any], checkpoint: Checkpoint | None) -> str | None:
    """For a resumed cosine schedule that now ends at another epoch, a note that says so (its rate jumps,
    which surprises: the run is not one straight run of that many epochs); else None."""
    planned = _planned_epochs(checkpoint) if checkpoint is not None else config["epochs"]
    if config["schedule"] != "cosine" or config["epochs"] == planned:
        return None
    how = "rises again" if config["epochs"] > planned else "falls faster from here"
    return (f"note: the cosine learning rate schedule now ends at epoch {config['epochs']} instead of {planned}, "
            f"so the rate {how}: not the same as one run of {plural(config['epochs'], 'epoch')} (metrics.json's "
            "commands repeat it)")


def show_recipe(args) -> int:
    """``--show-recipe``: print the run's settings, one per line with where each came from; nothing is
    trained, downloaded or written. The dataset is decided as a run would (`default_dataset`)."""
    if args.resume:
        checkpoint = read_checkpoint(args.resume)
        config = resumed_config(checkpoint, args)
        where = f"checkpoint {checkpoint.path}, epoch {checkpoint.epoch}"
        before = [("recipe", config["recipe"] or "none recorded", where),
                  *((key, config[key], "checkpoint") for key in ("model", "dataset", "seed"))]
    else:
        checkpoint = None
        dataset, why = (args.dataset, "--dataset") if args.dataset else default_dataset(args.data_dir)
        config = new_config(args, dataset)
        before = [("recipe", config["recipe"], "of the model and dataset"),
                  ("model", config["model"], "--model" if args.model else "default"),
                  ("dataset", dataset, why),
                  ("seed", config["seed"], "--seed" if args.seed is not None else "default")]
    for line in [*flag_notes(config, args), schedule_note(config, checkpoint)]:
        if line:
            note(PROG, line)
    say(False, resolved(config).table(tuple(before)))
    return 0
