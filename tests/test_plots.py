"""cnnxp.plots and the pictures train.py writes: non-empty PNGs under the expected names."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnxp import cli, models, plots
from cnnxp.data import load_dataset
from cnnxp.train import History

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN_PLOTS = ["samples.png", "history.png", "feature_maps.png", "filters.png", "confusion_matrix.png",
               "misclassified.png"]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-sample", "test")


def test_each_plot_writes_a_png(tmp_path, digits):
    x, y = digits
    model = models.lenet5(seed=0)
    history = History([{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 1 - 0.1 / e,
                        "test_loss": 1.2 / e, "test_accuracy": 1 - 0.12 / e} for e in (1, 2, 3)])
    confusion = np.diag(np.full(10, 90)) + 1
    predictions = (y + (np.arange(len(y)) % 7 == 0)) % 10
    image = ((x[:1].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    paths = [
        plots.plot_samples(x, y, tmp_path / "samples.png"),
        plots.plot_history(history, tmp_path / "history.png"),
        plots.plot_feature_maps(model, image, tmp_path / "feature_maps.png", label="a seven"),
        plots.plot_filters(model, tmp_path / "filters.png"),
        plots.plot_confusion(confusion, tmp_path / "confusion_matrix.png", plots.class_names("fashion-mnist")),
        plots.plot_misclassified(x, y, predictions, tmp_path / "misclassified.png"),
        plots.plot_misclassified(x[:5], y[:5], y[:5], tmp_path / "none_wrong.png"),
    ]
    for path in paths:
        assert _is_png(path), path


def test_feature_maps_of_the_notebook_network(tmp_path, digits):
    x, _ = digits
    image = ((x[:1].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    assert _is_png(plots.plot_feature_maps(models.seed_cnn(), image[0], tmp_path / "fm.png"))


def test_feature_maps_show_each_pool_after_its_relu(digits):
    """LeNet-5 pools before its ReLUs: the pictures show the rectified pooled maps (what the next
    layer reads), as they did when the ReLU came first; the convolutions' own maps are raw."""
    x, _ = digits
    image = ((x[:1].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    model = models.lenet5(seed=0)
    stages = plots.feature_maps(model, image)
    assert [name for name, _ in stages] == ["0: Conv2D", "1: MaxPool2D + ReLU", "3: Conv2D", "4: MaxPool2D + ReLU"]
    assert [maps.shape for _, maps in stages] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    conv = stages[0][1]
    assert conv.min() < 0  # raw convolution output
    pooled = conv.reshape(6, 14, 2, 14, 2).max(axis=(2, 4))
    np.testing.assert_array_equal(stages[1][1], np.maximum(pooled, 0))
    assert model.training  # the model's mode is restored


def test_class_names():
    assert plots.class_names("fashion-mnist")[0] == "T-shirt/top"
    assert plots.class_names("fashion-mnist")[9] == "Ankle boot"
    assert plots.class_names("mnist") == [str(i) for i in range(10)]


def test_train_writes_every_plot_and_a_resume_without_plots_removes_them(tmp_path, monkeypatch, capsys):
    """The feature maps' title says the prediction as inspect.py does; --resume --no-plots leaves no picture
    of an earlier epoch beside the newer metrics, and says so in one line."""
    labels = _recorded(monkeypatch, "plot_feature_maps", "label")
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--out", str(out),
                           "--quiet"]) == 0
    for name in TRAIN_PLOTS:
        assert _is_png(out / name), name
    assert re.fullmatch(r"seed after 1 epoch on mnist-sample test image (\d+): true (\d), predicted \2 "
                        r"\(\d+\.\d%\)", labels[0]), labels
    capsys.readouterr()
    assert cli.train_main(["--resume", str(out), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    assert capsys.readouterr().err.strip() == (f"train.py: removed the earlier epochs' pictures from {out} "
                                               f"({', '.join(TRAIN_PLOTS)}): this run draws none")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "history.json", "metrics.json"]


def _recorded(monkeypatch, function: str, keyword: str) -> list:
    """Record the ``keyword`` argument of each call of ``plots.<function>``, which still draws."""
    seen, real = [], getattr(plots, function)

    def record(*args, **kwargs):
        seen.append(kwargs.get(keyword))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, function, record)
    return seen


def _figures(monkeypatch) -> list:
    """The figures the plots render from now on (each still written)."""
    figures, real = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    return figures


def test_feature_maps_have_one_colour_scale_and_bar_per_layer(tmp_path, digits, monkeypatch):
    x, _ = digits
    image = ((x[:1].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    model = models.lenet5(seed=0)
    figures = _figures(monkeypatch)
    plots.plot_feature_maps(model, image, tmp_path / "fm.png", label="a four")
    fig = figures[0]
    assert fig.get_suptitle() == "Feature maps of a four"
    width, height = fig.get_size_inches()
    assert width <= 12 and height <= 10  # 8 maps to a line, not 16 across
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert not any(ax.axison for ax in fig.axes if ax.images)  # no frame on any map
    stages = plots.feature_maps(model, image)
    assert len(images) == 1 + sum(maps.shape[0] for _, maps in stages)  # no empty cells
    for _, maps in stages:  # one scale per layer, from its smallest value to its largest, and one bar
        layer = [im for im in images[1:] if im.get_array().shape == maps.shape[1:]]
        assert len(layer) == maps.shape[0]
        assert {im.get_clim() for im in layer} == {(float(maps.min()), float(maps.max()))}
        assert sum(im.colorbar is not None for im in layer) == 1
    assert images[0].get_cmap().name == "gray_r" and images[0].colorbar is None


def test_the_history_plot_shows_what_history_json_and_the_epoch_line_say(tmp_path, monkeypatch, capsys):
    """The same numbers under the same names: 'train' (running, train mode) and 'test' (eval mode)."""
    figures = _figures(monkeypatch)
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "2", "--label-smoothing",
                           "0.1", "--out", str(out)]) == 0
    rows = json.loads((out / "history.json").read_text())
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[:3] for line in printed] == [
        [f"epoch {r['epoch']}/2", f"train loss {r['train_loss']:.4f} acc {100 * r['train_accuracy']:.2f}%",
         f"test loss {r['test_loss']:.4f} acc {100 * r['test_accuracy']:.2f}%"] for r in rows]
    fig = next(f for f in figures if f.get_suptitle() == "seed on mnist-sample")
    loss, accuracy = fig.axes[:2]
    for ax, key, scale in ((loss, "loss", 1.0), (accuracy, "accuracy", 100.0)):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train: running mean over the epoch, train mode", "test: after the epoch, eval mode"]
        for line, prefix in zip(ax.lines, ("train", "test"), strict=True):
            np.testing.assert_allclose(line.get_ydata(), [scale * r[f"{prefix}_{key}"] for r in rows])
    assert "Both losses are the plain cross-entropy" in fig.get_supxlabel()


def test_image_colours_follow_the_dataset(tmp_path, monkeypatch):
    assert plots.image_cmap("fashion-mnist") == "gray"  # light garments on a dark ground, as stored
    assert plots.image_cmap("mnist") == plots.image_cmap("mnist-sample") == plots.image_cmap(None) == "gray_r"
    figures = _figures(monkeypatch)
    x, y = load_dataset("mnist-sample", "test")
    plots.plot_samples(x, y, tmp_path / "s.png", cmap="gray")
    plots.plot_misclassified(x, y, (y + 1) % 10, tmp_path / "m.png", cmap="gray")
    assert {ax.images[0].get_cmap().name for fig in figures for ax in fig.axes if ax.images} == {"gray"}


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_is_drawn_as_garments(tmp_path, monkeypatch):
    """evaluate.py and inspect.py on Fashion-MNIST draw its images light on dark (a seed network trained on
    digits will do: only the pictures are looked at)."""
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--quiet", "--no-plots",
                           "--out", str(out)]) == 0
    figures = _figures(monkeypatch)
    assert cli.evaluate_main([str(out), "--dataset", "fashion-mnist", "--out", str(tmp_path / "eval")]) == 0
    assert cli.inspect_main([str(out), "--dataset", "fashion-mnist", "--repeats", "1", "--out", str(tmp_path)]) == 0
    misclassified, feature_maps = figures[1], figures[2]
    assert {ax.images[0].get_cmap().name for ax in misclassified.axes if ax.images} == {"gray"}
    assert [ax.images[0] for ax in feature_maps.axes if ax.images][0].get_cmap().name == "gray"


def test_train_without_matplotlib_still_works(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--out", str(out),
                           "--quiet"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "matplotlib" in line]
    assert len(notes) == 1, err
    assert (out / "metrics.json").exists() and not list(out.glob("*.png"))


def test_a_picture_that_cannot_be_written_leaves_the_old_one(tmp_path, digits, monkeypatch):
    """Disk full while saving: the previous PNG is intact, no temporary file stays, and the error names
    the picture."""
    from matplotlib.figure import Figure

    x, y = digits
    path = plots.plot_samples(x, y, tmp_path / "samples.png")
    before = path.read_bytes()

    def full(self, f, **kwargs):
        f.write(b"\x89PNG half a picture")
        raise OSError(27, "File too large")

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError) as info:
        plots.plot_samples(x[:4], y[:4], path)
    assert info.value.filename == str(path) and info.value.strerror == "File too large"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]


def test_evaluate_says_which_picture_it_could_not_write(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--quiet",
                           "--no-plots", "--out", str(out)]) == 0

    def full(confusion, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(plots, "plot_confusion", full)
    capsys.readouterr()
    assert cli.evaluate_main([str(out / "checkpoint.npz"), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"evaluate.py: error: cannot write {str(tmp_path / 'eval' / 'confusion_matrix.png')!r}: "
                   "No space left on device")


def test_odd_inputs_draw_or_say_why(tmp_path, digits):
    """A diverged run's history (null losses), few images with a readable title, no images at all."""
    from PIL import Image

    x, y = digits
    history = [{"epoch": 1, "train_loss": None, "train_accuracy": 0.1, "test_loss": None, "test_accuracy": 0.1},
               {"epoch": 2, "train_loss": None, "train_accuracy": 0.1, "test_loss": None, "test_accuracy": 0.1}]
    assert _is_png(plots.plot_history(history, tmp_path / "diverged.png"))
    one = plots.plot_misclassified(x[:1], y[:1], (y[:1] + 1) % 10, tmp_path / "one.png",
                                   title="Misclassified train images")
    assert Image.open(one).size[0] >= 100 * plots.MIN_WIDTH  # room for the title
    with pytest.raises(ValueError, match="plot_samples needs at least one image: images has length 0, n is 32"):
        plots.plot_samples(x[:0], y[:0], tmp_path / "empty.png")
