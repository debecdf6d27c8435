"""Forward and every gradient against PyTorch in float64, on randomized shapes."""

from __future__ import annotations

import numpy as np
import pytest

from cnnxp import layers, losses, ops
from cnnxp.layers import conv as conv_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-7


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b)))))


def f64(layer):
    return layer.to("cpu", dtype="float64")


def run_both(layer, x, torch_fn, torch_params, rng):
    """Forward both, back-propagate the same random upstream gradient, return (ours, theirs)."""
    out = layer(x)
    tx = torch.tensor(x, requires_grad=True)
    tparams = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in torch_params.items()}
    tout = torch_fn(tx, tparams)
    g = rng.standard_normal(tuple(tout.shape))
    grad_in = layer.backward(g)
    tout.backward(torch.tensor(g))
    assert rel_err(out, tout.detach().numpy()) < RTOL
    assert rel_err(grad_in, tx.grad.numpy()) < RTOL
    for name, tp in tparams.items():
        assert rel_err(layer.grads[name], tp.grad.numpy()) < RTOL, name


def conv_configs(count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(1, 5))
        s = int(rng.integers(1, 4))
        p = int(rng.integers(0, 3))
        h = int(rng.integers(max(1, k - 2 * p), 12))
        w = int(rng.integers(max(1, k - 2 * p), 12))
        yield dict(n=int(rng.integers(1, 4)), c=int(rng.integers(1, 4)), o=int(rng.integers(1, 5)),
                   h=h, w=w, k=k, s=s, p=p, bias=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("algorithm", ["im2col", "toeplitz", "plain"])
@pytest.mark.parametrize("cfg", list(conv_configs(15, seed=1)), ids=str)
def test_conv2d_matches_torch(cfg, algorithm, monkeypatch):
    rng = np.random.default_rng(2)
    if algorithm == "plain":
        monkeypatch.setattr(conv_layer, "kernels", ops.conv)
    layer = f64(layers.Conv2D(cfg["c"], cfg["o"], cfg["k"], cfg["s"], cfg["p"], bias=cfg["bias"], seed=3,
                              algorithm="auto" if algorithm == "plain" else algorithm))
    layer.params["weight"] = rng.standard_normal(layer.params["weight"].shape)
    if cfg["bias"]:
        layer.params["bias"] = rng.standard_normal(cfg["o"])
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    run_both(layer, x, lambda t, p: F.conv2d(t, p["weight"], p.get("bias"), cfg["s"], cfg["p"]),
             layer.params, rng)


def pool_configs(count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(1, 4))
        s = int(rng.integers(1, 4))
        p = int(rng.integers(0, k // 2 + 1))
        yield dict(n=int(rng.integers(1, 3)), c=int(rng.integers(1, 4)), h=int(rng.integers(k, 10)),
                   w=int(rng.integers(k, 10)), k=k, s=s, p=p)


@pytest.mark.parametrize("cfg", list(pool_configs(15, seed=4)), ids=str)
def test_maxpool2d_matches_torch(cfg, kernels):
    rng = np.random.default_rng(5)
    layer = layers.MaxPool2D(cfg["k"], cfg["s"], cfg["p"])
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    run_both(layer, x, lambda t, _: F.max_pool2d(t, cfg["k"], cfg["s"], cfg["p"]), {}, rng)


def test_maxpool2d_ties_follow_torch(kernels):
    """Windows full of equal values: the gradient goes to the first maximum, as in PyTorch."""
    rng = np.random.default_rng(6)
    x = np.round(rng.standard_normal((2, 3, 8, 8)))  # many ties
    x[0, 0] = 1.0
    for k, s, p in [(2, 2, 0), (3, 1, 1), (3, 2, 0), (2, 1, 1)]:
        run_both(layers.MaxPool2D(k, s, p), x, lambda t, _, k=k, s=s, p=p: F.max_pool2d(t, k, s, p), {}, rng)


@pytest.mark.parametrize("k,s,p", [((1, 2), (1, 2), (0, 1)), ((1, 3), 1, (0, 1)), (2, 2, 1), (3, 1, 1), (3, 2, 1)])
def test_maxpool2d_padding_never_takes_the_gradient(k, s, p):
    """Windows whose inputs are all -inf tie with the -inf padding: PyTorch gives the gradient to the
    first in-bounds element, on both paths (disjoint and overlapping windows)."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 2, 5, 6))
    x[0] = -np.inf
    x[1, :, ::2, 1::2] = -np.inf
    for forward in (None, ops.pool.maxpool2d_forward, ops.pool_fast.maxpool2d_separable_forward):
        layer = layers.MaxPool2D(k, s, p)
        if forward is None:  # the layer's own choice
            out = layer(x)
        else:  # the plain (stacked windows) path, and the separable one, for every geometry
            out, layer.cache = forward(x, k, s, p)
        g = rng.random(out.shape)
        t = torch.tensor(x, requires_grad=True)
        tout = F.max_pool2d(t, k, s, p)
        tout.backward(torch.tensor(g))
        np.testing.assert_array_equal(out, tout.detach().numpy())
        np.testing.assert_allclose(layer.backward(g), t.grad.numpy(), rtol=1e-14, atol=0)  # sums may differ in order


@pytest.mark.parametrize("forward", [ops.pool.maxpool2d_forward, ops.pool_fast.maxpool2d_separable_forward],
                         ids=["plain", "separable"])
def test_maxpool2d_nan_window_keeps_its_gradient(forward):
    """A window holding NaN outputs NaN; its gradient still reaches an input (never the padding), so
    the gradient's total is conserved, as in PyTorch (which picks the last NaN; cnnxp the first, or
    the window's last element on the separable path)."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    out, cache = forward(x, 3, 2, 1)
    dx = ops.maxpool2d_backward(np.ones_like(out), cache)  # either cache: the backward follows its type
    t = torch.tensor(x, requires_grad=True)
    F.max_pool2d(t, 3, 2, 1).sum().backward()
    assert float(dx.sum()) == float(t.grad.sum()) == out.size
    np.testing.assert_array_equal(np.isnan(out), np.isnan(F.max_pool2d(torch.tensor(x), 3, 2, 1).numpy()))


@pytest.mark.parametrize("cfg", list(pool_configs(12, seed=7)), ids=str)
def test_avgpool2d_matches_torch(cfg, kernels):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    run_both(layers.AvgPool2D(cfg["k"], cfg["s"], cfg["p"]), x,
             lambda t, _: F.avg_pool2d(t, cfg["k"], cfg["s"], cfg["p"]), {}, rng)


@pytest.mark.parametrize("n,i,o,bias", [(1, 1, 1, True), (5, 7, 3, False), (16, 400, 120, True), (3, 84, 10, True)])
def test_dense_matches_torch(n, i, o, bias):
    rng = np.random.default_rng(9)
    layer = f64(layers.Dense(i, o, bias=bias, seed=0))
    layer.params["bias" if bias else "weight"] = rng.standard_normal(o if bias else (o, i))
    x = rng.standard_normal((n, i))
    run_both(layer, x, lambda t, p: F.linear(t, p["weight"], p.get("bias")), layer.params, rng)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("shape", [(6, 10), (2, 5, 3, 4)])
def test_softmax_matches_torch(scale, shape):
    """Over axis 1, as ``torch.nn.Softmax(dim=1)``, for (N, classes) and (N, C, H, W) alike."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape) * scale
    run_both(layers.Softmax(), x, lambda t, _: F.softmax(t, dim=1), {}, rng)


@pytest.mark.parametrize("shape,training", [((4, 3, 5, 5), True), ((2, 6, 3, 4), True), ((1, 2, 3, 3), True),
                                            ((4, 3, 5, 5), False)])
def test_batchnorm2d_matches_torch(shape, training):
    rng = np.random.default_rng(11)
    c = shape[1]
    ours = f64(layers.BatchNorm2D(c, eps=1e-5, momentum=0.2))
    ours.params["weight"] = rng.standard_normal(c)
    ours.params["bias"] = rng.standard_normal(c)
    ours.buffers["running_mean"] = rng.standard_normal(c)
    ours.buffers["running_var"] = rng.uniform(0.5, 2.0, c)
    theirs = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.2).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.params["weight"]))
        theirs.bias.copy_(torch.tensor(ours.params["bias"]))
        theirs.running_mean.copy_(torch.tensor(ours.running_mean))
        theirs.running_var.copy_(torch.tensor(ours.running_var))
    ours.train(training)
    theirs.train(training)
    x = rng.standard_normal(shape) * 3 + 1
    out = ours(x)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    g = rng.standard_normal(shape)
    grad_in = ours.backward(g)
    tout.backward(torch.tensor(g))
    assert rel_err(out, tout.detach().numpy()) < RTOL
    assert rel_err(grad_in, tx.grad.numpy()) < RTOL
    assert rel_err(ours.grads["weight"], theirs.weight.grad.numpy()) < RTOL
    assert rel_err(ours.grads["bias"], theirs.bias.grad.numpy()) < RTOL
    assert rel_err(ours.running_mean, theirs.running_mean.numpy()) < RTOL
    assert rel_err(ours.running_var, theirs.running_var.numpy()) < RTOL


@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (8, 10, 3.0), (5, 10, 1e4), (32, 7, 100.0)])
def test_softmax_cross_entropy_matches_torch(n, k, scale):
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, n)
    loss, grad = losses.softmax_cross_entropy(logits, labels)
    t = torch.tensor(logits, requires_grad=True)
    tloss = F.cross_entropy(t, torch.tensor(labels))
    tloss.backward()
    assert np.isfinite(float(loss))
    assert abs(float(loss) - tloss.item()) <= RTOL * max(1.0, abs(tloss.item()))
    assert rel_err(grad, t.grad.numpy()) < RTOL


@pytest.mark.filterwarnings("ignore:overflow encountered in subtract:RuntimeWarning")  # 1e308 - -1e308 is inf
@pytest.mark.parametrize("logits", [[[2.0, -np.inf, 0.5]], [[1e308, -1e308]], [[-np.inf, 3.0], [0.0, 1.0]]])
def test_cross_entropy_is_finite_where_torchs_is(logits):
    """A masked (-inf) logit or logits too far apart for the shift: only the labelled class counts."""
    logits = np.array(logits)
    labels = np.array([0, 1][: len(logits)]) if len(logits) > 1 else np.array([0])
    labels[0] = int(np.argmax(logits[0]))
    loss, grad = losses.softmax_cross_entropy(logits, labels)
    t = torch.tensor(logits, requires_grad=True)
    tloss = F.cross_entropy(t, torch.tensor(labels))
    tloss.backward()
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(tloss.item(), rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-300)


def test_lenet5_step_matches_torch():
    """A whole network: the same weights give the same loss and the same gradients for every parameter."""
    from cnnxp.models import lenet5

    rng = np.random.default_rng(13)
    model = lenet5(seed=0).to("cpu", dtype="float64")
    tmodel = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10)).double()
    tstate = {k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()}
    tmodel.load_state_dict(tstate)
    x = rng.standard_normal((8, 1, 28, 28))
    y = rng.integers(0, 10, 8)
    loss, g = losses.softmax_cross_entropy(model(x), y)
    model.backward(g)
    tloss = F.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
    tloss.backward()
    assert abs(float(loss) - tloss.item()) < 1e-10
    tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    for key, layer, name in model.parameter_slots():
        assert rel_err(layer.grads[name], tgrads[key]) < RTOL, key


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3, 0.9])
@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (8, 10, 3.0), (5, 10, 1e4), (32, 7, 100.0)])
def test_label_smoothing_matches_torch(n, k, scale, eps):
    """Loss and gradient against F.cross_entropy(..., label_smoothing=eps) and autograd."""
    rng = np.random.default_rng(14)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, n)
    loss, grad = losses.softmax_cross_entropy(logits, labels, label_smoothing=eps)
    t = torch.tensor(logits, requires_grad=True)
    tloss = F.cross_entropy(t, torch.tensor(labels), label_smoothing=eps)
    tloss.backward()
    assert np.isfinite(float(loss))
    assert abs(float(loss) - tloss.item()) <= RTOL * max(1.0, abs(tloss.item()))
    assert rel_err(grad, t.grad.numpy()) < RTOL
    plain = F.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
    assert abs(float(loss) - plain) > 1e-6  # the smoothing changed the loss


def test_label_smoothing_of_a_confident_right_answer_costs_more_than_plain():
    """Smoothing penalises certainty: the best logits are no longer infinitely confident."""
    logits = np.array([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    labels = np.array([0, 1])
    plain, _ = losses.softmax_cross_entropy(logits, labels)
    smooth, grad = losses.softmax_cross_entropy(logits, labels, label_smoothing=0.3)
    tloss = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), label_smoothing=0.3).item()
    assert float(plain) < 1e-8 and float(smooth) > 1.0
    assert abs(float(smooth) - tloss) <= RTOL * tloss
    assert np.all(np.asarray(grad)[[0, 1], [0, 1]] > 0)  # push the right logit down, towards the target 0.8
