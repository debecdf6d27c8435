"""Sequential, the presets, the optimizers and the loss: behaviour and errors."""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp import layers, losses, optim
from cnnxp.models import build, fashion_cnn, lenet5, seed_cnn


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def train_steps(model, opt, steps, seed=0):
    x, y = batch(seed=seed)
    xd, yd = cnnxp.to_device(x, model.device), cnnxp.to_device(y, model.device)
    for _ in range(steps):
        loss, g = losses.softmax_cross_entropy(model(xd), yd)
        model.backward(g, need_input_grad=False)
        opt.step()
    return float(cnnxp.to_numpy(loss))


# -- presets ------------------------------------------------------------------------------------


def test_seed_cnn_is_the_notebook_network():
    model = seed_cnn()
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Conv2D", "MaxPool2D", "Flatten", "Dense"]
    conv, pool, _, dense = model
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (1, 8, (2, 2), (2, 2), (1, 1))
    assert (pool.kernel_size, pool.stride, pool.padding) == ((2, 2), (2, 2), (1, 1))
    assert dense.params["weight"].shape == (10, 8 * 8 * 8)


def test_lenet5_shapes_and_parameter_count():
    model = lenet5()
    assert [tuple(v.shape) for v in model.state_dict().values()] == [
        (6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]
    assert model.num_parameters() == 61706
    assert list(model.state_dict())[:2] == ["0.weight", "0.bias"]


def test_same_seed_same_weights_different_seed_different():
    a, b, c = lenet5(seed=3).state_dict(), lenet5(seed=3).state_dict(), lenet5(seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_kaiming_initialisation_scale():
    w = np.asarray(layers.Conv2D(64, 64, 3, seed=0).params["weight"])
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / (64 * 9))) < 0.02 * np.sqrt(2 / (64 * 9))


def test_build_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'vgg': expected one of lenet5, seed, fashion"):
        build("vgg")


def test_fashion_cnn_runs_train_and_eval():
    model = fashion_cnn(seed=0)
    x, _ = batch(4)
    out_train = cnnxp.to_numpy(model(x))
    model.eval()
    out_eval = cnnxp.to_numpy(model(x))
    assert out_train.shape == out_eval.shape == (4, 10)
    assert np.array_equal(out_eval, cnnxp.to_numpy(model(x)))  # eval is deterministic
    assert not np.allclose(out_train, out_eval)  # dropout and batch statistics act only in training


# -- Sequential -----------------------------------------------------------------------------------


def test_summary_table():
    text = lenet5().summary((1, 28, 28))
    assert "(N, 6, 28, 28)" in text and "(N, 16, 5, 5)" in text and "(N, 400)" in text
    assert "48,120" in text and "total parameters: 61,706" in text


def test_summary_rejects_a_wrong_input_shape():
    with pytest.raises(ValueError, match=r"Conv2D expected input of shape \(N, 1, H, W\), got \(1, 3, 28, 28\)"):
        lenet5().summary((3, 28, 28))


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="got int at position 1"):
        cnnxp.Sequential([layers.ReLU(), 3])


class _Recorder(layers.Layer):
    """Identity that notes when it runs, forward and backward."""

    def __init__(self, name, log):
        super().__init__()
        self.label, self.log = name, log

    def forward(self, x):
        self.log.append(f"forward {self.label}")
        return x

    def backward(self, grad_out, need_input_grad=True):
        self.log.append(f"backward {self.label}")
        return grad_out


def test_layers_run_in_the_order_they_are_declared():
    """No reordering behind the reader's back: forward in declared order, backward in reverse,
    ReLU before MaxPool2D included."""
    log = []
    model = cnnxp.Sequential([_Recorder("a", log), layers.ReLU(), _Recorder("b", log), layers.MaxPool2D(2),
                              _Recorder("c", log)])
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    out = model(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0).reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5)))
    model.backward(np.ones_like(out))
    assert log == ["forward a", "forward b", "forward c", "backward c", "backward b", "backward a"]


@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool_then_relu_gives_the_bits_of_relu_then_max_pool(padding):
    """The presets declare MaxPool2D before ReLU; the other order gives the same outputs and gradients.

    The inputs are rounded so that windows hold ties, at zero and above it, and many negative
    values: where first-maximum routing and the ReLU's zero gradient could disagree.
    """
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((4, 2, 8, 8)) * 2).astype(np.float32) / 2

    def model(pool_first):
        def block(pool):
            return [pool, layers.ReLU()] if pool_first else [layers.ReLU(), pool]
        return cnnxp.Sequential([*block(layers.MaxPool2D(2, padding=padding)), layers.Conv2D(2, 3, 3, seed=1),
                                 *block(layers.MaxPool2D(2, stride=1)), layers.Flatten()])

    results = []
    for pool_first in (False, True):
        m = model(pool_first)
        out = m(x)
        grad = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
        dx = m.backward(grad)
        results.append((out, dx, np.array(m.layers[2].grads["weight"]), np.array(m.layers[2].grads["bias"])))
    (out_a, dx_a, *grads_a), (out_b, dx_b, *grads_b) = results
    assert (out_a == 0).any() and (dx_a == 0).any()
    np.testing.assert_array_equal(out_b, out_a)
    np.testing.assert_array_equal(dx_b, dx_a)
    for got, want in zip(grads_b, grads_a, strict=True):
        np.testing.assert_array_equal(got, want)


def test_checkpoints_of_the_relu_first_presets_load():
    """Presets once declared ReLU before MaxPool2D: the layers with parameters kept their
    positions, so those state dicts load as they are and predict the same logits."""
    rng = np.random.default_rng(0)
    old = cnnxp.Sequential([
        layers.Conv2D(1, 6, 5, padding=2, seed=rng), layers.ReLU(), layers.MaxPool2D(2),
        layers.Conv2D(6, 16, 5, seed=rng), layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(),
        layers.Dense(400, 120, seed=rng), layers.ReLU(), layers.Dense(120, 84, seed=rng), layers.ReLU(),
        layers.Dense(84, 10, init="glorot", seed=rng)])
    new = lenet5(seed=1)
    assert [type(layer).__name__ for layer in new.layers[:6]] == ["Conv2D", "MaxPool2D", "ReLU"] * 2
    new.load_state_dict(old.state_dict())
    x, _ = batch(3)
    np.testing.assert_array_equal(new(x), old(x))
    old_fashion = fashion_cnn(seed=0)
    old_fashion.layers[2], old_fashion.layers[3] = old_fashion.layers[3], old_fashion.layers[2]
    assert sorted(old_fashion.state_dict()) == sorted(fashion_cnn(seed=2).state_dict())


def test_state_dict_round_trip_across_devices():
    strict = pytest.importorskip("array_api_strict")
    src = lenet5(seed=1).to(strict.Device("device1"), xp=strict)
    dst = lenet5(seed=2)
    dst.load_state_dict(src.state_dict())  # saved on device1, loaded on the CPU
    for key, value in dst.state_dict().items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, cnnxp.to_numpy(src.state_dict()[key]))
    x, _ = batch(2)
    np.testing.assert_allclose(cnnxp.to_numpy(dst(x)), cnnxp.to_numpy(src(cnnxp.to_device(x, src.device))),
                               rtol=1e-6)


def test_load_state_dict_copies():
    model = lenet5()
    state = {k: np.array(v) for k, v in lenet5(seed=5).state_dict().items()}
    model.load_state_dict(state)
    state["0.weight"][...] = 0
    assert np.abs(model.state_dict()["0.weight"]).sum() > 0


def test_load_state_dict_errors():
    model = lenet5()
    state = dict(model.state_dict())
    del state["0.bias"]
    state["99.weight"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\], unexpected keys \['99.weight'\]"):
        model.load_state_dict(state)
    state = dict(model.state_dict())
    state["3.weight"] = np.zeros((16, 6, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'3.weight' has shape \(16, 6, 3, 3\), the model expects \(16, 6, 5, 5\)"):
        model.load_state_dict(state)


def test_batchnorm_buffers_in_state_dict():
    state = fashion_cnn().state_dict()
    assert "1.running_mean" in state and "1.running_var" in state and "0.bias" not in state


def test_to_float64_and_back():
    model = lenet5().to("cpu", dtype="float64")
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        model.to("cpu", dtype="int8")


def test_dropout_rng_state_restores_masks():
    model = fashion_cnn(seed=0)
    x, _ = batch(2)
    state = model.rng_state()
    assert set(state) == {"8", "12"}
    first = cnnxp.to_numpy(model(x))
    model.set_rng_state(state)
    np.testing.assert_array_equal(cnnxp.to_numpy(model(x)), first)


# -- layer input errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer,x,message", [
    (layers.Conv2D(1, 8, 3), np.zeros((28, 28), np.float32),
     r"Conv2D expected input of shape \(N, 1, H, W\), got \(28, 28\): add batch and channel axes"),
    (layers.Conv2D(3, 8, 3), np.zeros((2, 1, 8, 8), np.float32),
     r"Conv2D expected input of shape \(N, 3, H, W\), got \(2, 1, 8, 8\): the layer has in_channels=3"),
    (layers.Conv2D(1, 8, 5), np.zeros((2, 1, 3, 3), np.float32),
     r"kernel size 5 is larger than the padded input \(3 \+ 2\*0 = 3\)"),
    (layers.MaxPool2D(2), np.zeros((4, 4), np.float32), r"MaxPool2D expected input of shape \(N, C, H, W\), got \(4, 4\)"),
    (layers.Dense(10, 2), np.zeros((2, 1, 2, 5), np.float32),
     r"Dense expected input of shape \(N, 10\), got \(2, 1, 2, 5\): add Flatten\(\) before Dense"),
    (layers.Dense(10, 2), np.zeros((2, 9), np.float32), r"got \(2, 9\): the layer has in_features=10"),
    (layers.BatchNorm2D(3), np.zeros((2, 4, 3, 3), np.float32), r"BatchNorm2D expected input of shape \(N, 3, H, W\)"),
    (layers.BatchNorm2D(3), np.zeros((1, 3, 1, 1), np.float32), r"more than 1 value per channel"),
    (layers.Softmax(), np.zeros(3), r"Softmax expected input of shape \(N, classes, \.\.\.\), got \(3,\)"),
])
def test_layer_input_errors(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer(x)


def test_softmax_of_a_list_says_what_it_expected():
    with pytest.raises(TypeError, match=r"^Softmax expected an array of shape \(N, classes, \.\.\.\), got list$"):
        layers.Softmax()([[1.0, 2.0]])


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="Conv2D.backward called before forward"):
        layers.Conv2D(1, 1, 1).backward(np.zeros((1, 1, 1, 1)))


@pytest.mark.parametrize("make,message", [
    (lambda: layers.Conv2D(1, 1, 3, stride=0), "stride must be at least 1"),
    (lambda: layers.Conv2D(1, 1, 3, padding=-1), "padding must be non-negative"),
    (lambda: layers.Conv2D(0, 1, 3), "in_channels must be a positive int"),
    (lambda: layers.MaxPool2D(2, padding=2), "padding must be at most half the kernel size"),
    (lambda: layers.AvgPool2D(2, stride=0), "stride must be at least 1"),
    (lambda: layers.Dropout(1.5), r"Dropout probability must be a finite number in \[0, 1\], got 1.5"),
    (lambda: layers.BatchNorm2D(2, eps=0), r"BatchNorm2D eps must be a finite number in \(0, inf\), got 0.0"),
    (lambda: layers.BatchNorm2D(2, eps=float("nan")), "BatchNorm2D eps must be a finite number"),
    (lambda: layers.BatchNorm2D(2, momentum=1.5), r"BatchNorm2D momentum must be a finite number in \[0, 1\]"),
    (lambda: layers.Dense(3, 0), "out_features must be a positive int"),
    (lambda: layers.BatchNorm2D(0), "num_features must be a positive int"),
    (lambda: layers.Conv2D(1, 1, 3, init="xavier"), "init must be 'he' or 'glorot'"),
])
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make,message", [
    (lambda: layers.Conv2D(1, 1, 2.5), r"kernel_size must be an int or a pair of ints, got 2.5"),
    (lambda: layers.Conv2D("1", 8, 3), r"Conv2D in_channels must be an int, got '1' \(str\)"),
    (lambda: layers.Conv2D(True, 8, 3), r"Conv2D in_channels must be an int, got True \(bool\)"),
    (lambda: layers.Dense(4.0, 2), r"Dense in_features must be an int, got 4.0 \(float\)"),
    (lambda: layers.Dropout("0.5"), r"Dropout probability must be a number, got '0.5' \(str\)"),
    (lambda: layers.BatchNorm2D(2, momentum=None), r"BatchNorm2D momentum must be a number, got None"),
])
def test_constructor_type_errors(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_constructors_take_numpy_numbers_as_pytorch_does():
    dense = layers.Dense(np.prod((16, 5, 5)), np.int64(120))
    assert (dense.in_features, dense.out_features) == (400, 120) and type(dense.in_features) is int
    conv = layers.Conv2D(np.int64(1), np.int32(6), np.int64(5), padding=(np.int8(2), 2))
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2)
    assert layers.Dropout(np.float32(0.5)).p == 0.5


# -- loss ---------------------------------------------------------------------------------------------


def test_loss_no_overflow_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [5e3, 5e3, 5e3]], np.float32)
    loss, grad = losses.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(float(loss), np.log(3) / 2, rtol=1e-6)


@pytest.mark.parametrize("logits,labels,error,message", [
    (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"class indices in \[0, 3\)"),
    (np.zeros((2, 3)), np.array([0, -1]), ValueError, r"class indices in \[0, 3\)"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, "labels must be integer class indices"),
    (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError, r"labels of shape \(2,\)"),
    (np.zeros(3), np.array([0]), ValueError, r"logits of shape \(N, classes\)"),
])
def test_loss_errors(logits, labels, error, message):
    with pytest.raises(error, match=message):
        losses.softmax_cross_entropy(logits, labels)


def test_labels_on_a_device_are_never_read_back_and_poison_the_loss_instead(backend):
    """NumPy labels are checked on the spot; a device's labels are not read back (a GPU would wait at
    every call), so an out-of-range label makes the loss NaN, as a device-side assert stops PyTorch."""
    from cnnxp.opcount import count_ops

    logits = backend.asarray(np.zeros((2, 3)))
    for labels, bad in ((np.array([0, 2]), False), (np.array([0, 3]), True), (np.array([-1, 0]), True)):
        y = backend.asarray(labels, dtype=np.int64)
        if bad and backend.id.startswith("numpy"):
            with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
                losses.softmax_cross_entropy(logits, y)
            continue
        with count_ops() as counts:
            loss, grad = losses.softmax_cross_entropy(logits, y)
        assert counts.to_host == 0
        assert np.isnan(float(cnnxp.to_numpy(loss))) == bad
        if not bad:
            unchecked, unchecked_grad = losses.softmax_cross_entropy(logits, y, check_labels=False)
            np.testing.assert_array_equal(cnnxp.to_numpy(unchecked), cnnxp.to_numpy(loss))
            np.testing.assert_array_equal(cnnxp.to_numpy(unchecked_grad), cnnxp.to_numpy(grad))


# -- optimizers ----------------------------------------------------------------------------------------


def torch_pair(kind, **kw):
    torch = pytest.importorskip("torch")
    model = cnnxp.Sequential([layers.Dense(5, 4, seed=0), layers.ReLU(), layers.Dense(4, 3, seed=1)], dtype="float64")
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()
    tmodel.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()})
    ours = (optim.SGD if kind == "sgd" else optim.Adam)(model, **kw)
    theirs = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(tmodel.parameters(), **kw)
    return torch, model, tmodel, ours, theirs


@pytest.mark.parametrize("kind,kw", [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
])
def test_optimizers_match_torch(kind, kw):
    torch, model, tmodel, ours, theirs = torch_pair(kind, **kw)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
        _, g = losses.softmax_cross_entropy(model(x), y)
        model.backward(g)
        ours.step()
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        theirs.step()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, tmodel.state_dict()[key].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda m: optim.SGD(m, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda m: optim.Adam(m, lr=1e-3, weight_decay=1e-4),
])
def test_optimizer_state_resumes_exactly(make):
    straight = lenet5(seed=0)
    opt = make(straight)
    train_steps(straight, opt, 4)

    first = lenet5(seed=0)
    opt1 = make(first)
    train_steps(first, opt1, 2)
    saved_model = {k: np.array(v) for k, v in first.state_dict().items()}
    saved_opt = {k: (np.array(v) if hasattr(v, "shape") else v) for k, v in opt1.state_dict().items()}

    resumed = lenet5(seed=9)
    resumed.load_state_dict(saved_model)
    opt2 = make(resumed)
    opt2.load_state_dict(saved_opt)
    train_steps(resumed, opt2, 2)
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value)


def test_optimizer_state_moves_across_devices():
    strict = pytest.importorskip("array_api_strict")
    model = lenet5(seed=0)
    opt = optim.Adam(model)
    train_steps(model, opt, 1)
    other = lenet5(seed=0).to(strict.Device("device1"), xp=strict)
    opt2 = optim.Adam(other)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.step_count == 1
    assert all(v.device == strict.Device("device1") for v in opt2.state.values())


@pytest.mark.parametrize("make", [
    lambda m: optim.SGD(m, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda m: optim.Adam(m, lr=1e-3, weight_decay=1e-4),
])
def test_a_step_is_a_few_whole_model_operations(make):
    """One flat buffer: gathering the gradients, then a fixed handful of operations, however many
    parameters the model has (each layer holds a view of its slice, so nothing is copied back)."""
    from cnnxp.opcount import count_ops

    strict = pytest.importorskip("array_api_strict")
    for preset in (seed_cnn, lenet5, fashion_cnn):
        model = preset(seed=0).to(strict.Device("CPU_DEVICE"), xp=strict)
        opt = make(model)
        train_steps(model, opt, 1)
        with count_ops() as counts:
            opt.step()
        params = len(list(model.named_parameters()))
        assert counts.to_device == counts.to_host == 0
        assert counts.by_name["reshape"] == params  # one flattening per gradient (a view where it can be)
        assert counts.ops - params <= 16, counts  # then the concatenation and the update (Adam with decay: 16)


def test_a_weight_set_by_hand_is_used_and_kept_after_steps():
    """``params[name] = new_array`` sets a weight, before or after the buffer exists, and the
    optimizer then updates that value (the contract's way to set weights)."""
    model = lenet5(seed=0)
    opt = optim.SGD(model, lr=0.1)
    train_steps(model, opt, 2)
    new = np.full((120, 400), 0.01, np.float32)
    model[7].params["weight"] = new
    x, y = batch()
    _, g = losses.softmax_cross_entropy(model(x), y)
    model.backward(g, need_input_grad=False)
    grad = np.array(model[7].grads["weight"])
    opt.step()
    np.testing.assert_allclose(model[7].params["weight"], new - 0.1 * grad, rtol=1e-6, atol=1e-7)
    assert np.array_equal(model.state_dict()["7.weight"], model[7].params["weight"])
    model[7].params["weight"][...] = 0.5  # in place, through the layer's view, counts too
    train_steps(model, opt, 1)
    assert abs(float(np.mean(model[7].params["weight"])) - 0.5) < 0.01


def test_the_flat_buffer_follows_the_model_to_another_device():
    strict = pytest.importorskip("array_api_strict")
    model = lenet5(seed=0)
    opt = optim.SGD(model, lr=0.01, momentum=0.9)
    train_steps(model, opt, 2)
    reference = lenet5(seed=0)
    ref_opt = optim.SGD(reference, lr=0.01, momentum=0.9)
    train_steps(reference, ref_opt, 3)
    model.to(strict.Device("CPU_DEVICE"), xp=strict)
    train_steps(model, opt, 1)
    assert all(v.device == strict.Device("CPU_DEVICE") for v in opt.state.values())
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(cnnxp.to_numpy(model.state_dict()[key]), value, rtol=1e-5, atol=1e-6)


def test_optimizer_state_missing_a_parameter_is_refused():
    """A checkpoint whose Adam moments lack one parameter would resume with that moment at zero:
    not an exact resume, so it is refused before anything changes."""
    model = lenet5(seed=0)
    opt = optim.Adam(model)
    train_steps(model, opt, 1)
    state = opt.state_dict()
    del state["state.m.3.weight"]
    with pytest.raises(KeyError, match=r"optimizer state 'm' lacks '3.weight': a resume would not be exact"):
        optim.Adam(lenet5(seed=0)).load_state_dict(state)


def test_parameters_of_two_dtypes_are_refused_with_what_to_do():
    model = cnnxp.Sequential([layers.Dense(4, 3, seed=0), layers.Dense(3, 2, seed=0)])
    model[1].params["weight"] = np.zeros((2, 3), np.float64)
    x = np.ones((2, 4), np.float32)
    _, g = losses.softmax_cross_entropy(model(x), np.array([0, 1]))
    model.backward(g)
    with pytest.raises(TypeError, match=r"must share a dtype, got \['float32', 'float64'\]: cast the model"):
        optim.SGD(model, lr=0.1).step()


def test_optimizer_errors():
    model = lenet5()
    with pytest.raises(ValueError, match=r"SGD learning rate must be a finite number in \(0, inf\), got 0.0"):
        optim.SGD(model, lr=0)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        optim.SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam betas must be in \[0, 1\)"):
        optim.Adam(model, betas=(1.0, 0.9))
    with pytest.raises(RuntimeError, match="run model.backward before optimizer.step"):
        optim.SGD(model, lr=0.1).step()


def test_optimizer_keeps_float32():
    model = lenet5()
    train_steps(model, optim.Adam(model), 2)
    assert all(v.dtype == np.float32 for v in model.state_dict().values())


def test_optimizer_load_is_all_or_nothing():
    """A state that does not fit (a parameter the model lacks, a wrong shape) raises and leaves the
    optimizer exactly as it was, as PyTorch's does."""
    model = lenet5(seed=0)
    opt = optim.Adam(model, lr=1e-3)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    for _ in range(3):
        _, g = losses.softmax_cross_entropy(model(x), np.arange(4))
        model.backward(g, need_input_grad=False)
        opt.step()
    before = opt.state_dict()
    good = {k: (np.array(v, copy=True) if k.startswith("state.") else v) for k, v in before.items()}
    bad_key = {**good, "step": 99, "lr": 5.0, "beta1": 0.5, "state.m.42.weight": np.zeros(3, np.float32)}
    bad_shape = {**good, "step": 99, "state.m.0.weight": np.zeros(3, np.float32)}
    for bad, error in ((bad_key, KeyError), (bad_shape, ValueError)):
        with pytest.raises(error):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        assert after.keys() == before.keys() and opt.step_count == 3 and opt.lr == 1e-3 and opt.betas[0] == 0.9
        assert all(np.array_equal(after[k], good[k]) for k in good if k.startswith("state."))


def test_a_numpy_learning_rate_works_on_any_device():
    """A schedule may return NumPy scalars; the optimizer keeps a Python float, so the update does not
    mix a host scalar into another library's arrays."""
    strict = pytest.importorskip("array_api_strict")
    from cnnxp.data import DataLoader
    from cnnxp.train import fit

    dev = strict.Device("device1")
    model = lenet5(seed=0).to(dev, xp=strict)
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    opt.lr = np.float64(0.05)
    assert type(opt.lr) is float and opt.lr == 0.05
    rng = np.random.default_rng(0)
    loader = DataLoader(rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32), 16,
                        device=cnnxp.get_device(dev, xp=strict))
    history = fit(model, opt, loader, 1, lr_schedule=lambda step, steps, epochs: np.float64(0.01), progress=False)
    assert len(history) == 1 and opt.lr == 0.01


def test_model_mistakes_a_pytorch_user_makes_are_named():
    """Errors that name the layer, the shapes and what to do, before anything changes."""
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(TypeError, match=r"^Sequential takes a list of layers: Sequential\(\[Conv2D\(\.\.\.\), \.\.\.\]\)"):
        cnnxp.Sequential(layers.Conv2D(1, 6, 5), layers.ReLU())
    deep = cnnxp.Sequential([layers.Conv2D(1, 4, 3)] + [layers.MaxPool2D(2) for _ in range(5)])
    for call in (lambda: deep(x), deep.summary):
        with pytest.raises(ValueError, match=r"^layer 5 \(MaxPool2D\(kernel_size=\(2, 2\), stride=\(2, 2\)\)\): kernel"):
            call()
    wrong = cnnxp.Sequential([layers.Flatten(), layers.Dense(256, 10)])
    with pytest.raises(ValueError, match=r"^layer 1 \(Dense\(256, 10\)\): Dense expected input of shape \(N, 256\)"):
        wrong(x)
    model = lenet5(seed=0)
    logits = model(x)
    loss, grad = losses.softmax_cross_entropy(logits, np.array([1, 2]))
    for bad in (loss, grad[:, :5]):
        with pytest.raises(ValueError, match=r"^Sequential.backward expected grad_out of the output's shape \(2, 10\)"):
            model.backward(bad)
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64'"):
        lenet5().to("cpu", dtype=np.int64)


def test_a_failed_state_load_changes_nothing():
    model = lenet5(seed=0)
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    state = dict(model.state_dict())
    state["0.weight"] = np.full((6, 1, 5, 5), 7, np.float32)
    state["7.weight"] = np.zeros((120, 256), np.float32)
    with pytest.raises(ValueError, match=r"'7.weight' has shape \(120, 256\), the model expects \(120, 400\)"):
        model.load_state_dict(state)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make,error,message", [
    (lambda m: optim.SGD(m.layers, 0.1), TypeError, r"^SGD expected a cnnxp Sequential or its parameters\(\), got list: SGD\(model, lr=...\) or "
     r"SGD\(model.parameters\(\), lr=...\) \(it updates the layers' arrays in place, so it needs the model they belong to\)$"),
    (lambda m: optim.SGD(cnnxp.Sequential([layers.ReLU()]), 0.1), ValueError, "SGD got a model with no parameters"),
    (lambda m: optim.SGD(m, "0.1"), TypeError, r"SGD learning rate must be a number, got '0.1' \(str\)"),
    (lambda m: optim.SGD(m, float("inf")), ValueError, r"SGD learning rate must be a finite number in \(0, inf\), got inf"),
    (lambda m: optim.SGD(m, 0.1, momentum=float("nan")), ValueError, "SGD momentum must be a finite number"),
    (lambda m: optim.SGD(m, 0.1, weight_decay=float("nan")), ValueError, "SGD weight_decay must be a finite number"),
    (lambda m: optim.Adam(m, eps=0), ValueError, r"Adam eps must be a finite number in \(0, inf\), got 0.0"),
    (lambda m: optim.Adam(m, eps=-1), ValueError, "Adam eps must be a finite number"),
    (lambda m: optim.Adam(m, betas=0.9), TypeError, r"Adam betas must be a pair \(beta1, beta2\), got 0.9"),
    (lambda m: optim.Adam(m, betas=(0.9,)), TypeError, "Adam betas must be a pair"),
])
def test_optimizer_arguments_are_checked_when_made(make, error, message):
    with pytest.raises(error, match=message):
        make(lenet5())


@pytest.mark.parametrize("logits,labels,message", [
    (np.zeros((4, 10), np.float32), [1, 2, 3, 4], "expected labels as an array, got list"),
    (np.zeros((4, 10), np.float32), 3, "expected labels as an array, got int"),
    (np.zeros((4, 10), np.int64), np.arange(4), "expected floating-point logits, got int64"),
])
def test_loss_input_types(logits, labels, message):
    with pytest.raises(TypeError, match=message):
        losses.softmax_cross_entropy(logits, labels)


def test_float64_input_to_a_float32_model_is_refused_as_pytorch_does():
    """PyTorch raises on a double input to a float layer; computing silently in float64 would cost twice."""
    model = lenet5(seed=0)
    with pytest.raises(TypeError, match=r"^the model's weights are float32 but the input is float64: convert the input "
                                        r"\(xp.astype\(x, xp.float32\)\) or the model \(model.to\(device, dtype='float64'\)\)$"):
        model(np.zeros((2, 1, 28, 28), np.float64))
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="same dtype|should be the same"):
        torch.nn.Conv2d(1, 6, 5)(torch.zeros((2, 1, 28, 28), dtype=torch.float64))
    wide = lenet5(seed=0).to("cpu", dtype="float64")  # the model cast instead: it takes float64
    assert wide(np.zeros((2, 1, 28, 28), np.float64)).dtype == np.float64


def test_float32_input_to_a_float64_model_computes_in_float64():
    """The loader yields float32; a float64 model promotes it exactly, as a cast first would."""
    wide = lenet5(seed=0).to("cpu", dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    out = wide(x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, wide(x.astype(np.float64)))
