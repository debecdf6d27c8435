"""Data: IDX files, the MNIST-family datasets (local, downloaded, bundled sample) and the batch loader."""

from .idx import read_idx, write_idx

__all__ = ["read_idx", "write_idx"]
