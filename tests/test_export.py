"""ONNX export: ONNX Runtime computes what cnnxp computes in eval mode, for every preset and every layer type.

Each model is trained a few SGD steps first, so that BatchNorm's running statistics, the
weights and Dropout's generator have all moved; then exported, checked by ``onnx.checker``
and run by ONNX Runtime at batch 1 and 7 (the dynamic batch axis). Tests that need ``onnx``
or ``onnxruntime`` skip without them; the message for a missing ``onnx`` is tested without it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnxp import Sequential, models, to_numpy
from cnnxp._files import temporary_files
from cnnxp.checkpoint import save_checkpoint
from cnnxp.cli.common import normalise
from cnnxp.data import load_dataset
from cnnxp.export import OnnxUnavailableError, onnx_model, to_onnx
from cnnxp.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Softmax,
)
from cnnxp.losses import softmax_cross_entropy
from cnnxp.optim import SGD

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "export.py"
ATOL = 1e-4


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _every_layer() -> Sequential:
    """Every layer type on a non-square 3-channel input: Conv2D without bias and with a non-square kernel,
    stride and padding; MaxPool2D on negative values with padding and stride != kernel; AvgPool2D with
    padding (counted); Dense with and without bias; Softmax at the end."""
    return Sequential([
        Conv2D(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), bias=False, seed=1), BatchNorm2D(4),
        MaxPool2D((3, 2), stride=(2, 1), padding=(1, 1)), ReLU(),
        AvgPool2D((2, 3), stride=(1, 2), padding=(1, 1)), Dropout(0.3, seed=2), Flatten(),
        Dense(4 * 6 * 9, 12, seed=3), ReLU(), Dropout(0.5, seed=4), Dense(12, 5, bias=False, seed=5), Softmax(),
    ])


def _pools_on_negatives() -> Sequential:
    """Padding that must act as -inf (max) and as counted zeros (average), on all-negative input."""
    return Sequential([MaxPool2D(2, stride=1, padding=1), AvgPool2D(3, stride=2, padding=1),
                       Conv2D(2, 3, (1, 3), padding=(0, 1), seed=6), Softmax()])  # softmax over (N, 3, H, W)


#: name -> (build, input shape (C, H, W))
MODELS = {
    "seed": (lambda: models.seed_cnn(seed=0), (1, 28, 28)),
    "lenet5": (lambda: models.lenet5(seed=0), (1, 28, 28)),
    "fashion": (lambda: models.fashion_cnn(seed=0), (1, 28, 28)),
    "every-layer": (_every_layer, (3, 20, 17)),
    "pools-on-negatives": (_pools_on_negatives, (2, 9, 11)),
}


def _inputs(shape, batch: int, seed: int = 0) -> np.ndarray:
    """Test digits for 28x28 models (the inputs they were made for), noise for the others."""
    if shape == (1, 28, 28):
        images, _ = load_dataset("mnist-sample", "test")
        start = seed * 97 % (len(images) - batch)
        return normalise(images[start:start + batch])
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    return -np.abs(x) - 0.1 if shape == MODELS["pools-on-negatives"][1] else x  # all negative: padding must lose


def _train(model: Sequential, shape, steps: int = 10) -> Sequential:
    """A few SGD steps in train mode: weights, running statistics and Dropout's generator all move.

    28x28 models learn real digits; the others follow random output gradients (any gradient moves
    them). The model is left in train mode.
    """
    images, labels = load_dataset("mnist-sample", "train")
    rng = np.random.default_rng(1)
    optimizer = SGD(model, lr=0.05, momentum=0.9)
    model.train()
    for k in range(steps):
        if shape == (1, 28, 28):
            out = model(normalise(images[16 * k:16 * (k + 1)]))
            _, grad = softmax_cross_entropy(out, labels[16 * k:16 * (k + 1)])
        else:
            out = model(_inputs(shape, 16, seed=k))
            grad = (rng.standard_normal(out.shape) / 16).astype(np.float32)  # as the mean loss of 16 rows
        model.backward(grad, need_input_grad=False)
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def trained():
    """Every model of `MODELS`, trained, in train mode (tests put it back in train mode after use)."""
    return {name: _train(build(), shape) for name, (build, shape) in MODELS.items()}


def _eval_output(model: Sequential, x: np.ndarray) -> np.ndarray:
    """cnnxp's eval-mode output, the model returned to the mode it was in."""
    was = model.training
    model.eval()
    try:
        return np.asarray(to_numpy(model(x)), dtype=np.float64)
    finally:
        model.train(was)


def _run(ort, path, x: np.ndarray, input_name: str = "images") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x})[0]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# -- the presets and every layer type --------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_computes_what_cnnxp_computes_in_eval_mode(name, trained, onnx, ort, tmp_path):
    model, shape = trained[name], MODELS[name][1]
    before = {k: np.array(to_numpy(v), copy=True) for k, v in model.state_dict().items()}
    rng_before = model.rng_state()
    path = to_onnx(model, tmp_path / f"{name}.onnx", shape)
    assert path == tmp_path / f"{name}.onnx" and path.is_file() and not temporary_files(path)
    assert model.training and all(layer.training for layer in model.layers)  # left as it was
    assert model.rng_state() == rng_before
    assert all(np.array_equal(to_numpy(v), before[k]) for k, v in model.state_dict().items())
    bn = [layer for layer in model.layers if isinstance(layer, BatchNorm2D)]
    assert all(not np.allclose(to_numpy(layer.running_mean), 0) for layer in bn)  # the statistics moved
    onnx.checker.check_model(str(path), full_check=True)
    for batch in (1, 7):
        x = _inputs(shape, batch, seed=batch)
        got = _run(ort, path, x)
        want = _eval_output(model, x)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.max(np.abs(got - want)) <= ATOL, (name, batch, np.max(np.abs(got - want)))


def test_names_dynamic_axis_and_weights_are_as_documented(trained, onnx, tmp_path):
    model = trained["fashion"]
    proto = onnx.load(str(to_onnx(model, tmp_path / "f.onnx")))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, _dims(inp)) == ("images", ["N", 1, 28, 28])
    assert (out.name, _dims(out)) == ("logits", ["N", 10])
    assert proto.opset_import[0].version == 17 and proto.producer_name == "cnnxp"
    weights = {t.name: t for t in proto.graph.initializer}
    assert set(weights) == set(model.state_dict())  # every parameter and running statistic, by its key
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in weights.values())
    ops = [node.op_type for node in proto.graph.node]
    assert "Dropout" not in ops and ops.count("BatchNormalization") == 2 and ops[-1] == "Gemm"
    conv = proto.graph.node[0]
    assert conv.op_type == "Conv" and len(conv.input) == 2  # bias=False: no bias input


def test_other_names_opsets_and_dtypes(trained, ort, tmp_path):
    model = trained["every-layer"]
    x = _inputs((3, 20, 17), 3)
    for opset in (13, 21):
        path = to_onnx(model, tmp_path / f"o{opset}.onnx", (3, 20, 17), opset=opset,
                       input_name="x", output_name="probabilities")
        assert np.max(np.abs(_run(ort, path, x, "x") - _eval_output(model, x))) <= ATOL
    wide = models.lenet5(seed=1).to("cpu", dtype="float64")  # exported as float32
    x = _inputs((1, 28, 28), 5)
    path = to_onnx(wide, tmp_path / "wide.onnx")
    assert np.max(np.abs(_run(ort, path, x) - _eval_output(wide, x.astype(np.float64)))) <= ATOL


def test_a_model_on_another_array_library(ort, tmp_path):
    strict = pytest.importorskip("array_api_strict")
    x = _inputs((1, 28, 28), 5)
    model = models.lenet5(seed=2).to(strict.Device("device1"), xp=strict)
    path = to_onnx(model, tmp_path / "strict.onnx")
    assert np.max(np.abs(_run(ort, path, x) - _eval_output(models.lenet5(seed=2), x))) <= ATOL


def test_no_node_at_all_is_the_identity(ort, tmp_path):
    x = _inputs((2, 3, 4), 2)
    for layers in ([], [Dropout(0.5)]):
        path = to_onnx(Sequential(layers), tmp_path / "id.onnx", (2, 3, 4))
        assert np.array_equal(_run(ort, path, x), x)


# -- what it refuses, in one line -------------------------------------------------------------------


class Scale(Layer):
    """A user's own layer: nothing says what it computes in ONNX's terms."""

    def forward(self, x):
        return 2 * x


class LeakyReLU(ReLU):
    def forward(self, x):
        return np.where(x > 0, x, 0.01 * x)


@pytest.mark.parametrize(("layer", "words"), [(Scale(), "layer 1 (Scale())"),
                                              (LeakyReLU(), "layer 1 (LeakyReLU()): a subclass of ReLU")])
def test_a_layer_it_cannot_export_is_one_line_naming_it(layer, words, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    model = Sequential([Conv2D(1, 2, 3, seed=0), layer, Flatten(), Dense(2 * 26 * 26, 10, seed=0)])
    with pytest.raises(TypeError) as info:
        to_onnx(model, path)
    message = str(info.value)
    assert words in message and "\n" not in message and "Conv2D, MaxPool2D" in message
    assert path.read_bytes() == b"old" and not temporary_files(path)  # nothing touched


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"input_shape": (3, 28, 28)}, ValueError, "does not fit layer 0 (Conv2D(1, 6,"),
    ({"input_shape": (1, 8, 8)}, ValueError, "does not fit layer 3 (Conv2D(6, 16,"),
    ({"input_shape": (28, 28)}, ValueError, "(C, H, W), without the batch axis"),
    ({"input_shape": (1, 1, 28, 28)}, ValueError, "(C, H, W), without the batch axis"),
    ({"input_shape": (1, 28.0, 28)}, TypeError, "input_shape must be an int"),
    ({"input_shape": "1,28,28"}, TypeError, "input_shape must be a tuple"),
    ({"input_shape": (0, 28, 28)}, ValueError, "input_shape must be a positive int"),
    ({"opset": 12}, ValueError, "opset must be an int >= 13"),
    ({"opset": 10_000}, ValueError, "opset must be at most"),
    ({"opset": "17"}, TypeError, "opset must be an int"),
    ({"input_name": "x", "output_name": "x"}, ValueError, "must differ"),
    ({"output_name": ""}, ValueError, "output_name must not be empty"),
    ({"input_name": 3}, TypeError, "input_name must be a str"),
    ({"output_name": "0.weight"}, ValueError, "the name of an inner tensor"),
])  # fmt: skip
def test_bad_arguments_follow_the_error_policy(kwargs, error, words, onnx, tmp_path):
    with pytest.raises(error) as info:
        to_onnx(models.lenet5(seed=0), tmp_path / "m.onnx", **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_what_is_not_a_model_or_a_path(tmp_path):
    with pytest.raises(TypeError, match=r"got ReLU: wrap it, Sequential\(\[ReLU\(...\)\]\)"):
        to_onnx(ReLU(), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="path must be a str or a path, got int"):
        to_onnx(models.seed_cnn(), 3)


def test_without_onnx_one_line_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(ImportError) as info:
        onnx_model(models.seed_cnn())
    assert isinstance(info.value, OnnxUnavailableError)
    assert "pip install 'cnnxp[onnx]'" in str(info.value) and "\n" not in str(info.value)


# -- scripts/export.py -------------------------------------------------------------------------------


def _script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def _main(*args) -> int:
    """The script's ``main`` in this process (quicker than a new one, for the errors)."""
    spec = importlib.util.spec_from_file_location("cnnxp_export_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory):
    """The trained LeNet-5 saved as train.py would, naming its model and dataset."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.npz"
    save_checkpoint(path, trained["lenet5"], None, epoch=3, config={"model": "lenet5", "dataset": "mnist-sample"})
    return path


def test_script_exports_a_checkpoint_end_to_end(checkpoint, trained, ort, tmp_path):
    out = tmp_path / "sub" / "lenet5.onnx"
    proc = _script(checkpoint, out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and f"{out.stat().st_size:,} bytes" in lines[0]
    x = _inputs((1, 28, 28), 7)  # the trained weights, not a fresh model's
    assert np.max(np.abs(_run(ort, out, x) - _eval_output(trained["lenet5"], x))) <= ATOL


@pytest.mark.parametrize(("args", "words"), [
    (("missing.npz",), "checkpoint 'missing.npz' does not exist"),
    (("{ckpt}", "--input-shape", "3,28,28"), "does not fit layer 0 (Conv2D"),
])
def test_script_refuses_bad_input_in_one_line(args, words, checkpoint, onnx, tmp_path):
    out = tmp_path / "m.onnx"
    args = [a.replace("{ckpt}", str(checkpoint)) for a in args]
    proc = _script(args[0], out, *args[1:])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("export.py: error: ") and words in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_script_errors_in_process(checkpoint, onnx, tmp_path, capsys):
    nameless = tmp_path / "nameless.npz"
    save_checkpoint(nameless, models.lenet5(), None, epoch=1, config={})
    for args, status, words in [
        ((checkpoint, tmp_path / "m.onnx", "--input-shape", "1,28"), 2, "expected C,H,W"),
        ((checkpoint, tmp_path / "m.onnx", "--opset", "5"), 2, "opset must be an int >= 13"),
        ((nameless, tmp_path / "m.onnx"), 2, "does not say which model it holds"),
        ((checkpoint, tmp_path / "m.onnx", "--input-shape", "1,32,32"), 2, "does not fit layer 7 (Dense(400, 120))"),
        ((checkpoint, tmp_path), 1, f"cannot write {str(tmp_path)!r}"),  # a folder
    ]:
        assert _main(*args) == status
        err = capsys.readouterr().err
        assert err.startswith("export.py: error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()
    assert _main(checkpoint, tmp_path / "ok.onnx", "--input-shape", "1,28,28", "--opset", "21") == 0
    assert "input images (N, 1, 28, 28), opset 21" in capsys.readouterr().out
