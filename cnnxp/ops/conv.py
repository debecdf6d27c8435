"""Convolution, plainly: im2col, one matrix product, and col2im for the input gradient.

This is the module to read first, and the oracle the fast kernels (`conv_fast`) are tested
against. A convolution is a matrix product once every window of the input is laid out as a
column: ``(O, C*kh*kw) @ (C*kh*kw, N*out_h*out_w)``, as in Chainer's ``im2col_cpu`` and
``tensordot``. Backward is two more products, and `col2im`, the adjoint of `im2col`.

Layout: the batch is viewed channels-first, ``(C, N, H, W)`` (``permute_dims``, no copy).
Stacking one strided slice per kernel offset along axis 1 gives ``(C, kh*kw, N, out_h,
out_w)``, which reshapes without a copy into columns whose row order matches
``weight.reshape(O, C*kh*kw)``. The product, viewed ``(O, N, out_h, out_w)``, is returned as
its NCHW view ``(N, O, out_h, out_w)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device as device_of

from .._checks import check_pair
from ._device import on_input_device
from ._namespace import array_namespace

__all__ = [
    "conv_output_size",
    "pad2d",
    "unpad2d",
    "window_slices",
    "im2col",
    "col2im",
    "conv_geometry",
    "ConvCache",
    "conv2d_forward",
    "conv2d_backward",
]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``(size - kernel + 2 * padding) // stride + 1``.

    Raises ValueError for stride < 1, negative padding, kernel < 1, or a kernel larger than
    the padded input; TypeError for a stride, padding or kernel that is not an int.
    """
    # Ints here, checked by check_pair all the same, so that the rules read as the layers' do.
    check_pair(stride, "", "stride", least=1)
    check_pair(padding, "", "padding", least=0)
    check_pair(kernel, "", "kernel_size", least=1)
    if kernel > size + 2 * padding:
        raise ValueError(
            f"kernel size {kernel} is larger than the padded input ({size} + 2*{padding} = "
            f"{size + 2 * padding}): use a smaller kernel, more padding or a larger input"
        )
    return (size - kernel + 2 * padding) // stride + 1


@on_input_device
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


def unpad2d(x, padding: tuple[int, int]):
    """The inside of `pad2d`'s padding: a view of ``x`` without ``padding`` on its last two axes."""
    ph, pw = padding
    return x[..., ph : x.shape[-2] - ph, pw : x.shape[-1] - pw]


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


@on_input_device
def im2col(x_cnhw, kernel, stride, out_size):
    """Columns ``(C*kh*kw, N*out_h*out_w)`` of a padded channels-first batch ``(C, N, Hp, Wp)``."""
    xp = array_namespace(x_cnhw)
    c, n = x_cnhw.shape[:2]
    slices = window_slices(kernel, stride, out_size)
    cols = xp.stack([x_cnhw[:, :, si, sj] for si, sj in slices], axis=1)
    return xp.reshape(cols, (c * len(slices), n * out_size[0] * out_size[1]))


@on_input_device
def col2im(cols, padded_shape, kernel, stride, out_size):
    """Adjoint of `im2col`: add each column entry back to the input position it came from.

    Returns the padded channels-first gradient ``(C, N, Hp, Wp)``. Each slice touches an
    element at most once, so ``dx[sl] = dx[sl] + part`` adds overlapping windows exactly
    (no ``add.at``, no integer-array indexing: neither is in the standard).
    """
    xp = array_namespace(cols)
    c, n = padded_shape[:2]
    slices = window_slices(kernel, stride, out_size)
    parts = xp.reshape(cols, (c, len(slices), n, *out_size))
    dx = xp.zeros(padded_shape, dtype=cols.dtype, device=device_of(cols))
    for k, (si, sj) in enumerate(slices):
        dx[:, :, si, sj] = dx[:, :, si, sj] + parts[:, k, ...]
    return dx


def conv_geometry(x, weight, stride, padding):
    """``(stride, padding, out_size)`` as pairs, after checking that ``x`` (N, C, H, W) fits ``weight`` (O, C, kh, kw).

    ValueError for other shapes, a stride below 1, a negative padding or a kernel larger than
    the padded input.
    """
    if x.ndim != 4:
        raise ValueError(f"conv2d expected input of shape (N, C, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d weight of shape {tuple(weight.shape)} does not fit input with {x.shape[1]} channels"
        )
    stride = check_pair(stride, "", "stride", least=1)
    padding = check_pair(padding, "", "padding", least=0)
    (h, w), (kh, kw) = x.shape[2:], weight.shape[2:]
    out_size = (conv_output_size(h, kh, stride[0], padding[0]), conv_output_size(w, kw, stride[1], padding[1]))
    return stride, padding, out_size


class ConvCache(NamedTuple):
    """What `conv2d_backward` needs: the columns (for the weight gradient) and the geometry."""

    cols: Any  # (C*kh*kw, N*out_h*out_w)
    weight: Any  # (O, C, kh, kw)
    padded_shape: tuple  # (C, N, Hp, Wp): the channels-first padded input the columns came from
    stride: tuple
    padding: tuple
    out_size: tuple


@on_input_device
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, *, algorithm="auto", inference=False, blocks=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``: ``(out, cache)``.

    Parameters
    ----------
    x : array (N, C, H, W)
    weight : array (O, C, kh, kw)
    bias : array (O,) or None
    stride, padding : int or (int, int)
    algorithm, inference, blocks
        Ignored: the fast twin's speed options (`conv_fast.conv2d_forward`), taken so that the
        two modules are interchangeable behind Conv2D; this module has one algorithm.

    Returns
    -------
    out : array (N, O, out_h, out_w)
    cache : `ConvCache`
    """
    xp = array_namespace(x, weight)
    stride, padding, out_size = conv_geometry(x, weight, stride, padding)
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    x_padded = pad2d(xp.permute_dims(x, (1, 0, 2, 3)), padding)
    cols = im2col(x_padded, (kh, kw), stride, out_size)
    out = xp.reshape(weight, (o, c * kh * kw)) @ cols
    if bias is not None:
        out = out + bias[:, None]
    out = xp.permute_dims(xp.reshape(out, (o, n, *out_size)), (1, 0, 2, 3))
    return out, ConvCache(cols, weight, tuple(x_padded.shape), stride, padding, out_size)


@on_input_device
def conv2d_backward(grad_out, cache: ConvCache, need_input_grad=True, blocks=None):
    """Gradients of `conv2d_forward`: ``(grad_in, grad_weight, grad_bias)``.

    ``grad_in`` is None when ``need_input_grad`` is False (the first layer of a network:
    nothing upstream needs it). ``blocks`` is ignored, as in the forward.
    """
    xp = array_namespace(grad_out)
    o, c, kh, kw = cache.weight.shape
    n = cache.padded_shape[1]
    g = xp.reshape(xp.permute_dims(grad_out, (1, 0, 2, 3)), (o, n * cache.out_size[0] * cache.out_size[1]))
    grad_bias = xp.sum(g, axis=1)
    grad_weight = xp.reshape(g @ xp.matrix_transpose(cache.cols), cache.weight.shape)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    grad_cols = xp.matrix_transpose(xp.reshape(cache.weight, (o, c * kh * kw))) @ g
    grad_padded = col2im(grad_cols, cache.padded_shape, (kh, kw), cache.stride, cache.out_size)
    grad_in = xp.permute_dims(unpad2d(grad_padded, cache.padding), (1, 0, 2, 3))
    return grad_in, grad_weight, grad_bias
