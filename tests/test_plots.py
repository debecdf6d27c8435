"""cnnxp.plots and the pictures train.py writes: non-empty PNGs under the expected names."""

from __future__ import annotations

import sys

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


def test_class_names():
    assert plots.class_names("fashion-mnist")[0] == "T-shirt/top"
    assert plots.class_names("fashion-mnist")[9] == "Ankle boot"
    assert plots.class_names("mnist") == [str(i) for i in range(10)]


def test_train_writes_every_plot(tmp_path):
    out = tmp_path / "run"
    assert cli.train_main(["--dataset", "mnist-sample", "--model", "seed", "--epochs", "1", "--out", str(out),
                           "--quiet"]) == 0
    for name in TRAIN_PLOTS:
        assert _is_png(out / name), name


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
