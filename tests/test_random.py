"""The counter-based generator behind Dropout: the same bits on every backend, and random enough."""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp import layers
from cnnxp.opcount import count_ops
from cnnxp.ops import random

KEY = (123_456_789, 2_000_000_011, 987_654_321, 55)


def host(a):
    return np.asarray(cnnxp.to_numpy(a))


def reference_bits(key, count, offset=0):
    """The same hash in Python integers (no int64 at all): the definition the arrays must meet."""
    out = []
    for i in range(offset, offset + count):
        x = (i + key[0]) ** 2 + key[1]
        x %= random.P
        for k in key[2:]:
            x ^= x >> 16
            x = (x * x + k) % random.P
        out.append(x)
    return np.array(out, dtype=np.int64)


def test_bits_match_the_definition_and_are_the_same_on_every_backend(backend):
    like = backend.asarray(np.zeros(1))
    bits = random.random_bits(KEY, (3, 5, 7), like)
    backend.assert_on_backend(bits, dtype=backend.xp.int64)
    np.testing.assert_array_equal(host(bits).ravel(), reference_bits(KEY, 105))
    # an offset continues the same stream: a slice of a batch can be drawn on its own
    tail = random.random_bits(KEY, (2, 5, 7), like, offset=35)
    np.testing.assert_array_equal(host(tail), host(bits)[1:])


def test_bits_look_uniform_and_independent():
    x = host(random.random_bits(KEY, (10**6,), np.zeros(1))) / random.P
    counts = np.histogram(x, bins=200, range=(0, 1))[0]
    expected = len(x) / 200
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 300, chi2  # 199 degrees of freedom: 300 is far in the tail (p < 1e-5)
    for lag in (1, 2, 28, 784, 3136):  # neighbours, image rows, images, feature maps
        assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 0.005
    other = host(random.random_bits((KEY[0], KEY[1] + 1, KEY[2], KEY[3]), (10**6,), np.zeros(1))) / random.P
    assert abs(np.corrcoef(x, other)[0, 1]) < 0.005  # a neighbouring key: another stream
    assert not np.array_equal(x, other)


def test_keep_mask_keeps_one_minus_p_scaled():
    like = np.zeros(1, np.float32)
    for p in (0.1, 0.25, 0.5, 0.9):
        mask = host(random.keep_mask(KEY, (1000, 100), p, like))
        assert mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - p))}
        assert abs((mask > 0).mean() - (1 - p)) < 0.005
    assert not host(random.keep_mask(KEY, (10, 10), 1.0, like)).any()


def test_too_many_numbers_for_one_key_are_refused():
    with pytest.raises(ValueError, match=r"at most 2\*\*30 numbers per key, asked for 1073741825"):
        random.random_bits(KEY, (2**30 + 1,), np.zeros(1))


def test_dropout_masks_are_the_same_on_every_backend_and_cross_nothing(backend):
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    reference = layers.Dropout(0.3, seed=7)(x.astype(backend.dtype_name))
    layer = layers.Dropout(0.3, seed=7)
    x_here = backend.asarray(x)
    with count_ops() as counts:
        out = layer(x_here)
    backend.assert_on_backend(out)
    np.testing.assert_array_equal(host(out), reference)
    if backend.id.startswith("strict"):
        assert counts.to_device == 0 and counts.to_host == 0
    grad = host(layer.backward(backend.asarray(np.ones_like(x))))
    np.testing.assert_array_equal(grad != 0, host(out) != 0)


def test_dropout_resumes_exactly_and_draws_anew_each_step():
    x = np.ones((8, 16), np.float32)
    layer = layers.Dropout(0.5, seed=1)
    first = layer(x)
    state = layer.get_rng_state()
    second = layer(x)
    assert not np.array_equal(first, second)
    other = layers.Dropout(0.5, seed=99)
    other.set_rng_state(state)
    np.testing.assert_array_equal(other(x), second)


def test_dropout_offset_draws_a_slice_of_the_batch_mask():
    """Rows 3: of a batch of 8, drawn alone with an offset, get the batch's own mask rows."""
    x = np.ones((8, 4, 3), np.float32)
    whole = layers.Dropout(0.4, seed=5)(x)
    part = layers.Dropout(0.4, seed=5)
    part.row_offset = 3
    np.testing.assert_array_equal(part(x[3:]), whole[3:])
