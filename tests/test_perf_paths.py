"""The fast paths give the general path's results: non-overlapping max pooling, batch-sliced and flat-layout convolution.

Pooling paths select, they do not add in a different order, so they must agree
exactly, ties included (the first maximum of a window in row-major order takes
the gradient). Convolution paths sum in another order, so they agree to the
dtype's tolerance; chunk sizes are chosen to put slice boundaries inside the batch.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp import layers, ops


def host(a):
    return np.asarray(cnnxp.to_numpy(a), dtype=np.float64)


def pool_both(backend, x, k, s, p):
    """(out, grad_in) of the general (stacked windows) and the fast (pairwise maximum) path."""
    results = []
    rng = np.random.default_rng(1)
    grad = None
    for fast in (False, True):
        out, cache = ops.maxpool2d_forward(x, k, s, p, fast=fast)
        if grad is None:
            grad = backend.asarray(rng.standard_normal(tuple(out.shape)))
        results.append((out, ops.maxpool2d_backward(grad, cache)))
    return results


POOL_CASES = [  # kernel, stride, padding, (H, W)
    (2, 2, 0, (28, 28)),   # LeNet-5's MaxPool2D(2): tiles the input
    (2, 2, 1, (15, 15)),   # the notebook network's pool: padding, last row and column unused
    (3, 3, 1, (10, 11)),
    (2, 3, 0, (11, 11)),   # stride > kernel: gaps between windows
    ((2, 3), (2, 3), (1, 0), (9, 12)),
    (1, 2, 0, (7, 7)),
    (3, 1, 1, (6, 7)),     # overlapping windows, forced onto the fast path
    (2, 1, 0, (5, 6)),
]


@pytest.mark.parametrize("k,s,p,hw", POOL_CASES)
@pytest.mark.parametrize("inputs", ["random", "ties", "constant"])
def test_maxpool_fast_path_matches_general(backend, k, s, p, hw, inputs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, *hw))
    if inputs == "ties":
        x = np.round(x)  # many equal maxima inside windows
    elif inputs == "constant":
        x = np.full_like(x, 0.5)  # every element of every window ties
    (out_g, dx_g), (out_f, dx_f) = pool_both(backend, backend.asarray(x), k, s, p)
    backend.assert_on_backend(out_f)
    backend.assert_on_backend(dx_f)
    np.testing.assert_array_equal(host(out_f), host(out_g))
    np.testing.assert_array_equal(host(dx_f), host(dx_g))


def test_maxpool_ties_go_to_first_maximum(backend):
    # 2x2 windows over a constant image: only the top-left element of each window gets gradient.
    x = backend.asarray(np.ones((1, 1, 4, 6)))
    layer = layers.MaxPool2D(2)
    out = layer(x)
    grad = np.arange(1, 7, dtype=np.float64).reshape(1, 1, 2, 3)
    dx = host(layer.backward(backend.asarray(grad)))
    expected = np.zeros((1, 1, 4, 6))
    expected[:, :, ::2, ::2] = grad
    np.testing.assert_array_equal(host(out), np.ones((1, 1, 2, 3)))
    np.testing.assert_array_equal(dx, expected)


def test_maxpool_tie_with_padding_goes_to_first_real_maximum(backend):
    # padding=1 with 2x2 windows: the top-left window holds 3 padding cells and x[0, 0].
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.0
    layer = layers.MaxPool2D(2, stride=2, padding=1)
    layer(backend.asarray(x))
    dx = host(layer.backward(backend.asarray(np.ones((1, 1, 2, 2)))))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 0, 0] = 1.0  # window (0, 0) holds three padding cells and x[0, 0]
    expected[0, 0, 0, 1] = 1.0  # window (0, 1): x[0, 1] = 2 beats x[0, 2]
    expected[0, 0, 1, 0] = 1.0  # window (1, 0): x[1, 0] = 2 beats x[2, 0]
    expected[0, 0, 1, 1] = 1.0  # window (1, 1): four zeros tie; the first in row-major order wins
    np.testing.assert_array_equal(dx, expected)


CONV_CASES = [  # in, out, kernel, stride, padding, (H, W)
    (1, 6, 5, 1, 2, (28, 28)),
    (6, 16, 5, 1, 0, (14, 14)),
    (1, 8, 2, 2, 1, (28, 28)),
    (3, 4, 1, 1, 0, (7, 7)),
    (2, 3, 2, 3, 0, (11, 11)),
    (3, 2, (2, 3), (1, 2), (1, 0), (8, 9)),
]


def conv_run(backend, x, w, b, s, p, grad, **kw):
    out, cache = ops.conv2d_forward(x, w, b, s, p, **kw)
    dx, dw, db = ops.conv2d_backward(grad, cache, need_input_grad=True)
    _, dw2, db2 = ops.conv2d_backward(grad, cache, need_input_grad=False)
    return [host(a) for a in (out, dx, dw, db, dw2, db2)], cache


def conv_inputs(backend, cin, cout, k, s, p, hw, n=7):
    rng = np.random.default_rng(0)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    x = backend.asarray(rng.standard_normal((n, cin, *hw)))
    w = backend.asarray(rng.standard_normal((cout, cin, kh, kw)))
    b = backend.asarray(rng.standard_normal(cout))
    out, _ = ops.conv2d_forward(x, w, b, s, p)
    grad = backend.asarray(rng.standard_normal(tuple(out.shape)))
    return x, w, b, grad


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
@pytest.mark.parametrize("images_per_slice", [1, 3])  # 7 images: slices of 1, or 3 + 3 + 1
@pytest.mark.parametrize("algorithm", ["im2col", "toeplitz"])
def test_conv_batch_slices_match_whole_batch(backend, cin, cout, k, s, p, hw, images_per_slice, algorithm):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    whole, cache = conv_run(backend, x, w, b, s, p, grad, algorithm=algorithm)
    assert cache[1] >= 7, "the default chunk size should hold this small batch"
    _, probe = ops.conv2d_forward(x, w, b, s, p, algorithm=algorithm)
    assert isinstance(probe, ops.ToeplitzCache) == (algorithm == "toeplitz")
    per_image = probe[0].shape[0] * probe[0].shape[1] // 7 * (8 if backend.dtype_name == "float64" else 4)
    sliced, cache = conv_run(backend, x, w, b, s, p, grad, chunk_bytes=per_image * images_per_slice,
                             algorithm=algorithm)
    assert cache[1] == images_per_slice
    tol = backend.rtol * 10
    for got, want in zip(sliced, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_conv_chunk_constant_is_used(backend, monkeypatch):
    x, w, b, grad = conv_inputs(backend, 1, 6, 5, 1, 2, (28, 28))
    whole, _ = conv_run(backend, x, w, b, 1, 2, grad)
    monkeypatch.setattr(ops, "CONV_CHUNK_BYTES", 1)  # below one image: one image per slice
    sliced, cache = conv_run(backend, x, w, b, 1, 2, grad)
    assert cache[1] == 1
    for got, want in zip(sliced, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=backend.rtol * 10, atol=backend.rtol * 10)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", [c for c in CONV_CASES if c[3] == 1])
def test_conv_flat_layout_matches_strided(backend, cin, cout, k, s, p, hw):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    strided, _ = conv_run(backend, x, w, b, s, p, grad, flat=False)
    flat, _ = conv_run(backend, x, w, b, s, p, grad, flat=True)
    flat_sliced, _ = conv_run(backend, x, w, b, s, p, grad, flat=True, chunk_bytes=1)
    for a, b_, c in zip(flat, flat_sliced, strided, strict=True):
        np.testing.assert_allclose(a, c, rtol=backend.rtol * 10, atol=backend.rtol * 10)
        np.testing.assert_allclose(b_, c, rtol=backend.rtol * 10, atol=backend.rtol * 10)


def test_flat_layout_needs_stride_one(backend):
    x, w, b, _ = conv_inputs(backend, 1, 2, 2, 2, 0, (6, 6))
    with pytest.raises(ValueError, match="stride 1"):
        ops.conv2d_forward(x, w, b, 2, 0, flat=True)


def test_conv_layer_same_output_in_train_and_eval(backend):
    layer = layers.Conv2D(3, 4, 3, padding=1, seed=0).to(backend.device, dtype=backend.dtype_name)
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3, 9, 9)))
    train_out = host(layer.train()(x))
    eval_out = host(layer.eval()(x))
    np.testing.assert_allclose(eval_out, train_out, rtol=backend.rtol * 10, atol=backend.rtol * 10)


def test_conv_chunk_size():
    assert ops.conv_chunk_size(100, 64, chunk_bytes=10_000) == 64
    assert ops.conv_chunk_size(100, 600, chunk_bytes=10_000) == 100
    assert ops.conv_chunk_size(100, 640, chunk_bytes=10_000) == 92  # 7 balanced slices, not 6 of 100 and 40
    assert ops.conv_chunk_size(100, 101, chunk_bytes=10_000) == 51
    assert ops.conv_chunk_size(10**9, 8, chunk_bytes=10) == 1


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
def test_col2im_batch_last_matches_col2im(backend, cin, cout, k, s, p, hw):
    # Same additions in the same order, only the batch axis moved: the sums agree exactly.
    rng = np.random.default_rng(2)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    (sh, sw), (ph, pw) = ops._pair(s, "stride"), ops._pair(p, "padding")
    n, hp, wp = 5, hw[0] + 2 * ph, hw[1] + 2 * pw
    out_size = (ops.conv_output_size(hw[0], kh, sh, ph), ops.conv_output_size(hw[1], kw, sw, pw))
    parts = rng.standard_normal((cin, kh * kw, n, *out_size))  # col2im's column order
    cols = backend.asarray(parts.reshape(cin * kh * kw, -1))
    cols_last = backend.asarray(np.ascontiguousarray(parts.transpose(0, 1, 3, 4, 2)).reshape(cin * kh * kw, -1))
    want = host(ops.col2im(cols, (cin, n, hp, wp), (kh, kw), (sh, sw), out_size))
    got = ops.col2im(cols_last, (cin, n, hp, wp), (kh, kw), (sh, sw), out_size, batch_last=True)
    backend.assert_on_backend(got)
    np.testing.assert_array_equal(host(got).transpose(0, 3, 1, 2), want)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
def test_conv_toeplitz_matches_im2col(backend, cin, cout, k, s, p, hw):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    im2col, _ = conv_run(backend, x, w, b, s, p, grad, algorithm="im2col")
    toeplitz, _ = conv_run(backend, x, w, b, s, p, grad, algorithm="toeplitz")
    for got, want in zip(toeplitz, im2col, strict=True):
        np.testing.assert_allclose(got, want, rtol=backend.rtol * 10, atol=backend.rtol * 10)


@pytest.mark.parametrize("o,c,kh,kw,wp,sw", [(2, 3, 3, 2, 7, 1), (3, 1, 5, 5, 32, 1), (2, 2, 2, 3, 9, 2), (1, 1, 1, 1, 4, 3)])
def test_toeplitz_weight_against_loops_and_its_adjoint(backend, o, c, kh, kw, wp, sw):
    rng = np.random.default_rng(5)
    ow = (wp - kw) // sw + 1
    weight = rng.standard_normal((o, c, kh, kw))
    want = np.zeros((kh, c, wp, o, ow))
    for oi in range(o):
        for ci in range(c):
            for i in range(kh):
                for x in range(ow):
                    for j in range(kw):
                        want[i, ci, x * sw + j, oi, x] = weight[oi, ci, i, j]
    t = ops.toeplitz_weight(backend.asarray(weight), wp, ow, sw)
    backend.assert_on_backend(t)
    np.testing.assert_array_equal(host(t), host(backend.asarray(want.reshape(kh * c * wp, o * ow))))
    # The weight gradient is the adjoint: <T(W), G> == <W, T*(G)> for any G.
    g = rng.standard_normal((kh * c * wp, o * ow))
    back = host(ops.toeplitz_weight_grad(backend.asarray(g), (o, c, kh, kw), wp, ow, sw))
    assert back.shape == (o, c, kh, kw)
    np.testing.assert_allclose(np.sum(want.reshape(kh * c * wp, o * ow) * g), np.sum(weight * back),
                               rtol=backend.rtol * 10)


def test_auto_algorithm_picks_toeplitz_for_lenet5_and_im2col_for_wide_layers():
    x = np.zeros((2, 1, 28, 28), np.float32)
    for model, expected in ((cnnxp.models.lenet5(), [True, True]), (cnnxp.models.fashion_cnn(), [False, False]),
                            (cnnxp.models.seed_cnn(), [False])):
        model(x)
        convs = [layer for layer in model if isinstance(layer, layers.Conv2D)]
        assert [isinstance(layer.cache, ops.ToeplitzCache) for layer in convs] == expected


def test_conv_algorithm_errors():
    x, w = np.zeros((1, 1, 6, 6)), np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"^algorithm must be 'auto', 'im2col' or 'toeplitz', got 'fft'$"):
        ops.conv2d_forward(x, w, algorithm="fft")
    with pytest.raises(ValueError, match="flat column layout belongs to the im2col algorithm"):
        ops.conv2d_forward(x, w, flat=True, algorithm="toeplitz")
    with pytest.raises(ValueError, match=r"^Conv2D algorithm must be 'auto', 'im2col' or 'toeplitz', got 'x'$"):
        layers.Conv2D(1, 2, 3, algorithm="x")
    assert repr(layers.Conv2D(1, 2, 3, algorithm="im2col")).endswith("algorithm='im2col')")


@pytest.mark.parametrize(("algorithm", "constant"), [("toeplitz", "TOEPLITZ_BLOCK_BYTES"), ("im2col", "CONV_BLOCK_BYTES")])
def test_inference_runs_in_blocks_of_the_set_size(backend, monkeypatch, algorithm, constant):
    x, w, b, grad = conv_inputs(backend, 1, 6, 5, 1, 2, (28, 28))
    whole, _ = conv_run(backend, x, w, b, 1, 2, grad, algorithm=algorithm)
    monkeypatch.setattr(ops, constant, 1)  # below one image: one image per slice
    blocked, cache = conv_run(backend, x, w, b, 1, 2, grad, algorithm=algorithm, inference=True)
    assert cache[1] == 1
    for got, want in zip(blocked, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=backend.rtol * 10, atol=backend.rtol * 10)
    _, cache = ops.conv2d_forward(x, w, b, 1, 2, algorithm=algorithm)  # training: the whole batch
    assert cache[1] == 7


def test_max_pool_backward_in_batch_blocks_is_exact(backend, monkeypatch):
    rng = np.random.default_rng(4)
    x = backend.asarray(np.round(rng.standard_normal((5, 3, 8, 8)) * 2) / 2)  # ties in many windows
    out, cache = ops.maxpool2d_forward(x, 2)
    grad = backend.asarray(rng.standard_normal(tuple(out.shape)))
    whole = host(ops.maxpool2d_backward(grad, cache))
    monkeypatch.setattr(ops, "CACHE_BLOCK_BYTES", 1)  # one image per block
    np.testing.assert_array_equal(host(ops.maxpool2d_backward(grad, cache)), whole)
    monkeypatch.setattr(ops, "CACHE_BLOCK_BYTES", 2 * 3 * 8 * 8 * 8)  # blocks of 2, 2 and 1 (float64) or 4 + 1
    np.testing.assert_array_equal(host(ops.maxpool2d_backward(grad, cache)), whole)


def test_toeplitz_input_gradient_in_batch_blocks_matches(backend, monkeypatch):
    x, w, b, grad = conv_inputs(backend, 6, 16, 5, 1, 0, (14, 14))
    whole, _ = conv_run(backend, x, w, b, 1, 0, grad, algorithm="toeplitz")
    monkeypatch.setattr(ops, "CACHE_BLOCK_BYTES", 1)  # one image per block of row additions
    blocked, _ = conv_run(backend, x, w, b, 1, 0, grad, algorithm="toeplitz")
    for got, want in zip(blocked, whole, strict=True):
        np.testing.assert_array_equal(got, want)  # the same additions in the same order


def test_fast_max_pool_sends_a_nan_windows_gradient_to_its_last_element():
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    out, cache = ops.maxpool2d_forward(x, 2, fast=True)
    assert np.isnan(out).all()
    dx = ops.maxpool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx, [[[[0.0, 0.0], [0.0, 1.0]]]])
