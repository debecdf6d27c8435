"""Pooling, plainly: stack every window, then reduce; forward and backward side by side.

This is the module to read first, and the oracle the fast max pool (`pool_fast`) is tested
against. Windows are the strided slices of `conv.window_slices`, one per kernel offset.

Max pooling follows PyTorch: padding acts as -inf, and when several inputs of a window tie
for the maximum the gradient goes to the first of them in row-major order (``argmax`` returns
the first maximum), never to the padding. Average pooling counts the zero padding in each
window's mean (PyTorch's default ``count_include_pad=True``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device as device_of

from .._checks import check_pair
from ._device import on_input_device
from ._namespace import array_namespace
from .conv import conv_output_size, pad2d, unpad2d, window_slices

__all__ = [
    "check_pool_padding",
    "PoolGeometry",
    "pool_geometry",
    "MaxPoolCache",
    "AvgPoolCache",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
]


def _check_cache(cache, kind, where: str) -> None:
    if not isinstance(cache, kind):
        raise TypeError(f"{where} expected a {kind.__name__} from its forward, got {type(cache).__name__}")


def check_pool_padding(padding: tuple[int, int], kernel: tuple[int, int], owner: str = "") -> None:
    """ValueError unless ``padding`` is at most half ``kernel`` on both axes (as PyTorch requires:
    otherwise a window could hold nothing but padding)."""
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        prefix = f"{owner} " if owner else ""
        raise ValueError(f"{prefix}padding must be at most half the kernel size, got padding={padding} "
                         f"for kernel_size={kernel}")


class PoolGeometry(NamedTuple):
    """The windows of a pooling: their size, step and padding, on an input of ``padded_shape``."""

    padded_shape: tuple  # (N, C, H + 2*ph, W + 2*pw)
    kernel: tuple
    stride: tuple
    padding: tuple
    out_size: tuple

    def slices(self):
        return window_slices(self.kernel, self.stride, self.out_size)


def pool_geometry(x, kernel_size, stride=None, padding=0) -> PoolGeometry:
    """Check a pooling's arguments against its input ``x`` (N, C, H, W); ``stride`` defaults to the kernel."""
    if x.ndim != 4:
        raise ValueError(f"pooling expected input of shape (N, C, H, W), got {tuple(x.shape)}")
    kernel = check_pair(kernel_size, "", "kernel_size", least=1)
    stride = kernel if stride is None else check_pair(stride, "", "stride", least=1)
    padding = check_pair(padding, "", "padding", least=0)
    check_pool_padding(padding, kernel)
    n, c, h, w = x.shape
    out_size = (conv_output_size(h, kernel[0], stride[0], padding[0]),
                conv_output_size(w, kernel[1], stride[1], padding[1]))
    return PoolGeometry((n, c, h + 2 * padding[0], w + 2 * padding[1]), kernel, stride, padding, out_size)


class MaxPoolCache(NamedTuple):
    argmax: Any  # (N, C, out_h, out_w) integers: the offset k of each window's first maximum
    geometry: PoolGeometry


@on_input_device
def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling, as ``torch.nn.functional.max_pool2d``: ``(out, MaxPoolCache)``.

    A window holding NaN outputs NaN and sends its gradient to its first NaN (PyTorch: the last).
    """
    xp = array_namespace(x)
    geo = pool_geometry(x, kernel_size, stride, padding)
    slices = geo.slices()
    xpad = pad2d(x, geo.padding, value=-float("inf"))
    windows = xp.stack([xpad[:, :, si, sj] for si, sj in slices], axis=0)
    out = xp.max(windows, axis=0)
    if geo.padding == (0, 0):  # argmax is the first maximum
        argmax = xp.argmax(windows, axis=0)
    else:  # the first maximum that is not padding, even where the window's inputs are all -inf
        inside = pad2d(xp.ones(x.shape[2:], dtype=xp.bool, device=device_of(x)), geo.padding, value=False)
        hits = xp.stack([(windows[k, ...] == out) & inside[si, sj] for k, (si, sj) in enumerate(slices)], axis=0)
        # a window whose maximum is NaN has no hit: there, the first NaN, as without padding
        argmax = xp.where(xp.any(hits, axis=0), xp.argmax(xp.astype(hits, xp.int8), axis=0),
                          xp.argmax(windows, axis=0))
    return out, MaxPoolCache(argmax, geo)


@on_input_device
def maxpool2d_backward(grad_out, cache: MaxPoolCache, blocks=None):
    """Gradient of `maxpool2d_forward`: each output's gradient goes to its window's first maximum.

    ``blocks`` is ignored (the fast twin's batch slicing, `pool_fast.maxpool2d_backward`).
    """
    _check_cache(cache, MaxPoolCache, "maxpool2d_backward")
    xp = array_namespace(grad_out)
    geo = cache.geometry
    dx = xp.zeros(geo.padded_shape, dtype=grad_out.dtype, device=device_of(grad_out))
    for k, (si, sj) in enumerate(geo.slices()):
        dx[:, :, si, sj] = dx[:, :, si, sj] + grad_out * xp.astype(cache.argmax == k, grad_out.dtype)
    return unpad2d(dx, geo.padding)


class AvgPoolCache(NamedTuple):
    geometry: PoolGeometry


@on_input_device
def avgpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling, as ``torch.nn.functional.avg_pool2d`` (zero padding counted in the mean)."""
    geo = pool_geometry(x, kernel_size, stride, padding)
    xpad = pad2d(x, geo.padding)
    slices = geo.slices()
    total = xpad[:, :, slices[0][0], slices[0][1]]
    for si, sj in slices[1:]:
        total = total + xpad[:, :, si, sj]
    return total / float(len(slices)), AvgPoolCache(geo)


@on_input_device
def avgpool2d_backward(grad_out, cache: AvgPoolCache):
    """Gradient of `avgpool2d_forward`: each window's inputs share its gradient equally."""
    _check_cache(cache, AvgPoolCache, "avgpool2d_backward")
    xp = array_namespace(grad_out)
    geo = cache.geometry
    share = grad_out / float(len(geo.slices()))
    dx = xp.zeros(geo.padded_shape, dtype=grad_out.dtype, device=device_of(grad_out))
    for si, sj in geo.slices():
        dx[:, :, si, sj] = dx[:, :, si, sj] + share
    return unpad2d(dx, geo.padding)
