"""Ready-made networks. Each takes ``seed`` (the same seed, the same weights on every device) and ``device``."""

from __future__ import annotations

import numpy as np  # host-side RNG for initialisation

from .layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU  # noqa: F401
from .model import Sequential

__all__ = ["seed_cnn", "lenet5", "fashion_cnn", "MODELS", "build"]


def seed_cnn(seed: int = 0, device="cpu") -> Sequential:
    """The teaching notebook's network, batched: Conv2D(1, 8, 2, stride=2, padding=1) -> MaxPool2D(2, stride=2, padding=1) -> Flatten -> Dense(8*8*8, 10).

    28x28 inputs become 8 maps of 15x15 after the convolution and 8x8 after pooling.
    There is no nonlinearity between the convolution and the dense layer, as in the notebook.
    """
    rng = np.random.default_rng(seed)
    return Sequential([
        Conv2D(1, 8, 2, stride=2, padding=1, init="glorot", seed=rng),
        MaxPool2D(2, stride=2, padding=1),
        Flatten(),
        Dense(8 * 8 * 8, 10, init="glorot", seed=rng),
    ], device=device)


def lenet5(seed: int = 0, device="cpu") -> Sequential:
    """LeNet-5 with ReLU and max pooling, for 28x28 inputs (the first convolution pads by 2).

    Each max pool comes before its ReLU, as in PyTorch's MNIST example: the two commute (the
    largest rectified value is the rectified largest value, and the first maximum is the same
    element), and the ReLU then works on a quarter of the values. Checkpoints of the
    ReLU-first order load unchanged: the layers with parameters keep their positions.
    """
    rng = np.random.default_rng(seed)
    return Sequential([
        Conv2D(1, 6, 5, padding=2, seed=rng), MaxPool2D(2), ReLU(),
        Conv2D(6, 16, 5, seed=rng), MaxPool2D(2), ReLU(),
        Flatten(),
        Dense(400, 120, seed=rng), ReLU(),
        Dense(120, 84, seed=rng), ReLU(),
        Dense(84, 10, init="glorot", seed=rng),
    ], device=device)


def fashion_cnn(seed: int = 0, device="cpu") -> Sequential:
    """A stronger network for Fashion-MNIST: two conv blocks with BatchNorm, max pooling and Dropout.

    Conv(1, 32, 3, p=1)-BN-MaxPool(2)-ReLU -> Conv(32, 64, 3, p=1)-BN-MaxPool(2)-ReLU -> Dropout(0.25)
    -> Flatten -> Dense(3136, 128)-ReLU -> Dropout(0.5) -> Dense(128, 10) (pool before ReLU: see `lenet5`).
    """
    rng = np.random.default_rng(seed)
    return Sequential([
        Conv2D(1, 32, 3, padding=1, bias=False, seed=rng), BatchNorm2D(32), MaxPool2D(2), ReLU(),
        Conv2D(32, 64, 3, padding=1, bias=False, seed=rng), BatchNorm2D(64), MaxPool2D(2), ReLU(),
        Dropout(0.25, seed=rng),
        Flatten(),
        Dense(64 * 7 * 7, 128, seed=rng), ReLU(),
        Dropout(0.5, seed=rng),
        Dense(128, 10, init="glorot", seed=rng),
    ], device=device)


MODELS = {"lenet5": lenet5, "seed": seed_cnn, "fashion": fashion_cnn}


def build(name: str, seed: int = 0, device="cpu") -> Sequential:
    """A preset by its command-line name: ``lenet5``, ``seed`` or ``fashion``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name](seed=seed, device=device)
