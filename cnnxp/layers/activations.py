"""Layers without parameters: ReLU, Flatten and Softmax."""

from __future__ import annotations

import math

from .. import ops
from ..ops._namespace import array_namespace
from .base import Layer


class ReLU(Layer):
    """``max(x, 0)``; the gradient at 0 is 0, as in PyTorch.

    Forward is one ``maximum`` against a 0-d zero; backward multiplies by the
    mask ``out > 0`` cast to the data type. Both are several times faster than
    ``where`` on NumPy, and the cache is the output itself (no extra memory).
    """

    def forward(self, x):
        out = array_namespace(x).maximum(x, 0.0)  # a Python scalar keeps x's dtype (the standard, 2024.12)
        self.cache = out
        return out

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        xp = array_namespace(grad_out)
        return grad_out * xp.astype(self.cache > 0, grad_out.dtype)


class Flatten(Layer):
    """Flatten every axis but the batch axis: (N, C, H, W) -> (N, C*H*W)."""

    def output_shape(self, input_shape):
        size = 1
        for d in input_shape[1:]:
            size *= d
        return (input_shape[0], size)

    def forward(self, x):
        if getattr(x, "ndim", 0) < 2:
            raise ValueError(f"Flatten expected input with a batch axis (N, ...), got {tuple(x.shape)}")
        self.cache = x
        return array_namespace(x).reshape(x, (x.shape[0], math.prod(x.shape[1:])))  # not -1: N may be 0

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        xp = array_namespace(grad_out)
        # Stored like the input (``empty_like`` keeps NumPy's and CuPy's memory order), so the
        # layers below read gradient and cache in the same order (docs/performance.md).
        grad_in = xp.empty_like(self.cache, dtype=grad_out.dtype)
        grad_in[...] = xp.reshape(grad_out, tuple(self.cache.shape))
        return grad_in


class Softmax(Layer):
    """Probabilities over axis 1 of ``(N, classes, ...)``, with the true Jacobian-vector product as backward.

    To train a classifier, feed the logits to `cnnxp.losses.softmax_cross_entropy`
    instead: it fuses the two and is exact for any logits.
    """

    def forward(self, x):
        if getattr(x, "ndim", 0) < 2:
            self._check_rank(x, 2, "(N, classes, ...)")
        self.cache = ops.softmax(x, axis=1)
        return self.cache

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        return ops.softmax_backward(grad_out, self.cache, axis=1)
