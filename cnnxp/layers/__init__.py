"""The layers of the public interface: one small class each, ``forward`` and ``backward`` side by side."""

from .activations import Flatten, ReLU, Softmax
from .base import Layer, manual_seed
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm2D
from .pool import AvgPool2D, MaxPool2D

__all__ = [
    "Layer",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "Dense",
    "ReLU",
    "Flatten",
    "Softmax",
    "Dropout",
    "BatchNorm2D",
    "manual_seed",
]
