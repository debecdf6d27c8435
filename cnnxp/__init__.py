"""cnnxp: a small CNN framework written once against the Python Array API standard.

The same layers run on NumPy (``device="cpu"``) and on CuPy (``device="cuda"``);
any other Array API library works through its device object and namespace.
"""

from . import checkpoint, data, evaluation, export, interop, layers, losses, models, ops, optim, train
from .backend import (
    Device,
    DeviceError,
    DeviceUnavailableError,
    cuda_available,
    get_device,
    to_device,
    to_numpy,
)
from .layers import manual_seed
from .model import Sequential

__version__ = "0.1.0"

__all__ = [
    "Device",
    "DeviceError",
    "DeviceUnavailableError",
    "Sequential",
    "checkpoint",
    "cuda_available",
    "data",
    "evaluation",
    "export",
    "get_device",
    "interop",
    "layers",
    "losses",
    "manual_seed",
    "models",
    "ops",
    "optim",
    "to_device",
    "to_numpy",
    "train",
    "__version__",
]
