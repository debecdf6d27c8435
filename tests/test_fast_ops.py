"""The fast kernels against their plain twins, and the rules of the fast paths themselves.

`cnnxp.ops.pool` and `cnnxp.ops.conv` are the oracles (each checked against plain loops in
test_layers.py). Pooling paths select, they do not add in a different order, so the fast max
pool must agree with the plain one exactly, ties and -inf included (the first maximum of a
window in row-major order takes the gradient). Convolution paths sum in another order, so they
agree to the dtype's tolerance; chunk sizes are chosen to put slice boundaries inside the batch.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp import layers, ops
from cnnxp.layers import conv as conv_layer
from cnnxp.layers import pool as pool_layer
from cnnxp.ops import conv_fast, pool_fast
from cnnxp.ops.blocks import CPU_BLOCKS, WHOLE_BATCH, Blocks


def host(a):
    return np.asarray(cnnxp.to_numpy(a), dtype=np.float64)


# -- pooling ----------------------------------------------------------------------------------

POOL_CASES = [  # kernel, stride, padding, (H, W)
    (2, 2, 0, (28, 28)),   # LeNet-5's MaxPool2D(2): tiles the input
    (2, 2, 1, (15, 15)),   # the notebook network's pool: padding, last row and column unused
    (3, 3, 1, (10, 11)),
    (2, 3, 0, (11, 11)),   # stride > kernel: gaps between windows
    ((2, 3), (2, 3), (1, 0), (9, 12)),
    (1, 2, 0, (7, 7)),
    (3, 1, 1, (6, 7)),     # overlapping windows
    (2, 1, 0, (5, 6)),
]


def pool_inputs(kind, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, *hw))
    if kind == "ties":
        x = np.round(x)  # many equal maxima inside windows
    elif kind == "constant":
        x = np.full_like(x, 0.5)  # every element of every window ties
    elif kind == "-inf":
        x[0] = -np.inf  # windows whose inputs all tie with the -inf padding
        x[1, :, ::2, 1::2] = -np.inf
    return x


def pool_run(backend, forward, backward, x, k, s, p):
    out, cache = forward(x, k, s, p)
    grad = backend.asarray(np.random.default_rng(1).standard_normal(tuple(out.shape)))
    dx = backward(grad, cache)
    backend.assert_on_backend(out)
    backend.assert_on_backend(dx)
    return host(out), host(dx), cache


@pytest.mark.parametrize("k,s,p,hw", POOL_CASES)
@pytest.mark.parametrize("inputs", ["random", "ties", "constant", "-inf"])
@pytest.mark.parametrize("forward", [pool_fast.maxpool2d_forward, pool_fast.maxpool2d_separable_forward],
                         ids=["default", "separable"])
def test_fast_max_pool_matches_plain_exactly(backend, k, s, p, hw, inputs, forward):
    x = backend.asarray(pool_inputs(inputs, hw))
    out_f, dx_f, cache = pool_run(backend, forward, pool_fast.maxpool2d_backward, x, k, s, p)
    out_p, dx_p, _ = pool_run(backend, ops.pool.maxpool2d_forward, ops.pool.maxpool2d_backward, x, k, s, p)
    np.testing.assert_array_equal(out_f, out_p)
    np.testing.assert_array_equal(dx_f, dx_p)
    disjoint = conv_fast.windows_disjoint(cache.geometry.kernel, cache.geometry.stride)
    separable = forward is pool_fast.maxpool2d_separable_forward or disjoint
    assert isinstance(cache, ops.SeparableMaxPoolCache if separable else ops.MaxPoolCache)


@pytest.mark.parametrize("k,s,p,hw", POOL_CASES)
def test_fast_avg_pool_backward_matches_plain_exactly(backend, k, s, p, hw):
    x = backend.asarray(pool_inputs("random", hw))
    out_f, dx_f, _ = pool_run(backend, pool_fast.avgpool2d_forward, pool_fast.avgpool2d_backward, x, k, s, p)
    out_p, dx_p, _ = pool_run(backend, ops.pool.avgpool2d_forward, ops.pool.avgpool2d_backward, x, k, s, p)
    np.testing.assert_array_equal(out_f, out_p)
    np.testing.assert_array_equal(dx_f, dx_p)


def test_max_pool_gradient_is_stored_like_its_input():
    # A (N, H, C, W)-stored input, as a Toeplitz convolution leaves it: the gradient keeps that order.
    x = np.random.default_rng(3).standard_normal((4, 6, 3, 8)).transpose(0, 2, 1, 3)
    out, cache = pool_fast.maxpool2d_forward(x, 2)
    dx = pool_fast.maxpool2d_backward(np.ones_like(out), cache)
    assert np.argsort(dx.strides).tolist() == np.argsort(x.strides).tolist()


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


def test_max_pool_backward_in_batch_blocks_is_exact(backend):
    rng = np.random.default_rng(4)
    x = backend.asarray(np.round(rng.standard_normal((5, 3, 8, 8)) * 2) / 2)  # ties in many windows
    out, cache = ops.maxpool2d_forward(x, 2)
    grad = backend.asarray(rng.standard_normal(tuple(out.shape)))
    whole = host(ops.maxpool2d_backward(grad, cache))
    one_image = Blocks(cache_block_bytes=1)
    np.testing.assert_array_equal(host(ops.maxpool2d_backward(grad, cache, one_image)), whole)
    some = Blocks(cache_block_bytes=2 * 3 * 8 * 8 * 8)  # blocks of 2, 2 and 1 (float64) or 4 + 1
    np.testing.assert_array_equal(host(ops.maxpool2d_backward(grad, cache, some)), whole)


def test_fast_max_pool_sends_a_nan_windows_gradient_to_its_last_element():
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    out, cache = pool_fast.maxpool2d_separable_forward(x, 2)
    assert np.isnan(out).all()
    dx = pool_fast.maxpool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx, [[[[0.0, 0.0], [0.0, 1.0]]]])


# -- convolution ------------------------------------------------------------------------------

CONV_CASES = [  # in, out, kernel, stride, padding, (H, W)
    (1, 6, 5, 1, 2, (28, 28)),
    (6, 16, 5, 1, 0, (14, 14)),
    (1, 8, 2, 2, 1, (28, 28)),
    (3, 4, 1, 1, 0, (7, 7)),
    (2, 3, 2, 3, 0, (11, 11)),
    (3, 2, (2, 3), (1, 2), (1, 0), (8, 9)),
    (2, 3, 3, (1, 2), (0, 2), (6, 9)),  # side padding only: the Toeplitz rows read the input without a copy
]


def conv_run(x, w, b, s, p, grad, module=conv_fast, blocks=None, **kw):
    """Forward and backward (with and without the input gradient): host arrays and the cache."""
    out, cache = module.conv2d_forward(x, w, b, s, p, blocks=blocks, **kw)
    dx, dw, db = module.conv2d_backward(grad, cache, need_input_grad=True, blocks=blocks)
    none, dw2, db2 = module.conv2d_backward(grad, cache, need_input_grad=False, blocks=blocks)
    assert none is None
    return [host(a) for a in (out, dx, dw, db, dw2, db2)], cache


def conv_inputs(backend, cin, cout, k, s, p, hw, n=7):
    rng = np.random.default_rng(0)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    x = backend.asarray(rng.standard_normal((n, cin, *hw)))
    w = backend.asarray(rng.standard_normal((cout, cin, kh, kw)))
    b = backend.asarray(rng.standard_normal(cout))
    out, _ = ops.conv.conv2d_forward(x, w, b, s, p)
    grad = backend.asarray(rng.standard_normal(tuple(out.shape)))
    return x, w, b, grad


def assert_close(got, want, backend):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=backend.rtol * 10, atol=backend.rtol * 10)


WHOLE = (ops.Im2colCache, ops.ToeplitzCache)
SLICED = (ops.SlicedIm2colCache, ops.SlicedToeplitzCache)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
@pytest.mark.parametrize("algorithm", ["auto", "im2col", "toeplitz"])
@pytest.mark.parametrize("mode", ["training", "inference", "sliced", "sliced-inference"])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_conv_matches_plain(backend, cin, cout, k, s, p, hw, algorithm, mode, bias):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    b = b if bias else None
    plain, _ = conv_run(x, w, b, s, p, grad, module=ops.conv)
    options = {"inference": mode.endswith("inference")}
    if mode.startswith("sliced"):
        options["blocks"] = Blocks(conv_chunk_bytes=1)  # below one image: one image per slice
    fast, cache = conv_run(x, w, b, s, p, grad, algorithm=algorithm, **options)
    assert_close(fast, plain, backend)
    if algorithm != "auto":
        assert isinstance(cache, (ops.ToeplitzCache, ops.SlicedToeplitzCache)) == (algorithm == "toeplitz")
    if mode.startswith("sliced"):
        assert isinstance(cache, SLICED) and cache.step == 1
    else:
        assert isinstance(cache, WHOLE)
    if isinstance(cache, (ops.Im2colCache, ops.SlicedIm2colCache)):
        flat = options["inference"] and s == 1
        assert type(cache.geometry) is (conv_fast.FlatColumns if flat else conv_fast.StridedColumns)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
@pytest.mark.parametrize("images_per_slice", [1, 3])  # 7 images: slices of 1, or 3 + 3 + 1
@pytest.mark.parametrize("algorithm", ["im2col", "toeplitz"])
def test_conv_batch_slices_match_whole_batch(backend, cin, cout, k, s, p, hw, images_per_slice, algorithm):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    whole, cache = conv_run(x, w, b, s, p, grad, algorithm=algorithm)
    assert isinstance(cache, WHOLE), "the default chunk size should hold this small batch"
    assert isinstance(cache, ops.ToeplitzCache) == (algorithm == "toeplitz")
    matrix = cache.rows if algorithm == "toeplitz" else cache.cols
    per_image = matrix.shape[0] * matrix.shape[1] // 7 * (8 if backend.dtype_name == "float64" else 4)
    sliced, cache = conv_run(x, w, b, s, p, grad, blocks=Blocks(conv_chunk_bytes=per_image * images_per_slice),
                             algorithm=algorithm)
    assert cache.step == images_per_slice
    assert_close(sliced, whole, backend)


def test_the_devices_blocks_reach_the_layers(backend):
    """A model's device says how its kernels slice the batch; a layer alone takes its library's default."""
    x = backend.asarray(np.random.default_rng(0).standard_normal((7, 1, 28, 28)))
    whole = cnnxp.Sequential([layers.Conv2D(1, 6, 5, padding=2, seed=0)], device=backend.device, dtype=backend.dtype_name)
    sliced = cnnxp.Sequential([layers.Conv2D(1, 6, 5, padding=2, seed=0)],
                              device=backend.device.with_blocks(conv_chunk_bytes=1), dtype=backend.dtype_name)
    np.testing.assert_allclose(host(sliced(x)), host(whole(x)), rtol=backend.rtol * 10, atol=backend.rtol * 10)
    assert isinstance(whole[0].cache, WHOLE) and isinstance(sliced[0].cache, SLICED) and sliced[0].cache.step == 1
    expected = CPU_BLOCKS if backend.id.startswith("numpy") else WHOLE_BATCH
    assert backend.device.blocks == expected == cnnxp.backend.blocks_for(x)
    with sliced.device.activate():
        assert cnnxp.backend.blocks_for(x).conv_chunk_bytes == 1


@pytest.mark.parametrize("cin,cout,k,s,p,hw", [c for c in CONV_CASES if c[3] == 1])
def test_conv_flat_layout_matches_strided(backend, cin, cout, k, s, p, hw):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    strided, cache = conv_run(x, w, b, s, p, grad, algorithm="im2col")
    assert type(cache.geometry) is conv_fast.StridedColumns
    flat, cache = conv_run(x, w, b, s, p, grad, algorithm="im2col", inference=True)
    assert type(cache.geometry) is conv_fast.FlatColumns and isinstance(cache, ops.Im2colCache)
    flat_sliced, cache = conv_run(x, w, b, s, p, grad, algorithm="im2col", inference=True,
                                  blocks=Blocks(conv_chunk_bytes=1))
    assert type(cache.geometry) is conv_fast.FlatColumns and isinstance(cache, ops.SlicedIm2colCache)
    assert_close(flat, strided, backend)
    assert_close(flat_sliced, strided, backend)


def test_stride_two_inference_uses_strided_columns(backend):
    x, w, b, grad = conv_inputs(backend, 1, 2, 2, 2, 0, (6, 6))
    _, cache = ops.conv2d_forward(x, w, b, 2, 0, algorithm="im2col", inference=True)
    assert type(cache.geometry) is conv_fast.StridedColumns


def test_conv_layer_same_output_in_train_and_eval(backend):
    layer = layers.Conv2D(3, 4, 3, padding=1, seed=0).to(backend.device, dtype=backend.dtype_name)
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3, 9, 9)))
    train_out = host(layer.train()(x))
    eval_out = host(layer.eval()(x))
    np.testing.assert_allclose(eval_out, train_out, rtol=backend.rtol * 10, atol=backend.rtol * 10)


def test_images_per_slice():
    assert ops.images_per_slice(100, 64, 10_000) == 64
    assert ops.images_per_slice(100, 600, 10_000) == 100
    assert ops.images_per_slice(100, 640, 10_000) == 92  # 7 balanced slices, not 6 of 100 and 40
    assert ops.images_per_slice(100, 101, 10_000) == 51
    assert ops.images_per_slice(10**9, 8, 10) == 1
    assert ops.images_per_slice(100, 0, 10) == 1  # an empty batch: one (empty) piece
    assert ops.images_per_slice(10**9, 5000, None) == 5000  # no limit: the whole batch


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
@pytest.mark.parametrize("batch_last", [False, True])
def test_col2im_fast_matches_col2im(backend, cin, cout, k, s, p, hw, batch_last):
    # Same additions in the same order (written, not added, where windows do not overlap): the sums
    # agree exactly, whichever axis holds the batch.
    rng = np.random.default_rng(2)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    (sh, sw), (ph, pw) = (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p
    n, hp, wp = 5, hw[0] + 2 * ph, hw[1] + 2 * pw
    out_size = (ops.conv_output_size(hw[0], kh, sh, ph), ops.conv_output_size(hw[1], kw, sw, pw))
    parts = rng.standard_normal((cin, kh * kw, n, *out_size))  # col2im's column order
    cols = backend.asarray(parts.reshape(cin * kh * kw, -1))
    want = host(ops.col2im(cols, (cin, n, hp, wp), (kh, kw), (sh, sw), out_size))
    if batch_last:
        cols = backend.asarray(np.ascontiguousarray(parts.transpose(0, 1, 3, 4, 2)).reshape(cin * kh * kw, -1))
    got = conv_fast.col2im_fast(cols, (cin, n, hp, wp), (kh, kw), (sh, sw), out_size, batch_last=batch_last)
    backend.assert_on_backend(got)
    np.testing.assert_array_equal(host(got).transpose(0, 3, 1, 2) if batch_last else host(got), want)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
def test_conv_toeplitz_matches_im2col(backend, cin, cout, k, s, p, hw):
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    im2col, _ = conv_run(x, w, b, s, p, grad, algorithm="im2col")
    toeplitz, _ = conv_run(x, w, b, s, p, grad, algorithm="toeplitz")
    assert_close(toeplitz, im2col, backend)


@pytest.mark.parametrize("cin,cout,k,s,p,hw", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_toeplitz_rows_leave_out_the_side_padding_and_carry_the_bias_only_with_a_copy(backend, cin, cout, k, s, p,
                                                                                        hw, bias):
    """The rows hold the input's own columns (the left and right padding would only meet zeros);
    padding above and below needs a copy of the input, and only then does the bias take a column
    of ones in the rows; otherwise the rows are read from the input and the bias added to the output."""
    x, w, b, grad = conv_inputs(backend, cin, cout, k, s, p, hw)
    padded = (p, p) if isinstance(p, int) else p
    _, cache = conv_run(x, w, b if bias else None, s, p, grad, algorithm="toeplitz")
    kh = k[0] if isinstance(k, tuple) else k
    column = bias and padded[0] != 0
    assert cache.geometry.bias_column is column
    assert cache.rows.shape[1] == kh * cin * (hw[1] + column)


@pytest.mark.parametrize("o,c,kh,kw,wp,sw", [(2, 3, 3, 2, 7, 1), (3, 1, 5, 5, 32, 1), (2, 2, 2, 3, 9, 2), (1, 1, 1, 1, 4, 3)])
@pytest.mark.parametrize("offset,extra", [(0, 0), (1, 0), (2, 1)])  # side padding left out; a ones column after
def test_toeplitz_weight_against_loops_and_its_adjoint(backend, o, c, kh, kw, wp, sw, offset, extra):
    rng = np.random.default_rng(5)
    ow = (wp + 2 * offset - kw) // sw + 1  # wp input columns, padded by offset on each side
    width = wp + extra
    weight = rng.standard_normal((o, c, kh, kw))
    want = np.zeros((kh, c, width, o, ow))
    for oi in range(o):
        for ci in range(c):
            for i in range(kh):
                for x in range(ow):
                    for j in range(kw):
                        col = x * sw + j - offset
                        if 0 <= col < wp:
                            want[i, ci, col, oi, x] = weight[oi, ci, i, j]
    args = (width, ow, sw, offset, wp)
    t = ops.toeplitz_weight(backend.asarray(weight), *args)
    backend.assert_on_backend(t)
    np.testing.assert_array_equal(host(t), host(backend.asarray(want.reshape(kh * c * width, o * ow))))
    # The weight gradient is the adjoint: <T(W), G> == <W, T*(G)> for any G.
    g = rng.standard_normal((kh * c * width, o * ow))
    back = host(ops.toeplitz_weight_grad(backend.asarray(g), (o, c, kh, kw), *args))
    assert back.shape == (o, c, kh, kw)
    np.testing.assert_allclose(np.sum(want.reshape(kh * c * width, o * ow) * g), np.sum(weight * back),
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
    with pytest.raises(TypeError, match=r"^algorithm must be 'auto', 'im2col' or 'toeplitz', got None$"):
        ops.conv2d_forward(x, w, algorithm=None)
    with pytest.raises(ValueError, match=r"^Conv2D algorithm must be 'auto', 'im2col' or 'toeplitz', got 'x'$"):
        layers.Conv2D(1, 2, 3, algorithm="x")
    assert repr(layers.Conv2D(1, 2, 3, algorithm="im2col")).endswith("algorithm='im2col')")


@pytest.mark.parametrize(("algorithm", "size"), [("toeplitz", "toeplitz_block_bytes"), ("im2col", "conv_block_bytes")])
def test_inference_runs_in_blocks_of_the_set_size(backend, algorithm, size):
    x, w, b, grad = conv_inputs(backend, 1, 6, 5, 1, 2, (28, 28))
    whole, _ = conv_run(x, w, b, 1, 2, grad, algorithm=algorithm)
    one_image = Blocks(**{size: 1})  # below one image: one image per slice
    blocked, cache = conv_run(x, w, b, 1, 2, grad, algorithm=algorithm, inference=True, blocks=one_image)
    assert cache.step == 1
    assert_close(blocked, whole, backend)
    _, cache = ops.conv2d_forward(x, w, b, 1, 2, algorithm=algorithm, blocks=one_image)  # training: whole batch
    assert isinstance(cache, WHOLE)
    _, cache = ops.conv2d_forward(x, w, b, 1, 2, algorithm=algorithm, inference=True, blocks=CPU_BLOCKS)
    assert isinstance(cache, WHOLE)  # 7 small images fit one CPU block


def test_toeplitz_input_gradient_in_batch_blocks_matches(backend):
    x, w, b, grad = conv_inputs(backend, 6, 16, 5, 1, 0, (14, 14))
    whole, _ = conv_run(x, w, b, 1, 0, grad, algorithm="toeplitz")
    blocked, _ = conv_run(x, w, b, 1, 0, grad, algorithm="toeplitz", blocks=Blocks(cache_block_bytes=1))
    for got, want in zip(blocked, whole, strict=True):
        np.testing.assert_array_equal(got, want)  # the same additions in the same order


# -- the layers' one choice of kernels ----------------------------------------------------------

def run_model(model, x, y):
    """Logits, input gradient and every parameter gradient of one training step, and eval logits."""
    loss, grad = cnnxp.losses.softmax_cross_entropy(model.train()(x), y)
    grad_in = model.backward(grad)
    results = [host(loss), host(grad_in)] + [host(layer.grads[name]) for _, layer, name in model.parameter_slots()]
    return results + [host(model.eval()(x))]


@pytest.mark.parametrize("make", [cnnxp.models.lenet5, cnnxp.models.seed_cnn], ids=["lenet5", "seed"])
def test_layers_run_the_plain_kernels_when_swapped_in(backend, monkeypatch, make):
    rng = np.random.default_rng(6)
    x = backend.asarray(rng.standard_normal((5, 1, 28, 28)))
    y = backend.asarray(rng.integers(0, 10, 5), dtype=np.int64)
    fast = run_model(make(seed=0).to(backend.device, dtype=backend.dtype_name), x, y)
    monkeypatch.setattr(conv_layer, "kernels", ops.conv)
    monkeypatch.setattr(pool_layer, "kernels", ops.pool)
    model = make(seed=0).to(backend.device, dtype=backend.dtype_name)
    plain = run_model(model, x, y)
    caches = {type(layer.cache) for layer in model if isinstance(layer, (layers.Conv2D, layers.MaxPool2D))}
    assert caches == {ops.ConvCache, ops.MaxPoolCache}, "the swap did not reach the layers"
    assert_close(fast, plain, backend)


@pytest.mark.parametrize("cls", [layers.MaxPool2D, layers.AvgPool2D])
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 3, 1)], ids=["overlapping", "disjoint-padded"])
def test_pool_layers_with_plain_kernels_match_exactly(backend, monkeypatch, cls, geometry):
    k, s, p = geometry
    x = backend.asarray(pool_inputs("ties", (9, 8)))
    results = []
    for kernels in (pool_fast, ops.pool):
        monkeypatch.setattr(pool_layer, "kernels", kernels)
        layer = cls(k, stride=s, padding=p)
        out = layer(x)
        g = backend.asarray(np.random.default_rng(7).standard_normal(tuple(out.shape)))
        results.append((host(out), host(layer.backward(g)), type(layer.cache)))
    (out_f, dx_f, fast_cache), (out_p, dx_p, plain_cache) = results
    assert plain_cache in (ops.MaxPoolCache, ops.AvgPoolCache)
    if cls is layers.MaxPool2D and s >= k:
        assert fast_cache is ops.SeparableMaxPoolCache  # the fast path really ran
    np.testing.assert_array_equal(out_f, out_p)
    np.testing.assert_array_equal(dx_f, dx_p)


def test_overlapping_max_pool_gradient_is_stored_channels_first():
    """The stacked path's gradient is stored (C, N, H, W), the order an im2col convolution below reads."""
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9))
    out, cache = pool_fast.maxpool2d_forward(x, 3, 2, 1)
    assert isinstance(cache, ops.MaxPoolCache)
    dx = pool_fast.maxpool2d_backward(np.ones_like(out), cache)
    assert dx.strides[1] > dx.strides[0] > dx.strides[2] > dx.strides[3]  # channels outermost, then images


def test_a_backward_given_another_kernels_cache_says_so():
    x, w = np.zeros((1, 1, 6, 6)), np.zeros((2, 1, 3, 3))
    out, plain_cache = ops.conv.conv2d_forward(x, w)
    with pytest.raises(TypeError, match="expected a cache from conv_fast.conv2d_forward, got ConvCache"):
        conv_fast.conv2d_backward(out, plain_cache)
    out, avg_cache = ops.pool.avgpool2d_forward(x, 2)
    with pytest.raises(TypeError, match="expected a cache from maxpool2d_forward, got AvgPoolCache"):
        pool_fast.maxpool2d_backward(out, avg_cache)
