"""The layer protocol and the host-side random numbers used for initialisation."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np  # host-side RNG only: weights are drawn here, then moved to the device

from .. import backend
from ..backend import DeviceError, array_device, describe, float_dtype, get_device, move_hint, to_device
from ..ops._namespace import array_namespace

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that layers use when they are given no ``seed`` (like ``torch.manual_seed``)."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A NumPy Generator from a seed, a Generator (used as is), or None (the global one)."""
    if seed is None:
        return _global_rng
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def init_weight(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int, init: str):
    """Draw float32 weights on the host.

    ``"he"``: normal with std ``sqrt(2 / fan_in)`` (Kaiming, for layers followed by ReLU);
    ``"glorot"``: uniform in ``±sqrt(6 / (fan_in + fan_out))`` (for layers that feed softmax).
    """
    if init == "he":
        w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif init == "glorot":
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-bound, bound, size=shape)
    else:
        raise ValueError(f"init must be 'he' or 'glorot', got {init!r}")
    return w.astype(np.float32)


def _where_input_lives(method):
    """Wrap a layer's ``forward``/``backward`` to run in the context of its input's device."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):  # the input may come by keyword too: backward(grad_out=g)
        x = args[0] if args else next(iter(kwargs.values()), None)
        with backend.on_device_of(x):
            return method(self, *args, **kwargs)

    return run


class Layer:
    """Base class: ``forward``/``backward`` side by side, parameters in ``params``, gradients in ``grads``.

    ``grads`` is overwritten (not accumulated) by every ``backward``. Putting a new
    array of the same shape into ``params[name]`` sets a weight: layers read
    ``params`` at every forward. ``buffers`` holds state that is saved but not
    trained (BatchNorm's running statistics).

    Every subclass's ``forward`` and ``backward`` run where their input lives
    (`backend.on_device_of`): a layer used on its own on ``cuda:1`` allocates its
    temporaries there, not on the current GPU, as inside `Sequential`.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "backward"):
            if name in cls.__dict__:
                setattr(cls, name, _where_input_lives(cls.__dict__[name]))

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.training = True
        self.cache: Any = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out, need_input_grad: bool = True):
        raise NotImplementedError

    def train(self, mode: bool = True) -> Layer:
        self.training = bool(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def to(self, device: Any, xp=None, dtype: Any = None) -> Layer:
        """Move parameters and buffers to ``device`` (and cast them to ``dtype`` if given), in place."""
        dev = get_device(device, xp)
        with dev.activate():  # the cast allocates on the current GPU, so that must be this device
            for store in (self.params, self.buffers):
                for key, value in store.items():
                    value = to_device(value, dev)
                    if dtype is not None:
                        value = dev.xp.astype(value, float_dtype(dev.xp, dtype))
                    store[key] = value
        self.grads = {}
        self.cache = None
        return self

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input of ``input_shape`` (batch axis included); raises on bad input."""
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{self.name}({self.extra_repr()})"

    # -- input checks shared by the layers ----------------------------------------

    def _check_rank(self, x, ndim: int, layout: str, hint: str = "") -> None:
        shape = getattr(x, "shape", None)
        if shape is None:
            raise TypeError(f"{self.name} expected an array of shape {layout}, got {type(x).__name__}")
        if len(shape) != ndim:
            extra = f": {hint}" if hint else ""
            raise ValueError(f"{self.name} expected input of shape {layout}, got {tuple(shape)}{extra}")

    def _check_input(self, x, layout: str, size: int, label: str, hint: str = "") -> None:
        """Raise unless ``x`` is an array of ``layout``'s rank whose axis 1 is ``size`` (the layer's
        ``label``, e.g. ``in_channels``), on the device of the layer's weights."""
        self._check_rank(x, layout.count(",") + 1, layout, hint)
        if x.shape[1] != size:
            raise ValueError(f"{self.name} expected input of shape {layout}, got {tuple(x.shape)}: "
                             f"the layer has {label}={size}")
        self._check_place(x)

    def _check_place(self, x) -> None:
        """Raise `DeviceError` when ``x`` and this layer's weights live in different libraries or devices."""
        weight = self.params["weight"]
        try:
            same = array_namespace(x) is array_namespace(weight) and array_device(x) == array_device(weight)
        except TypeError:
            same = False
        if not same:
            where = array_device(weight)
            raise DeviceError(
                f"input is {describe(x)} but {self.name}'s weights are on {where.name}: "
                f"move it with {move_hint(where, 'layer')} or the layer with .to(...)"
            )

    def _need_cache(self) -> None:
        if self.cache is None:
            raise RuntimeError(f"{self.name}.backward called before forward: run forward first")

