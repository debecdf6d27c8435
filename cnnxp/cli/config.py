"""train.py's configuration: the recipe of its model and dataset with the flags given over it, or a resumed run's.

A new run starts from `cnnxp.recipes.resolve` for its ``--model`` and the dataset it trains on; each
setting given as a flag replaces that one setting. The configuration records the recipe's name and
where each setting came from (``recipe`` and ``sources``), in the checkpoint and in metrics.json,
so a run can be repeated exactly (`repeat_command`). A resumed run keeps the configuration its
checkpoint recorded: a flag that contradicts it is refused, except ``--epochs``, which extends the
run. A checkpoint from before recipes resumes with the settings it recorded (their source:
``checkpoint``). ``--show-recipe`` prints all of it and trains nothing (`show_recipe`).
"""

from __future__ import annotations

import argparse
import shlex
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
    non_negative_float,
    plural,
    positive_float,
    positive_int,
    read_checkpoint,
    say,
    smoothing_float,
)
from .datasets import default_dataset

__all__ = ["RESUMED_KEYS", "OLDER_DEFAULTS", "augment_spec", "add_recipe_flags", "new_config", "resumed_config", "resolved",
           "describe", "repeat_command", "show_recipe"]

#: The configuration keys a resumed run takes from its checkpoint (all but ``epochs``, which a flag may extend).
RESUMED_KEYS = ("dataset", "model", "seed", *(name for name in SETTINGS if name != "epochs"))
#: What a checkpoint written before a configuration key existed ran with.
OLDER_DEFAULTS = {"label_smoothing": 0.0, "weight_decay": 0.0}
RECIPE_DEFAULT = "default: the recipe of --model and --dataset, see --show-recipe"
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
                        f"affine:DEGREES,PIXELS,SCALE ({d})")
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
    incomplete or a flag contradicts it."""
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
    config = {k: saved[k] for k in RESUMED_KEYS}
    config["epochs"] = saved.get("epochs", checkpoint.epoch) if args.epochs is None else args.epochs
    recorded = saved.get("sources") if isinstance(saved.get("sources"), dict) else {}
    config["recipe"] = saved.get("recipe")
    config["sources"] = {name: recorded.get(name, FROM_CHECKPOINT) for name in SETTINGS}
    if args.epochs is not None:
        config["sources"]["epochs"] = "flag"
    return config


def resolved(config: dict[str, Any]) -> Resolved:
    """The recipe part of a configuration: its name, settings and their sources."""
    return Resolved(config.get("recipe"), {name: config[name] for name in SETTINGS}, dict(config["sources"]))


def describe(config: dict[str, Any]) -> str:
    """The run's settings in one phrase, where they came from first: ``recipe seed on mnist-sample with
    --epochs: sgd lr 0.02 (constant), momentum 0.9, batch 32, augmentation none, label smoothing 0, 1 epoch, seed 0``."""
    c, resolution = config, resolved(config)
    flags = [resolution.source_of(name) for name in SETTINGS if resolution.sources[name] == "flag"]
    origin = f"recipe {c['recipe']}" if c.get("recipe") else "the checkpoint's settings (it predates recipes)"
    schedule = c["schedule"] + (f", gamma {c['gamma']:g}" if c["schedule"] == "exponential" else "")
    return (origin + (f" with {', '.join(flags)}" if flags else "") + f": {c['optimizer']} lr {c['lr']:g} ({schedule})"
            + (f", momentum {c['momentum']:g}" if c["optimizer"] == "sgd" else "")
            + (f", weight decay {c['weight_decay']:g}" if c["weight_decay"] else "")
            + f", batch {c['batch_size']}, augmentation {c['augment']}, label smoothing {c['label_smoothing']:g}, "
            + f"{plural(c['epochs'], 'epoch')}, seed {c['seed']}")


def repeat_command(config: dict[str, Any]) -> str:
    """The command that repeats the run, every setting given explicitly (recipes may change; this does not)."""
    words = ["python", "scripts/train.py", "--dataset", config["dataset"], "--model", config["model"],
             "--seed", str(config["seed"])]
    for name in SETTINGS:
        words += ["--" + name.replace("_", "-"), str(config[name])]
    return " ".join(shlex.quote(w) for w in words)


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
        dataset, why = (args.dataset, "--dataset") if args.dataset else default_dataset(args.data_dir)
        config = new_config(args, dataset)
        before = [("recipe", config["recipe"], "of the model and dataset"),
                  ("model", config["model"], "--model" if args.model else "default"),
                  ("dataset", dataset, why),
                  ("seed", config["seed"], "--seed" if args.seed is not None else "default")]
    say(False, resolved(config).table(tuple(before)))
    return 0
