"""Pictures of a run: sample images, training curves, feature maps, filters, confusion matrix, mistakes.

matplotlib is imported only when a plot is drawn, and only its object-oriented
API is used (a `Figure` rendered by the Agg canvas), so no window opens and no
global backend is switched. Without matplotlib every function raises
`PlotsUnavailable`, which the scripts turn into a one-line note.

Each function writes one PNG (through a temporary file, renamed into place, so an
existing picture is never left half-overwritten) and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np  # host side: pictures are drawn from host arrays

from ._files import atomic_write
from .backend import to_device, to_numpy

__all__ = [
    "PlotsUnavailable",
    "class_names",
    "image_cmap",
    "plot_samples",
    "plot_history",
    "feature_maps",
    "plot_feature_maps",
    "plot_filters",
    "plot_confusion",
    "plot_misclassified",
    "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def class_names(dataset: str | None) -> list[str]:
    """Readable class names: Fashion-MNIST's ten garments, otherwise the digits."""
    if dataset == "fashion-mnist":
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(10)]


def image_cmap(dataset: str | None) -> str:
    """How a dataset's images are drawn: Fashion-MNIST as stored (a light garment on a dark background,
    ``"gray"``), the digits as ink on paper (``"gray_r"``: dark strokes on white)."""
    return "gray" if dataset == "fashion-mnist" else "gray_r"


MIN_WIDTH = 5.5  # inches: room for a figure title however few images there are


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable(
            "matplotlib is not installed, so no plots were drawn: pip install 'cnnxp[plot]'"
        ) from exc
    return Figure(figsize=(max(width, MIN_WIDTH), height), dpi=100, layout="constrained")


def _save(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` as a PNG at ``path``, whole or not at all (`cnnxp._files.atomic_write`).

    An OSError (a full disk) carries ``path`` as its ``filename``; the previous file, if any, stays.
    """
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return path


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(n, max_cols)
    return max(1, -(-n // cols)), max(1, cols)


def _image(a) -> np.ndarray:
    a = np.asarray(to_numpy(a))
    return a.reshape(a.shape[-2], a.shape[-1]) if a.ndim > 2 else a


def plot_samples(images, labels, path, names=None, n: int = 32, title: str = "Training images",
                 cmap: str = "gray_r") -> Path:
    """A grid of the first ``n`` images (N, 28, 28) with their labels; ``cmap``: `image_cmap` of the dataset."""
    images, labels = to_numpy(images), to_numpy(labels)
    names = names or class_names(None)
    if min(n, len(images)) < 1:
        raise ValueError(f"plot_samples needs at least one image: images has length {len(images)}, n is {n}")
    n = min(n, len(images))
    rows, cols = _grid(n)
    fig = _figure(1.4 * cols, 1.55 * rows + 0.4)
    fig.suptitle(f"{title} ({n} of {len(images):,})")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(_image(images[i]), cmap=cmap, interpolation="nearest")
            ax.set_title(names[int(labels[i])], fontsize=9)
    return _save(fig, path)


#: The curves of `plot_history`: the history's key prefix, style and legend. The names are those of the
#: epoch line (``train loss ... acc``, ``test loss ... acc``) and of history.json (``train_loss``, ``test_loss``).
CURVES = (("train", "o-", "train: running mean over the epoch, train mode"),
          ("test", "s-", "test: after the epoch, eval mode"))
HISTORY_CAPTION = ("train: the mean over the epoch's batches as they were trained on (train mode: augmentation and "
                   "dropout on, where the run has them; weights still moving)\n"
                   "test: the whole test set after each epoch (eval mode)\n"
                   "Both losses are the plain cross-entropy: a label-smoothed training objective is not what is shown.")


def plot_history(history, path, title: str = "Training curves") -> Path:
    """Loss and accuracy per epoch, training and test, side by side; the legend and a caption say how each
    was measured (`CURVES`)."""
    rows = list(history)
    epochs = [r["epoch"] for r in rows]
    fig = _figure(10, 4.6)
    fig.suptitle(title)
    fig.supxlabel(HISTORY_CAPTION, fontsize=8, color="0.3")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "accuracy", "accuracy (%)")):
        scale = 100.0 if key == "accuracy" else 1.0
        # None (a diverged run's NaN, as history.json stores it, or no test set) leaves a gap
        for prefix, style, name in CURVES:
            points = [(r["epoch"], scale * r[f"{prefix}_{key}"]) for r in rows
                      if r.get(f"{prefix}_{key}") is not None]
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], style, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{key.capitalize()} per epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    return _save(fig, path)


def _is_feature_layer(layer) -> bool:
    return type(layer).__name__ in ("Conv2D", "MaxPool2D", "AvgPool2D")


def feature_maps(model, image) -> list[tuple[str, np.ndarray]]:
    """``(name, maps)`` after each convolution and pooling layer for one image, maps on the host (C, H, W).

    ``image`` is one normalised input, (1, H, W) or (1, 1, H, W), on any device. The
    network runs in eval mode, one layer at a time, as the teaching notebook showed it.
    A pooling layer's maps are taken after the ReLU that follows it, if one does (the
    presets pool first), so they are the rectified maps the next layer reads.
    """
    x = to_device(image, model.device)
    if len(x.shape) == 3:
        x = model.device.xp.reshape(x, (1, *x.shape))
    stages = []
    was_training = model.training
    model.eval()
    try:
        with model.device.activate():
            out = x
            for i, layer in enumerate(model.layers):
                out = layer.forward(out)
                if _is_feature_layer(layer) and len(out.shape) == 4:
                    stages.append((f"{i}: {layer.name}", to_numpy(out)[0]))
                elif layer.name == "ReLU" and i > 0 and model.layers[i - 1].name.endswith("Pool2D") and stages:
                    stages[-1] = (f"{stages[-1][0]} + ReLU", to_numpy(out)[0])
    finally:
        model.train(was_training)
    return stages


def plot_feature_maps(model, image, path, label: str | None = None, max_maps: int = 16, cmap: str = "gray_r",
                      per_line: int = 8) -> Path:
    """The input and the feature maps after each convolution and pooling layer (`feature_maps`), for one image.

    Each layer's maps share one colour scale, shown by the colour bar beside them, so that maps of a
    layer can be compared; up to ``max_maps`` maps per layer, ``per_line`` to a line. ``label`` goes in the
    title (what the image is and what the model made of it); ``cmap`` draws the input (`image_cmap`).
    """
    x = to_numpy(image)
    blocks = [("input", x.reshape(-1, *x.shape[-2:])[:1], cmap, None)]
    for name, maps in feature_maps(model, image):
        shown = min(max_maps, maps.shape[0])
        more = f"\n({shown} shown)" if shown < maps.shape[0] else ""
        blocks.append((f"{name}\n{maps.shape[0]} x {maps.shape[1]}x{maps.shape[2]}{more}", maps[:shown], "viridis",
                       "activation"))
    cols = min(per_line, max(len(maps) for _, maps, _, _ in blocks))
    lines = [-(-len(maps) // cols) for _, maps, _, _ in blocks]
    fig = _figure(1.1 * cols + 2.6, 1.25 * sum(lines) + 0.7)
    fig.suptitle("Feature maps" + (f" of {label}" if label else ""))
    grid = fig.add_gridspec(sum(lines), cols + 2, width_ratios=[1.7] + [1] * cols + [0.12])
    top = 0
    for (title, maps, colours, bar_label), n in zip(blocks, lines, strict=True):
        _feature_block(fig, grid, top, n, title, maps, colours, bar_label)
        top += n
    return _save(fig, path)


def _feature_block(fig, grid, top: int, lines: int, title: str, maps: np.ndarray, cmap: str, bar_label) -> None:
    """One layer's maps in grid lines ``top`` to ``top + lines``, on one colour scale (the smallest to the
    largest value shown), with its name on the left and, given ``bar_label``, its colour bar on the right."""
    cols = grid.ncols - 2
    name = fig.add_subplot(grid[top:top + lines, 0])
    name.set_axis_off()
    name.text(1.0, 0.5, title, ha="right", va="center", fontsize=8, transform=name.transAxes)
    low, high = float(maps.min()), float(maps.max())
    for i in range(len(maps)):
        ax = fig.add_subplot(grid[top + i // cols, 1 + i % cols])
        ax.set_axis_off()
        image = ax.imshow(maps[i], cmap=cmap, vmin=low, vmax=max(high, low + 1e-12), interpolation="nearest")
        if len(maps) > 1:
            ax.set_title(f"map {i}", fontsize=7)
    if bar_label is not None:
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[top:top + lines, -1]))
        bar.ax.tick_params(labelsize=7)
        bar.set_label(bar_label, fontsize=7)


def plot_filters(model, path) -> Path:
    """The learned weights of the first convolution, one small image per (output, input) channel pair."""
    conv = next((layer for layer in model.layers if type(layer).__name__ == "Conv2D"), None)
    if conv is None:
        raise ValueError("the model has no Conv2D layer, so there are no filters to draw")
    weight = to_numpy(conv.params["weight"])  # (out, in, kh, kw)
    out_ch, in_ch, kh, kw = weight.shape
    filters = weight.reshape(out_ch * in_ch, kh, kw)
    n = filters.shape[0]
    rows, cols = _grid(n)
    fig = _figure(1.3 * cols + 0.8, 1.4 * rows + 0.6)
    fig.suptitle(f"Learned first-layer filters: {out_ch} x {in_ch} kernels of {kh}x{kw}\n"
                 "(blue negative, red positive, one colour scale)")
    axes = fig.subplots(rows, cols, squeeze=False)
    bound = float(np.abs(filters).max()) or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            image = ax.imshow(filters[i], cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
            ax.set_title(f"filter {i // in_ch}" + (f".{i % in_ch}" if in_ch > 1 else ""), fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return _save(fig, path)


def plot_confusion(confusion, path, names=None, title: str = "Confusion matrix (test set)") -> Path:
    """The confusion matrix with counts in each cell; rows are true classes, columns predictions."""
    confusion = np.asarray(to_numpy(confusion))
    k = confusion.shape[0]
    names = names or class_names(None)
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(k), names[:k], rotation=45 if max(len(s) for s in names[:k]) > 2 else 0, ha="right")
    ax.set_yticks(range(k), names[:k])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = confusion.sum()
    accuracy = np.trace(confusion) / total if total else float("nan")
    ax.set_title(f"{title}: accuracy {100 * accuracy:.2f}% of {total:,}")
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(k):
        for j in range(k):
            if confusion[i, j]:
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > threshold else "black")
    return _save(fig, path)


def plot_misclassified(images, labels, predictions, path, names=None, n: int = 32,
                       title: str = "Misclassified test images", cmap: str = "gray_r") -> Path:
    """A grid of images the model got wrong, titled with the true and the predicted class; ``cmap``:
    `image_cmap` of the dataset."""
    images, labels, predictions = to_numpy(images), to_numpy(labels), to_numpy(predictions)
    names = names or class_names(None)
    wrong = np.flatnonzero(labels != predictions)
    shown = wrong[:n]
    rows, cols = _grid(max(len(shown), 1))
    fig = _figure(1.6 * cols, 1.75 * rows + 0.5)
    fig.suptitle(f"{title} ({len(shown)} shown; wrong: {len(wrong):,} of {len(labels):,})")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if len(shown) == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for ax, i in zip(axes.flat, shown, strict=False):
        ax.imshow(_image(images[i]), cmap=cmap, interpolation="nearest")
        ax.set_title(f"true {names[int(labels[i])]}\npred {names[int(predictions[i])]}", fontsize=7,
                     color="firebrick")
    return _save(fig, path)
