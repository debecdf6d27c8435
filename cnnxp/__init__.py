"""cnnxp: a small CNN framework written once against the Python Array API standard."""

from .backend import Device, DeviceError, DeviceUnavailableError, get_device, to_device, to_numpy

__version__ = "0.1.0"

__all__ = [
    "Device",
    "DeviceError",
    "DeviceUnavailableError",
    "get_device",
    "to_device",
    "to_numpy",
    "__version__",
]
