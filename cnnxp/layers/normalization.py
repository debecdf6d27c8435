"""BatchNorm2D."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np  # host-side initialisation only
from array_api_compat import array_namespace

from .._checks import check_int, check_real
from .base import Layer


class BatchNormCache(NamedTuple):
    """What backward needs: the normalised input, ``1 / sqrt(var + eps)`` per channel, and whether
    the statistics were the batch's own (training: their gradient flows back) or the running ones."""

    x_hat: Any
    inv_std: Any
    batch_stats: bool


class BatchNorm2D(Layer):
    """Batch normalisation over (N, H, W) per channel, like `torch.nn.BatchNorm2d <https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html>`_.

    Training mode normalises with the batch's mean and biased variance and updates
    ``running = (1 - momentum) * running + momentum * batch`` (the running variance
    takes the unbiased batch variance, as PyTorch does); eval mode uses the running
    statistics. ``params``: ``weight`` (gamma) and ``bias`` (beta); ``buffers``:
    ``running_mean`` and ``running_var``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        num_features = check_int(num_features, "BatchNorm2D", "num_features")
        eps = check_real(eps, "BatchNorm2D", "eps", 0.0, low_open=True)
        momentum = check_real(momentum, "BatchNorm2D", "momentum", 0.0, 1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.params["weight"] = np.ones(num_features, dtype=np.float32)
        self.params["bias"] = np.zeros(num_features, dtype=np.float32)
        self.buffers["running_mean"] = np.zeros(num_features, dtype=np.float32)
        self.buffers["running_var"] = np.ones(num_features, dtype=np.float32)

    @property
    def running_mean(self):
        return self.buffers["running_mean"]

    @property
    def running_var(self):
        return self.buffers["running_var"]

    def output_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2D expected input of shape (N, {self.num_features}, H, W), got {tuple(input_shape)}"
            )
        return tuple(input_shape)

    def forward(self, x):
        self._check_input(x, f"(N, {self.num_features}, H, W)", self.num_features, "num_features")
        xp = array_namespace(x)
        axes = (0, 2, 3)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if self.training:
            if count < 2:
                raise ValueError(
                    f"BatchNorm2D in training mode needs more than 1 value per channel, got input "
                    f"{tuple(x.shape)}: use a larger batch or call .eval()"
                )
            mean = xp.mean(x, axis=axes)
            centered = x - mean[:, None, None]
            var = xp.mean(centered * centered, axis=axes)
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            self.buffers["running_mean"] = (1 - m) * rm + m * xp.astype(mean, rm.dtype, copy=False)
            unbiased = var * (count / (count - 1))
            self.buffers["running_var"] = (1 - m) * rv + m * xp.astype(unbiased, rv.dtype, copy=False)
        else:
            var = self.buffers["running_var"]
            centered = x - self.buffers["running_mean"][:, None, None]
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centered * inv_std[:, None, None]
        self.cache = BatchNormCache(x_hat, inv_std, self.training)
        return self.params["weight"][:, None, None] * x_hat + self.params["bias"][:, None, None]

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        xp = array_namespace(grad_out)
        x_hat, inv_std, batch_stats = self.cache
        axes = (0, 2, 3)
        self.grads["bias"] = xp.sum(grad_out, axis=axes)
        self.grads["weight"] = xp.sum(grad_out * x_hat, axis=axes)
        if not need_input_grad:
            return None
        scale = (self.params["weight"] * inv_std)[:, None, None]
        if not batch_stats:
            return grad_out * scale
        count = grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3]
        mean_g = self.grads["bias"] / count
        mean_gx = self.grads["weight"] / count
        return scale * (grad_out - mean_g[:, None, None] - x_hat * mean_gx[:, None, None])

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
