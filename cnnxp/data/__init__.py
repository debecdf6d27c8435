"""Data: IDX files, the MNIST-family datasets (local, downloaded, bundled sample) and the batch loader."""

from .datasets import DATASETS, DatasetNotFoundError, load_dataset
from .idx import read_idx, write_idx

__all__ = ["DATASETS", "DatasetNotFoundError", "load_dataset", "read_idx", "write_idx"]
