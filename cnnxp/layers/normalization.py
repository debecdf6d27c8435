"""BatchNorm2D."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np  # host-side initialisation only
from array_api_compat import device as device_of

from .._checks import check_int, check_real
from ..ops._namespace import array_namespace
from .base import Layer


class BatchNormCache(NamedTuple):
    """What backward needs: the normalised input, ``1 / sqrt(var + eps)`` per channel, whether the
    statistics were the batch's own (training: their gradient flows back) or the running ones,
    and how many values per channel they were taken over (all processes', when synchronised)."""

    x_hat: Any
    inv_std: Any
    batch_stats: bool
    count: Any  # an int, or a 0-d array of the synchronised count


class BatchNorm2D(Layer):
    """Batch normalisation over (N, H, W) per channel, like `torch.nn.BatchNorm2d <https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html>`_.

    Training mode normalises with the batch's mean and biased variance and updates
    ``running = (1 - momentum) * running + momentum * batch`` (the running variance
    takes the unbiased batch variance, as PyTorch does); eval mode uses the running
    statistics. ``params``: ``weight`` (gamma) and ``bias`` (beta); ``buffers``:
    ``running_mean`` and ``running_var``.

    ``comm``: in data-parallel training (`cnnxp.distributed`), the communicator over which the
    statistics are synchronised, so that every process normalises with the global batch's, as
    one process would (``torch.nn.SyncBatchNorm``): one allreduce of per-channel sums in
    forward, one in backward, none in eval mode. None (the default): this process's batch only.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        num_features = check_int(num_features, "BatchNorm2D", "num_features")
        eps = check_real(eps, "BatchNorm2D", "eps", 0.0, low_open=True)
        momentum = check_real(momentum, "BatchNorm2D", "momentum", 0.0, 1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.comm = None
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

    @property
    def synchronised(self) -> bool:
        return self.comm is not None and self.comm.size > 1

    def output_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2D expected input of shape (N, {self.num_features}, H, W), got {tuple(input_shape)}"
            )
        return tuple(input_shape)

    def forward(self, x):
        self._check_input(x, f"(N, {self.num_features}, H, W)", self.num_features, "num_features")
        xp = array_namespace(x)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if not self.training:
            var = self.buffers["running_var"]
            centered = x - self.buffers["running_mean"][:, None, None]
        else:
            if self.synchronised:
                mean, var, count = self._global_stats(x)
            else:
                if count < 2:
                    raise ValueError(
                        f"BatchNorm2D in training mode needs more than 1 value per channel, got input "
                        f"{tuple(x.shape)}: use a larger batch or call .eval()"
                    )
                mean = xp.mean(x, axis=(0, 2, 3))
            centered = x - mean[:, None, None]
            if not self.synchronised:
                var = xp.mean(centered * centered, axis=(0, 2, 3))
            self._update_running(xp, mean, var * (count / (count - 1)))
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centered * inv_std[:, None, None]
        self.cache = BatchNormCache(x_hat, inv_std, self.training, count)
        return self.params["weight"][:, None, None] * x_hat + self.params["bias"][:, None, None]

    def _update_running(self, xp, mean, unbiased_var) -> None:
        m = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        self.buffers["running_mean"] = (1 - m) * rm + m * xp.astype(mean, rm.dtype, copy=False)
        self.buffers["running_var"] = (1 - m) * rv + m * xp.astype(unbiased_var, rv.dtype, copy=False)

    def _global_stats(self, x):
        """Mean, biased variance and count per channel over every process's batch: one allreduce of
        [sum, sum of squares, count], in float64 so that ``E[x^2] - mean^2`` loses nothing that matters."""
        xp = array_namespace(x)
        wide = xp.astype(x, xp.float64)
        count = xp.asarray([float(x.shape[0] * x.shape[2] * x.shape[3])], dtype=xp.float64, device=device_of(x))
        sums = xp.concat([xp.sum(wide, axis=(0, 2, 3)), xp.sum(wide * wide, axis=(0, 2, 3)), count])
        sums = self.comm.allreduce(sums)
        c = self.num_features
        total = sums[2 * c]
        mean = sums[:c] / total
        var = xp.maximum(sums[c:2 * c] / total - mean * mean, 0.0)
        return xp.astype(mean, x.dtype), xp.astype(var, x.dtype), xp.astype(total, x.dtype)

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        xp = array_namespace(grad_out)
        x_hat, inv_std, batch_stats, count = self.cache
        axes = (0, 2, 3)
        sum_g = xp.sum(grad_out, axis=axes)
        sum_gx = xp.sum(grad_out * x_hat, axis=axes)
        self.grads["bias"], self.grads["weight"] = sum_g, sum_gx  # this process's share, summed by the optimizer
        scale = (self.params["weight"] * inv_std)[:, None, None]
        if batch_stats and self.synchronised:
            return self._synchronised_grad_in(grad_out, x_hat, scale, sum_g, sum_gx, count)
        if not need_input_grad:
            return None
        if not batch_stats:
            return grad_out * scale
        mean_g = sum_g / count
        mean_gx = sum_gx / count
        return scale * (grad_out - mean_g[:, None, None] - x_hat * mean_gx[:, None, None])

    def _synchronised_grad_in(self, grad_out, x_hat, scale, sum_g, sum_gx, count):
        """The input gradient when the statistics came from every process's batch.

        Each process's ``grad_out`` is the gradient of its own mean loss, ``n / N`` times that of
        the global batch's (``n`` of its rows, ``N`` in all); the global sums are taken over the
        global loss's gradients (one allreduce, every process takes part, even with no rows), and
        the result goes back to this process's scale, which the optimizer then weighs.
        """
        xp = array_namespace(grad_out)
        n, _, h, w = grad_out.shape
        share = (n * h * w) / count  # n / N, a 0-d array: no value is read back
        both = self.comm.allreduce(xp.concat([sum_g, sum_gx]) * share)
        if n == 0:
            return grad_out * scale
        c = self.num_features
        mean_g, mean_gx = both[:c] / count, both[c:] / count
        return scale * (grad_out - (mean_g[:, None, None] + x_hat * mean_gx[:, None, None]) / share)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
