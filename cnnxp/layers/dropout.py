"""Dropout with masks drawn on the host from a seeded generator."""

from __future__ import annotations

import json

import numpy as np  # host-side RNG only: masks are drawn here, then moved to the input's device
from array_api_compat import array_namespace

from .._checks import check_real
from ..backend import array_device, to_device
from .base import Layer, make_rng


class Dropout(Layer):
    """Zero each element with probability ``p`` in training and scale the rest by ``1 / (1 - p)``.

    Identity in eval mode. Masks come from a NumPy Generator (``seed``) on the host,
    so a seed gives the same masks on every device; `get_rng_state` / `set_rng_state`
    make training resumable exactly.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = check_real(p, "Dropout", "probability", 0.0, 1.0)
        self.rng = np.random.default_rng(make_rng(seed).integers(2**63)) if seed is None else make_rng(seed)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.cache = 1.0
            return x
        xp = array_namespace(x)
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        keep = self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p  # bool: 1 byte to move
        mask = xp.astype(to_device(keep, array_device(x)), x.dtype) * scale
        self.cache = mask
        return x * mask

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        return grad_out * self.cache

    def get_rng_state(self) -> str:
        """The mask generator's state as a JSON string (storable in an ``.npz`` without pickle)."""
        return json.dumps(self.rng.bit_generator.state)

    def set_rng_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)

    def extra_repr(self):
        return f"p={self.p}"
