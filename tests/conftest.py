"""The backend matrix shared by every test module.

Each entry is a (device, dtype) pair: NumPy float32 and float64, array_api_strict
on its CPU device (float64) and on ``device1`` (float32), and CuPy when a GPU is
present. Tests take the ``backend`` fixture and build their inputs with
``backend.asarray``; results come back to the host through ``cnnxp.to_numpy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import cnnxp
from cnnxp.backend import cuda_available


@dataclass
class Backend:
    id: str
    device: cnnxp.Device
    dtype_name: str  # "float32" or "float64"

    @property
    def xp(self):
        return self.device.xp

    @property
    def dtype(self):
        return getattr(self.xp, self.dtype_name)

    @property
    def rtol(self) -> float:
        return 1e-4 if self.dtype_name == "float32" else 1e-10

    def asarray(self, a, dtype=None):
        """A host array moved to this backend, cast to its dtype (or ``dtype``) first."""
        a = np.asarray(a)
        if dtype is None and a.dtype.kind == "f":
            a = a.astype(self.dtype_name)
        elif dtype is not None:
            a = a.astype(dtype)
        return cnnxp.to_device(a, self.device)

    def assert_on_backend(self, y, dtype=None):
        """Fail unless ``y`` lives on this backend's library and device, with the expected dtype."""
        import array_api_compat

        assert array_api_compat.array_namespace(y) is self.xp, f"{self.id}: result left its namespace"
        assert array_api_compat.device(y) == self.device.native, f"{self.id}: result left its device"
        assert y.dtype == (self.dtype if dtype is None else dtype), f"{self.id}: dtype {y.dtype}"


def _strict(device_name: str) -> cnnxp.Device:
    strict = pytest.importorskip("array_api_strict")
    return cnnxp.get_device(strict.Device(device_name), xp=strict)


def _make(param: str) -> Backend:
    if param == "numpy-float32":
        return Backend(param, cnnxp.get_device("cpu"), "float32")
    if param == "numpy-float64":
        return Backend(param, cnnxp.get_device("cpu"), "float64")
    if param == "strict-cpu-float64":
        return Backend(param, _strict("CPU_DEVICE"), "float64")
    if param == "strict-device1-float32":
        return Backend(param, _strict("device1"), "float32")
    if param == "cupy-float32":
        if not cuda_available():
            pytest.skip("CuPy with a CUDA GPU is not available on this machine")
        return Backend(param, cnnxp.get_device("cuda"), "float32")
    raise AssertionError(param)


BACKEND_IDS = [
    "numpy-float32",
    "numpy-float64",
    "strict-cpu-float64",
    "strict-device1-float32",
    pytest.param("cupy-float32", marks=pytest.mark.cuda),
]


@pytest.fixture(params=BACKEND_IDS)
def backend(request) -> Backend:
    """One entry of the backend matrix."""
    return _make(request.param)


@pytest.fixture(params=["fast", "plain"])
def kernels(request, monkeypatch):
    """The layers' kernels: the fast ones they run, or the plain ones (cnnxp.ops.conv, .pool) swapped in."""
    if request.param == "plain":
        from cnnxp import ops
        from cnnxp.layers import conv as conv_layer
        from cnnxp.layers import pool as pool_layer

        monkeypatch.setattr(conv_layer, "kernels", ops.conv)
        monkeypatch.setattr(pool_layer, "kernels", ops.pool)
    return request.param
