"""Data: IDX files, the MNIST-family datasets (local, downloaded, bundled sample) and the batch loader."""

from .augment import RandomAffine, RandomShift, parse_augment
from .datasets import DATASETS, DatasetNotFoundError, load_dataset
from .idx import read_idx, write_idx
from .loader import NORMALIZE_MEAN, NORMALIZE_STD, DataLoader, normalize

__all__ = [
    "DATASETS",
    "DataLoader",
    "DatasetNotFoundError",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "RandomAffine",
    "RandomShift",
    "load_dataset",
    "normalize",
    "parse_augment",
    "read_idx",
    "write_idx",
]
