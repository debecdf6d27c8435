"""The convolution the layers run: `conv`'s im2col made fast, and the row-Toeplitz algorithm.

Each trick here is tested against the plain `conv` module, which computes the same thing.

Two algorithms
--------------
``im2col`` builds one column per output position (`conv.im2col`); the row-Toeplitz form
(`conv_toeplitz`) one row per output row, against a Toeplitz matrix of the weights. The second
does more arithmetic in a better-shaped product; ``algorithm="auto"`` picks it for narrow,
few-channel layers (`TOEPLITZ_MAX_WORK`). docs/performance.md explains both.

Memory order
------------
im2col works on the channels-first view ``(C, N, H, W)`` of its input and returns the NCHW view
of a product stored ``(O, N, out_h, out_w)``: when the next convolution permutes that view back
to channels-first it gets a contiguous array again, so the layout flows through the network
without copies. The Toeplitz form stores its output ``(N, out_h, O, out_w)`` instead. Backward
functions keep each layer's order: a convolution allocates its input gradient channels-first
(im2col) or ``(N, H, C, W)`` (Toeplitz), pooling allocates its gradient like its input where it can
(`pool_fast`), so every layer reads its gradient in the order it wrote its output.

im2col, made fast
-----------------
- Training runs the whole batch: the columns are kept for the weight gradient, and the input
  gradient comes from a batch-last col2im (`col2im_fast`), whose slice-additions move long
  contiguous runs.
- Batches whose columns would exceed ``blocks.conv_chunk_bytes`` run in slices of the batch,
  keep the padded input instead of the columns, and rebuild each slice's columns in backward.
- ``inference=True`` (Conv2D in eval mode) runs in cache-sized slices where the device asks for
  them (``blocks.conv_block_bytes``, ``blocks.toeplitz_block_bytes``: on a CPU) and, at stride 1,
  cuts im2col's columns from flattened rows (`FlatColumns`): longer contiguous copies, a
  slightly wider matrix.
- Windows that tile the input write their gradient into an uninitialised buffer; windows that
  do not overlap write instead of adding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from array_api_compat import device as device_of

from .._checks import check_choice
from ._device import on_input_device
from ._namespace import array_namespace
from .blocks import Blocks, images_per_slice
from .conv import conv_geometry, im2col, pad2d, window_slices
from .conv_toeplitz import SlicedToeplitzCache, ToeplitzCache, toeplitz_backward, toeplitz_forward

__all__ = [
    "CONV_ALGORITHMS",
    "TOEPLITZ_MAX_WORK",
    "choose_algorithm",
    "windows_disjoint",
    "windows_tile",
    "col2im_fast",
    "StridedColumns",
    "FlatColumns",
    "Im2colCache",
    "SlicedIm2colCache",
    "conv2d_forward",
    "conv2d_backward",
]


CONV_ALGORITHMS = ("auto", "im2col", "toeplitz")


TOEPLITZ_MAX_WORK = 128
"""`conv2d_forward`'s ``algorithm="auto"`` takes the row-Toeplitz path when ``2 * out_channels *
padded_width / kernel_width`` is at most this: the Toeplitz product does ``padded_width /
kernel_width`` times im2col's arithmetic, which pays only while im2col's thin product is bound
by memory (few output channels, narrow images, as in LeNet-5). See docs/performance.md."""


def choose_algorithm(algorithm: str, weight_shape, padded_width: int) -> str:
    """``"im2col"`` or ``"toeplitz"``: ``algorithm`` itself, or for ``"auto"`` the `TOEPLITZ_MAX_WORK` rule."""
    if algorithm != "auto":
        return algorithm
    o, _, _, kw = weight_shape
    return "toeplitz" if 2 * o * padded_width / kw <= TOEPLITZ_MAX_WORK else "im2col"


def windows_disjoint(kernel, stride) -> bool:
    """True when no two windows share an input element (stride >= kernel on both axes).

    Then each of `window_slices` touches an element no other slice touches, and a gradient can
    be written instead of added.
    """
    return stride[0] >= kernel[0] and stride[1] >= kernel[1]


def windows_tile(padded_size, kernel, stride, out_size) -> bool:
    """True when the windows cover every input element exactly once (no gaps, no overlap)."""
    return (tuple(stride) == tuple(kernel)
            and kernel[0] * out_size[0] == padded_size[0] and kernel[1] * out_size[1] == padded_size[1])


@on_input_device
def col2im_fast(cols, padded_shape, kernel, stride, out_size, batch_last=False):
    """`conv.col2im`, with the same additions in the same order, faster.

    When the windows tile the input the buffer starts uninitialised; when they do not overlap
    each part is written, not added. ``batch_last=True`` takes columns ordered
    ``(C*kh*kw, out_h*out_w*N)`` and returns the gradient stored ``(C, Hp, Wp, N)``: each slice
    then moves runs of ``out_w * N`` contiguous elements instead of ``out_w``.
    """
    xp = array_namespace(cols)
    c, n, hp, wp = padded_shape
    oh, ow = out_size
    slices = window_slices(kernel, stride, out_size)
    if batch_last:
        parts = xp.reshape(cols, (c, len(slices), oh, ow, n))
        shape = (c, hp, wp, n)

        def at(si, sj):
            return (slice(None), si, sj, slice(None))
    else:
        parts = xp.reshape(cols, (c, len(slices), n, oh, ow))
        shape = padded_shape

        def at(si, sj):
            return (slice(None), slice(None), si, sj)
    make = xp.empty if windows_tile((hp, wp), kernel, stride, out_size) else xp.zeros
    dx = make(shape, dtype=cols.dtype, device=device_of(cols))
    overlapping = not windows_disjoint(kernel, stride)
    for k, (si, sj) in enumerate(slices):
        index = at(si, sj)
        dx[index] = dx[index] + parts[:, k, ...] if overlapping else parts[:, k, ...]
    return dx


@dataclass(frozen=True)
class _Columns:
    """Where im2col's columns come from; the shapes both layouts share."""

    in_hw: tuple
    kernel: tuple
    stride: tuple
    padding: tuple
    out_size: tuple

    @property
    def padded(self) -> tuple[int, int]:
        return self.in_hw[0] + 2 * self.padding[0], self.in_hw[1] + 2 * self.padding[1]

    @property
    def row(self) -> int:
        """Output positions per row in the columns."""
        return self.out_size[1]

    @property
    def length(self) -> int:
        """Columns per image."""
        return self.out_size[0] * self.row


class StridedColumns(_Columns):
    """Columns from strided slices of the padded channels-first input (`conv.im2col`), any stride."""

    def source(self, x_cnhw):
        """The padded channels-first input ``(C, N, Hp, Wp)`` the columns are cut from."""
        return pad2d(x_cnhw, self.padding)

    def columns(self, src):
        """``(C*kh*kw, n*length)`` columns of a slice of the source."""
        return im2col(src, self.kernel, self.stride, self.out_size)

    def add_columns(self, dcols, src_shape):
        """Adjoint of `columns`: the gradient of the source, shape ``src_shape``."""
        return col2im_fast(dcols, src_shape, self.kernel, self.stride, self.out_size)

    def widen(self, g_onhw):
        """The output gradient ``(O, N, out_h, out_w)`` in the columns' order of positions."""
        return g_onhw

    def crop(self, dsrc):
        """The input gradient ``(C, N, H, W)`` inside the source's padding."""
        (ph, pw), (h, w) = self.padding, self.in_hw
        return dsrc[:, :, ph : ph + h, pw : pw + w]


class FlatColumns(StridedColumns):
    """Columns from shifts of the flattened padded rows (stride 1 only).

    Each padded image, with one extra zero row, is viewed as a single vector; the slice for
    kernel offset ``(i, j)`` is then one contiguous run starting at ``i * Wp + j``. Its columns
    cover every output row at the padded width ``Wp`` (the last ``kw - 1`` positions of each
    row are discarded), so the matrix is ``Wp / out_w`` times wider, but each copy moves long
    contiguous runs instead of ``out_w``-long pieces, which is faster.
    """

    @property
    def row(self) -> int:
        return self.padded[1]

    def source(self, x_cnhw):
        xp = array_namespace(x_cnhw)
        c, n, h, w = x_cnhw.shape
        (ph, pw), (hp, wp) = self.padding, self.padded
        src = xp.zeros((c, n, hp + 1, wp), dtype=x_cnhw.dtype, device=device_of(x_cnhw))
        src[:, :, ph : ph + h, pw : pw + w] = x_cnhw
        return xp.reshape(src, (c, n, (hp + 1) * wp))

    def _offsets(self):
        kh, kw = self.kernel
        return [i * self.padded[1] + j for i in range(kh) for j in range(kw)]

    def columns(self, src):
        xp = array_namespace(src)
        c, n = src.shape[:2]
        length, offsets = self.length, self._offsets()
        cols = xp.stack([src[:, :, off : off + length] for off in offsets], axis=1)
        return xp.reshape(cols, (c * len(offsets), n * length))

    def add_columns(self, dcols, src_shape):
        xp = array_namespace(dcols)
        c, n = src_shape[:2]
        length, offsets = self.length, self._offsets()
        parts = xp.reshape(dcols, (c, len(offsets), n, length))
        dsrc = xp.zeros(src_shape, dtype=dcols.dtype, device=device_of(dcols))
        for k, off in enumerate(offsets):
            dsrc[:, :, off : off + length] = dsrc[:, :, off : off + length] + parts[:, k, ...]
        return dsrc

    def widen(self, g_onhw):
        # The discarded positions of each row get a zero gradient: they add nothing below.
        xp = array_namespace(g_onhw)
        o, n, oh, ow = g_onhw.shape
        g_full = xp.zeros((o, n, oh, self.row), dtype=g_onhw.dtype, device=device_of(g_onhw))
        g_full[:, :, :, :ow] = g_onhw
        return g_full

    def crop(self, dsrc):
        xp = array_namespace(dsrc)
        c, n = dsrc.shape[:2]
        return super().crop(xp.reshape(dsrc, (c, n, self.padded[0] + 1, self.padded[1])))


class Im2colCache(NamedTuple):
    """The whole batch's columns, kept for the weight gradient."""

    cols: Any  # (C*kh*kw, N*length)
    weight: Any  # (O, C, kh, kw)
    geometry: StridedColumns  # or FlatColumns


class SlicedIm2colCache(NamedTuple):
    """The padded input of a batch convolved in slices: backward rebuilds each slice's columns."""

    source: Any  # what `geometry.source` returned
    step: int  # images per slice
    weight: Any
    geometry: StridedColumns


@on_input_device
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, *, algorithm="auto", inference=False,
                   blocks: Blocks | None = None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``; `conv.conv2d_forward`, faster.

    Parameters
    ----------
    x, weight, bias, stride, padding
        As for `conv.conv2d_forward`.
    algorithm : {"auto", "im2col", "toeplitz"}
        ``im2col``: one column per output position, ``(O, C*kh*kw) @ (C*kh*kw, N*out_h*out_w)``.
        ``toeplitz``: one row per output row, ``(N*out_h, kh*C*W) @ (kh*C*W, O*out_w)``
        against `toeplitz_weight`; a smaller copy of the input and a better-shaped product, at
        ``W / kw`` times the arithmetic. ``auto`` picks Toeplitz where that trade pays
        (`TOEPLITZ_MAX_WORK`). All give the same result to rounding.
    inference : bool
        Speed over what backward needs: slices of ``blocks.toeplitz_block_bytes`` or
        ``blocks.conv_block_bytes`` and, for im2col at stride 1, the flat-row columns
        (`FlatColumns`). The result can still be back-propagated, slower.
    blocks : `Blocks`, optional
        How the device slices the batch (``blocks.conv_chunk_bytes`` bounds the column or rows
        matrix in every mode); None: the whole batch in one product.

    Returns
    -------
    out : array (N, O, out_h, out_w)
    cache : `Im2colCache`, `SlicedIm2colCache`, `ToeplitzCache` or `SlicedToeplitzCache`
    """
    stride, padding, out_size = conv_geometry(x, weight, stride, padding)
    algorithm = choose_algorithm(check_choice(algorithm, "", "algorithm", CONV_ALGORITHMS), weight.shape,
                                 x.shape[3] + 2 * padding[1])
    blocks = Blocks() if blocks is None else blocks
    limit = blocks.conv_chunk_bytes
    if inference:
        block = blocks.toeplitz_block_bytes if algorithm == "toeplitz" else blocks.conv_block_bytes
        limit = block if limit is None else limit if block is None else min(limit, block)
    if algorithm == "toeplitz":
        return toeplitz_forward(x, weight, bias, stride, padding, out_size, limit)
    layout = FlatColumns if inference and stride == (1, 1) else StridedColumns
    geometry = layout(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, out_size)
    return _im2col_forward(x, weight, bias, geometry, limit)


@on_input_device
def conv2d_backward(grad_out, cache, need_input_grad=True, blocks: Blocks | None = None):
    """Gradients of `conv2d_forward`: ``(grad_in, grad_weight, grad_bias)``, by the cache's type.

    ``grad_in`` is None when ``need_input_grad`` is False (the first layer of a network:
    nothing upstream needs it, and col2im is most of the backward time). ``blocks``: as for
    the forward (the Toeplitz input gradient's row additions use ``cache_block_bytes``).
    """
    if isinstance(cache, Im2colCache):
        return _im2col_backward(grad_out, cache, need_input_grad)
    if isinstance(cache, SlicedIm2colCache):
        return _sliced_im2col_backward(grad_out, cache, need_input_grad)
    if isinstance(cache, (ToeplitzCache, SlicedToeplitzCache)):
        return toeplitz_backward(grad_out, cache, need_input_grad, blocks)
    raise TypeError(f"conv2d_backward expected a cache from conv_fast.conv2d_forward, got {type(cache).__name__}")


def _im2col_forward(x, weight, bias, geo: StridedColumns, chunk_bytes):
    xp = array_namespace(x, weight)
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    oh, ow = geo.out_size
    src = geo.source(xp.permute_dims(x, (1, 0, 2, 3)))
    w2 = xp.reshape(weight, (o, c * kh * kw))
    step = images_per_slice(c * kh * kw * geo.length * (xp.finfo(x.dtype).bits // 8), n, chunk_bytes)
    if step >= n:
        cols = geo.columns(src)
        out = w2 @ cols
        if bias is not None:
            out += bias[:, None]
        out = xp.reshape(out, (o, n, oh, geo.row))
        cache = Im2colCache(cols, weight, geo)
    else:
        out = xp.empty((o, n, oh, geo.row), dtype=x.dtype, device=device_of(x))
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = w2 @ geo.columns(src[:, start:stop, ...])
            out[:, start:stop, ...] = xp.reshape(part, (o, stop - start, oh, geo.row))
        if bias is not None:
            out += bias[:, None, None, None]
        cache = SlicedIm2colCache(src, step, weight, geo)
    if geo.row != ow:  # the flat layout's discarded positions
        out = out[:, :, :, :ow]
    return xp.permute_dims(out, (1, 0, 2, 3)), cache


def _im2col_backward(grad_out, cache: Im2colCache, need_input_grad):
    xp = array_namespace(grad_out)
    geo, weight = cache.geometry, cache.weight
    o, c, kh, kw = weight.shape
    n = grad_out.shape[0]
    (oh, ow), (ph, pw), (h, w) = geo.out_size, geo.padding, geo.in_hw
    g_onhw = xp.permute_dims(grad_out, (1, 0, 2, 3))
    grad_bias = xp.sum(g_onhw, axis=(1, 2, 3))
    g = xp.reshape(geo.widen(g_onhw), (o, n * geo.length))
    # cols @ g.T, then transposed, is the faster gemm orientation here (a long K against two thin operands).
    grad_weight = xp.reshape(xp.matrix_transpose(cache.cols @ xp.matrix_transpose(g)), weight.shape)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    # Input gradient with the batch axis last: one small transposed copy of the gradient
    # makes every col2im slice-add move out_w * N contiguous elements (about 2x faster).
    # It needs only the weights and the gradient, whatever layout the forward columns had.
    g_hwn = xp.reshape(xp.permute_dims(grad_out, (1, 2, 3, 0)), (o, oh * ow * n))
    w2 = xp.reshape(weight, (o, c * kh * kw))
    dsrc = col2im_fast(xp.matrix_transpose(w2) @ g_hwn, (c, n, *geo.padded), geo.kernel, geo.stride,
                       geo.out_size, batch_last=True)
    dx = xp.empty((c, n, h, w), dtype=grad_out.dtype, device=device_of(grad_out))
    dx[...] = xp.permute_dims(dsrc[:, ph : ph + h, pw : pw + w, :], (0, 3, 1, 2))
    return xp.permute_dims(dx, (1, 0, 2, 3)), grad_weight, grad_bias


def _sliced_im2col_backward(grad_out, cache: SlicedIm2colCache, need_input_grad):
    xp = array_namespace(grad_out)
    geo, weight, src, step = cache.geometry, cache.weight, cache.source, cache.step
    o, c, kh, kw = weight.shape
    n = grad_out.shape[0]
    w2 = xp.reshape(weight, (o, c * kh * kw))
    g_onhw = xp.permute_dims(grad_out, (1, 0, 2, 3))
    grad_bias = xp.sum(g_onhw, axis=(1, 2, 3))
    g_full = geo.widen(g_onhw)
    grad_weight = xp.zeros((o, c * kh * kw), dtype=grad_out.dtype, device=device_of(grad_out))
    dsrc = xp.empty(src.shape, dtype=grad_out.dtype, device=device_of(grad_out)) if need_input_grad else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        g = xp.reshape(g_full[:, start:stop, ...], (o, (stop - start) * geo.length))
        grad_weight += xp.matrix_transpose(geo.columns(src[:, start:stop, ...]) @ xp.matrix_transpose(g))
        if need_input_grad:
            part_shape = (src.shape[0], stop - start, *src.shape[2:])
            dsrc[:, start:stop, ...] = geo.add_columns(xp.matrix_transpose(w2) @ g, part_shape)
    grad_weight = xp.reshape(grad_weight, weight.shape)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    return xp.permute_dims(geo.crop(dsrc), (1, 0, 2, 3)), grad_weight, grad_bias
