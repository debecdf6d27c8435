"""``scripts/inspect.py``: per-layer forward/backward times and the feature maps of one test image.

The steps of `inspect_main`: parse the flags; read the checkpoint (or take a fresh
``--model``), the test split and the output folder (`_prepare`: bad input ends here with
one line and status 2); print the model's summary and time every layer (`_time_layers`);
classify the chosen test image (`_classify`) and draw its feature maps (`_draw`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import models
from ..backend import to_device
from .common import (
    DEFAULTS,
    Job,
    Parser,
    UsageError,
    add_checkpoint_args,
    add_place_flags,
    checkpoint_arg,
    class_names,
    draw_plot,
    find_device,
    non_negative_int,
    normalise,
    plural,
    positive_int,
    prediction_text,
    read_checkpoint,
    restore_or_refuse,
    run_program,
    seed_int,
)
from .datasets import load_split
from .runs import output_folder

__all__ = ["inspect_main", "inspect_parser"]

PROG = "inspect.py"


def inspect_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Per-layer forward/backward times and the feature maps of one test image.")
    add_checkpoint_args(p, "a checkpoint.npz written by train.py, or the run folder holding it (default: none, "
                           "a freshly initialised --model)")
    p.add_argument("--model", choices=tuple(models.MODELS),
                   help=f"preset when no checkpoint is given (default: {DEFAULTS['model']})")
    p.add_argument("--seed", type=seed_int, default=DEFAULTS["seed"],
                   help=f"seed of the fresh weights when no checkpoint is given (default: {DEFAULTS['seed']})")
    add_place_flags(p, "where the test image comes from (default: the checkpoint's dataset, else mnist-sample)")
    p.add_argument("--index", type=non_negative_int, default=0, help="index of the test image (default: 0)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch for the timings (default: 64)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed runs per layer; the median is shown (default: 5)")
    p.add_argument("--out", help="directory for feature_maps_<index>.png (default: the checkpoint's directory, or .)")
    return p


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/inspect.py``: returns the exit status (0; 1 when the picture cannot be written; 2 for bad
    arguments, with any folder it made for them removed again)."""
    return run_program(PROG, argv, inspect_parser, _prepare, _inspect)


def _prepare(args) -> Job:
    """Read and check everything before any work: UsageError, with a folder made for ``--out`` removed again."""
    path = checkpoint_arg(args, PROG, required=False)
    checkpoint = read_checkpoint(path) if path is not None else None
    config = checkpoint.config if checkpoint is not None else {}
    model_name = config.get("model") or args.model or DEFAULTS["model"]
    if checkpoint is not None and args.model and args.model != model_name:
        raise UsageError(f"--model {args.model} differs from the checkpoint's {model_name}")
    dataset = args.dataset or config.get("dataset") or "mnist-sample"
    device = find_device(args.device)
    if args.out:
        out = Path(args.out)
    elif checkpoint is not None:
        out = checkpoint.path.resolve().parent
    else:
        out = Path(".")
    with output_folder(out):
        images, labels = load_split(dataset, args.data_dir, "test", args.trust_data, PROG)
        if args.index >= len(labels):
            raise UsageError(f"--index {args.index} is out of range: the {dataset} test set has {plural(len(labels), 'image')}")
        model = models.build(model_name, seed=args.seed, device=device)
        if checkpoint is not None:
            restore_or_refuse(checkpoint, model)
    return Job(checkpoint, model_name, dataset, device, images, labels, model, out)


def _inspect(args, job: Job) -> None:
    names = class_names(job.dataset)
    print(job.model.summary())
    print()
    _time_layers(args, job)
    print()
    image, prediction = _classify(args, job, names)
    _draw(args, job, image, prediction)


def _time_layers(args, job: Job) -> None:
    """The forward and backward time of every layer on a batch of test images, as a table."""
    from ..timing import format_layer_times, layer_times

    batch = min(args.batch_size, len(job.labels))
    x = to_device(normalise(job.images[:batch]), job.device)
    y = to_device(job.labels[:batch], job.device)
    rows = layer_times(job.model, x, y, repeats=args.repeats)
    print(f"per-layer time on {job.device.name}, batch of {batch}, median of {plural(args.repeats, 'run')} "
          "(device synchronised around each layer)")
    print(format_layer_times(rows, batch_size=batch))


def _classify(args, job: Job, names: list[str]) -> tuple[np.ndarray, str]:
    """Print what the model makes of test image ``--index``; returns that image (normalised) and the
    prediction as said (``true 7, predicted 7 (98.2%)``)."""
    image = normalise(job.images[args.index:args.index + 1])
    prediction, _ = prediction_text(job.model, image, names, job.labels[args.index])
    source = f"{job.checkpoint.path} (epoch {job.checkpoint.epoch})" if job.checkpoint is not None else "fresh weights"
    print(f"{job.model_name} ({source}) on {job.dataset} test image {args.index}: {prediction}")
    return image, prediction


def _draw(args, job: Job, image: np.ndarray, prediction: str) -> None:
    """feature_maps_<index>.png in the output folder (a note instead when matplotlib is missing)."""
    from .. import plots

    written: list[str] = []
    weights = f"after {plural(job.checkpoint.epoch, 'epoch')}" if job.checkpoint is not None else "with fresh weights"
    label = f"{job.model_name} {weights} on {job.dataset} test image {args.index}: {prediction}"
    draw_plot(PROG, written, "feature_maps",
              lambda: plots.plot_feature_maps(job.model, image, job.out / f"feature_maps_{args.index}.png",
                                              label=label, cmap=plots.image_cmap(job.dataset)))
    if written:
        print(f"wrote {job.out / written[0]}")
