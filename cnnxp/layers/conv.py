"""Conv2D: multi-channel 2-D convolution with stride, padding and bias."""

from __future__ import annotations

import numpy as np  # host-side initialisation only

from .. import ops
from .._checks import check_choice, check_int, check_pair
from ..backend import blocks_for

# The fast twin of ops/conv.py; swap in `from ..ops import conv as kernels` to run the plain kernels.
from ..ops import conv_fast as kernels
from .base import Layer, init_weight, make_rng


class Conv2D(Layer):
    """2-D convolution over NCHW input, like `torch.nn.Conv2d <https://pytorch.org/docs/stable/generated/torch.nn.Conv2d.html>`_.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (int, int)
    bias : bool
    init : {"he", "glorot"}
        Kaiming normal (for layers followed by ReLU) or Glorot uniform.
    seed : int, numpy Generator or None
        Where the initial weights come from; the same seed gives the same weights on every device.
    algorithm : {"auto", "im2col", "toeplitz"}
        How the convolution is computed (`cnnxp.ops.conv_fast.conv2d_forward`); every choice gives
        the same result to rounding. ``auto`` picks the faster one for the layer's shape.

    ``params["weight"]`` has shape (out_channels, in_channels, kh, kw), ``params["bias"]`` (out_channels,).

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2D(1, 8, 3, padding=1, seed=0)
    >>> conv(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 8, 28, 28)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 init="he", seed=None, algorithm="auto"):
        super().__init__()
        self.algorithm = check_choice(algorithm, "Conv2D", "algorithm", ops.CONV_ALGORITHMS)
        in_channels = check_int(in_channels, "Conv2D", "in_channels")
        out_channels = check_int(out_channels, "Conv2D", "out_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = check_pair(kernel_size, "Conv2D", "kernel_size", least=1)
        self.stride = check_pair(stride, "Conv2D", "stride", least=1)
        self.padding = check_pair(padding, "Conv2D", "padding", least=0)
        kh, kw = self.kernel_size
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        rng = make_rng(seed)
        self.params["weight"] = init_weight(rng, (out_channels, in_channels, kh, kw), fan_in, fan_out, init)
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype=np.float32)

    def output_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2D expected input of shape (N, {self.in_channels}, H, W), got {tuple(input_shape)}"
            )
        n, _, h, w = input_shape
        return (n, self.out_channels,
                ops.conv_output_size(h, self.kernel_size[0], self.stride[0], self.padding[0]),
                ops.conv_output_size(w, self.kernel_size[1], self.stride[1], self.padding[1]))

    def forward(self, x):
        hint = "add batch and channel axes" if getattr(x, "ndim", 0) in (2, 3) else ""
        self._check_input(x, f"(N, {self.in_channels}, H, W)", self.in_channels, "in_channels", hint)
        # Training: the whole batch, its columns (or rows) kept for backward. Inference: im2col's
        # flat layout, and on a CPU cache-sized slices of the batch (the device's blocks).
        out, self.cache = kernels.conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
            algorithm=self.algorithm, inference=not self.training, blocks=blocks_for(x),
        )
        return out

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        grad_in, grad_w, grad_b = kernels.conv2d_backward(grad_out, self.cache, need_input_grad, blocks_for(grad_out))
        self.grads["weight"] = grad_w
        if "bias" in self.params:
            self.grads["bias"] = grad_b
        return grad_in

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if "bias" not in self.params:
            s += ", bias=False"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s
