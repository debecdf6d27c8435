"""CUDA end to end: what a user runs on a GPU (fit, checkpoints, optimizers, the presets, timing, the
command line), each compared with the NumPy run of the same seed where the two must agree.

Every test takes the ``gpu`` fixture, which skips it where CuPy sees no GPU; CuPy itself is imported
only inside the tests that need it. Tolerances are float32's: cuBLAS and OpenBLAS add in other orders.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import cnnxp
from cnnxp import checkpoint as C
from cnnxp import models
from cnnxp import train as T
from cnnxp.backend import array_device, describe
from cnnxp.data import DataLoader, load_dataset
from cnnxp.layers import BatchNorm2D, Dropout
from cnnxp.losses import softmax_cross_entropy
from cnnxp.optim import SGD, Adam

pytestmark = pytest.mark.cuda

CPU = cnnxp.get_device("cpu")


@pytest.fixture(scope="module")
def gpu() -> cnnxp.Device:
    """``cuda:0``, or a skip where CuPy is missing or sees no GPU."""
    if not cnnxp.cuda_available():
        pytest.skip("CuPy with a CUDA GPU is not available on this machine")
    return cnnxp.get_device("cuda")


@pytest.fixture(scope="module")
def small():
    """512 training and 200 test digits of the bundled sample."""
    x, y = load_dataset("mnist-sample", "train")
    xt, yt = load_dataset("mnist-sample", "test")
    return (x[:512], y[:512]), (xt[:200], yt[:200])


def _host(state: dict) -> dict[str, np.ndarray]:
    return {k: np.array(cnnxp.to_numpy(v), copy=True) for k, v in state.items() if hasattr(v, "shape")}


def _params(model) -> list:
    return [layer.params[name] for _, layer, name in model.parameter_slots()]


def _assert_on(device: cnnxp.Device, *arrays) -> None:
    for a in arrays:
        assert array_device(a) == device, f"expected an array on {device.name}, got {describe(a)}"


def _normalised(images: np.ndarray) -> np.ndarray:
    """Host float32 inputs (N, 1, 28, 28), as the loader makes them."""
    return next(iter(DataLoader(images, np.zeros(len(images), np.int64), len(images), shuffle=False)))[0]


# -- fit, evaluate, predict ---------------------------------------------------------------------------


def _fit_lenet(device, small):
    (x, y), (xt, yt) = small
    model = models.lenet5(seed=0, device=device)
    history = T.fit(model, SGD(model, lr=0.01, momentum=0.9), DataLoader(x, y, 32, seed=0, device=device), 2,
                    DataLoader(xt, yt, 100, shuffle=False, device=device), progress=False, log=None)
    return model, history


def test_fit_on_cuda_follows_the_cpu_run(gpu, small):
    model, history = _fit_lenet(gpu, small)
    _, cpu_history = _fit_lenet(CPU, small)
    assert [row["epoch"] for row in history] == [1, 2]
    for row, cpu_row in zip(history, cpu_history, strict=True):
        assert set(T.HISTORY_KEYS) <= set(row)
        assert row["seconds"] > 0 and row["images_per_second"] > 0
        for key in ("train_loss", "test_loss"):
            assert row[key] == pytest.approx(cpu_row[key], rel=1e-3), key
        assert abs(row["test_accuracy"] - cpu_row["test_accuracy"]) <= 0.02
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.5  # chance is 0.1; the CPU run reaches 0.76
    _assert_on(gpu, *_params(model))


def test_evaluate_and_predict_on_cuda_agree_with_the_cpu_for_the_same_weights(gpu, small):
    (x, y), (xt, yt) = small
    model, history = _fit_lenet(gpu, small)
    twin = models.lenet5(seed=1)
    twin.load_state_dict(model.state_dict())
    result = T.evaluate(model, DataLoader(xt, yt, 100, shuffle=False, device=gpu), return_predictions=True)
    ref = T.evaluate(twin, DataLoader(xt, yt, 100, shuffle=False), return_predictions=True)
    assert result.num_samples == len(yt) and result.confusion.sum() == len(yt)
    np.testing.assert_array_equal(result.confusion.sum(axis=1), np.bincount(yt, minlength=10))
    assert result.accuracy == pytest.approx(history[-1]["test_accuracy"])
    assert result.loss == pytest.approx(ref.loss, rel=1e-4)
    assert model.training  # evaluate restores the mode

    inputs = _normalised(xt)  # a NumPy array: predict moves it to the model's GPU
    classes, probs = T.predict(model, inputs, batch_size=64)
    _assert_on(gpu, classes, probs)
    cpu_classes, cpu_probs = (cnnxp.to_numpy(a) for a in T.predict(twin, inputs, batch_size=64))
    np.testing.assert_allclose(cnnxp.to_numpy(probs), cpu_probs, rtol=1e-3, atol=1e-5)
    top_two = np.sort(cpu_probs, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 1e-4  # no near-tie that rounding could flip
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(cnnxp.to_numpy(classes)[clear], cpu_classes[clear])
    np.testing.assert_array_equal(result.predictions[clear], ref.predictions[clear])


# -- checkpoints -----------------------------------------------------------------------------------------


def _fashion_run(device, small, epochs, ckpt=None, stop_after=None, seed=3):
    """The Dropout + BatchNorm preset with Adam; optionally stop after one epoch into ``ckpt``, or resume from it."""
    (x, y), _ = small
    model = models.fashion_cnn(seed=seed, device=device)
    opt = Adam(model, lr=1e-3)
    loader = DataLoader(x[:128], y[:128], 32, seed=seed, device=device)
    history = None
    if ckpt is not None and ckpt.exists():
        saved = C.load_checkpoint(ckpt)
        model = models.fashion_cnn(seed=seed + 1, device=device)  # other weights: all must come from the file
        opt = Adam(model, lr=1e-3)
        C.restore(saved, model, opt, loader)
        history = saved.history

    def save(hist):
        if ckpt is not None:
            C.save_checkpoint(ckpt, model, opt, epoch=len(hist), history=hist, loader=loader)

    T.fit(model, opt, loader, stop_after or epochs, history=history, progress=False, log=None, on_epoch_end=save)
    return model


def test_resume_on_cuda_is_exact(gpu, small, tmp_path):
    straight = _fashion_run(gpu, small, 2)
    ckpt = tmp_path / "checkpoint.npz"
    _fashion_run(gpu, small, 2, ckpt=ckpt, stop_after=1)
    assert C.load_checkpoint(ckpt).epoch == 1
    resumed = _fashion_run(gpu, small, 2, ckpt=ckpt)
    _assert_on(gpu, *resumed.state_dict().values())
    assert C.load_checkpoint(ckpt).epoch == 2
    # Compared bit for bit: cuBLAS and CuPy's reductions give the same bits for the same shapes on the
    # same GPU, and the resumed run repeats every shape, mask and order. If that assumption is wrong on
    # some GPU or CUDA version, this says so here (and the resume is then exact only to rounding).
    a, b = _host(straight.state_dict()), _host(resumed.state_dict())
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=f"{key}: 1 epoch + resume 1 differs from 2 epochs "
                                      "on the GPU (cuBLAS or a CuPy reduction was not deterministic)")


def test_checkpoints_move_between_cuda_and_the_cpu(gpu, small, tmp_path):
    (x, y), _ = small
    src = models.fashion_cnn(seed=0, device=gpu)
    opt = Adam(src, lr=1e-3)
    loader = DataLoader(x[:64], y[:64], 32, device=gpu)
    T.fit(src, opt, loader, 1, progress=False, log=None)
    saved = C.load_checkpoint(C.save_checkpoint(tmp_path / "gpu.npz", src, opt, epoch=1, loader=loader))
    assert all(isinstance(v, np.ndarray) for v in saved.model_state.values())
    cpu = models.fashion_cnn(seed=1)
    cpu_opt = Adam(cpu)
    C.restore(saved, cpu, cpu_opt)
    for states in ((src.state_dict(), cpu.state_dict()), (opt.state_dict(), cpu_opt.state_dict())):
        want, got = _host(states[0]), _host(states[1])
        assert want.keys() == got.keys() and want
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert cpu.rng_state() == src.rng_state() and cpu_opt.step_count == opt.step_count

    # and back: written from the CPU, restored into a model on the GPU, which then trains on
    back = C.save_checkpoint(tmp_path / "cpu.npz", cpu, cpu_opt, epoch=1)
    dst = models.fashion_cnn(seed=2, device=gpu)
    dst_opt = Adam(dst)
    C.restore(C.load_checkpoint(back), dst, dst_opt)
    state = {k: v for k, v in dst_opt.state_dict().items() if k.startswith("state.")}
    _assert_on(gpu, *dst.state_dict().values(), *state.values())
    for key, value in _host(cpu.state_dict()).items():
        np.testing.assert_array_equal(cnnxp.to_numpy(dst.state_dict()[key]), value, err_msg=key)
    T.fit(dst, dst_opt, DataLoader(x[:64], y[:64], 32, device=gpu), 1, progress=False, log=None)
    assert dst_opt.step_count == opt.step_count + 2
    _assert_on(gpu, *_params(dst))


# -- optimizers --------------------------------------------------------------------------------------


OPTIMIZERS = {
    "sgd": lambda m: SGD(m, lr=0.1),
    "sgd-momentum-decay": lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov-decay": lambda m: SGD(m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda m: Adam(m, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=1e-2),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_on_cuda_match_numpy(gpu, name):
    """The same gradients (drawn on the host, given to both) give the same parameters after 3 steps."""
    nets = {dev.name: models.fashion_cnn(seed=0, device=dev) for dev in (gpu, CPU)}
    opts = {key: OPTIMIZERS[name](net) for key, net in nets.items()}
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = {key: rng.standard_normal(tuple(layer.params[p].shape)).astype(np.float32)
                 for key, layer, p in nets["cpu"].parameter_slots()}
        for dev in (gpu, CPU):
            for key, layer, p in nets[dev.name].parameter_slots():
                layer.grads[p] = cnnxp.to_device(grads[key], dev)
            opts[dev.name].step()
    _assert_on(gpu, *_params(nets[gpu.name]))
    state = {k: v for k, v in opts[gpu.name].state_dict().items() if k.startswith("state.")}
    _assert_on(gpu, *state.values())
    assert bool(state) == (name != "sgd")
    for got, want in ((nets[gpu.name].state_dict(), nets["cpu"].state_dict()),
                      (opts[gpu.name].state_dict(), opts["cpu"].state_dict())):
        got, want = _host(got), _host(want)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


# -- the fashion preset (BatchNorm, Dropout) ----------------------------------------------------------------


def _fashion_steps(device, small, steps=4):
    """A few Adam steps of the fashion preset; the losses, and the Dropout masks of the first step."""
    (x, y), _ = small
    model = models.fashion_cnn(seed=0, device=device)
    opt = Adam(model, lr=1e-3)
    losses, masks = [], None
    with device.activate():
        for xb, yb in DataLoader(x[:32 * steps], y[:32 * steps], 32, seed=0, device=device):
            logits = model(xb)
            loss, grad = softmax_cross_entropy(logits, yb)
            if masks is None:
                masks = [cnnxp.to_numpy(layer.cache) for layer in model if isinstance(layer, Dropout)]
            model.backward(grad, need_input_grad=False)
            opt.step()
            losses.append(float(cnnxp.to_numpy(loss)))
    return model, losses, masks


def test_the_fashion_preset_trains_alike_on_cuda_and_the_cpu(gpu, small):
    model, losses, masks = _fashion_steps(gpu, small)
    cpu_model, cpu_losses, cpu_masks = _fashion_steps(CPU, small)
    assert len(masks) == 2
    for mask, cpu_mask in zip(masks, cpu_masks, strict=True):  # the same bits on every device
        np.testing.assert_array_equal(mask, cpu_mask)
    assert losses[0] == pytest.approx(cpu_losses[0], rel=1e-4)  # same weights, same masks: rounding apart
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-3)
    norms = [(layer, ref) for layer, ref in zip(model, cpu_model, strict=True) if isinstance(layer, BatchNorm2D)]
    for layer, ref in norms:
        _assert_on(gpu, layer.running_mean, layer.running_var)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(cnnxp.to_numpy(layer.buffers[name]), ref.buffers[name], rtol=1e-4, atol=1e-5)
        assert not np.allclose(cnnxp.to_numpy(layer.running_var), 1.0)  # they did move

    (_, _), (xt, _) = small
    inputs = _normalised(xt[:64])
    model.eval()
    before = _host(model.state_dict())
    x = cnnxp.to_device(inputs, gpu)
    first, second = model(x), model(x)
    _assert_on(gpu, first)
    np.testing.assert_array_equal(cnnxp.to_numpy(first), cnnxp.to_numpy(second))  # no Dropout in eval mode
    after = _host(model.state_dict())
    assert all(np.array_equal(after[k], before[k]) for k in before)  # eval mode leaves the statistics alone
    np.testing.assert_allclose(cnnxp.to_numpy(first), cpu_model.eval()(inputs), rtol=1e-3, atol=1e-3)


# -- timing, the command line, errors ---------------------------------------------------------------------


def test_layer_times_on_cuda(gpu):
    from cnnxp.timing import layer_times

    model = models.fashion_cnn(seed=0, device=gpu)
    x = cnnxp.to_device(np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32), gpu)
    rows = layer_times(model, x, repeats=3)
    assert [row["index"] for row in rows] == list(range(len(model.layers)))
    assert rows[0]["output_shape"] == (64, 32, 28, 28) and rows[-1]["output_shape"] == (64, 10)
    for row in rows:
        assert row["forward_s"] > 0 and row["backward_s"] > 0, row


def test_the_command_line_trains_and_evaluates_on_cuda(gpu, tmp_path, capsys):
    from cnnxp.cli import evaluate_main, train_main

    out = tmp_path / "run"
    assert train_main(["--device", "cuda", "--dataset", "mnist-sample", "--epochs", "1", "--no-plots", "--quiet",
                       "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cuda:0" and metrics["epochs"] == 1
    assert metrics["test_accuracy"] > 0.5 and metrics["images_per_second"] > 0
    capsys.readouterr()
    assert evaluate_main([str(out / "checkpoint.npz"), "--device", "cuda"]) == 0
    report = capsys.readouterr().out
    assert "device cuda:0" in report
    assert f"test accuracy {100 * metrics['test_accuracy']:.2f}%" in report  # the same weights, the same images


def test_a_numpy_input_to_a_cuda_model_is_a_device_error_with_the_fix(gpu):
    model = models.lenet5(seed=0, device=gpu)
    with pytest.raises(cnnxp.DeviceError, match=re.escape("move it with cnnxp.to_device(x, 'cuda:0')")) as info:
        model(np.zeros((2, 1, 28, 28), np.float32))
    assert str(info.value).startswith("input is a NumPy array but the model is on cuda:0")


@pytest.mark.parametrize("name", ["lenet5", "fashion"])
def test_a_training_step_never_waits_for_the_gpu(gpu, name):
    """No hidden read-back in forward, loss, backward or the update. CuPy's detector (deprecated since
    v10, and it warns so) sees ``ndarray.get()`` (hence ``float()``, ``int()``, ``to_numpy``) and
    ``Device.synchronize()``; the positive control below proves it is armed."""
    import cupyx

    model = models.build(name, seed=0, device=gpu)
    opt = Adam(model) if name == "fashion" else SGD(model, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = cnnxp.to_device(rng.standard_normal((64, 1, 28, 28)).astype(np.float32), gpu)
    y = cnnxp.to_device(rng.integers(0, 10, 64), gpu)

    def step():
        with gpu.activate():
            logits = model(x)
            loss, grad = softmax_cross_entropy(logits, y, check_labels=False)
            model.backward(grad, need_input_grad=False)
            opt.step()
        return loss

    step()  # warm-up: kernels compiled, the optimizer's buffers made
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cupyx.allow_synchronize(False):
            loss = step()
            step()
        with pytest.raises(cupyx.DeviceSynchronized), cupyx.allow_synchronize(False):
            float(loss)
    assert np.isfinite(float(loss))


# -- several GPUs, other libraries ---------------------------------------------------------------------------


def test_a_model_on_the_second_gpu_keeps_everything_there(gpu, small):
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    second = cnnxp.get_device("cuda:1")
    (x, y), _ = small
    with cupy.cuda.Device(0):  # GPU 0 current, as it is by default
        model = models.fashion_cnn(seed=0, device="cuda:1")
        opt = Adam(model)
        T.fit(model, opt, DataLoader(x[:64], y[:64], 32, device="cuda:1"), 1, progress=False, log=None)
        classes, probs = T.predict(model, _normalised(x[:8]))
        assert cupy.cuda.runtime.getDevice() == 0
    grads = [g for layer in model for g in layer.grads.values()]
    state = [v for k, v in opt.state_dict().items() if k.startswith("state.")]
    assert grads and state
    _assert_on(second, *model.state_dict().values(), *grads, *state, classes, probs)


def test_to_device_takes_a_torch_cuda_tensor(gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    import cupy

    values = torch.arange(12, dtype=torch.float32, device="cuda:0").reshape(3, 4) / 7
    labels = torch.arange(5, dtype=torch.int64, device="cuda:0")
    for tensor in (values, labels):
        moved = cnnxp.to_device(tensor, "cuda")
        assert isinstance(moved, cupy.ndarray) and moved.device.id == 0
        assert moved.dtype == np.dtype(str(tensor.dtype).removeprefix("torch."))
        np.testing.assert_array_equal(cupy.asnumpy(moved), tensor.cpu().numpy())
    moved = cnnxp.to_device(values, "cuda")
    values += 1  # a copy, not a view of torch's memory
    torch.cuda.synchronize()
    assert not np.array_equal(cupy.asnumpy(moved), values.cpu().numpy())
    np.testing.assert_array_equal(cnnxp.to_numpy(values), values.cpu().numpy())
