"""Random numbers made on the device, the same bits on every library: a counter-based generator.

The standard has no random numbers, and drawing them on the host means a copy to the device
at every step. Instead, element ``i`` of a random array is a hash of ``(key, i)`` computed
with the standard's integer operations where the array lives; only the key, four Python
integers drawn from a seeded host generator, crosses over (as kernel arguments, not a copy).

The hash works modulo the prime ``P = 2**31 - 1``: every value stays below ``2**31``, so a
square stays below ``2**62`` and int64 never overflows (the standard leaves overflow
unspecified). Three rounds of ``x -> (x * x + k) mod P``, mixed by ``x ^ (x >> 16)`` between
them, pass the usual checks (uniform frequencies, no correlation between neighbours or
between keys; `tests/test_random.py`), which is all a Dropout mask asks of them.
"""

from __future__ import annotations

from array_api_compat import device as device_of

from ._device import device_context
from ._namespace import array_namespace

__all__ = ["P", "KEY_BOUNDS", "random_bits", "keep_mask"]

P = 2**31 - 1
KEY_BOUNDS = (2**30, P, P, P)
"""Upper bounds (exclusive) of the four key integers: draw them as ``rng.integers(0, KEY_BOUNDS)``."""
_MAX_INDEX = 2**30  # index + key[0] < 2**31, so the first square fits in int64


def random_bits(key, shape, like, offset: int = 0):
    """Integers in ``[0, P)``, one per element of ``shape`` (int64, on ``like``'s device).

    Element ``i`` (in C order) hashes ``offset + i`` with ``key``, four integers below
    `KEY_BOUNDS`; an array of the same key and shape with ``offset = k`` continues from element
    ``k``, so a slice of a batch can be drawn on its own (data-parallel ranks do).
    """
    xp = array_namespace(like)
    count = 1
    for d in shape:
        count *= int(d)
    if offset + count > _MAX_INDEX:
        raise ValueError(f"random_bits draws at most 2**30 numbers per key, asked for {offset + count}")
    k0, k1, k2, k3 = (int(k) for k in key)
    with device_context(like):
        x = xp.arange(offset + k0, offset + k0 + count, dtype=xp.int64, device=device_of(like))
        x = (x * x + k1) % P
        for k in (k2, k3):
            x = x ^ (x >> 16)
            x = (x * x + k) % P
        return xp.reshape(x, tuple(shape))


def keep_mask(key, shape, p: float, like, offset: int = 0):
    """Dropout's mask: ``1 / (1 - p)`` where an element is kept (probability ``1 - p``), else 0.

    In ``like``'s dtype and on its device; element ``i`` is kept when its `random_bits` are at
    least ``round(p * P)``, the same decision on every library.
    """
    xp = array_namespace(like)
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    with device_context(like):
        keep = random_bits(key, shape, like, offset) >= round(p * P)
        return xp.astype(keep, like.dtype) * scale
