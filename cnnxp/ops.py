"""Pure array functions behind the layers, written once against the Array API standard.

Every function takes its namespace from its inputs (``array_namespace``) and
allocates with their dtype and device, so the same code runs on NumPy, CuPy
and any other conforming library. Forward functions return ``(out, cache)``;
backward functions take ``(grad_out, cache)`` and return the gradients, so the
math can be tested without any layer class.

Layout notes
------------
Convolution works on a channels-first view of the batch, ``(C, N, H, W)``,
obtained with ``permute_dims`` (a view, no copy). Stacking one strided slice
per kernel offset along axis 1 gives ``(C, kh*kw, N, out_h, out_w)``, which
reshapes *without a copy* into the column matrix ``(C*kh*kw, N*out_h*out_w)``
whose row order matches ``weight.reshape(O, C*kh*kw)``. The whole batch is then
one matrix product, ``(O, C*kh*kw) @ (C*kh*kw, N*L)``, and its result, viewed as
``(O, N, out_h, out_w)``, is returned as the NCHW view ``(N, O, out_h, out_w)``.
When the next convolution permutes that view back to channels-first, it gets a
contiguous array again: the layout flows through the network without copies.
"""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of

__all__ = [
    "conv_output_size",
    "pad2d",
    "window_slices",
    "im2col",
    "col2im",
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


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
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


def col2im(cols, padded_shape, kernel, stride, out_size):
    """Adjoint of `im2col`: add each column entry back to the input position it came from.

    Returns the padded channels-first gradient ``(C, N, Hp, Wp)``. Each slice touches
    an element at most once, so ``dx[sl] = dx[sl] + part`` adds overlapping windows exactly.
    """
    xp = array_namespace(cols)
    c, n, hp, wp = padded_shape
    oh, ow = out_size
    slices = window_slices(kernel, stride, out_size)
    parts = xp.reshape(cols, (c, len(slices), n, oh, ow))
    dx = xp.zeros(padded_shape, dtype=cols.dtype, device=device_of(cols))
    for k, (si, sj) in enumerate(slices):
        dx[:, :, si, sj] = dx[:, :, si, sj] + parts[:, k, ...]
    return dx


def _check_conv_shapes(x, weight):
    if x.ndim != 4:
        raise ValueError(f"conv2d expected input of shape (N, C, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d weight of shape {tuple(weight.shape)} does not fit input with {x.shape[1]} channels"
        )


def conv2d_forward(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array (N, C, H, W)
    weight : array (O, C, kh, kw)
    bias : array (O,) or None
    stride, padding : int or (int, int)

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
    x_cnhw = pad2d(xp.permute_dims(x, (1, 0, 2, 3)), padding)
    cols = im2col(x_cnhw, (kh, kw), stride, out_size)
    out = xp.reshape(weight, (o, c * kh * kw)) @ cols
    if bias is not None:
        out = out + bias[:, None]
    out = xp.permute_dims(xp.reshape(out, (o, n, *out_size)), (1, 0, 2, 3))
    cache = (cols, tuple(x_cnhw.shape), weight, stride, padding, out_size)
    return out, cache


def conv2d_backward(grad_out, cache, need_input_grad=True):
    """Gradients of `conv2d_forward`: ``(grad_in, grad_weight, grad_bias)``.

    ``grad_in`` is None when ``need_input_grad`` is False (the first layer of a
    network: nothing upstream needs it, and col2im is most of the backward time).
    """
    xp = array_namespace(grad_out)
    cols, padded_shape, weight, stride, padding, out_size = cache
    o, c, kh, kw = weight.shape
    n = padded_shape[1]
    g = xp.reshape(xp.permute_dims(grad_out, (1, 0, 2, 3)), (o, n * out_size[0] * out_size[1]))
    grad_weight = xp.reshape(g @ xp.matrix_transpose(cols), weight.shape)
    grad_bias = xp.sum(g, axis=1)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    dcols = xp.matrix_transpose(xp.reshape(weight, (o, c * kh * kw))) @ g
    dx = col2im(dcols, padded_shape, (kh, kw), stride, out_size)
    ph, pw = padding
    dx = dx[:, :, ph : padded_shape[2] - ph, pw : padded_shape[3] - pw]
    return xp.permute_dims(dx, (1, 0, 2, 3)), grad_weight, grad_bias


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


def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling, as ``torch.nn.functional.max_pool2d``: padding acts as -inf.

    Returns ``(out, cache)``; the cache keeps, for every output, the offset of
    the first maximum in its window (row-major), which is PyTorch's tie rule.
    """
    xp = array_namespace(x)
    kernel, stride, padding, out_size = _pool_geometry(x, kernel_size, stride, padding)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"padding {padding} must be at most half the kernel size {kernel}")
    xpad = pad2d(x, padding, value=-float("inf"))
    slices = window_slices(kernel, stride, out_size)
    windows = xp.stack([xpad[:, :, si, sj] for si, sj in slices], axis=0)
    out = xp.max(windows, axis=0)
    argmax = xp.argmax(windows, axis=0)
    return out, (argmax, tuple(xpad.shape), kernel, stride, padding, out_size)


def maxpool2d_backward(grad_out, cache):
    """Gradient of `maxpool2d_forward`: each output's gradient goes to its window's first maximum."""
    xp = array_namespace(grad_out)
    argmax, padded_shape, kernel, stride, padding, out_size = cache
    dx = xp.zeros(padded_shape, dtype=grad_out.dtype, device=device_of(grad_out))
    for k, (si, sj) in enumerate(window_slices(kernel, stride, out_size)):
        dx[:, :, si, sj] = dx[:, :, si, sj] + xp.where(argmax == k, grad_out, 0.0)
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
    dx = xp.zeros(padded_shape, dtype=grad_out.dtype, device=device_of(grad_out))
    for si, sj in slices:
        dx[:, :, si, sj] = dx[:, :, si, sj] + share
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
