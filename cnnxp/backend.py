"""Devices, their array namespaces, and moving arrays between them.

A device is named by a string at the edges of the program (``"cpu"``,
``"cuda"``, ``"cuda:N"``) or, for any other Array API library, by that
library's own device object together with its namespace. Everything below the
edges gets its namespace from its input arrays instead.

CuPy is imported only when a CUDA device is asked for, so ``import cnnxp``
never touches CUDA.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import re
import sys
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import array_api_compat
import array_api_compat.numpy
import numpy as np

from .ops._device import device_context as on_device_of
from .ops.blocks import CPU_BLOCKS, WHOLE_BATCH, Blocks

__all__ = [
    "Device",
    "DeviceError",
    "DeviceUnavailableError",
    "get_device",
    "to_device",
    "to_numpy",
    "describe",
    "float_dtype",
    "check_input",
    "array_device",
    "blocks_for",
    "on_device_of",
    "cuda_available",
    "keep_freed_host_memory",
]

_DEVICE_FORMS = "'cpu', 'cuda' or 'cuda:N' (N = GPU index, e.g. 'cuda:0')"
_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(ValueError):
    """An input array lives on a different device or array library than the model."""


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used on this machine."""


@dataclass(frozen=True, eq=False)
class Device:
    """A resolved device: a display name, its array namespace, the native device object, its tuning.

    ``native`` is what ``xp.asarray(..., device=native)`` accepts and what
    ``array_api_compat.device(x)`` returns for arrays that live there. ``blocks`` says how the
    fast kernels slice a batch here (`cnnxp.ops.blocks`): cache-sized slices for NumPy on the
    CPU, the whole batch in one operation elsewhere. Change it with `with_blocks`, for a model
    (``Sequential(..., device=get_device("cpu").with_blocks(cache_block_bytes=None))``).
    """

    name: str
    xp: ModuleType
    native: Any
    blocks: Blocks = field(default=WHOLE_BATCH)

    def with_blocks(self, **sizes) -> Device:
        """This device with other `Blocks` sizes (bytes; None: the whole batch in one operation)."""
        return replace(self, blocks=self.blocks._replace(**sizes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Device):
            return NotImplemented
        return self.xp is other.xp and self.native == other.native

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    @contextlib.contextmanager
    def activate(self):
        """A context in which new arrays are allocated on this device, with its `blocks` in force.

        CuPy's creation functions allocate on the *current* GPU whatever ``device=`` says, so a
        CuPy device enters its own context; other libraries need none. Layers run inside it
        read the device's `blocks` (`blocks_for`).
        """
        token = _active.set(self)
        try:
            if array_api_compat.is_cupy_namespace(self.xp):
                with self.native:
                    yield self
            else:
                yield self
        finally:
            _active.reset(token)


_CPU = Device("cpu", array_api_compat.numpy, "cpu", CPU_BLOCKS)
_active: contextvars.ContextVar[Device | None] = contextvars.ContextVar("cnnxp_active_device", default=None)


def blocks_for(x: Any) -> Blocks:
    """How the fast kernels should slice a batch of ``x``: the active device's `blocks` (inside
    `Device.activate`, as `Sequential` runs its layers on inputs it checked to live there), else
    the default of ``x``'s library (`CPU_BLOCKS` for NumPy, `WHOLE_BATCH` for every other)."""
    active = _active.get()
    if active is not None:
        return active.blocks
    return CPU_BLOCKS if isinstance(x, np.ndarray) else WHOLE_BATCH


def _import_cupy(asked: str = "cuda"):
    try:
        import cupy
    except ImportError as exc:
        raise DeviceUnavailableError(
            f"device {asked!r} needs CuPy, which is not installed: "
            "pip install 'cnnxp[cuda12]' (CUDA 12) or 'cnnxp[cuda13]' (CUDA 13), or use the CPU (device 'cpu')"
        ) from exc
    return cupy


def _gpu_count(cupy) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # CUDARuntimeError when there is no driver or no GPU
        return 0


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        cupy = _import_cupy()
    except DeviceUnavailableError:
        return False
    return _gpu_count(cupy) > 0


def _cuda_device(index: int, asked: str | None = None) -> Device:
    cupy = _import_cupy(asked or f"cuda:{index}")
    count = _gpu_count(cupy)
    if count == 0:
        raise DeviceUnavailableError(
            f"device 'cuda:{index}' is not available: CuPy is installed but finds no CUDA GPU; use the CPU (device 'cpu')"
        )
    if index >= count:
        valid = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceUnavailableError(
            f"device 'cuda:{index}' does not exist: this machine has {count} GPU(s) ({valid})"
        )
    import array_api_compat.cupy as cupy_xp

    return Device(f"cuda:{index}", cupy_xp, cupy.cuda.Device(index))


def get_device(device: Any = "cpu", xp: ModuleType | None = None) -> Device:
    """Resolve a device name (or a library's device object with its namespace) to a `Device`.

    Parameters
    ----------
    device : str, Device or a native device object
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``; a `Device`; or, together with ``xp``,
        any Array API library's device object (e.g. ``array_api_strict.Device("device1")``;
        a ``cupy.cuda.Device(N)`` with ``cupy`` gives the same device as ``"cuda:N"``).
    xp : module, optional
        The array namespace the native ``device`` belongs to.

    Raises
    ------
    TypeError
        For a device that is neither a string nor a `Device` nor a native object with ``xp``.
    ValueError
        For a device string of an unknown form.
    DeviceUnavailableError
        For a CUDA device when CuPy is missing, no GPU is present or the index is out of range.
    """
    if isinstance(device, Device):
        return device
    if xp is not None and array_api_compat.is_cupy_namespace(xp):
        # CuPy itself or its wrapped namespace, with a cupy.cuda.Device (or its index): the same
        # Device as "cuda:N", which enters its GPU's context (see `Device.activate`).
        return _cuda_device(int(getattr(device, "id", device)))
    if xp is not None:
        # The library's own device object (torch.device("cpu") for the text "cpu", say): the one
        # its arrays report, so inputs compare equal to it.
        probe = xp.asarray(0, device=device)
        return Device(str(device), array_api_compat.array_namespace(probe), array_api_compat.device(probe))
    if not isinstance(device, str):
        raise TypeError(
            f"device must be {_DEVICE_FORMS}, or a library's device object passed with xp=, got {device!r}"
        )
    name = device.strip().lower()
    if name == "cpu":
        return _CPU
    match = _CUDA_RE.match(name)
    if match is None:
        raise ValueError(f"unknown device {device!r}: expected {_DEVICE_FORMS}")
    return _cuda_device(int(match.group(1) or 0), asked=name)


def float_dtype(xp: ModuleType, dtype: Any):
    """``xp``'s float32 or float64 from its name or the dtype itself; ValueError for any other dtype."""
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        return getattr(xp, dtype)
    if dtype not in (xp.float32, xp.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64' (or the library's float32 / float64), got {dtype!r}")
    return dtype


def describe(x: Any) -> str:
    """A short human description of where an array lives: 'a NumPy array', 'a CuPy array on cuda:0', ..."""
    if array_api_compat.is_numpy_array(x):
        return "a NumPy array"
    if array_api_compat.is_cupy_array(x):
        return f"a CuPy array on cuda:{x.device.id}"
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return f"a {type(x).__name__}, not an array"
    return f"an array of {xp.__name__.split('.')[-1]} on {array_api_compat.device(x)}"


def array_device(x: Any) -> Device:
    """The `Device` (name, namespace, native device) an array lives on.

    Not to be confused with ``array_api_compat.device(x)``, which the ops call ``device_of``:
    that is the library's own device object, what ``device=`` arguments take.
    """
    if isinstance(x, np.ndarray):
        return _CPU
    xp = array_api_compat.array_namespace(x)
    native = array_api_compat.device(x)
    if array_api_compat.is_cupy_array(x):
        return Device(f"cuda:{native.id}", xp, native)
    return Device(str(native), xp, native)


def check_input(x: Any, device: Device, where: str) -> None:
    """Raise `DeviceError` unless ``x`` is an array of ``device``'s namespace on that device."""
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        raise DeviceError(
            f"{where} expected an array on {device.name}, got {type(x).__name__}: "
            f"convert it with {move_hint(device)}"
        ) from None
    if xp is device.xp and array_api_compat.device(x) == device.native:
        return
    place = device.name
    if describe(x).endswith(f" on {device.name}"):  # same device name, another library: say which
        place += f" with {device.xp.__name__.split('.')[-1]} arrays"
    raise DeviceError(f"input is {describe(x)} but {where} is on {place}: move it with {move_hint(device)}")


def move_hint(device: Device, owner: str = "model") -> str:
    """How to move an array to ``device``, as a user would type it."""
    if array_api_compat.is_numpy_namespace(device.xp) or array_api_compat.is_cupy_namespace(device.xp):
        return f"cnnxp.to_device(x, {device.name!r})"
    return f"cnnxp.to_device(x, {owner}.device)"


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host (no copy for NumPy input)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if np.isscalar(x) or isinstance(x, (list, tuple)):
        return np.asarray(x)
    if _on_cuda(x):  # another library's GPU array (a torch CUDA tensor): its own way to the host first
        x = array_api_compat.to_device(x, "cpu")
    try:
        view = np.from_dlpack(x)  # shares the other library's memory: copied below
    except (TypeError, RuntimeError, BufferError, AttributeError):
        view = np.asarray(x)
    return np.array(view, copy=True)


def _on_cuda(x: Any) -> bool:
    """True for an array in CUDA device memory, whatever its library (DLPack's device type 2)."""
    try:
        return int(x.__dlpack_device__()[0]) == 2
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return False


def to_device(x: Any, device: Any, xp: ModuleType | None = None):
    """Move ``x`` (an array of any supported library, or a NumPy array) to ``device``.

    Returns ``x`` itself when it is already there.

    Examples
    --------
    >>> import numpy as np, cnnxp
    >>> cnnxp.to_device(np.zeros(3), "cpu").shape
    (3,)
    """
    target = get_device(device, xp)
    if not isinstance(x, np.ndarray):
        try:
            src_xp = array_api_compat.array_namespace(x)
        except TypeError:
            src_xp = None
        if src_xp is target.xp and array_api_compat.device(x) == target.native:
            return x
    if array_api_compat.is_numpy_namespace(target.xp):
        return to_numpy(x)
    if array_api_compat.is_cupy_namespace(target.xp):
        cupy = _import_cupy()
        with target.native:  # CuPy allocates and copies on the current GPU
            if _on_cuda(x):  # another GPU's CuPy array, or another library's (torch): GPU to GPU
                return (x if array_api_compat.is_cupy_array(x) else cupy.from_dlpack(x)).copy()
            return cupy.asarray(to_numpy(x))
    host = to_numpy(x)
    # a new array, as PyTorch's .to() gives: never a view of the source (whose owner may change
    # it, or have made it read-only)
    return target.xp.asarray(host, device=target.native, copy=True)


#: glibc's ``mallopt`` parameters (malloc.h) and the values `keep_freed_host_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: bigger blocks are still mapped and unmapped
_TRIM_THRESHOLD = 256 << 20


def keep_freed_host_memory() -> bool:
    """Let freed host memory be reused by the next training step instead of going back to the system.

    A step allocates the same arrays every time. glibc's malloc hands blocks from about 128 KiB up
    to the operating system when they are freed (and maps them again when asked), so each step
    pays a page fault per 4 KiB it touches anew: 75 faults and ~0.2 ms of a 4 ms LeNet-5 step at
    batch 32, on one core (docs/performance.md). This keeps blocks up to 32 MiB in the process's
    heap and up to 256 MiB of free memory at its top: the process holds on to its peak memory.

    It changes the whole process's allocator (``mallopt``), so cnnxp never does it on import;
    ``scripts/train.py`` does it on the CPU. Returns True where it took effect (Linux with glibc),
    False elsewhere, which changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
