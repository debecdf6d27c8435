"""``scripts/evaluate.py``: the accuracy, per-class accuracy and confusion matrix of a checkpoint.

The steps of `evaluate_main`: parse the flags; read the checkpoint, load the split and
restore the model (`_prepare`: bad input ends here with one line and status 2); evaluate;
print the report (`_report`); with ``--out``, draw the confusion matrix and the
misclassified images (`_draw`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from .. import models
from ..data import DataLoader
from ..train import EvalResult, evaluate
from .common import (
    EVAL_BATCH_SIZE,
    Job,
    Parser,
    UsageError,
    add_checkpoint_args,
    add_place_flags,
    checkpoint_arg,
    class_names,
    draw_plot,
    find_device,
    plural,
    positive_int,
    read_checkpoint,
    restore_or_refuse,
    run_program,
)
from .datasets import load_split
from .runs import output_folder

__all__ = ["evaluate_main", "evaluate_parser"]

PROG = "evaluate.py"


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Test accuracy, per-class accuracy and confusion matrix of a checkpoint.")
    add_checkpoint_args(p, "a checkpoint.npz written by train.py, or the run folder holding it (needed: this or "
                           "--checkpoint)")
    add_place_flags(p, "default: the dataset the checkpoint was trained on")
    p.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                   help=f"images per forward pass (default: {EVAL_BATCH_SIZE})")
    p.add_argument("--split", choices=("test", "train"), default="test", help="default: test")
    p.add_argument("--out", help="also draw confusion_matrix.png and misclassified.png into this directory "
                                 "(default: none, no pictures)")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/evaluate.py``: returns the exit status (0; 1 when a picture cannot be written; 2 for bad
    arguments, with any folder it made for them removed again)."""
    return run_program(PROG, argv, evaluate_parser, _prepare, _evaluate)


def _prepare(args) -> Job:
    """Read and check everything before any work: UsageError, with a folder made for ``--out`` removed again."""
    checkpoint = read_checkpoint(checkpoint_arg(args, PROG, required=True))
    config = checkpoint.config
    if "model" not in config:
        raise UsageError(f"checkpoint {str(checkpoint.path)!r} does not say which model it holds")
    dataset = args.dataset or config.get("dataset")
    if dataset is None:
        raise UsageError("the checkpoint does not name its dataset: pass --dataset")
    device = find_device(args.device)
    with output_folder(Path(args.out) if args.out else None) as out:
        images, labels = load_split(dataset, args.data_dir, args.split, args.trust_data, PROG)
        model = models.build(config["model"], seed=0, device=device)
        restore_or_refuse(checkpoint, model)
    return Job(checkpoint, config["model"], dataset, device, images, labels, model, out)


def _evaluate(args, job: Job) -> None:
    loader = DataLoader(job.images, job.labels, args.batch_size, shuffle=False, device=job.device)
    start = time.perf_counter()
    result = evaluate(job.model, loader, return_predictions=True)
    seconds = time.perf_counter() - start
    names = class_names(job.dataset)
    _report(args, job, result, seconds, names)
    if job.out is not None:
        _draw(args, job, result, names)


def _report(args, job: Job, result: EvalResult, seconds: float, names: list[str]) -> None:
    """The accuracy and loss, each class's accuracy, and the confusion matrix as a table."""
    print(f"{job.model_name} from {job.checkpoint.path} (epoch {job.checkpoint.epoch}) on {job.dataset} "
          f"{args.split} ({plural(result.num_samples, 'image')}, device {job.device.name}, {seconds:.1f} s)")
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


def _draw(args, job: Job, result: EvalResult, names: list[str]) -> None:
    """confusion_matrix.png and misclassified.png in ``--out`` (nothing more when matplotlib is missing)."""
    from .. import plots

    out = job.out
    written: list[str] = []
    if draw_plot(PROG, written, "confusion",
                 lambda: plots.plot_confusion(result.confusion, out / "confusion_matrix.png", names,
                                              title=f"Confusion matrix ({job.dataset} {args.split})")):
        draw_plot(PROG, written, "misclassified",
                  lambda: plots.plot_misclassified(job.images, result.labels, result.predictions,
                                                   out / "misclassified.png", names,
                                                   title=f"Misclassified {args.split} images",
                                                   cmap=plots.image_cmap(job.dataset)))
    if written:
        print(f"wrote {', '.join(str(out / w) for w in written)}")
