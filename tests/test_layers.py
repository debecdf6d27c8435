"""Every layer on every backend of the matrix, against plain-loop references computed on the host.

Outputs and gradients must stay on the input's library, device and dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import conv2d_loops, conv2d_loops_backward, pool2d_loops, tie_free

import cnnxp
from cnnxp import layers, losses, ops
from cnnxp.models import lenet5, seed_cnn
from cnnxp.ops import random


def host(a):
    return np.asarray(cnnxp.to_numpy(a), dtype=np.float64)


def close(a, b, backend):
    np.testing.assert_allclose(host(a), b, rtol=backend.rtol * 10, atol=backend.rtol * 10)


def to_backend(layer, backend):
    return layer.to(backend.device, dtype=backend.dtype_name)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (2, 2, 1), (1, 3, 0), (3, 2, 0)])
def test_conv2d(backend, kernels, k, s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 8))
    layer = layers.Conv2D(3, 4, k, stride=s, padding=p, seed=0)
    w, b = host(layer.params["weight"]), rng.standard_normal(4).astype(np.float32).astype(np.float64)
    layer.params["bias"] = b.astype(np.float32)
    to_backend(layer, backend)
    out = layer(backend.asarray(x))
    backend.assert_on_backend(out)
    assert isinstance(layer.cache, ops.ConvCache) == (kernels == "plain")
    expected = conv2d_loops(x, w, b, s, p)
    close(out, expected, backend)
    g = rng.standard_normal(expected.shape)
    grad_in = layer.backward(backend.asarray(g))
    for a in (grad_in, layer.grads["weight"], layer.grads["bias"]):
        backend.assert_on_backend(a)
    for got, want in zip((grad_in, layer.grads["weight"], layer.grads["bias"]),
                         conv2d_loops_backward(x, w, g, s, p), strict=True):
        close(got, want, backend)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (2, 2, 1), (3, 1, 1), (2, 3, 0)])
def test_pooling(backend, kernels, mode, k, s, p):
    rng = np.random.default_rng(1)
    x = tie_free(rng, (2, 3, 7, 6))
    layer = (layers.MaxPool2D if mode == "max" else layers.AvgPool2D)(k, stride=s, padding=p)
    out = layer(backend.asarray(x))
    backend.assert_on_backend(out)
    if mode == "max":  # the fast kernels take the separable path for windows that do not overlap
        assert isinstance(layer.cache, ops.SeparableMaxPoolCache) == (kernels == "fast" and s >= k)
    expected, grad = pool2d_loops(x, k, s, p, mode)
    close(out, expected, backend)
    g = rng.standard_normal(expected.shape)
    grad_in = layer.backward(backend.asarray(g))
    backend.assert_on_backend(grad_in)
    close(grad_in, grad(g), backend)


def test_dense_relu_flatten_softmax(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 3, 3))
    flat = layers.Flatten()
    dense = to_backend(layers.Dense(18, 5, seed=0), backend)
    relu, soft = layers.ReLU(), layers.Softmax()
    w = host(dense.params["weight"])
    y = soft(relu(dense(flat(backend.asarray(x)))))
    backend.assert_on_backend(y)
    z = x.reshape(4, 18) @ w.T
    r = np.maximum(z, 0)
    e = np.exp(r - r.max(axis=1, keepdims=True))
    pr = e / e.sum(axis=1, keepdims=True)
    close(y, pr, backend)
    g = rng.standard_normal((4, 5))
    gx = flat.backward(dense.backward(relu.backward(soft.backward(backend.asarray(g)))))
    backend.assert_on_backend(gx)
    gr = pr * (g - np.sum(g * pr, axis=1, keepdims=True))
    gz = gr * (z > 0)
    close(gx, (gz @ w).reshape(x.shape), backend)
    close(dense.grads["weight"], gz.T @ x.reshape(4, 18), backend)
    close(dense.grads["bias"], gz.sum(axis=0), backend)


def test_batchnorm_train_and_eval(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 3
    bn = to_backend(layers.BatchNorm2D(3, momentum=0.1), backend)
    y = bn(backend.asarray(x))
    backend.assert_on_backend(y)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    close(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), backend)
    close(bn.running_mean, 0.1 * mean, backend)
    close(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), backend)
    backend.assert_on_backend(bn.backward(backend.asarray(rng.standard_normal(x.shape))))
    bn.eval()
    y = bn(backend.asarray(x))
    close(y, (x - host(bn.running_mean)[:, None, None]) / np.sqrt(host(bn.running_var)[:, None, None] + 1e-5),
          backend)


def test_dropout_same_masks_on_every_backend(backend):
    x = np.ones((3, 4, 5, 5))
    drop = layers.Dropout(0.4, seed=7)
    y = drop(backend.asarray(x))
    backend.assert_on_backend(y)
    key = np.random.default_rng(7).integers(0, random.KEY_BOUNDS)  # the layer's first draw from its seed
    bits = random.random_bits(key, x.shape, x)  # checked against a pure-Python definition in test_random.py
    expected = (bits >= round(0.4 * random.P)) / 0.6
    close(y, expected, backend)
    close(drop.backward(backend.asarray(x)), expected, backend)
    drop.eval()
    close(drop(backend.asarray(x)), x, backend)


def test_loss_on_backend(backend):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1.0, 2.0]])
    labels = np.array([1, 2])
    loss, grad = losses.softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels, dtype=np.int64))
    backend.assert_on_backend(loss)
    backend.assert_on_backend(grad)
    expected = (1e4 + (np.log(np.exp(-1.0) + np.exp(-2.0) + 1.0))) / 2
    assert np.isfinite(host(loss)) and abs(float(host(loss)) - expected) < 1e-3 * expected


def test_lenet5_training_step(backend):
    """A whole LeNet-5 step on the backend: same loss as NumPy float64, parameters stay on the device."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 1, 28, 28))
    y = rng.integers(0, 10, 8)
    ref = lenet5(seed=0).to("cpu", dtype="float64")
    ref_loss, _ = losses.softmax_cross_entropy(ref(x), y)
    model = lenet5(seed=0).to(backend.device, dtype=backend.dtype_name)
    opt = cnnxp.optim.SGD(model, lr=0.01)
    xb, yb = backend.asarray(x), backend.asarray(y, dtype=np.int64)
    loss, grad = losses.softmax_cross_entropy(model(xb), yb)
    assert abs(float(host(loss)) - float(ref_loss)) < backend.rtol * 100
    model.backward(grad, need_input_grad=False)
    opt.step()
    for key, value in model.state_dict().items():
        backend.assert_on_backend(value)
        assert key in ref.state_dict()
    loss2, _ = losses.softmax_cross_entropy(model(xb), yb)
    assert float(host(loss2)) < float(host(loss))


def test_lenet5_fits_a_batch_on_strict_device1():
    """The done-when of the core: LeNet-5 trains under array_api_strict on device1 in float32."""
    strict = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = np.arange(16) % 10
    model = lenet5(seed=1).to(strict.Device("device1"), xp=strict)
    opt = cnnxp.optim.Adam(model, lr=2e-3)
    xb, yb = cnnxp.to_device(x, model.device), cnnxp.to_device(y, model.device)
    for _ in range(40):
        logits = model(xb)
        loss, grad = losses.softmax_cross_entropy(logits, yb)
        model.backward(grad, need_input_grad=False)
        opt.step()
    assert logits.dtype == strict.float32 and logits.device == strict.Device("device1")
    assert float(cnnxp.to_numpy(loss)) < 0.05
    assert (np.argmax(cnnxp.to_numpy(model(xb)), axis=1) == y).all()


def test_seed_cnn_shapes(backend):
    model = seed_cnn(seed=0).to(backend.device, dtype=backend.dtype_name)
    out = model(backend.asarray(np.zeros((3, 1, 28, 28))))
    backend.assert_on_backend(out)
    assert out.shape == (3, 10)
