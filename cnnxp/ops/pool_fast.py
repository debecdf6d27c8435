"""The pooling the layers run: `pool`'s max pooling made fast for windows that do not overlap.

Each trick here is tested against the plain `pool` module, which gives identical results.

- Separable maximum: instead of stacking every window, take pairwise ``maximum`` over the
  kernel's rows (strided slices of the padded input), then over its columns. Nothing is kept
  but the padded input and the output; backward finds each window's first maximum again by
  walking the window in row-major order (`_first_max_backward`), in cache-sized slices of the
  batch on a CPU (``Blocks.cache_block_bytes``). This is much cheaper than an ``argmax`` over stacked
  windows, and gives the same gradient, ties included. `maxpool2d_forward` takes it for windows
  that do not overlap (stride >= kernel, the usual ``MaxPool2D(2)``) and the plain stacked path
  otherwise; `maxpool2d_separable_forward` takes it always.
- Selection multiplies by a mask cast to the data type rather than calling ``where`` (NumPy's
  ``where`` is several times slower than a multiply; docs/performance.md).
- Gradient buffers are stored like the layer's input (`_grad_buffer`), so the layer below reads
  its gradient in the order it wrote its output; windows that tile the input leave the buffer
  uninitialised, and windows that do not overlap write their gradient instead of adding it.

NaN: a window holding NaN outputs NaN on both paths, but the separable path then sends that
window's gradient to its last element and the stacked one to its first NaN (PyTorch: the last NaN).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import device as device_of

from . import pool
from ._device import on_input_device
from ._namespace import array_namespace
from .blocks import Blocks, images_per_slice
from .conv import pad2d, unpad2d
from .conv_fast import windows_disjoint, windows_tile
from .pool import AvgPoolCache, MaxPoolCache, PoolGeometry, avgpool2d_forward, pool_geometry

__all__ = [
    "SeparableMaxPoolCache",
    "maxpool2d_forward",
    "maxpool2d_separable_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
]


class SeparableMaxPoolCache(NamedTuple):
    """What the first-maximum walk searches: ``searched`` is the input as the windows see it (the
    padded input with its padding set to NaN, `_padding_equals_nothing`, or the input itself when
    there is no padding), ``out`` the maxima (N, C, out_h, out_w)."""

    searched: Any
    out: Any
    geometry: PoolGeometry


@on_input_device
def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling, as `pool.maxpool2d_forward`: separable when windows do not overlap, else stacked.

    Returns ``(out, SeparableMaxPoolCache or pool.MaxPoolCache)``.
    """
    geo = pool_geometry(x, kernel_size, stride, padding)
    if windows_disjoint(geo.kernel, geo.stride):
        return _separable_forward(x, geo)
    return pool.maxpool2d_forward(x, kernel_size, stride, padding)


@on_input_device
def maxpool2d_separable_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling by the separable maximum, whatever the windows (overlapping ones too)."""
    return _separable_forward(x, pool_geometry(x, kernel_size, stride, padding))


@on_input_device
def maxpool2d_backward(grad_out, cache, blocks: Blocks | None = None):
    """Gradient of `maxpool2d_forward`: each output's gradient goes to its window's first maximum.

    The separable path's walk runs over slices of the batch of at most ``blocks.cache_block_bytes``
    (None, or no ``blocks``: the whole batch at once).
    """
    if isinstance(cache, MaxPoolCache):
        return _stacked_backward(grad_out, cache)
    if not isinstance(cache, SeparableMaxPoolCache):
        raise TypeError(f"maxpool2d_backward expected a cache from maxpool2d_forward, got {type(cache).__name__}")
    return _first_max_backward(grad_out, cache, None if blocks is None else blocks.cache_block_bytes)


def _separable_forward(x, geo: PoolGeometry):
    xp = array_namespace(x)
    xpad = pad2d(x, geo.padding, value=-float("inf"))
    (kh, kw), (sh, sw), (oh, ow) = geo.kernel, geo.stride, geo.out_size
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
    if geo.padding != (0, 0):  # so that backward's first-maximum search skips it
        _padding_equals_nothing(xpad, geo.padding)
    return out, SeparableMaxPoolCache(xpad, out, geo)


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


def _first_max_backward(grad_out, cache: SeparableMaxPoolCache, block_bytes):
    xp = array_namespace(grad_out)
    geo = cache.geometry
    slices = geo.slices()
    overlapping = not windows_disjoint(geo.kernel, geo.stride)
    dx = _grad_buffer(xp, geo.padded_shape, grad_out, layout=cache.searched,
                      fill_zero=overlapping or not windows_tile(geo.padded_shape[2:], geo.kernel, geo.stride,
                                                                geo.out_size))
    n = geo.padded_shape[0]
    per_image = math.prod(geo.padded_shape[1:]) * (xp.finfo(grad_out.dtype).bits // 8)
    step = images_per_slice(per_image, n, block_bytes)
    if step >= n:
        _walk(xp, cache.searched, cache.out, grad_out, dx, slices, overlapping)
    else:  # a slice of images at a time keeps the walk's arrays in cache between its passes
        for start in range(0, n, step):
            block = slice(start, min(n, start + step))
            _walk(xp, cache.searched[block, ...], cache.out[block, ...], grad_out[block, ...], dx[block, ...], slices,
                  overlapping)
    return unpad2d(dx, geo.padding)


def _stacked_backward(grad_out, cache: MaxPoolCache):
    """`pool.maxpool2d_backward`, into a buffer stored channels-first (the order an im2col
    convolution below reads without a copy), writing where windows do not overlap."""
    xp = array_namespace(grad_out)
    geo = cache.geometry
    overlapping = not windows_disjoint(geo.kernel, geo.stride)
    dx = _grad_buffer(xp, geo.padded_shape, grad_out, fill_zero=True)
    for k, (si, sj) in enumerate(geo.slices()):
        part = grad_out * xp.astype(cache.argmax == k, grad_out.dtype)
        dx[:, :, si, sj] = dx[:, :, si, sj] + part if overlapping else part
    return unpad2d(dx, geo.padding)


def _walk(xp, padded, out, grad_out, dx, slices, overlapping) -> None:
    """Walk the window in row-major order; the first input equal to the maximum takes the whole
    gradient and leaves nothing for later ties (g - g is exactly 0)."""
    remaining = grad_out
    for k, (si, sj) in enumerate(slices):
        if k + 1 < len(slices):
            part = remaining * xp.astype(padded[:, :, si, sj] == out, grad_out.dtype)
            remaining = remaining - part
        else:  # no earlier element was the maximum, so this one is (for finite inputs)
            part = remaining
        dx[:, :, si, sj] = dx[:, :, si, sj] + part if overlapping else part


@on_input_device
def avgpool2d_backward(grad_out, cache: AvgPoolCache):
    """Gradient of `pool.avgpool2d_forward` (re-exported here as `avgpool2d_forward`), into a buffer
    stored channels-first, the order im2col convolutions read without a copy."""
    if not isinstance(cache, AvgPoolCache):
        raise TypeError(f"avgpool2d_backward expected an AvgPoolCache from its forward, got {type(cache).__name__}")
    xp = array_namespace(grad_out)
    geo = cache.geometry
    slices = geo.slices()
    share = grad_out / float(len(slices))
    overlapping = not windows_disjoint(geo.kernel, geo.stride)
    dx = _grad_buffer(xp, geo.padded_shape, grad_out,
                      fill_zero=overlapping or not windows_tile(geo.padded_shape[2:], geo.kernel, geo.stride,
                                                                geo.out_size))
    for si, sj in slices:
        dx[:, :, si, sj] = dx[:, :, si, sj] + share if overlapping else share
    return unpad2d(dx, geo.padding)


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
