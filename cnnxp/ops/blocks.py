"""Cache-block sizes of the fast kernels, and the balanced batch slices they run in.

The fast modules read these as attributes of this module at call time
(``blocks.CACHE_BLOCK_BYTES``), so one assignment changes them everywhere::

    import cnnxp.ops.blocks
    cnnxp.ops.blocks.CONV_CHUNK_BYTES = 16 * 2**20

They are tuned for a CPU's caches (docs/performance.md); the functions that use them also
take the size as a parameter, so a per-device setting can be passed instead.
"""

from __future__ import annotations

__all__ = [
    "CONV_CHUNK_BYTES",
    "CONV_BLOCK_BYTES",
    "TOEPLITZ_BLOCK_BYTES",
    "CACHE_BLOCK_BYTES",
    "images_per_slice",
    "conv_chunk_size",
]


CONV_CHUNK_BYTES = 64 * 2**20
"""Largest column (or rows) matrix, in bytes, a convolution builds at once; larger batches run in
slices. Per call: ``conv2d_forward(chunk_bytes=...)``."""


CONV_BLOCK_BYTES = 4 * 2**20
"""Column-matrix size for inference (eval mode): slices this small stay in cache while the
matrix product reads them, which is faster than one pass over a large matrix."""


CACHE_BLOCK_BYTES = 2**18
"""Work that makes several passes over the same arrays (the max-pool backward walk, the
Toeplitz input gradient's row additions) runs over slices of the batch whose arrays are at
most this many bytes, so a slice stays in cache between passes (docs/performance.md)."""


TOEPLITZ_BLOCK_BYTES = 3 * 2**19
"""Rows-matrix size of a Toeplitz convolution for inference (eval mode); see `CONV_BLOCK_BYTES`.
1.5 MiB: LeNet-5 at batch 64 in one slice and at 256 in four, measured best here (docs/performance.md)."""


def images_per_slice(per_image_bytes: int, batch: int, chunk_bytes: int | None = None) -> int:
    """How many images one slice of the batch may hold so that its arrays stay within ``chunk_bytes``.

    ``chunk_bytes`` defaults to `CONV_CHUNK_BYTES`. Returns ``batch`` (no slicing) when the whole
    batch fits, and at least 1. Slices are balanced: 65 images at 64 per slice become 33 + 32,
    not 64 + 1.
    """
    if batch < 1:  # an empty batch: one (empty) piece
        return 1
    limit = CONV_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    step = max(1, min(batch, limit // max(1, per_image_bytes)))
    slices = -(-batch // step)
    return -(-batch // slices)


conv_chunk_size = images_per_slice
"""The name `images_per_slice` had when only the convolution sliced its batch; kept for callers."""
