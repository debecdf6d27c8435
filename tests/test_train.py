"""cnnxp.train: fit / evaluate / predict and the history; cnnxp.checkpoint: checkpoints (atomic, pickle-free,
portable) and exact resume."""

from __future__ import annotations

import functools
import json
import os
import re
import warnings

import numpy as np
import pytest

import cnnxp
from cnnxp import checkpoint as C
from cnnxp import losses, models
from cnnxp import train as T
from cnnxp.data import DataLoader, load_dataset
from cnnxp.optim import SGD, Adam


@pytest.fixture(scope="module")
def small():
    """256 training and 200 test digits of the bundled sample."""
    x, y = load_dataset("mnist-sample", "train")
    xt, yt = load_dataset("mnist-sample", "test")
    return (x[:256], y[:256]), (xt[:200], yt[:200])


def _state(model):
    return {k: cnnxp.to_numpy(v).copy() for k, v in model.state_dict().items()}


def test_fit_history_evaluate_predict(small):
    (x, y), (xt, yt) = small
    model = models.lenet5(seed=0)
    opt = Adam(model, lr=2e-3)
    lines = []
    hist = T.fit(model, opt, DataLoader(x, y, 32, seed=0), 2, DataLoader(xt, yt, 64, shuffle=False),
                 progress=False, log=lines.append)
    assert len(hist) == 2 and len(lines) == 2 and lines[0].startswith("epoch 1/2")
    for row in hist:
        assert set(T.HISTORY_KEYS) <= set(row)
        assert 0 <= row["train_accuracy"] <= 1 and row["images_per_second"] > 0
    assert hist["train_loss"][1] < hist["train_loss"][0]
    assert T.History.from_json(hist.to_json()).rows == hist.rows

    result = T.evaluate(model, DataLoader(xt, yt, 64, shuffle=False), return_predictions=True)
    assert result.confusion.shape == (10, 10) and result.confusion.sum() == len(yt)
    np.testing.assert_array_equal(result.confusion.sum(axis=1), np.bincount(yt, minlength=10))
    assert result.accuracy == pytest.approx(np.mean(result.predictions == yt))
    assert result.accuracy == pytest.approx(hist[-1]["test_accuracy"])
    np.testing.assert_array_equal(result.labels, yt)
    assert model.training  # evaluate restores the mode

    # predict agrees with evaluate and takes a host array; the loss is the mean over the data
    xn = next(iter(DataLoader(xt, yt, len(yt), shuffle=False)))[0]
    classes, probs = T.predict(model, cnnxp.to_numpy(xn), batch_size=50)
    np.testing.assert_array_equal(cnnxp.to_numpy(classes), result.predictions)
    np.testing.assert_allclose(cnnxp.to_numpy(probs).sum(axis=1), 1.0, rtol=1e-5)
    nll = -np.log(cnnxp.to_numpy(probs)[np.arange(len(yt)), yt]).mean()
    assert result.loss == pytest.approx(nll, rel=1e-4)


def test_fit_rejects_bad_epochs(small):
    (x, y), _ = small
    model = models.seed_cnn()
    with pytest.raises(ValueError, match="epochs"):
        T.fit(model, SGD(model, 0.1), DataLoader(x, y, 32), 0, progress=False, log=None)
    for bad in (2.5, True, "3"):  # one policy (cnnxp._checks): a wrong type is a TypeError
        with pytest.raises(TypeError, match="epochs"):
            T.fit(model, SGD(model, 0.1), DataLoader(x, y, 32), bad, progress=False, log=None)


def test_fit_on_array_api_strict(small):
    """The loop, the metrics and evaluate use only the standard, and never mix devices."""
    strict = pytest.importorskip("array_api_strict")
    (x, y), (xt, yt) = small
    dev = cnnxp.get_device(strict.Device("device1"), xp=strict)
    model = models.seed_cnn(seed=0, device=dev)
    hist = T.fit(model, SGD(model, 0.05, momentum=0.9), DataLoader(x[:64], y[:64], 16, device=dev), 1,
                 DataLoader(xt[:50], yt[:50], 25, shuffle=False, device=dev), progress=False, log=None)
    assert 0 <= hist[0]["test_accuracy"] <= 1
    classes, probs = T.predict(model, next(iter(DataLoader(xt[:5], yt[:5], 5, device=dev)))[0])
    assert tuple(probs.shape) == (5, 10)


def _run(small, epochs, schedule, ckpt=None, stop_after=None, seed=3):
    """Train the Dropout + BatchNorm preset; optionally stop after one epoch into a checkpoint, or resume from it."""
    (x, y), (xt, yt) = small
    model = models.fashion_cnn(seed=seed)
    opt = Adam(model, lr=1e-3)
    loader = DataLoader(x[:128], y[:128], 32, seed=seed)
    history = None
    if ckpt is not None and ckpt.exists():
        c = C.load_checkpoint(ckpt)
        # a fresh model with other initial weights: everything must come from the checkpoint
        model = models.fashion_cnn(seed=seed + 1)
        opt = Adam(model, lr=1e-3)
        C.restore(c, model, opt, loader)
        history = c.history

    def save(hist):
        if ckpt is not None:
            C.save_checkpoint(ckpt, model, opt, epoch=len(hist), history=hist, config={"seed": seed}, loader=loader)

    T.fit(model, opt, loader, stop_after or epochs, history=history, lr_schedule=schedule,
          progress=False, log=None, on_epoch_end=save)
    return model


@pytest.mark.parametrize("schedule", [None, T.exponential_lr(1e-3, 0.6)], ids=["constant", "exponential"])
def test_resume_equals_straight_run(small, tmp_path, schedule):
    straight = _run(small, 2, schedule)
    ckpt = tmp_path / "checkpoint.npz"
    _run(small, 2, schedule, ckpt=ckpt, stop_after=1)
    assert C.load_checkpoint(ckpt).epoch == 1
    resumed = _run(small, 2, schedule, ckpt=ckpt)
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert C.load_checkpoint(ckpt).epoch == 2


def test_checkpoint_layout_has_no_pickles(small, tmp_path):
    (x, y), _ = small
    model = models.fashion_cnn(seed=0)
    opt = Adam(model)
    loader = DataLoader(x, y, 64, seed=5)
    hist = T.History([{"epoch": 1, "train_loss": 1.0}])
    path = C.save_checkpoint(tmp_path / "c.npz", model, opt, epoch=1, history=hist, config={"model": "fashion"},
                             loader=loader)
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        meta = json.loads(str(npz["meta"]))
        assert all(npz[k].dtype != object for k in npz.files)
    assert {"model/0.weight", "model/1.running_mean", "optimizer/step", "loader/rng_state", "meta"} <= files
    assert meta["epoch"] == 1 and meta["config"] == {"model": "fashion"} and meta["history"] == hist.rows
    dropouts = {str(i) for i, layer in enumerate(model) if layer.name == "Dropout"}
    assert len(dropouts) == 2 and set(meta["model_rng"]) == dropouts
    c = C.load_checkpoint(path)
    assert c.optimizer_state["step"] == 0 and c.loader_state is not None


def test_checkpoint_moves_between_devices(small, tmp_path):
    strict = pytest.importorskip("array_api_strict")
    dev = cnnxp.get_device(strict.Device("device1"), xp=strict)
    (x, y), _ = small
    src = models.lenet5(seed=0)
    opt = Adam(src)
    T.fit(src, opt, DataLoader(x[:64], y[:64], 32), 1, progress=False, log=None)
    path = C.save_checkpoint(tmp_path / "c.npz", src, opt, epoch=1)
    dst = models.lenet5(seed=1, device=dev)
    dst_opt = Adam(dst)
    C.restore(C.load_checkpoint(path), dst, dst_opt)
    for key, value in dst.state_dict().items():
        np.testing.assert_array_equal(cnnxp.to_numpy(value), cnnxp.to_numpy(src.state_dict()[key]))
    # and back: saved from the strict device, loaded on the CPU
    back = C.save_checkpoint(tmp_path / "d.npz", dst, dst_opt, epoch=1)
    cpu = models.lenet5(seed=2)
    C.restore(C.load_checkpoint(back), cpu, Adam(cpu))
    np.testing.assert_array_equal(cnnxp.to_numpy(cpu[0].params["weight"]), cnnxp.to_numpy(src[0].params["weight"]))


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = models.seed_cnn(seed=0)
    opt = SGD(model, 0.1)
    path = tmp_path / "checkpoint.npz"
    C.save_checkpoint(path, model, opt, epoch=1)
    before = path.read_bytes()

    def crash(file, arrays):
        file.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(C, "_write_npz", crash)
    model[0].params["weight"] = model[0].params["weight"] + 1.0
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, model, opt, epoch=2)
    assert path.read_bytes() == before
    assert C.load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # no temporary files left

    def interrupted(file, arrays):
        file.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(path, model, opt, epoch=2)
    assert C.load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(C.CheckpointError, match="is not an npz checkpoint: it starts with b'not '"):
        C.load_checkpoint(bad)
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(C.CheckpointError, match="cannot be read"):
        C.load_checkpoint(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(C.CheckpointError, match="not a cnnxp checkpoint"):
        C.load_checkpoint(other)
    model = models.seed_cnn()
    path = C.save_checkpoint(tmp_path / "seed.npz", model, None, epoch=1)
    with pytest.raises(C.CheckpointError, match="does not fit"):
        C.restore(C.load_checkpoint(path), models.lenet5())


def test_schedules():
    exp = T.exponential_lr(1.0, 0.5)
    assert exp(0, 10, 3) == 1.0 and exp(10, 10, 3) == pytest.approx(0.5) and exp(15, 10, 99) == pytest.approx(0.5**1.5)
    cos = T.cosine_lr(1.0)
    assert cos(0, 10, 2) == 1.0 and cos(10, 10, 2) == pytest.approx(0.5) and cos(20, 10, 2) == pytest.approx(0.0)


def test_synchronize_is_a_no_op_off_cuda():
    from cnnxp.timing import format_layer_times, layer_times, synchronize

    synchronize("cpu")
    model = models.seed_cnn()
    x = cnnxp.to_device(np.zeros((4, 1, 28, 28), np.float32), "cpu")
    rows = layer_times(model, x, repeats=2)
    assert [r["index"] for r in rows] == list(range(len(model)))
    assert all(r["forward_s"] >= 0 and r["backward_s"] >= 0 for r in rows)
    table = format_layer_times(rows, batch_size=4)
    assert "Conv2D" in table and "total" in table


def test_fit_checks_the_labels_once_against_the_model():
    """Labels beyond the model's classes fail before training, with one clear message."""
    model = models.lenet5(seed=0)
    images = np.zeros((8, 28, 28), np.uint8)
    loader = DataLoader(images, np.array([0, 1, 2, 3, 4, 5, 6, 12]), batch_size=4)
    with pytest.raises(ValueError, match=r"labels run from 0 to 12, but the model has 10 classes"):
        T.fit(model, SGD(model, lr=0.1), loader, epochs=1, progress=False, log=None)


def test_evaluate_checks_the_labels_once_against_the_model():
    """evaluate checks its loader's labels before the first batch (no read-back per batch)."""
    model = models.lenet5(seed=0)
    images = np.zeros((8, 28, 28), np.uint8)
    loader = DataLoader(images, np.array([0, 1, 2, 3, 4, 5, 6, 12]), batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"the evaluation labels run from 0 to 12, but the model has 10 classes"):
        T.evaluate(model, loader)


# --- label smoothing ------------------------------------------------------------------------------


def _smoothed_reference(logits, labels, eps):
    """The loss and gradient of cross-entropy against ``(1 - eps) * one_hot + eps / K``, in float64."""
    logits = np.asarray(logits, np.float64)
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full((n, k), eps / k)
    target[np.arange(n), labels] += 1 - eps
    return -(log_probs * target).sum() / n, (np.exp(log_probs) - target) / n


def test_label_smoothing_on_every_backend(backend):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 10)) * 4
    logits[0, 3] = 1e4  # stays finite
    labels = rng.integers(0, 10, 6)
    x, y = backend.asarray(logits), backend.asarray(labels, dtype=np.int64)
    loss, grad = losses.softmax_cross_entropy(x, y, label_smoothing=0.2)
    backend.assert_on_backend(loss)
    backend.assert_on_backend(grad)
    ref_loss, ref_grad = _smoothed_reference(logits.astype(backend.dtype_name), labels, 0.2)
    assert float(cnnxp.to_numpy(loss)) == pytest.approx(ref_loss, rel=backend.rtol * 10)
    np.testing.assert_allclose(cnnxp.to_numpy(grad), ref_grad, rtol=backend.rtol * 10, atol=backend.rtol * 1e-3)
    np.testing.assert_allclose(cnnxp.to_numpy(grad).sum(axis=1), 0.0, atol=1e-6)  # targets still sum to 1
    # 0 is the plain cross-entropy, bit for bit
    plain = losses.softmax_cross_entropy(x, y)
    for zero in (0.0, 0):
        off = losses.softmax_cross_entropy(x, y, label_smoothing=zero)
        np.testing.assert_array_equal(cnnxp.to_numpy(off[0]), cnnxp.to_numpy(plain[0]))
        np.testing.assert_array_equal(cnnxp.to_numpy(off[1]), cnnxp.to_numpy(plain[1]))


@pytest.mark.parametrize("value", [1.0, 1, 1.5, -0.1, float("nan"), float("inf"), True, False, "x", "0.1", None])
def test_label_smoothing_rejects_bad_values(value):
    """One policy (cnnxp._checks): a number out of range is a ValueError, anything else a TypeError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        error, text = ValueError, f"label_smoothing must be a finite number in [0, 1), got {float(value)!r}"
    else:
        error, text = TypeError, f"label_smoothing must be a number, got {value!r} ({type(value).__name__})"
    message = f"^{re.escape(text)}$"
    with pytest.raises(error, match=message):
        losses.check_label_smoothing(value)
    with pytest.raises(error, match=message):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=value)


def test_check_label_smoothing_accepts_numbers_below_one():
    assert losses.check_label_smoothing(0) == 0.0 and type(losses.check_label_smoothing(0)) is float
    assert losses.check_label_smoothing(0.1) == 0.1
    assert losses.check_label_smoothing(np.float64(0.25)) == 0.25
    assert losses.check_label_smoothing(0.999) == 0.999


@pytest.fixture(scope="module")
def tiny(small):
    (x, y), (xt, yt) = small
    return (x[:48], y[:48]), (xt[:40], yt[:40])


def _fit_tiny(tiny, **kwargs):
    (x, y), (xt, yt) = tiny
    model = models.seed_cnn(seed=1)
    test_loader = DataLoader(xt, yt, 20, shuffle=False)
    hist = T.fit(model, SGD(model, 0.05, momentum=0.9), DataLoader(x, y, 16, seed=2), 1, test_loader,
                 progress=False, log=None, **kwargs)
    return model, hist, test_loader


def test_fit_trains_with_label_smoothing_and_reports_plain_test_loss(tiny):
    model, hist, test_loader = _fit_tiny(tiny, label_smoothing=0.3)
    # the test loss is the plain cross-entropy, what evaluate reports
    assert hist[-1]["test_loss"] == pytest.approx(T.evaluate(model, test_loader).loss, rel=1e-6)
    # training used the smoothed loss: the same as the default loss smoothed by hand...
    by_hand, hand_hist, _ = _fit_tiny(tiny, loss_fn=functools.partial(losses.softmax_cross_entropy,
                                                                      label_smoothing=0.3))
    for key, value in _state(model).items():
        np.testing.assert_array_equal(value, _state(by_hand)[key], err_msg=key)
    # a custom loss reports itself (the smoothed objective); fit's own reports the plain cross-entropy
    assert hand_hist[-1]["train_loss"] != pytest.approx(hist[-1]["train_loss"], rel=1e-4)
    assert hand_hist[-1]["test_loss"] > hist[-1]["test_loss"]  # the custom loss also scores the test set
    # ...and not the plain one
    plain, plain_hist, _ = _fit_tiny(tiny)
    assert not np.array_equal(_state(plain)["0.weight"], _state(model)["0.weight"])
    assert plain_hist[-1]["train_loss"] != pytest.approx(hist[-1]["train_loss"], rel=1e-3)


def test_fit_label_smoothing_errors(tiny):
    (x, y), _ = tiny
    model = models.seed_cnn(seed=0)
    before = _state(model)
    custom = functools.partial(losses.softmax_cross_entropy, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"^label_smoothing applies to the default loss only: smooth the "
                                         r"targets inside your loss_fn$"):
        T.fit(model, SGD(model, 0.1), DataLoader(x, y, 16), 1, loss_fn=custom, label_smoothing=0.1,
              progress=False, log=None)
    with pytest.raises(ValueError, match=r"^label_smoothing must be a finite number in \[0, 1\), got 1\.0$"):
        T.fit(model, SGD(model, 0.1), DataLoader(x, y, 16), 1, label_smoothing=1.0, progress=False, log=None)
    for key, value in _state(model).items():  # refused before any step
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    # a custom loss with the default label_smoothing=0 is fine
    T.fit(model, SGD(model, 0.1), DataLoader(x[:16], y[:16], 16), 1, loss_fn=custom, progress=False, log=None)


def test_predict_and_the_model_on_odd_inputs():
    """Integer pixels are refused with what to do; an empty batch gives empty results, as in PyTorch;
    a bad batch size is named."""
    model = models.lenet5(seed=0)
    with pytest.raises(TypeError, match=r"^the model expected floating-point input \(N, C, H, W\), got uint8: "
                                        r"convert images first"):
        T.predict(model, np.zeros((3, 1, 28, 28), np.uint8))
    with pytest.raises(TypeError, match="got int64"):
        model(np.zeros((3, 1, 28, 28), np.int64))
    classes, probs = T.predict(model, np.zeros((0, 1, 28, 28), np.float32))
    assert classes.shape == (0,) and probs.shape == (0, 10)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"^predict batch_size must be a positive int, got {bad!r}$"):
            T.predict(model, np.zeros((3, 1, 28, 28), np.float32), batch_size=bad)
    for bad in (2.5, True):
        message = rf"^predict batch_size must be an int, got {bad!r} \({type(bad).__name__}\)$"
        with pytest.raises(TypeError, match=message):
            T.predict(model, np.zeros((3, 1, 28, 28), np.float32), batch_size=bad)
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    whole, sliced = T.predict(model, x)[1], T.predict(model, x, batch_size=np.int64(2))[1]
    np.testing.assert_allclose(cnnxp.to_numpy(sliced), cnnxp.to_numpy(whole), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [models.lenet5, models.seed_cnn])
def test_an_empty_batch_goes_through_training_too(make):
    model = make(seed=0)
    out = model(np.zeros((0, 1, 28, 28), np.float32))
    assert out.shape == (0, 10)
    assert model.backward(np.zeros_like(out)).shape == (0, 1, 28, 28)
    assert all(float(np.abs(g).sum()) == 0.0 for layer in model for g in layer.grads.values())
    # the loss of nothing is NaN (PyTorch's mean over nothing), its gradient empty: a step changes nothing
    with np.errstate(invalid="ignore"):
        loss, grad = losses.softmax_cross_entropy(out, np.zeros(0, np.int64))
    assert np.isnan(loss) and grad.shape == (0, 10)
    before = _state(model)
    model.backward(grad, need_input_grad=False)
    SGD(model, lr=0.1).step()
    for key, value in _state(model).items():
        np.testing.assert_array_equal(value, before[key])


def test_fit_takes_numpy_integers_for_epochs(tiny):
    (x, y), _ = tiny
    model = models.seed_cnn(seed=0)
    history = T.fit(model, SGD(model, lr=0.01), DataLoader(x, y, 16), np.int64(1), progress=False)
    assert len(history) == 1


def test_loader_seed_must_fit_int64():
    x, y = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"^DataLoader seed must be below 2\*\*63, got 9223372036854775808$"):
        DataLoader(x, y, 2, seed=2**63)
    assert DataLoader(x, y, 2, seed=2**63 - 1).state_dict()["seed"] == 2**63 - 1


def test_layer_times_leave_the_model_as_it_was():
    """Timing runs training-mode passes (BatchNorm statistics move, Dropout draws); afterwards the
    model predicts exactly as before, with the same buffers, generators, mode, grads and cache."""
    from cnnxp.timing import layer_times

    model = models.fashion_cnn(seed=0).eval()
    x = np.random.default_rng(0).standard_normal((6, 1, 28, 28)).astype(np.float32)
    before = cnnxp.to_numpy(T.predict(model, x)[1])
    state = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    rng, grads, caches = model.rng_state(), [dict(layer.grads) for layer in model], [layer.cache for layer in model]
    rows = layer_times(model, x[:2], repeats=3)
    assert len(rows) == len(model.layers)
    assert model.training is False and model.rng_state() == rng
    assert all(np.array_equal(v, state[k]) for k, v in model.state_dict().items())
    assert [dict(layer.grads) for layer in model] == grads
    assert all(layer.cache is c for layer, c in zip(model, caches, strict=True))
    np.testing.assert_array_equal(cnnxp.to_numpy(T.predict(model, x)[1]), before)


def test_train_epoch_is_the_loop_fit_runs(tiny):
    """One pass: the schedule sees the steps counted on from first_step, the sums cover every image,
    and fit's first epoch is exactly this loop."""
    (x, y), _ = tiny
    model, reference = models.seed_cnn(seed=3), models.seed_cnn(seed=3)
    opt, ref_opt = SGD(model, 0.05), SGD(reference, 0.05)
    steps = []

    def lr_at(step):
        steps.append(step)
        return 0.05

    loss_sum, correct, seen = T.train_epoch(model, opt, DataLoader(x, y, 16, seed=0), first_step=6, lr_at=lr_at)
    assert steps == [6, 7, 8] and seen == 48
    history = T.fit(reference, ref_opt, DataLoader(x, y, 16, seed=0), 1, progress=False, log=None)
    assert history[0]["train_loss"] == pytest.approx(float(cnnxp.to_numpy(loss_sum)) / 48, rel=1e-6)
    assert history[0]["train_accuracy"] == float(cnnxp.to_numpy(correct)) / 48
    for key, value in _state(reference).items():
        np.testing.assert_array_equal(_state(model)[key], value)
    empty = DataLoader(x[:0], y[:0], 16)
    assert T.train_epoch(model, opt, empty) == (None, None, 0)


def test_the_progress_display_is_off_without_a_terminal(monkeypatch):
    """tqdm hides its bar when stderr is not a terminal; then there is no display at all, so the
    running sums are never read back for it (a synchronisation on a GPU)."""
    monkeypatch.setattr("sys.stderr", open(os.devnull, "w"))  # noqa: SIM115
    assert T.EpochProgress.open(10, "epoch 1/1", True, np) is None
    assert T.EpochProgress.open(10, "epoch 1/1", False, np) is None


def test_predict_in_slices_that_do_not_divide_the_batch_on_every_backend(backend):
    """Slice stops stay in bounds (array_api_strict refuses a slice past the end)."""
    model = models.seed_cnn(seed=0).to(backend.device, dtype=backend.dtype_name)
    x = backend.asarray(np.random.default_rng(0).standard_normal((5, 1, 28, 28)))
    classes, probs = T.predict(model, x, batch_size=2)
    backend.assert_on_backend(probs)
    whole = T.predict(model, x)[1]
    np.testing.assert_allclose(cnnxp.to_numpy(probs), cnnxp.to_numpy(whole), rtol=1e-5, atol=1e-7)
    assert tuple(classes.shape) == (5,)


# -- divergence, and state that is not finite ------------------------------------------------------


def test_fit_raises_diverged_error_with_the_facts(small, monkeypatch):
    """A learning rate of 1e6 used to end fit normally with a NaN loss: now DivergedError, before the
    epoch enters the history or reaches on_epoch_end (where checkpoints are written)."""
    (x, y), _ = small
    monkeypatch.setattr(T, "DIVERGENCE_CHECK_SECONDS", 1e9)  # noticed at the epoch's end, whatever the speed
    model = models.seed_cnn(seed=0)
    ends = []
    with np.errstate(all="ignore"), pytest.raises(T.DivergedError) as info:
        T.fit(model, SGD(model, 1e6), DataLoader(x, y, 32, seed=0), 2, progress=False, log=None,
              on_epoch_end=ends.append)
    exc = info.value
    assert (exc.epoch, exc.step) == (1, 8) and not np.isfinite(exc.loss) and ends == []
    assert str(exc) == f"diverged at epoch 1, step 8: loss {exc.loss}; lower the learning rate"


def test_divergence_is_noticed_within_the_epoch(small, monkeypatch):
    """Checked where the running loss is read back: here at every step, so the first non-finite step."""
    (x, y), _ = small
    monkeypatch.setattr(T, "DIVERGENCE_CHECK_SECONDS", 0.0)
    model = models.seed_cnn(seed=0)
    with np.errstate(all="ignore"), pytest.raises(T.DivergedError) as info:
        T.fit(model, SGD(model, 1e6), DataLoader(x, y, 32, seed=0), 1, progress=False, log=None)
    assert info.value.epoch == 1 and 1 <= info.value.step < 8


def test_non_finite_weights_end_fit_after_the_epoch(small):
    """A finite loss but a weight gone infinite in the epoch's last step: noticed after the epoch."""
    (x, y), _ = small

    class Poisoned(SGD):
        def step(self):
            super().step()
            self.model[3].params["bias"][0] = np.inf  # after the step's loss was computed

    model = models.seed_cnn(seed=0)
    with np.errstate(all="ignore"), pytest.raises(T.DivergedError, match="the weights are no longer finite"):
        T.fit(model, Poisoned(model, 0.01), DataLoader(x[:32], y[:32], 32), 1, progress=False, log=None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "0.1", None])
def test_the_learning_rate_stays_a_finite_number(value):
    """The constructor refused NaN, but ``optimizer.lr = nan`` was taken afterwards."""
    opt = Adam(models.seed_cnn(), lr=1e-3)
    with pytest.raises((ValueError, TypeError), match="Adam learning rate must be"):
        opt.lr = value
    assert opt.lr == 1e-3
    opt.lr = np.float64(0.0)  # a schedule at its end
    assert opt.lr == 0.0 and type(opt.lr) is float


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path):
    model = models.seed_cnn(seed=0)
    opt = SGD(model, 0.1)
    path = C.save_checkpoint(tmp_path / "checkpoint.npz", model, opt, epoch=1)
    before = path.read_bytes()
    model[0].params["weight"] = model[0].params["weight"] * np.nan
    with pytest.raises(C.CheckpointError, match=r"refusing to write the checkpoint .* 'model/0.weight' holds 32 of "
                                                r"32 values NaN or infinite \(did training diverge\?\)"):
        C.save_checkpoint(path, model, opt, epoch=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_a_failed_restore_changes_nothing(small, tmp_path):
    """The weights fit but the optimizer state lacks a parameter: nothing of the model, optimizer or
    loader changes (the model was loaded before the optimizer failed)."""
    (x, y), _ = small
    source = models.seed_cnn(seed=1)
    source_opt = Adam(source)
    T.fit(source, source_opt, DataLoader(x[:64], y[:64], 32), 1, progress=False, log=None)
    path = C.save_checkpoint(tmp_path / "c.npz", source, source_opt, epoch=1, loader=DataLoader(x, y, 32, seed=9))
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "optimizer/state.m.3.weight"}
    np.savez(path, **arrays)
    model, loader = models.seed_cnn(seed=2), DataLoader(x, y, 32, seed=4)
    opt = Adam(model)
    before, loader_before = _state(model), loader.state_dict()
    with pytest.raises(C.CheckpointError, match=r"lacks 'optimizer/state.m.3.weight'"):
        C.restore(C.load_checkpoint(path), model, opt, loader)
    np.savez(path, **{k: v for k, v in arrays.items() if not k.startswith("optimizer/state.")})
    with pytest.raises(C.CheckpointError, match=r"lacks 'optimizer/state.m.\*', 'optimizer/state.v.\*' after 2 steps"):
        C.restore(C.load_checkpoint(path), model, opt, loader)
    after = _state(model)
    assert all(np.array_equal(after[k], v) for k, v in before.items())
    assert opt.step_count == 0 and opt.state == {} and loader.state_dict() == loader_before


def test_the_training_loss_reported_is_the_plain_cross_entropy_under_label_smoothing():
    """What fit reports and plots beside the test loss is the plain cross-entropy, not the smoothed objective."""
    from cnnxp.losses import softmax_cross_entropy

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 48)
    reported = {}
    for eps in (0.0, 0.3):
        model = models.lenet5(seed=0)
        loader = DataLoader(x, y, 16, shuffle=False)
        history = T.fit(model, SGD(model, 1e-12), loader, 1, label_smoothing=eps, progress=False, log=None)
        reported[eps] = history.last["train_loss"]
    model = models.lenet5(seed=0)  # the same weights (a step of 1e-12 moves nothing that shows)
    plain = np.mean([float(softmax_cross_entropy(model(bx), by)[0]) for bx, by in DataLoader(x, y, 16, shuffle=False)])
    smoothed = np.mean([float(softmax_cross_entropy(model(bx), by, label_smoothing=0.3)[0])
                        for bx, by in DataLoader(x, y, 16, shuffle=False)])
    assert reported[0.3] == pytest.approx(plain, rel=1e-5) and reported[0.0] == pytest.approx(plain, rel=1e-5)
    assert abs(smoothed - plain) > 0.05  # the objective differs: reporting it would have shown


def test_a_model_ending_in_softmax_trained_with_the_default_loss_is_warned_once():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32)
    model = cnnxp.Sequential([*models.lenet5(seed=0).layers, cnnxp.layers.Softmax()])
    with pytest.warns(UserWarning, match=r"^the model ends in Softmax, and softmax_cross_entropy applies its own softmax: "
                                         r".*drop the last layer and train on logits"):
        T.fit(model, SGD(model, 0.01), DataLoader(x, y, 16), 1, progress=False, log=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = models.lenet5(seed=0)
        T.fit(plain, SGD(plain, 0.01), DataLoader(x, y, 16), 1, progress=False, log=None)
