"""Shape formulas as properties: ``(I - F + 2P) // S + 1`` for every valid configuration, ValueError otherwise."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnxp import layers, ops

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometry(draw, pool=False):
    k = draw(st.integers(1, 5))
    s = draw(st.integers(1, 4))
    p = draw(st.integers(0, k // 2 if pool else 3))
    size = draw(st.integers(max(1, k - 2 * p), 12))
    size_w = draw(st.integers(max(1, k - 2 * p), 12))
    return k, s, p, size, size_w


@SETTINGS
@given(geometry(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_conv_output_shape(g, n, c, o):
    k, s, p, h, w = g
    layer = layers.Conv2D(c, o, k, stride=s, padding=p, seed=0)
    out = layer(np.zeros((n, c, h, w), np.float32))
    expected = (n, o, (h - k + 2 * p) // s + 1, (w - k + 2 * p) // s + 1)
    assert out.shape == expected == layer.output_shape((n, c, h, w))
    assert layer.backward(np.ones(expected, np.float32)).shape == (n, c, h, w)


@SETTINGS
@given(geometry(pool=True), st.sampled_from([layers.MaxPool2D, layers.AvgPool2D]))
def test_pool_output_shape(g, cls):
    k, s, p, h, w = g
    layer = cls(k, stride=s, padding=p)
    out = layer(np.zeros((2, 3, h, w), np.float32))
    expected = (2, 3, (h - k + 2 * p) // s + 1, (w - k + 2 * p) // s + 1)
    assert out.shape == expected == layer.output_shape((2, 3, h, w))
    assert layer.backward(np.ones(expected, np.float32)).shape == (2, 3, h, w)


@SETTINGS
@given(st.integers(2, 8), st.integers(0, 2), st.integers(1, 12))
def test_kernel_larger_than_padded_input(k, p, size):
    if k <= size + 2 * p:
        return
    with pytest.raises(ValueError, match=f"kernel size {k} is larger than the padded input"):
        ops.conv_output_size(size, k, 1, p)
    with pytest.raises(ValueError, match="larger than the padded input"):
        layers.Conv2D(1, 1, k, padding=p)(np.zeros((1, 1, size, size), np.float32))


@SETTINGS
@given(st.integers(-3, 0))
def test_stride_below_one(s):
    with pytest.raises(ValueError, match=f"stride must be at least 1, got {s}"):
        ops.conv_output_size(8, 3, s, 0)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        layers.Conv2D(1, 1, 3, stride=s)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        layers.MaxPool2D(2, stride=s)


@SETTINGS
@given(st.integers(-4, -1))
def test_negative_padding(p):
    with pytest.raises(ValueError, match=f"padding must be non-negative, got {p}"):
        ops.conv_output_size(8, 3, 1, p)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        layers.Conv2D(1, 1, 3, padding=p)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        layers.AvgPool2D(2, padding=p)


@SETTINGS
@given(st.integers(1, 5), st.integers(0, 4))
def test_pool_padding_at_most_half_the_kernel(k, p):
    # One rule (PyTorch's), checked alike by the layers and by every pooling op, plain or fast.
    x = np.zeros((1, 1, 12, 12), np.float32)
    calls = [
        lambda: layers.MaxPool2D(k, padding=p),
        lambda: layers.AvgPool2D(k, padding=p),
        lambda: ops.pool.maxpool2d_forward(x, k, padding=p),
        lambda: ops.pool.avgpool2d_forward(x, k, padding=p),
        lambda: ops.pool_fast.maxpool2d_forward(x, k, padding=p),
        lambda: ops.pool_fast.maxpool2d_separable_forward(x, k, padding=p),
    ]
    for call in calls:
        if 2 * p <= k:
            call()
        else:
            message = f"padding must be at most half the kernel size, got padding={(p, p)}"
            with pytest.raises(ValueError, match=re.escape(message)):
                call()
