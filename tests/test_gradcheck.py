"""Float64 finite-difference checks of every backward, along random directions (as Chainer's check_backward)."""

from __future__ import annotations

import numpy as np
import pytest
from reference import directional_check, tie_free

from cnnxp import layers, losses, ops
from cnnxp.layers import conv as conv_layer
from cnnxp.layers import pool as pool_layer

TOL = 1e-6


def check_layer(layer, x, rng, params=True):
    """``L = sum(layer(x) * G)``: its analytic gradients w.r.t. x and every parameter match central differences."""
    layer.to("cpu", dtype="float64")
    for name in layer.params:
        layer.params[name] = rng.standard_normal(layer.params[name].shape)
    G = rng.standard_normal(layer.output_shape(x.shape))
    state = layer.rng.bit_generator.state if hasattr(layer, "rng") else None

    def loss():
        if state is not None:  # the same dropout mask at every evaluation
            layer.rng.bit_generator.state = state
        return float(np.sum(np.asarray(layer.forward(x)) * G))

    loss()
    grad_in = layer.backward(G)
    arrays = [x] + ([layer.params[n] for n in layer.params] if params else [])
    analytic = [grad_in] + ([layer.grads[n] for n in layer.params] if params else [])
    assert directional_check(loss, arrays, analytic, rng) < TOL


CONV = [  # (C, O, H, W, kernel, stride, padding)
    (1, 1, 5, 5, 1, 1, 0),     # kernel 1
    (2, 3, 7, 6, 3, 1, 1),
    (3, 2, 9, 9, 2, 3, 0),     # stride > kernel
    (2, 4, 8, 7, 3, 2, 2),
    (1, 8, 28, 28, 2, 2, 1),   # the notebook's first layer
    (2, 2, 6, 6, 1, 4, 1),     # kernel 1, stride > kernel, padding
    (3, 2, 5, 5, 5, 1, 0),     # kernel == input
]


@pytest.mark.parametrize("c,o,h,w,k,s,p", CONV)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("algorithm", ["im2col", "toeplitz", "plain"])
def test_conv2d(c, o, h, w, k, s, p, bias, algorithm, monkeypatch):
    rng = np.random.default_rng(0)
    if algorithm == "plain":  # the plain kernels (cnnxp.ops.conv), the fast ones' oracle
        monkeypatch.setattr(conv_layer, "kernels", ops.conv)
        algorithm = "auto"
    check_layer(layers.Conv2D(c, o, k, s, p, bias=bias, seed=1, algorithm=algorithm),
                rng.standard_normal((2, c, h, w)), rng)


POOL = [  # (H, W, kernel, stride, padding)
    (6, 6, 2, 2, 0),
    (7, 7, 2, 2, 1),     # the notebook's pool
    (7, 5, 3, 1, 1),     # overlapping windows
    (9, 9, 2, 3, 0),     # stride > kernel
    (5, 5, 1, 1, 0),     # kernel 1
    (8, 6, 3, 2, 1),
    (4, 4, 1, 3, 0),     # kernel 1, stride > kernel
]


@pytest.fixture(params=["fast", "plain"])
def pool_kernels(request, monkeypatch):
    """The pooling layers' kernels: the fast ones they run, or the plain ones (cnnxp.ops.pool)."""
    if request.param == "plain":
        monkeypatch.setattr(pool_layer, "kernels", ops.pool)


@pytest.mark.parametrize("h,w,k,s,p", POOL)
def test_maxpool2d_tie_free(h, w, k, s, p, pool_kernels):
    rng = np.random.default_rng(2)
    check_layer(layers.MaxPool2D(k, s, p), tie_free(rng, (2, 3, h, w)), rng)


@pytest.mark.parametrize("h,w,k,s,p", POOL)
def test_avgpool2d(h, w, k, s, p, pool_kernels):
    rng = np.random.default_rng(3)
    check_layer(layers.AvgPool2D(k, s, p), rng.standard_normal((2, 3, h, w)), rng)


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    rng = np.random.default_rng(4)
    check_layer(layers.Dense(7, 5, bias=bias, seed=0), rng.standard_normal((4, 7)), rng)


def test_relu_away_from_zero():
    rng = np.random.default_rng(5)
    x = tie_free(rng, (3, 2, 4, 4), gap=1e-2) + 5e-3  # no element within 5e-3 of the kink
    check_layer(layers.ReLU(), x, rng)


def test_flatten():
    rng = np.random.default_rng(6)
    check_layer(layers.Flatten(), rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_softmax(scale):
    rng = np.random.default_rng(7)
    check_layer(layers.Softmax(), rng.standard_normal((4, 6)) * scale, rng)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dropout_with_fixed_mask(p):
    rng = np.random.default_rng(8)
    check_layer(layers.Dropout(p, seed=3), rng.standard_normal((4, 3, 5, 5)), rng)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d(training):
    rng = np.random.default_rng(9)
    layer = layers.BatchNorm2D(3).train(training)
    layer.momentum = 0.0  # keep the running statistics fixed between evaluations
    layer.to("cpu", dtype="float64")
    layer.buffers["running_mean"] = rng.standard_normal(3)
    layer.buffers["running_var"] = rng.uniform(0.5, 2.0, 3)
    check_layer(layer, rng.standard_normal((4, 3, 3, 5)) * 2 + 1, rng)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_softmax_cross_entropy(scale):
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((6, 10)) * scale
    labels = rng.integers(0, 10, 6)
    _, grad = losses.softmax_cross_entropy(logits, labels)
    err = directional_check(lambda: float(losses.softmax_cross_entropy(logits, labels)[0]), [logits], [grad], rng)
    assert err < TOL


def test_check_catches_a_wrong_gradient():
    """The checker itself fails on a backward that is off by a little."""
    rng = np.random.default_rng(11)
    layer = layers.Dense(4, 3, seed=0)
    check_layer(layer, rng.standard_normal((2, 4)), rng)  # correct: passes
    layer.backward = lambda g, need_input_grad=True: 1.01 * (g @ layer.params["weight"])
    with pytest.raises(AssertionError):
        check_layer(layer, rng.standard_normal((2, 4)), rng, params=False)
