"""How the fast kernels slice a batch: a setting of the device, passed to the ops as `Blocks`.

On a CPU, work that passes over the same arrays several times runs fastest on slices of the
batch small enough to stay in cache, and a convolution's column matrix is bounded so that a
large batch does not need gigabytes. On a GPU every slice is one more kernel launch per
operation, and the arrays fit in memory, so the whole batch goes in one operation. The device
decides (`cnnxp.backend.Device.blocks`, chosen where the device is named: NumPy on the CPU gets
`CPU_BLOCKS`, every other library `WHOLE_BATCH`); the ops take the sizes as a parameter and
never ask which library they run on. ``blocks=None`` means no slicing at all.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Blocks", "CPU_BLOCKS", "WHOLE_BATCH", "images_per_slice"]


class Blocks(NamedTuple):
    """Batch-slice sizes in bytes; None: the whole batch in one operation."""

    conv_chunk_bytes: int | None = None
    """Largest column (or Toeplitz rows) matrix a convolution builds at once, in training and
    inference: a bound on memory. Larger batches run in slices, and backward rebuilds each
    slice's matrix from the padded input instead of keeping it."""

    conv_block_bytes: int | None = None
    """Column-matrix size of an im2col convolution in inference (eval mode): slices this small
    stay in cache while the matrix product reads them."""

    toeplitz_block_bytes: int | None = None
    """Rows-matrix size of a Toeplitz convolution in inference; see ``conv_block_bytes``."""

    cache_block_bytes: int | None = None
    """Work that makes several passes over the same arrays (the max-pool backward walk, the
    Toeplitz input gradient's row additions) runs over slices whose arrays are at most this
    large, so a slice stays in cache between passes."""


CPU_BLOCKS = Blocks(conv_chunk_bytes=64 * 2**20, conv_block_bytes=4 * 2**20, toeplitz_block_bytes=3 * 2**19,
                    cache_block_bytes=2**18)
"""Measured best on a 2-core CPU with a 2 MiB L2 cache (docs/performance.md): 4 MiB im2col and
1.5 MiB Toeplitz inference slices (LeNet-5 at batch 64 in one slice, at 256 in four), 256 KiB
for the max-pool walk and the row additions, 64 MiB for memory."""

WHOLE_BATCH = Blocks(conv_chunk_bytes=2**31)
"""GPUs and every library but NumPy: one operation over the whole batch (every slice would be
one more kernel launch per operation); convolution matrices bounded at 2 GiB."""


def images_per_slice(per_image_bytes: int, batch: int, limit_bytes: int | None) -> int:
    """How many images one slice of the batch may hold so that its arrays stay within ``limit_bytes``.

    Returns ``batch`` (no slicing) when the whole batch fits or there is no limit (None), and
    at least 1. Slices are balanced: 65 images at 64 per slice become 33 + 32, not 64 + 1.
    """
    if batch < 1:  # an empty batch: one (empty) piece
        return 1
    if limit_bytes is None:
        return batch
    step = max(1, min(batch, int(limit_bytes) // max(1, per_image_bytes)))
    slices = -(-batch // step)
    return -(-batch // slices)
