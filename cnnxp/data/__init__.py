"""Data: IDX files, the MNIST-family datasets (local, downloaded, bundled sample) and the batch loader."""

from .augment import Compose, RandomAffine, RandomFlip, RandomShift, parse_augment
from .datasets import (
    DATASETS,
    DatasetMismatchError,
    DatasetNotFoundError,
    UnverifiedDataWarning,
    load_dataset,
    verify,
)
from .idx import read_idx, write_idx
from .loader import NORMALIZE_MEAN, NORMALIZE_STD, DataLoader, normalize

__all__ = [
    "DATASETS",
    "DataLoader",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "Compose",
    "RandomAffine",
    "RandomFlip",
    "RandomShift",
    "UnverifiedDataWarning",
    "load_dataset",
    "normalize",
    "parse_augment",
    "read_idx",
    "verify",
    "write_idx",
]
