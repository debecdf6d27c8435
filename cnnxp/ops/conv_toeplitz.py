"""Convolution as rows against a Toeplitz matrix of the weights (a fast path of `conv_fast`).

im2col (`conv`) builds one column per output *position*; this builds one row per output
*row*: ``(N*out_h, kh*C*W) @ (kh*C*W, O*out_w)``. Row ``(n, r)`` holds the ``kh`` input rows
(padded above and below) output row ``r`` of image ``n`` reads; `toeplitz_weight` places each
kernel row at every output column's offset, shifted by the left padding, which the rows leave
out (its zeros would meet nothing). The product does ``W / kw`` times im2col's arithmetic, but
its input copy is ``kh`` times the input instead of ``kh*kw`` times (none at all without padding
above and below) and its shape suits a matrix product better: it pays for narrow, few-channel
layers such as LeNet-5's (`conv_fast`'s ``algorithm="auto"`` rule; docs/performance.md).

Memory order: the rows' source is stored ``(N, Hp, C, W)`` so that a row's ``kh`` input rows
are one slice, and the output ``(N, out_h, O, out_w)``, returned as its NCHW view. The layers
below keep that storage order (pooling allocates its gradient like its input), so the next
convolution reads its input, and this one its gradient, without a copy.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from array_api_compat import device as device_of

from ._device import on_input_device
from ._namespace import array_namespace
from .blocks import Blocks, images_per_slice

__all__ = [
    "toeplitz_weight",
    "toeplitz_weight_grad",
    "ToeplitzGeometry",
    "ToeplitzCache",
    "SlicedToeplitzCache",
    "toeplitz_forward",
    "toeplitz_backward",
]


@functools.lru_cache(maxsize=64)
def _toeplitz_selector(xp, dtype, device, width: int, out_width: int, stride_w: int, kw: int, offset: int = 0,
                       columns: int | None = None):
    """``S`` with ``S[(w, x), j] = 1`` where input column ``w`` (of ``columns`` that hold input,
    ``offset`` columns of padding before them) is kernel column ``j`` of output column ``x``, and the
    same as a ``(width, kw, out_width)`` stack for `toeplitz_weight`. It depends only on the
    shapes, so it is made once per shape, dtype and device."""
    columns = width if columns is None else columns

    def hits(w_shape, x_shape, j_shape):  # made in each order it is used in, so each is stored that way
        w = xp.reshape(xp.arange(width, device=device), w_shape)
        x = xp.reshape(xp.arange(out_width, device=device), x_shape)
        j = xp.reshape(xp.arange(kw, device=device), j_shape)
        return xp.astype(xp.logical_and(w + offset == x * stride_w + j, w < columns), dtype)

    sel = xp.reshape(hits((width, 1, 1), (1, out_width, 1), (1, 1, kw)), (width * out_width, kw))
    return sel, hits((width, 1, 1), (1, 1, out_width), (1, kw, 1))  # (width, kw, out_width)


@on_input_device
def toeplitz_weight(weight, width: int, out_width: int, stride_w: int, offset: int = 0, columns: int | None = None):
    """The weight as a ``(kh*C*width, O*out_w)`` matrix: row ``(i, c, w)``, column ``(o, x)`` holds
    ``weight[o, c, i, w + offset - x*stride_w]`` where that offset lies in the kernel and ``w <
    columns``, else 0.

    ``offset`` is the input's left padding when the rows leave the padding columns out (they would
    only meet zeros); ``columns`` (default: all ``width``) how many columns hold input: the rest
    (the bias's column of ones) meet no weight. One batched product places every kernel row:
    ``(kh*C, 1, O, kw) @ (1, width, kw, out_w)`` against the 0/1 selector ``S[w, j, x]``
    (`_toeplitz_selector`), which comes out in the matrix's own order (no copy after it), exact
    since each entry takes one weight times 1.
    """
    xp = array_namespace(weight)
    o, c, kh, kw = weight.shape
    ow = out_width
    _, stack = _toeplitz_selector(xp, weight.dtype, device_of(weight), width, ow, stride_w, kw, offset, columns)
    rows = xp.reshape(xp.permute_dims(weight, (2, 1, 0, 3)), (kh * c, 1, o, kw))
    placed = rows @ xp.expand_dims(stack, axis=0)  # (kh*c, w, o, ow)
    return xp.reshape(placed, (kh * c * width, o * ow))


@on_input_device
def toeplitz_weight_grad(grad_t, weight_shape, width: int, out_width: int, stride_w: int, offset: int = 0,
                         columns: int | None = None):
    """Adjoint of `toeplitz_weight`: sum each kernel offset's entries of a ``(kh*C*width, O*out_w)`` gradient.

    The sums over output columns are one small product with the 0/1 selector
    ``S[(w, x), j]`` (faster than a reduction over a strided axis).
    """
    xp = array_namespace(grad_t)
    o, c, kh, kw = weight_shape
    ow = out_width
    sel, _ = _toeplitz_selector(xp, grad_t.dtype, device_of(grad_t), width, ow, stride_w, kw, offset, columns)
    per_kernel_row = xp.permute_dims(xp.reshape(grad_t, (kh, c, width, o, ow)), (0, 1, 3, 2, 4))  # (kh, c, o, w, ow)
    taps = xp.reshape(xp.reshape(per_kernel_row, (kh * c * o, width * ow)) @ sel, (kh, c, o, kw))
    return xp.permute_dims(taps, (2, 1, 0, 3))


def _toeplitz_rows(src, kh: int, sh: int, oh: int):
    """``(N*out_h, kh*C*Ws)``: output row ``r`` of image ``n`` takes source rows ``r*sh + i``, i < kh.

    ``src`` is the batch padded above and below, stored ``(N, Hp, C, Ws)``.
    """
    xp = array_namespace(src)
    n, _, c, wp = src.shape
    rows = xp.stack([src[:, i : i + sh * (oh - 1) + 1 : sh, :, :] for i in range(kh)], axis=2)
    return xp.reshape(rows, (n * oh, kh * c * wp))


def _add_rows(dsrc, d_rows, kh: int, sh: int, oh: int):
    """Adjoint of `_toeplitz_rows`: add each output row's slice of ``d_rows`` back to its input rows."""
    xp = array_namespace(dsrc)
    n, _, c, wp = dsrc.shape
    d_rows = xp.reshape(d_rows, (n, oh, kh, c, wp))
    for i in range(kh):
        sl = slice(i, i + sh * (oh - 1) + 1, sh)
        dsrc[:, sl, :, :] = dsrc[:, sl, :, :] + d_rows[:, :, i, :, :]


class ToeplitzGeometry(NamedTuple):
    """The shapes a Toeplitz convolution was run with."""

    in_shape: tuple  # (N, C, H, W)
    weight_shape: tuple  # (O, C, kh, kw)
    stride: tuple
    padding: tuple
    out_size: tuple
    bias_column: bool  # the rows carry a column of ones for the bias (`toeplitz_forward`: with padding above and below)

    @property
    def padded(self) -> tuple[int, int]:
        (_, _, h, w), (ph, pw) = self.in_shape, self.padding
        return h + 2 * ph, w + 2 * pw

    @property
    def source_width(self) -> int:
        """Ws: the input's width (the left and right padding would only meet zeros, so the rows leave
        it out and `toeplitz_weight` shifts by it), plus the column of ones when the bias rides in
        the product."""
        return self.in_shape[3] + self.bias_column


class ToeplitzCache(NamedTuple):
    """The whole batch's rows, kept for the weight gradient."""

    rows: Any  # (N*out_h, kh*C*Ws)
    weight_matrix: Any  # (kh*C*Ws, O*out_w): `toeplitz_weight`, with the bias in row W when the rows carry ones
    geometry: ToeplitzGeometry


class SlicedToeplitzCache(NamedTuple):
    """The padded input of a batch convolved in slices: backward rebuilds each slice's rows.

    Without padding above and below, ``source`` is the input itself (no copy was made), as an
    im2col cache holds its input: an input changed in place between forward and backward
    changes the weight gradient. The layers never do that.
    """

    source: Any  # (N, Hp, C, Ws)
    step: int  # images per slice
    weight_matrix: Any
    geometry: ToeplitzGeometry


@on_input_device
def toeplitz_forward(x, weight, bias, stride, padding, out_size, chunk_bytes):
    """Convolution as one product: rows of the padded input against `toeplitz_weight`.

    Arguments as `conv_fast.conv2d_forward`'s, already checked. Batches whose rows matrix
    would exceed ``chunk_bytes`` run in slices and keep only the padded input for backward.
    Returns ``(out, ToeplitzCache or SlicedToeplitzCache)``.
    """
    xp = array_namespace(x, weight)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, out_size
    # The rows leave out the left and right padding (zeros, which meet nothing): `toeplitz_weight`
    # shifts by it instead. Padding above and below is rows of zeros in a copy of the input; where
    # that copy is made anyway, the bias rides in the product: one more input column, all ones in
    # channel 0, meets a weight row holding the bias and no other weight: no pass over the output,
    # and its gradient comes free. Otherwise the rows are read from the input as it is, and the
    # bias added to the output (LeNet-5's second layer: no copy, 1/14 less arithmetic).
    column = bias is not None and ph > 0
    geometry = ToeplitzGeometry((n, c, h, w), (o, c, kh, kw), stride, padding, out_size, column)
    hp, ws = geometry.padded[0], geometry.source_width
    x_nhcw = xp.permute_dims(x, (0, 2, 1, 3))
    if hp != h:  # padding above and below: the only reason to copy (and then the bias's column rides along)
        src = xp.zeros((n, hp, c, ws), dtype=x.dtype, device=device_of(x))
        src[:, ph : ph + h, :, :w] = x_nhcw
        if column:
            src[:, :, 0, w] = 1.0
    else:
        src = x_nhcw
    t = toeplitz_weight(weight, ws, ow, sw, offset=pw, columns=w)
    if column:
        t[w, :] = xp.reshape(xp.broadcast_to(bias[:, None], (o, ow)), (o * ow,))
    step = images_per_slice(kh * c * ws * oh * (xp.finfo(x.dtype).bits // 8), n, chunk_bytes)
    if step >= n:
        rows = _toeplitz_rows(src, kh, sh, oh)
        out = xp.reshape(rows @ t, (n, oh, o, ow))
        cache = ToeplitzCache(rows, t, geometry)
    else:
        out = xp.empty((n, oh, o, ow), dtype=x.dtype, device=device_of(x))
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = _toeplitz_rows(src[start:stop, ...], kh, sh, oh) @ t
            out[start:stop, ...] = xp.reshape(part, (stop - start, oh, o, ow))
        cache = SlicedToeplitzCache(src, step, t, geometry)
    if bias is not None and not column:
        out += bias[:, None]  # out is stored (N, out_h, O, out_w)
    return xp.permute_dims(out, (0, 2, 1, 3)), cache


@on_input_device
def toeplitz_backward(grad_out, cache, need_input_grad=True, blocks: Blocks | None = None):
    """Gradients of `toeplitz_forward`: ``(grad_in or None, grad_weight, grad_bias)``.

    The input gradient's row additions run over slices of the batch of at most
    ``blocks.cache_block_bytes`` (None: the whole batch), so on a CPU each slice stays in cache
    between its ``kh`` passes.
    """
    xp = array_namespace(grad_out)
    geo = cache.geometry
    n, c, h, w = geo.in_shape
    o = geo.weight_shape[0]
    (ph, pw), (oh, ow), hp, ws = geo.padding, geo.out_size, geo.padded[0], geo.source_width
    g = xp.reshape(xp.permute_dims(grad_out, (0, 2, 1, 3)), (n * oh, o * ow))
    dsrc = xp.zeros((n, hp, c, ws), dtype=grad_out.dtype, device=device_of(grad_out)) if need_input_grad else None
    if isinstance(cache, ToeplitzCache):
        grad_t = _whole_batch_grads(g, cache, dsrc, None if blocks is None else blocks.cache_block_bytes)
    else:
        grad_t = _sliced_grads(g, cache, dsrc)
    grad_weight = toeplitz_weight_grad(grad_t, geo.weight_shape, ws, ow, geo.stride[1], offset=pw, columns=w)
    if geo.bias_column:  # the row of the ones column (see the forward)
        grad_bias = xp.sum(xp.reshape(grad_t[w, :], (o, ow)), axis=1)
    else:  # rows first (a contiguous reduction), then the few output columns of each channel
        grad_bias = xp.sum(xp.reshape(xp.sum(g, axis=0), (o, ow)), axis=1)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    return xp.permute_dims(dsrc[:, ph : ph + h, :, :w], (0, 2, 1, 3)), grad_weight, grad_bias


def _whole_batch_grads(g, cache: ToeplitzCache, dsrc, block_bytes):
    """The Toeplitz matrix's gradient; adds the rows' gradient into ``dsrc`` unless it is None."""
    xp = array_namespace(g)
    geo = cache.geometry
    n, c = geo.in_shape[:2]
    kh, sh, oh, hp, ws = geo.weight_shape[2], geo.stride[0], geo.out_size[0], geo.padded[0], geo.source_width
    grad_t = xp.matrix_transpose(cache.rows) @ g
    if dsrc is not None:
        d_rows = g @ xp.matrix_transpose(cache.weight_matrix)
        block = images_per_slice(hp * c * ws * (xp.finfo(g.dtype).bits // 8), n, block_bytes)
        if block >= n:
            _add_rows(dsrc, d_rows, kh, sh, oh)
        else:
            for start in range(0, n, block):
                stop = min(n, start + block)
                _add_rows(dsrc[start:stop, ...], d_rows[start * oh : stop * oh, ...], kh, sh, oh)
    return grad_t


def _sliced_grads(g, cache: SlicedToeplitzCache, dsrc):
    """As `_whole_batch_grads`, rebuilding each slice's rows from the kept padded input."""
    xp = array_namespace(g)
    geo = cache.geometry
    n, kh, sh, oh = geo.in_shape[0], geo.weight_shape[2], geo.stride[0], geo.out_size[0]
    t_t = xp.matrix_transpose(cache.weight_matrix)
    grad_t = None
    for start in range(0, n, cache.step):
        stop = min(n, start + cache.step)
        g_part = g[start * oh : stop * oh, ...]
        part = xp.matrix_transpose(_toeplitz_rows(cache.source[start:stop, ...], kh, sh, oh)) @ g_part
        grad_t = part if grad_t is None else grad_t + part
        if dsrc is not None:
            _add_rows(dsrc[start:stop, ...], g_part @ t_t, kh, sh, oh)
    return grad_t
