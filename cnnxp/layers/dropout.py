"""Dropout, its masks made on the device from a key drawn on the host."""

from __future__ import annotations

import json

import numpy as np  # host-side RNG only: one small key per mask is drawn here

from .._checks import check_real
from ..ops import random
from .base import Layer, make_rng


class Dropout(Layer):
    """Zero each element with probability ``p`` in training and scale the rest by ``1 / (1 - p)``.

    Identity in eval mode. Each mask is computed where the input lives by a counter-based
    generator (`cnnxp.ops.random`) from four integers drawn from this layer's seeded NumPy
    Generator, so a seed gives the same masks, bit for bit, on every device, and nothing but
    those four numbers crosses from the host. `get_rng_state` / `set_rng_state` make
    training resumable exactly.

    ``row_offset`` (default 0) is the index, in the global batch, of the input's first row:
    a data-parallel process holding rows ``r:`` of a global batch draws those rows of the mask
    one process would draw for the whole batch (`Sequential.row_offset` sets it).
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = check_real(p, "Dropout", "probability", 0.0, 1.0)
        self.rng = np.random.default_rng(make_rng(seed).integers(2**63)) if seed is None else make_rng(seed)
        self.row_offset = 0

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.cache = 1.0
            return x
        key = self.rng.integers(0, random.KEY_BOUNDS)  # four Python-sized integers: kernel arguments, not a copy
        row = 1
        for d in x.shape[1:]:
            row *= int(d)
        mask = random.keep_mask(key, tuple(x.shape), self.p, x, offset=self.row_offset * row)
        self.cache = mask
        return x * mask

    def backward(self, grad_out, need_input_grad=True):
        self._need_cache()
        return grad_out * self.cache

    def get_rng_state(self) -> str:
        """The key generator's state as a JSON string (storable in an ``.npz`` without pickle)."""
        return json.dumps(self.rng.bit_generator.state)

    def set_rng_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)

    def extra_repr(self):
        return f"p={self.p}"
