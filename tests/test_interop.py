"""PyTorch habits and PyTorch interop: parameters(), named_parameters(), optimizers given parameters(),
state dicts both ways, to_torch / from_torch, and cnnxp's layers running on torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp import interop, losses, models, optim

torch = pytest.importorskip("torch")
nn = torch.nn

PRESETS = {"seed": models.seed_cnn, "lenet5": models.lenet5, "fashion": models.fashion_cnn}


def images(n=6, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(dtype)


def trained(preset, steps=3):
    """A preset after a few SGD steps in float64, so that BatchNorm's running statistics have moved."""
    model = PRESETS[preset](seed=0).to("cpu", dtype="float64")
    opt = optim.SGD(model, lr=0.05, momentum=0.9)
    for k in range(steps):
        _, grad = losses.softmax_cross_entropy(model(images(16, k, np.float64)), np.arange(16) % 10)
        model.backward(grad)
        opt.step()
    return model


def torch_step(net, x, y):
    net.zero_grad()
    nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()


# -- the habits ----------------------------------------------------------------------------------------


def test_parameters_and_named_parameters_are_pytorchs():
    model = models.fashion_cnn(seed=0)
    net = interop.to_torch(model)
    ours = list(model.named_parameters())
    theirs = list(net.named_parameters())
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    for (key, array), (_, tensor) in zip(ours, theirs, strict=True):
        assert isinstance(array, np.ndarray) and array.shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(array, tensor.detach().numpy())
    params = model.parameters()
    assert len(params) == len(list(net.parameters())) and params.model is model
    assert all(p is model[int(k.split(".")[0])].params[k.split(".")[1]] for p, (k, _) in zip(params, ours, strict=True))
    assert sum(p.size for p in params) == model.num_parameters() == sum(t.numel() for t in net.parameters())


@pytest.mark.parametrize("make,torch_make", [
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3)),
])  # fmt: skip
def test_optimizers_take_parameters_as_pytorchs_do(make, torch_make):
    """SGD(model.parameters(), ...) as in PyTorch: three steps give PyTorch's weights."""
    model = models.lenet5(seed=0).to("cpu", dtype="float64")
    net = interop.to_torch(model)
    opt, topt = make(model.parameters()), torch_make(net.parameters())
    for k in range(3):
        x, y = images(8, k, np.float64), np.arange(8) % 10
        _, grad = losses.softmax_cross_entropy(model(x), y)
        model.backward(grad)
        opt.step()
        torch_step(net, x, y)
        topt.step()
    for key, tensor in net.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], tensor.numpy(), rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("given", [
    lambda m: list(m.parameters()),  # a plain list has lost its model
    lambda m: iter(m.parameters()),
    lambda m: [{"params": m.parameters(), "lr": 0.1}],  # PyTorch's parameter groups
])  # fmt: skip
def test_what_an_optimizer_cannot_use_is_refused_with_what_to_pass(given):
    with pytest.raises(TypeError, match=r"^Adam expected a cnnxp Sequential or its parameters\(\), got \w+: "
                                        r"Adam\(model, lr=...\) or Adam\(model.parameters\(\), lr=...\)"):
        optim.Adam(given(models.lenet5(seed=0)))


# -- state dicts and networks, both ways --------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_to_torch_computes_what_the_model_computes(preset):
    """Eval-mode logits and train-mode gradients of every preset agree with PyTorch's to rounding."""
    model = trained(preset)
    net = interop.to_torch(model)
    assert net.training and next(net.parameters()).dtype == torch.float64
    x, y = images(7, 9, np.float64), np.arange(7) % 10
    model.eval(), net.eval()
    np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    for layer in model.layers:  # train mode without Dropout's randomness: the batch statistics and gradients
        layer.train(not isinstance(layer, cnnxp.layers.Dropout))
    for module in net.children():
        module.train(not isinstance(module, nn.Dropout))
    _, grad = losses.softmax_cross_entropy(model(x), y)
    model.backward(grad)
    torch_step(net, x, y)
    for (key, layer, name), (tkey, tensor) in zip(model.parameter_slots(), net.named_parameters(), strict=True):
        assert key == tkey
        np.testing.assert_allclose(layer.grads[name], tensor.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=key)
    for key, tensor in net.state_dict().items():  # the running statistics moved alike
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_allclose(model.state_dict()[key], tensor.numpy(), rtol=1e-12, atol=1e-14, err_msg=key)


def test_from_torch_builds_the_same_network_and_it_trains():
    """PyTorch's MNIST-example LeNet (ReLU before pooling) with its float32 weights, in cnnxp on any device."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(400, 84), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(84, 10), nn.Softmax(dim=1)).eval()
    model = interop.from_torch(net)
    assert [layer.name for layer in model] == ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "AvgPool2D", "Flatten",
                                               "Dense", "ReLU", "Dropout", "Dense", "Softmax"]
    assert not model.training and model.parameters()[0].dtype == np.float32
    x = images(5)
    np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    strict = pytest.importorskip("array_api_strict")
    there = interop.from_torch(net, device=cnnxp.get_device(strict.Device("device1"), xp=strict))
    assert there.device.name != "cpu" and there.parameters()[0].device == strict.Device("device1")


def test_state_dicts_pass_both_ways_as_they_are():
    """model.load_state_dict(net.state_dict()) (num_batches_tracked skipped) and
    net.load_state_dict(torch_state_dict(model)) with strict keys on both sides."""
    model = trained("fashion").to("cpu", dtype="float32")
    net = interop.to_torch(models.fashion_cnn(seed=5))
    net.load_state_dict(interop.torch_state_dict(model))  # strict: every key, num_batches_tracked included
    other = models.fashion_cnn(seed=7)
    other.load_state_dict(net.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)
    with pytest.raises(KeyError, match=r"unexpected keys \['3.num_batches_tracked'\]"):  # only BatchNorm's counter
        models.lenet5(seed=0).load_state_dict({**models.lenet5(seed=0).state_dict(), "3.num_batches_tracked": 0})


@pytest.mark.parametrize("net,message", [
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)),
     r"^from_torch: module 0 \(Conv2d\(2, 4.*\)\) uses string padding, groups, dilation or a non-zero padding mode; "
     r"cnnxp has no such layer$"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Tanh()), r"^from_torch: module 2 \(Tanh\(\)\) is not one of Conv2d"),
    (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), r"module 0 .* uses dilation, ceil_mode or return_indices"),
    (nn.Sequential(nn.BatchNorm2d(3, momentum=None)), r"a cumulative momentum \(None\)"),
    (nn.Linear(4, 2), r"^from_torch expected a torch.nn.Sequential, got Linear: wrap the layers in nn.Sequential"),
])  # fmt: skip
def test_from_torch_names_what_it_cannot_convert(net, message):
    with pytest.raises(TypeError, match=message):
        interop.from_torch(net)


def test_to_torch_names_a_layer_it_cannot_convert():
    class Square(cnnxp.layers.ReLU):
        pass

    with pytest.raises(TypeError, match=r"^to_torch: layer 1 \(Square\) has no PyTorch counterpart; it converts Conv2D"):
        interop.to_torch(cnnxp.Sequential([cnnxp.layers.Flatten(), Square()]))


def test_cnnxp_layers_run_on_torch_tensors_with_numpys_gradients():
    """The same layer code on torch's namespace (through array-api-compat): NumPy's logits and gradients to rounding."""
    on_numpy = models.fashion_cnn(seed=0).to("cpu", dtype="float64")
    on_torch = models.fashion_cnn(seed=0).to("cpu", xp=torch, dtype="float64")
    for model in (on_numpy, on_torch):
        for layer in model.layers:
            layer.train(not isinstance(layer, cnnxp.layers.Dropout))
    x, y = images(6, 3, np.float64), np.arange(6) % 10
    expected = on_numpy(x)
    _, g = losses.softmax_cross_entropy(expected, y)
    on_numpy.backward(g)
    logits = on_torch(torch.from_numpy(x))
    assert isinstance(logits, torch.Tensor)
    _, tg = losses.softmax_cross_entropy(logits, torch.from_numpy(y))
    on_torch.backward(tg)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-12, atol=1e-12)
    for (key, a, name), (_, b, _) in zip(on_numpy.parameter_slots(), on_torch.parameter_slots(), strict=True):
        np.testing.assert_allclose(b.grads[name].numpy(), a.grads[name], rtol=1e-9, atol=1e-12, err_msg=key)
