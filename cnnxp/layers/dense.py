"""Dense: a fully connected layer."""

from __future__ import annotations

import numpy as np  # host-side initialisation only

from .._checks import check_int
from ..ops._namespace import array_namespace
from .base import Layer, init_weight, make_rng


class Dense(Layer):
    """``y = x @ weight.T + bias``, like `torch.nn.Linear <https://pytorch.org/docs/stable/generated/torch.nn.Linear.html>`_.

    ``params["weight"]`` has shape (out_features, in_features), ``params["bias"]`` (out_features,).
    ``init`` is ``"he"`` (for layers followed by ReLU) or ``"glorot"`` (for the logits).
    """

    def __init__(self, in_features, out_features, bias=True, init="he", seed=None):
        super().__init__()
        in_features = check_int(in_features, "Dense", "in_features")
        out_features = check_int(out_features, "Dense", "out_features")
        self.in_features, self.out_features = in_features, out_features
        rng = make_rng(seed)
        self.params["weight"] = init_weight(rng, (out_features, in_features), in_features, out_features, init)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype=np.float32)

    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[1] != self.in_features:
            raise ValueError(
                f"Dense expected input of shape (N, {self.in_features}), got {tuple(input_shape)}"
            )
        return (input_shape[0], self.out_features)

    def forward(self, x):
        hint = "add Flatten() before Dense" if getattr(x, "ndim", 0) > 2 else ""
        self._check_input(x, f"(N, {self.in_features})", self.in_features, "in_features", hint)
        xp = array_namespace(x)
        out = x @ xp.matrix_transpose(self.params["weight"])
        if "bias" in self.params:
            out += self.params["bias"]
        self.cache = x
        return out

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        xp = array_namespace(grad_out)
        self.grads["weight"] = xp.matrix_transpose(grad_out) @ self.cache
        if "bias" in self.params:
            self.grads["bias"] = xp.sum(grad_out, axis=0)
        return grad_out @ self.params["weight"] if need_input_grad else None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}" + ("" if "bias" in self.params else ", bias=False")
