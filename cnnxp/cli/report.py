"""What a finished training run writes besides its checkpoint: the numbers of ``metrics.json`` and the pictures.

``run`` is train.py's run (configuration, device, folder, data, model, history, communicator).
"""

from __future__ import annotations

from typing import Any

import numpy as np  # host side: which test image the pictures show

from ..train import EvalResult
from .common import draw_plot, normalise, plural, prediction_text
from .config import repeat_command

__all__ = ["metrics", "draw_samples", "draw_pictures"]

PROG = "train.py"


def metrics(run, result: EvalResult, names: list[str]) -> dict[str, Any]:
    """What ``metrics.json`` holds: the final test result, the training time and speed, the configuration,
    and the commands that repeat the run, run one after the other (``commands``: the first run's, then one
    per ``--resume`` that changed ``--epochs``; ``command``, the first, as it has always been)."""
    config, rows = run.config, run.history.rows
    commands = config.get("commands") or [repeat_command(config)]
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
        "command": commands[0],
        "commands": commands,
    }


def draw_samples(run, names: list[str], written: list[str]) -> bool:
    """samples.png, before training; False when matplotlib is missing (no pictures at all then)."""
    from .. import plots

    x_train, y_train = run.train_data
    return draw_plot(PROG, written, "samples",
                     lambda: plots.plot_samples(x_train, y_train, run.out / "samples.png", names,
                                                title=f"{run.config['dataset']} training images",
                                                cmap=plots.image_cmap(run.config["dataset"])))


def draw_pictures(run, result: EvalResult, names: list[str], written: list[str]) -> None:
    """The pictures after training: curves, feature maps of a well-classified test image, filters, mistakes."""
    from .. import plots

    config, out, model = run.config, run.out, run.model
    x_test, y_test = run.test_data
    wrong = result.predictions != result.labels
    index = int(np.flatnonzero(~wrong)[0]) if (~wrong).any() else 0
    image = normalise(x_test[index:index + 1])
    label = (f"{config['model']} after {plural(len(run.history), 'epoch')} on {config['dataset']} test image "
             f"{index}: {prediction_text(model, image, names, y_test[index])[0]}")
    cmap = plots.image_cmap(config["dataset"])
    draws = [
        ("history", lambda: plots.plot_history(run.history, out / "history.png",
                                               title=f"{config['model']} on {config['dataset']}")),
        ("feature_maps", lambda: plots.plot_feature_maps(model, image, out / "feature_maps.png", label=label,
                                                         cmap=cmap)),
        ("filters", lambda: plots.plot_filters(model, out / "filters.png")),
        ("confusion", lambda: plots.plot_confusion(result.confusion, out / "confusion_matrix.png", names)),
        ("misclassified", lambda: plots.plot_misclassified(
            x_test, result.labels, result.predictions, out / "misclassified.png", names, cmap=cmap)),
    ]
    for name, draw in draws:
        if not draw_plot(PROG, written, name, draw):
            break
