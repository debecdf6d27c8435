"""Pure array functions behind the layers, written once against the Array API standard.

Every function takes its namespace from its inputs (``array_namespace``) and
allocates with their dtype and device, so the same code runs on NumPy, CuPy
and any other conforming library. Forward functions return ``(out, cache)``;
backward functions take ``(grad_out, cache)`` and return the gradients, so the
math can be tested without any layer class.

Two convolution algorithms
--------------------------
``im2col`` (below) builds one column per output position; the row-Toeplitz form
(`toeplitz_weight`, `conv2d_forward(algorithm=...)`) builds one row per output row and
multiplies it by a Toeplitz matrix of the weights, stored ``(N, H, C, W)``. The second does
more arithmetic in a better-shaped product; ``algorithm="auto"`` picks it for narrow,
few-channel layers (`TOEPLITZ_MAX_WORK`). docs/performance.md explains both.

Layout notes (im2col)
---------------------
Convolution works on a channels-first view of the batch, ``(C, N, H, W)``,
obtained with ``permute_dims`` (a view, no copy). Stacking one strided slice
per kernel offset along axis 1 gives ``(C, kh*kw, N, out_h, out_w)``, which
reshapes *without a copy* into the column matrix ``(C*kh*kw, N*out_h*out_w)``
whose row order matches ``weight.reshape(O, C*kh*kw)``. The whole batch is then
one matrix product, ``(O, C*kh*kw) @ (C*kh*kw, N*L)``, and its result, viewed as
``(O, N, out_h, out_w)``, is returned as the NCHW view ``(N, O, out_h, out_w)``.
When the next convolution permutes that view back to channels-first, it gets a
contiguous array again: the layout flows through the network without copies.
Backward functions keep that order: they allocate their gradients channels-first
(pooling: like its input, whichever order that is) and return the NCHW view, so the
convolution below gets a contiguous gradient too.

Stride-1 convolutions can also cut their columns from flattened rows (see
`_ConvGeometry`): longer contiguous copies, a slightly wider matrix. Conv2D uses
that layout for inference and the strided one for training.

Memory: the column matrix is ``kh*kw`` times the input. When it would exceed
`CONV_CHUNK_BYTES` the convolution runs over slices of the batch, caches the
padded input instead of the columns, and rebuilds each slice's columns in
backward.

Speed notes (measured in docs/performance.md): elementwise selection is done by
multiplying with a mask cast to the data type rather than ``where`` (NumPy's
``where`` is several times slower than a multiply), max pooling takes its maxima
with pairwise ``maximum`` over strided slices instead of stacking every window,
and non-overlapping windows write their gradient instead of accumulating it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from array_api_compat import array_namespace
from array_api_compat import device as device_of

__all__ = [
    "CONV_CHUNK_BYTES",
    "CONV_BLOCK_BYTES",
    "TOEPLITZ_BLOCK_BYTES",
    "CACHE_BLOCK_BYTES",
    "conv_output_size",
    "pad2d",
    "window_slices",
    "im2col",
    "col2im",
    "conv_chunk_size",
    "CONV_ALGORITHMS",
    "check_conv_algorithm",
    "TOEPLITZ_MAX_WORK",
    "toeplitz_weight",
    "toeplitz_weight_grad",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "log_softmax",
    "softmax",
    "softmax_backward",
]


CONV_CHUNK_BYTES = 64 * 2**20
"""Largest column matrix (bytes) a convolution builds at once; larger batches run in slices.

Change it module-wide (``cnnxp.ops.CONV_CHUNK_BYTES = ...``) or per call with ``chunk_bytes=``.
"""


CONV_BLOCK_BYTES = 4 * 2**20
"""Column-matrix size for inference (eval mode): slices this small stay in cache while the
matrix product reads them, which is faster than one pass over a large matrix."""


CACHE_BLOCK_BYTES = 2**18
"""Work that makes several passes over the same arrays (the max-pool backward walk, the
Toeplitz input gradient's row additions) runs over slices of the batch whose arrays are at
most this many bytes, so a slice stays in cache between passes (docs/performance.md)."""


TOEPLITZ_BLOCK_BYTES = 3 * 2**19
"""Rows-matrix size of a Toeplitz convolution for inference (eval mode); see `CONV_BLOCK_BYTES`.
1.5 MiB: LeNet-5 at batch 64 in one slice and at 256 in four, measured best here (docs/performance.md)."""


def _pair(value, name: str) -> tuple[int, int]:
    """``(a, b)`` from an int or a pair of ints (NumPy integers too); TypeError for other types."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (a, b)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``(size - kernel + 2 * padding) // stride + 1``.

    Raises ValueError for stride < 1, negative padding, kernel < 1, or a kernel
    larger than the padded input.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if kernel < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel}")
    if kernel > size + 2 * padding:
        raise ValueError(
            f"kernel size {kernel} is larger than the padded input ({size} + 2*{padding} = "
            f"{size + 2 * padding}): use a smaller kernel, more padding or a larger input"
        )
    return (size - kernel + 2 * padding) // stride + 1


def pad2d(x, padding: tuple[int, int], value: float = 0.0):
    """Pad the last two axes of ``x`` by ``padding = (ph, pw)`` on both sides with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = array_namespace(x)
    *lead, h, w = x.shape
    out = xp.full((*lead, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=device_of(x))
    out[..., ph : ph + h, pw : pw + w] = x
    return out


def window_slices(kernel: tuple[int, int], stride: tuple[int, int], out_size: tuple[int, int]):
    """The ``kh * kw`` pairs of slices, one per kernel offset ``(i, j)`` in row-major order.

    Slice ``(i, j)`` picks, for every output position, the input element at offset
    ``(i, j)`` of its window. Stops stay in bounds: ``start + step * (n - 1) + 1``.
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_size
    return [
        (slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def im2col(x_cnhw, kernel, stride, out_size):
    """Columns ``(C*kh*kw, N*out_h*out_w)`` of a padded channels-first batch ``(C, N, Hp, Wp)``."""
    xp = array_namespace(x_cnhw)
    c, n = x_cnhw.shape[:2]
    slices = window_slices(kernel, stride, out_size)
    cols = xp.stack([x_cnhw[:, :, si, sj] for si, sj in slices], axis=1)
    return xp.reshape(cols, (c * len(slices), n * out_size[0] * out_size[1]))


def col2im(cols, padded_shape, kernel, stride, out_size, batch_last=False):
    """Adjoint of `im2col`: add each column entry back to the input position it came from.

    Returns the padded channels-first gradient ``(C, N, Hp, Wp)``. Each slice touches
    an element at most once, so ``dx[sl] = dx[sl] + part`` adds overlapping windows exactly;
    when windows do not overlap (stride >= kernel) each part is written, not added.

    ``batch_last=True`` takes columns ordered ``(C*kh*kw, out_h*out_w*N)`` and returns the
    gradient stored ``(C, Hp, Wp, N)``: each slice then moves runs of ``out_w * N``
    contiguous elements instead of ``out_w``, with the same additions in the same order.
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
    make = xp.empty if _tiles((hp, wp), kernel, stride, out_size) else xp.zeros
    dx = make(shape, dtype=cols.dtype, device=device_of(cols))
    overlapping = not _disjoint(kernel, stride)
    for k, (si, sj) in enumerate(slices):
        index = at(si, sj)
        dx[index] = dx[index] + parts[:, k, ...] if overlapping else parts[:, k, ...]
    return dx


def _disjoint(kernel, stride) -> bool:
    """True when no two windows share an input element (stride >= kernel on both axes)."""
    return stride[0] >= kernel[0] and stride[1] >= kernel[1]


def _tiles(padded_size, kernel, stride, out_size) -> bool:
    """True when the windows cover every input element exactly once (no gaps, no overlap)."""
    return (tuple(stride) == tuple(kernel)
            and kernel[0] * out_size[0] == padded_size[0] and kernel[1] * out_size[1] == padded_size[1])


def _check_conv_shapes(x, weight):
    if x.ndim != 4:
        raise ValueError(f"conv2d expected input of shape (N, C, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d weight of shape {tuple(weight.shape)} does not fit input with {x.shape[1]} channels"
        )


def conv_chunk_size(per_image_bytes: int, batch: int, chunk_bytes: int | None = None) -> int:
    """How many images one column matrix may hold so that it stays within ``chunk_bytes``.

    Returns ``batch`` (no slicing) when the whole batch fits, and at least 1. Slices are
    balanced: 65 images at 64 per slice become 33 + 32, not 64 + 1.
    """
    if batch < 1:  # an empty batch: one (empty) piece
        return 1
    limit = CONV_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    step = max(1, min(batch, limit // max(1, per_image_bytes)))
    slices = -(-batch // step)
    return -(-batch // slices)


class _ConvGeometry:
    """Where the columns come from: strided slices of the padded input, or shifts of its flattened rows.

    The *flat* layout (stride 1 only) views each padded image, with one extra zero
    row, as a single vector; the slice for kernel offset ``(i, j)`` is then one
    contiguous run starting at ``i * Wp + j``. Its columns cover every output row
    at the padded width ``Wp`` (the last ``kw - 1`` positions of each row are
    discarded), so the matrix is ``Wp / out_w`` times wider, but each copy moves
    long contiguous runs instead of ``out_w``-long pieces, which is faster.
    """

    def __init__(self, in_hw, kernel, stride, padding, out_size, flat):
        self.in_hw, self.kernel, self.stride, self.padding = in_hw, kernel, stride, padding
        self.out_size, self.flat = out_size, flat
        self.padded = (in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1])
        self.row = self.padded[1] if flat else out_size[1]  # output positions per row in the columns
        self.length = out_size[0] * self.row  # columns per image

    def source(self, xp, x_cnhw):
        """The padded channels-first input the columns are cut from."""
        if not self.flat:
            return pad2d(x_cnhw, self.padding)
        c, n, h, w = x_cnhw.shape
        (ph, pw), (hp, wp) = self.padding, self.padded
        src = xp.zeros((c, n, hp + 1, wp), dtype=x_cnhw.dtype, device=device_of(x_cnhw))
        src[:, :, ph : ph + h, pw : pw + w] = x_cnhw
        return xp.reshape(src, (c, n, (hp + 1) * wp))

    def columns(self, xp, src):
        """``(C*kh*kw, n*length)`` columns of a slice of the source."""
        if not self.flat:
            return im2col(src, self.kernel, self.stride, self.out_size)
        c, n = src.shape[:2]
        kh, kw = self.kernel
        wp, length = self.padded[1], self.length
        cols = xp.stack([src[:, :, i * wp + j : i * wp + j + length] for i in range(kh) for j in range(kw)],
                        axis=1)
        return xp.reshape(cols, (c * kh * kw, n * length))

    def add_columns(self, xp, dcols, src_shape):
        """Adjoint of `columns`: the gradient of the source, shape ``src_shape``."""
        if not self.flat:
            return col2im(dcols, src_shape, self.kernel, self.stride, self.out_size)
        c, n = src_shape[:2]
        kh, kw = self.kernel
        wp, length = self.padded[1], self.length
        parts = xp.reshape(dcols, (c, kh * kw, n, length))
        dsrc = xp.zeros(src_shape, dtype=dcols.dtype, device=device_of(dcols))
        for i in range(kh):
            for j in range(kw):
                off = i * wp + j
                dsrc[:, :, off : off + length] = dsrc[:, :, off : off + length] + parts[:, i * kw + j, ...]
        return dsrc

    def crop(self, xp, dsrc):
        """The input gradient ``(C, N, H, W)`` inside the source's padding."""
        (ph, pw), (h, w) = self.padding, self.in_hw
        if self.flat:
            c, n = dsrc.shape[:2]
            dsrc = xp.reshape(dsrc, (c, n, self.padded[0] + 1, self.padded[1]))
        return dsrc[:, :, ph : ph + h, pw : pw + w]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, chunk_bytes=None, flat=None, algorithm="auto",
                   inference=False):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array (N, C, H, W)
    weight : array (O, C, kh, kw)
    bias : array (O,) or None
    stride, padding : int or (int, int)
    chunk_bytes : int, optional
        Bound on the column matrix; defaults to `CONV_CHUNK_BYTES`. Larger
        batches are convolved in slices of the batch.
    flat : bool, optional
        For im2col: use the flat-row column layout (stride 1 only; the default
        there) or strided slices (the default for other strides). Both give the same result.
    algorithm : {"auto", "im2col", "toeplitz"}
        ``im2col``: one column per output position, ``(O, C*kh*kw) @ (C*kh*kw, N*out_h*out_w)``.
        ``toeplitz``: one row per output row, ``(N*out_h, kh*C*Wp) @ (kh*C*Wp, O*out_w)``
        against `toeplitz_weight`; a smaller copy of the input and a better-shaped product, at
        ``Wp / kw`` times the arithmetic. ``auto`` picks Toeplitz where that trade pays
        (`TOEPLITZ_MAX_WORK`). All give the same result to rounding.
    inference : bool
        Speed over what backward needs: run in cache-sized slices of the batch
        (`TOEPLITZ_BLOCK_BYTES`, or `CONV_BLOCK_BYTES` with im2col's flat layout). The
        result can still be back-propagated (the slices' inputs are kept), only slower.

    Returns
    -------
    out : array (N, O, out_h, out_w)
    cache : tuple needed by `conv2d_backward`
    """
    xp = array_namespace(x, weight)
    _check_conv_shapes(x, weight)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    out_size = (
        conv_output_size(h, kh, stride[0], padding[0]),
        conv_output_size(w, kw, stride[1], padding[1]),
    )
    check_conv_algorithm(algorithm)
    if algorithm == "auto":
        work = 2 * o * (w + 2 * padding[1]) / kw  # see TOEPLITZ_MAX_WORK
        algorithm = "toeplitz" if work <= TOEPLITZ_MAX_WORK and not flat else "im2col"
    limit = CONV_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    if algorithm == "toeplitz":
        if flat:
            raise ValueError("the flat column layout belongs to the im2col algorithm, not 'toeplitz'")
        if inference:
            limit = min(limit, TOEPLITZ_BLOCK_BYTES)
        return _conv_toeplitz_forward(x, weight, bias, stride, padding, out_size, limit)
    if inference:
        limit = min(limit, CONV_BLOCK_BYTES)
    chunk_bytes = limit
    if flat is None:
        flat = stride == (1, 1)
    elif flat and stride != (1, 1):
        raise ValueError(f"the flat column layout needs stride 1, got stride {stride}")
    geo = _ConvGeometry((h, w), (kh, kw), stride, padding, out_size, flat)
    src = geo.source(xp, xp.permute_dims(x, (1, 0, 2, 3)))
    w2 = xp.reshape(weight, (o, c * kh * kw))
    step = conv_chunk_size(c * kh * kw * geo.length * (xp.finfo(x.dtype).bits // 8), n, chunk_bytes)
    if step >= n:
        cols = geo.columns(xp, src)
        out = w2 @ cols
        if bias is not None:
            out += bias[:, None]
        out = xp.reshape(out, (o, n, out_size[0], geo.row))
        kept = cols
    else:
        # Bounded memory: one slice of the batch at a time; backward rebuilds the columns.
        out = xp.empty((o, n, out_size[0], geo.row), dtype=x.dtype, device=device_of(x))
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = w2 @ geo.columns(xp, src[:, start:stop, ...])
            out[:, start:stop, ...] = xp.reshape(part, (o, stop - start, out_size[0], geo.row))
        if bias is not None:
            out += bias[:, None, None, None]
        kept = src
    if flat:
        out = out[:, :, :, : out_size[1]]
    cache = (kept, step, tuple(src.shape), geo, weight)
    return xp.permute_dims(out, (1, 0, 2, 3)), cache


def conv2d_backward(grad_out, cache, need_input_grad=True):
    """Gradients of `conv2d_forward`: ``(grad_in, grad_weight, grad_bias)``.

    ``grad_in`` is None when ``need_input_grad`` is False (the first layer of a
    network: nothing upstream needs it, and col2im is most of the backward time).
    """
    if isinstance(cache, ToeplitzCache):
        return _conv_toeplitz_backward(grad_out, cache, need_input_grad)
    xp = array_namespace(grad_out)
    kept, step, src_shape, geo, weight = cache
    o, c, kh, kw = weight.shape
    n = src_shape[1]
    oh, ow = geo.out_size
    w2 = xp.reshape(weight, (o, c * kh * kw))
    g_onhw = xp.permute_dims(grad_out, (1, 0, 2, 3))
    grad_bias = xp.sum(g_onhw, axis=(1, 2, 3))
    if geo.flat:
        # The discarded positions of each row get a zero gradient: they add nothing below.
        g_full = xp.zeros((o, n, oh, geo.row), dtype=grad_out.dtype, device=device_of(grad_out))
        g_full[:, :, :, :ow] = g_onhw
    else:
        g_full = g_onhw
    if step >= n:
        g = xp.reshape(g_full, (o, n * geo.length))
        # cols @ g.T, then transposed, is the faster gemm orientation here (a long K against two thin operands).
        grad_weight = xp.reshape(xp.matrix_transpose(kept @ xp.matrix_transpose(g)), weight.shape)
        if not need_input_grad:
            return None, grad_weight, grad_bias
        # Input gradient with the batch axis last: one small transposed copy of the gradient
        # makes every col2im slice-add move out_w * N contiguous elements (about 2x faster).
        # It needs only the weights and the gradient, whatever layout the forward columns had.
        g_hwn = xp.reshape(xp.permute_dims(grad_out, (1, 2, 3, 0)), (o, oh * ow * n))
        dsrc = col2im(xp.matrix_transpose(w2) @ g_hwn, (c, n, *geo.padded), geo.kernel, geo.stride,
                      geo.out_size, batch_last=True)
        (ph, pw), (h, w) = geo.padding, geo.in_hw
        dx = xp.empty((c, n, h, w), dtype=grad_out.dtype, device=device_of(grad_out))
        dx[...] = xp.permute_dims(dsrc[:, ph : ph + h, pw : pw + w, :], (0, 3, 1, 2))
        return xp.permute_dims(dx, (1, 0, 2, 3)), grad_weight, grad_bias
    else:
        grad_weight = xp.zeros((o, c * kh * kw), dtype=grad_out.dtype, device=device_of(grad_out))
        dsrc = xp.empty(src_shape, dtype=grad_out.dtype, device=device_of(grad_out)) if need_input_grad else None
        for start in range(0, n, step):
            stop = min(n, start + step)
            g = xp.reshape(g_full[:, start:stop, ...], (o, (stop - start) * geo.length))
            grad_weight += xp.matrix_transpose(geo.columns(xp, kept[:, start:stop, ...]) @ xp.matrix_transpose(g))
            if need_input_grad:
                part_shape = (src_shape[0], stop - start, *src_shape[2:])
                dsrc[:, start:stop, ...] = geo.add_columns(xp, xp.matrix_transpose(w2) @ g, part_shape)
        grad_weight = xp.reshape(grad_weight, weight.shape)
        if not need_input_grad:
            return None, grad_weight, grad_bias
    return xp.permute_dims(geo.crop(xp, dsrc), (1, 0, 2, 3)), grad_weight, grad_bias


CONV_ALGORITHMS = ("auto", "im2col", "toeplitz")


def check_conv_algorithm(algorithm, owner: str = "") -> None:
    """ValueError unless ``algorithm`` is one of `CONV_ALGORITHMS` (``owner`` prefixes the message)."""
    if algorithm not in CONV_ALGORITHMS:
        prefix = f"{owner} " if owner else ""
        raise ValueError(f"{prefix}algorithm must be 'auto', 'im2col' or 'toeplitz', got {algorithm!r}")


TOEPLITZ_MAX_WORK = 128
"""`conv2d_forward`'s ``algorithm="auto"`` takes the row-Toeplitz path when ``2 * out_channels *
padded_width / kernel_width`` is at most this: the Toeplitz product does ``padded_width /
kernel_width`` times im2col's arithmetic, which pays only while im2col's thin product is bound
by memory (few output channels, narrow images, as in LeNet-5). See docs/performance.md."""


def _toeplitz_selector(xp, dtype, device, padded_width: int, out_width: int, stride_w: int, kw: int):
    """``S[(w, x), j] = 1`` where input column ``w`` is kernel column ``j`` of output column ``x``."""
    w = xp.reshape(xp.arange(padded_width, device=device), (padded_width, 1, 1))
    x = xp.reshape(xp.arange(out_width, device=device), (1, out_width, 1))
    j = xp.reshape(xp.arange(kw, device=device), (1, 1, kw))
    return xp.reshape(xp.astype(w == x * stride_w + j, dtype), (padded_width * out_width, kw))


def toeplitz_weight(weight, padded_width: int, out_width: int, stride_w: int):
    """The weight as a ``(kh*C*Wp, O*out_w)`` matrix: row ``(i, c, w)``, column ``(o, x)`` holds
    ``weight[o, c, i, w - x*stride_w]`` where that offset lies in the kernel, else 0.

    Built without index arrays: each kernel row is written at the start of a row of length
    ``Wp + stride_w``; read back ``Wp`` at a time, row ``x`` then starts ``x * stride_w`` later.
    """
    xp = array_namespace(weight)
    o, c, kh, kw = weight.shape
    wp, ow, sw = padded_width, out_width, stride_w
    base = xp.zeros((kh, c, o, ow, wp + sw), dtype=weight.dtype, device=device_of(weight))
    base[:, :, :, :, :kw] = xp.permute_dims(weight, (2, 1, 0, 3))[:, :, :, None, :]
    rows = xp.reshape(xp.reshape(base, (kh, c, o, ow * (wp + sw)))[:, :, :, : ow * wp], (kh, c, o, ow, wp))
    return xp.reshape(xp.permute_dims(rows, (0, 1, 4, 2, 3)), (kh * c * wp, o * ow))


def toeplitz_weight_grad(grad_t, weight_shape, padded_width: int, out_width: int, stride_w: int):
    """Adjoint of `toeplitz_weight`: sum each kernel offset's entries of a ``(kh*C*Wp, O*out_w)`` gradient.

    The sums over output columns are one small product with the 0/1 selector
    ``S[(w, x), j]`` (faster than a reduction over a strided axis).
    """
    xp = array_namespace(grad_t)
    o, c, kh, kw = weight_shape
    wp, ow = padded_width, out_width
    sel = _toeplitz_selector(xp, grad_t.dtype, device_of(grad_t), wp, ow, stride_w, kw)
    per_kernel_row = xp.permute_dims(xp.reshape(grad_t, (kh, c, wp, o, ow)), (0, 1, 3, 2, 4))  # (kh, c, o, wp, ow)
    taps = xp.reshape(xp.reshape(per_kernel_row, (kh * c * o, wp * ow)) @ sel, (kh, c, o, kw))
    return xp.permute_dims(taps, (2, 1, 0, 3))


def _toeplitz_rows(src, kh: int, sh: int, oh: int):
    """``(N*out_h, kh*C*Wp)``: output row ``r`` of image ``n`` takes padded rows ``r*sh + i``, i < kh.

    ``src`` is the padded batch stored ``(N, Hp, C, Wp)``.
    """
    xp = array_namespace(src)
    n, _, c, wp = src.shape
    rows = xp.stack([src[:, i : i + sh * (oh - 1) + 1 : sh, :, :] for i in range(kh)], axis=2)
    return xp.reshape(rows, (n * oh, kh * c * wp))


class ToeplitzCache(NamedTuple):
    """What the Toeplitz path keeps for backward (the first two fields as in the im2col cache)."""

    kept: Any  # the rows matrix (N*out_h, kh*C*Ws), or the padded input (N, Hp, C, Ws) when sliced;
    # Ws is the padded width Wp, plus one column of ones when there is a bias
    step: int  # images per slice
    weight_matrix: Any
    in_shape: tuple
    stride: tuple
    padding: tuple
    out_size: tuple
    weight: Any
    has_bias: bool  # the rows carry a column of ones for the bias


def _conv_toeplitz_forward(x, weight, bias, stride, padding, out_size, chunk_bytes):
    """Convolution as one product: rows of the padded input against `toeplitz_weight`.

    The result is stored ``(N, out_h, O, out_w)`` and returned as its NCHW view; the layers
    below keep that storage order, so the next convolution reads its input without a copy.
    Batches whose rows matrix would exceed ``chunk_bytes`` run in slices and keep only the
    padded input for backward, like the im2col path.
    """
    xp = array_namespace(x, weight)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, out_size
    hp, wp = h + 2 * ph, w + 2 * pw
    # The bias rides in the product: one more input column, all ones in channel 0, meets a
    # weight row holding the bias (the column lies beyond every kernel window, so the
    # Toeplitz rows there are zero). No pass over the output, and its gradient comes free.
    ws = wp + (bias is not None)
    x_nhcw = xp.permute_dims(x, (0, 2, 1, 3))
    if ws != w or hp != h:
        src = xp.zeros((n, hp, c, ws), dtype=x.dtype, device=device_of(x))
        src[:, ph : ph + h, :, pw : pw + w] = x_nhcw
        if bias is not None:
            src[:, :, 0, wp] = 1.0
    else:
        src = x_nhcw
    t = toeplitz_weight(weight, ws, ow, sw)
    if bias is not None:
        t[wp, :] = xp.reshape(xp.broadcast_to(bias[:, None], (o, ow)), (o * ow,))
    step = conv_chunk_size(kh * c * ws * oh * (xp.finfo(x.dtype).bits // 8), n, chunk_bytes)
    if step >= n:
        kept = _toeplitz_rows(src, kh, sh, oh)
        out = xp.reshape(kept @ t, (n, oh, o, ow))
    else:
        kept = src
        out = xp.empty((n, oh, o, ow), dtype=x.dtype, device=device_of(x))
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = _toeplitz_rows(src[start:stop, ...], kh, sh, oh) @ t
            out[start:stop, ...] = xp.reshape(part, (stop - start, oh, o, ow))
    cache = ToeplitzCache(kept, step, t, (n, c, h, w), stride, padding, out_size, weight, bias is not None)
    return xp.permute_dims(out, (0, 2, 1, 3)), cache


def _conv_toeplitz_backward(grad_out, cache, need_input_grad):
    xp = array_namespace(grad_out)
    kept, step, t, (n, c, h, w), (sh, sw), (ph, pw), (oh, ow), weight, has_bias = cache
    o, _, kh, kw = weight.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    ws = wp + has_bias
    g = xp.reshape(xp.permute_dims(grad_out, (0, 2, 1, 3)), (n * oh, o * ow))
    dsrc = xp.zeros((n, hp, c, ws), dtype=grad_out.dtype, device=device_of(grad_out)) if need_input_grad else None
    t_t = xp.matrix_transpose(t)
    if step >= n:
        grad_t = xp.matrix_transpose(kept) @ g
        if need_input_grad:
            d_rows = g @ t_t
            block = conv_chunk_size(hp * c * ws * (xp.finfo(grad_out.dtype).bits // 8), n, CACHE_BLOCK_BYTES)
            for start in range(0, n, block):
                stop = min(n, start + block)
                _add_rows(dsrc[start:stop, ...], d_rows[start * oh : stop * oh, ...], kh, sh, oh)
    else:
        grad_t = None
        for start in range(0, n, step):
            stop = min(n, start + step)
            g_part = g[start * oh : stop * oh, ...]
            part = xp.matrix_transpose(_toeplitz_rows(kept[start:stop, ...], kh, sh, oh)) @ g_part
            grad_t = part if grad_t is None else grad_t + part
            if need_input_grad:
                _add_rows(dsrc[start:stop, ...], g_part @ t_t, kh, sh, oh)
    grad_weight = toeplitz_weight_grad(grad_t, weight.shape, ws, ow, sw)
    if has_bias:  # the row of the ones column (see the forward)
        grad_bias = xp.sum(xp.reshape(grad_t[wp, :], (o, ow)), axis=1)
    else:  # rows first (a contiguous reduction), then the few output columns of each channel
        grad_bias = xp.sum(xp.reshape(xp.sum(g, axis=0), (o, ow)), axis=1)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    return xp.permute_dims(dsrc[:, ph : ph + h, :, pw : pw + w], (0, 2, 1, 3)), grad_weight, grad_bias


def _add_rows(dsrc, d_rows, kh: int, sh: int, oh: int):
    """Adjoint of `_toeplitz_rows`: add each output row's slice of ``d_rows`` back to its input rows."""
    xp = array_namespace(dsrc)
    n, _, c, wp = dsrc.shape
    d_rows = xp.reshape(d_rows, (n, oh, kh, c, wp))
    for i in range(kh):
        sl = slice(i, i + sh * (oh - 1) + 1, sh)
        dsrc[:, sl, :, :] = dsrc[:, sl, :, :] + d_rows[:, :, i, :, :]


def _pool_geometry(x, kernel_size, stride, padding):
    if x.ndim != 4:
        raise ValueError(f"pooling expected input of shape (N, C, H, W), got {tuple(x.shape)}")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    h, w = x.shape[2:]
    out_size = (
        conv_output_size(h, kernel[0], stride[0], padding[0]),
        conv_output_size(w, kernel[1], stride[1], padding[1]),
    )
    return kernel, stride, padding, out_size


def _unpad(dx, padding):
    ph, pw = padding
    return dx[:, :, ph : dx.shape[2] - ph, pw : dx.shape[3] - pw]


def _grad_buffer(xp, shape, like, fill_zero, layout=None):
    """A new (N, C, H, W) array for an input gradient.

    Stored like ``layout`` (the layer's input, where it has this shape: libraries such as NumPy
    and CuPy keep a ``*_like`` array's memory order), so the layer below reads its gradient in
    the order it wrote its output, whichever convolution algorithm that was; otherwise stored
    channels-first, the order im2col convolutions read without a copy.
    """
    if layout is not None and tuple(layout.shape) == tuple(shape):
        return (xp.zeros_like if fill_zero else xp.empty_like)(layout, dtype=like.dtype)
    n, c, h, w = shape
    make = xp.zeros if fill_zero else xp.empty
    return xp.permute_dims(make((c, n, h, w), dtype=like.dtype, device=device_of(like)), (1, 0, 2, 3))


def maxpool2d_forward(x, kernel_size, stride=None, padding=0, fast=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d``: padding acts as -inf.

    Ties go to the first maximum of the window in row-major order, as in PyTorch.
    ``fast=None`` picks the path: windows that do not overlap (stride >= kernel,
    the usual ``MaxPool2D(2)``) take their maxima with pairwise ``maximum`` over
    strided slices and find the first maximum again in backward, which is much
    cheaper than stacking every window and keeping an ``argmax``; overlapping
    windows take the general stacked path. ``fast=True`` / ``False`` forces one
    (both give identical results for inputs without NaN, -inf included: the padding
    never takes a gradient; a window holding NaN outputs NaN on both, but the fast
    path then sends that window's gradient to its last element and the general one
    to its first NaN, where PyTorch sends it to the last NaN).

    Returns ``(out, cache)``.
    """
    xp = array_namespace(x)
    kernel, stride, padding, out_size = _pool_geometry(x, kernel_size, stride, padding)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"padding {padding} must be at most half the kernel size {kernel}")
    xpad = pad2d(x, padding, value=-float("inf"))
    geometry = (tuple(xpad.shape), kernel, stride, padding, out_size)
    if fast is None:
        fast = _disjoint(kernel, stride)
    if not fast:
        slices = window_slices(kernel, stride, out_size)
        windows = xp.stack([xpad[:, :, si, sj] for si, sj in slices], axis=0)
        out = xp.max(windows, axis=0)
        if padding == (0, 0):
            argmax = xp.argmax(windows, axis=0)
        else:  # the first in-bounds maximum: the padding, now NaN, equals nothing
            _padding_equals_nothing(xpad, padding)
            hits = xp.stack([xpad[:, :, si, sj] == out for si, sj in slices], axis=0)
            # a window whose maximum is NaN has no hit: there, the first NaN, as without padding
            argmax = xp.where(xp.any(hits, axis=0), xp.argmax(xp.astype(hits, xp.int8), axis=0),
                              xp.argmax(windows, axis=0))
        return out, ("windows", argmax, *geometry)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_size
    # Separable maximum: over the kernel's rows first, then over its columns.
    rows = None
    for i in range(kh):
        part = xpad[:, :, i : i + sh * (oh - 1) + 1 : sh, :]
        rows = part if rows is None else xp.maximum(rows, part)
    out = None
    for j in range(kw):
        part = rows[:, :, :, j : j + sw * (ow - 1) + 1 : sw]
        out = part if out is None else xp.maximum(out, part)
    if kh * kw == 1:
        out = xp.asarray(out, copy=True)
    if padding != (0, 0):  # so that backward's first-maximum search skips it
        _padding_equals_nothing(xpad, padding)
    return out, ("first-max", (xpad, out), *geometry)


def _padding_equals_nothing(xpad, padding) -> None:
    """Overwrite the padding of a private padded copy with NaN, which compares equal to nothing.

    The maxima are taken with -inf padding; the search for each window's first maximum then
    never lands on the padding, even where every input of the window is -inf (PyTorch's rule:
    the first in-bounds element).
    """
    ph, pw = padding
    h, w = xpad.shape[2], xpad.shape[3]
    nan = float("nan")
    if ph:
        xpad[:, :, :ph, :] = nan
        xpad[:, :, h - ph :, :] = nan
    if pw:
        xpad[:, :, :, :pw] = nan
        xpad[:, :, :, w - pw :] = nan


def maxpool2d_backward(grad_out, cache):
    """Gradient of `maxpool2d_forward`: each output's gradient goes to its window's first maximum."""
    xp = array_namespace(grad_out)
    path, saved, padded_shape, kernel, stride, padding, out_size = cache
    slices = window_slices(kernel, stride, out_size)
    overlapping = not _disjoint(kernel, stride)
    dx = _grad_buffer(xp, padded_shape, grad_out,
                          fill_zero=not _tiles(padded_shape[2:], kernel, stride, out_size) or overlapping,
                          layout=saved[0] if path == "first-max" else None)
    if path == "windows":
        for k, (si, sj) in enumerate(slices):
            part = grad_out * xp.astype(saved == k, grad_out.dtype)
            dx[:, :, si, sj] = dx[:, :, si, sj] + part if overlapping else part
        return _unpad(dx, padding)
    xpad, out = saved
    n = padded_shape[0]
    per_image = math.prod(padded_shape[1:]) * (xp.finfo(grad_out.dtype).bits // 8)
    step = conv_chunk_size(per_image, n, CACHE_BLOCK_BYTES)
    for start in range(0, n, step):
        stop = min(n, start + step)
        # Walk the window in row-major order; the first input equal to the maximum takes the
        # whole gradient and leaves nothing for later ties (g - g is exactly 0). A slice of
        # images at a time keeps the walk's arrays in cache between its passes.
        block = slice(start, stop)
        x_b, out_b, dx_b = xpad[block, ...], out[block, ...], dx[block, ...]
        remaining = grad_out[block, ...]
        for k, (si, sj) in enumerate(slices):
            if k + 1 < len(slices):
                part = remaining * xp.astype(x_b[:, :, si, sj] == out_b, grad_out.dtype)
                remaining = remaining - part
            else:  # no earlier element was the maximum, so this one is (for finite inputs)
                part = remaining
            dx_b[:, :, si, sj] = dx_b[:, :, si, sj] + part if overlapping else part
    return _unpad(dx, padding)


def avgpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling, as ``torch.nn.functional.avg_pool2d`` (zero padding counted in the mean)."""
    kernel, stride, padding, out_size = _pool_geometry(x, kernel_size, stride, padding)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"padding {padding} must be at most half the kernel size {kernel}")
    xpad = pad2d(x, padding)
    slices = window_slices(kernel, stride, out_size)
    total = xpad[:, :, slices[0][0], slices[0][1]]
    for si, sj in slices[1:]:
        total = total + xpad[:, :, si, sj]
    out = total / float(len(slices))
    return out, (tuple(xpad.shape), kernel, stride, padding, out_size)


def avgpool2d_backward(grad_out, cache):
    """Gradient of `avgpool2d_forward`."""
    xp = array_namespace(grad_out)
    padded_shape, kernel, stride, padding, out_size = cache
    slices = window_slices(kernel, stride, out_size)
    share = grad_out / float(len(slices))
    overlapping = not _disjoint(kernel, stride)
    dx = _grad_buffer(xp, padded_shape, grad_out,
                          fill_zero=not _tiles(padded_shape[2:], kernel, stride, out_size) or overlapping)
    for si, sj in slices:
        dx[:, :, si, sj] = dx[:, :, si, sj] + share if overlapping else share
    return _unpad(dx, padding)


def log_softmax(x, axis: int = 1):
    """``log(softmax(x))`` computed without overflow: shift by the maximum first."""
    xp = array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis: int = 1):
    """Probabilities along ``axis``; stable for any finite input (1e4 included)."""
    xp = array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out, probs, axis: int = 1):
    """Jacobian-vector product of softmax: ``p * (g - sum(g * p))`` along ``axis``."""
    xp = array_namespace(grad_out, probs)
    return probs * (grad_out - xp.sum(grad_out * probs, axis=axis, keepdims=True))
