"""MaxPool2D and AvgPool2D."""

from __future__ import annotations

from .. import ops
from .._checks import check_pair
from ..backend import blocks_for

# The fast twin of ops/pool.py; swap in `from ..ops import pool as kernels` to run the plain kernels.
from ..ops import pool_fast as kernels
from ..ops.pool import check_pool_padding
from .base import Layer


class _Pool2D(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = check_pair(kernel_size, self.name, "kernel_size", least=1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, self.name, "stride", least=1)
        self.padding = check_pair(padding, self.name, "padding", least=0)
        check_pool_padding(self.padding, self.kernel_size, self.name)

    def output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name} expected input of shape (N, C, H, W), got {tuple(input_shape)}")
        n, c, h, w = input_shape
        return (n, c,
                ops.conv_output_size(h, self.kernel_size[0], self.stride[0], self.padding[0]),
                ops.conv_output_size(w, self.kernel_size[1], self.stride[1], self.padding[1]))

    def _check(self, x):
        hint = "add batch and channel axes" if getattr(x, "ndim", 0) in (2, 3) else ""
        self._check_rank(x, 4, "(N, C, H, W)", hint)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}"
        return s + (f", padding={self.padding}" if self.padding != (0, 0) else "")


class MaxPool2D(_Pool2D):
    """Max pooling, like `torch.nn.MaxPool2d <https://pytorch.org/docs/stable/generated/torch.nn.MaxPool2d.html>`_.

    ``stride`` defaults to ``kernel_size``; padding acts as -inf (it never wins);
    when several inputs of a window tie for the maximum, the gradient goes to the
    first of them in row-major order, as in PyTorch.
    """

    def forward(self, x):
        self._check(x)
        out, self.cache = kernels.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        return kernels.maxpool2d_backward(grad_out, self.cache, blocks_for(grad_out))


class AvgPool2D(_Pool2D):
    """Average pooling, like `torch.nn.AvgPool2d <https://pytorch.org/docs/stable/generated/torch.nn.AvgPool2d.html>`_.

    Zero padding is counted in each window's mean (PyTorch's default ``count_include_pad=True``).
    """

    def forward(self, x):
        self._check(x)
        out, self.cache = kernels.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        return kernels.avgpool2d_backward(grad_out, self.cache)
