"""Sequential: a list of layers run forward in order and backward in reverse."""

from __future__ import annotations

import math
from typing import Any

from . import backend
from .layers.base import Layer
from .layers.dropout import Dropout
from .layers.normalization import BatchNorm2D

__all__ = ["Sequential"]


def _at_layer(index: int, layer, exc: Exception) -> Exception:
    """``exc`` with the layer's position and name in front: a layer's message alone may not say which."""
    try:
        return type(exc)(f"layer {index} ({layer!r}): {exc}")
    except TypeError:  # an exception type that takes other arguments: keep it as it was
        return exc


class Parameters(list):
    """A list of a model's parameter arrays (`Sequential.parameters`) that knows its model."""

    def __init__(self, arrays, model: Sequential):
        super().__init__(arrays)
        self.model = model


class Sequential:
    """A stack of layers on one device.

    Parameters
    ----------
    layers : iterable of Layer
    device : str, Device, or a library's device object (with ``xp=``)
    xp : array namespace, optional, for a foreign ``device`` object
    dtype : "float32" (default of the layers) or "float64", optional

    Examples
    --------
    >>> import numpy as np
    >>> from cnnxp import Sequential
    >>> from cnnxp.layers import Conv2D, ReLU, Flatten, Dense
    >>> model = Sequential([Conv2D(1, 4, 3, seed=0), ReLU(), Flatten(), Dense(4 * 26 * 26, 10, seed=0)])
    >>> model(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 10)
    """

    def __init__(self, layers, device: Any = "cpu", xp=None, dtype: Any = None):
        if isinstance(layers, Layer):
            raise TypeError(f"Sequential takes a list of layers: Sequential([{layers.name}(...), ...]), "
                            f"got a {layers.name} on its own")
        self.layers: list[Layer] = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential expects cnnxp layers, got {type(layer).__name__} at position {i}")
        self.training = True
        self.device = backend.get_device("cpu")
        self.last_batch_size = 0  # rows of the last forward's input (data-parallel training weighs by it)
        self._row_offset = 0
        self.to(device, xp=xp, dtype=dtype)

    # -- running ------------------------------------------------------------------

    def forward(self, x):
        """Run every layer on ``x`` (an array on the model's device), in the order they are declared.

        Returns the last layer's output. Order matters for speed: ``MaxPool2D`` before ``ReLU``
        (as the presets declare them) gives the same values as the other way round, with the
        ReLU working on a quarter of them.
        """
        backend.check_input(x, self.device, "the model")
        self._check_dtype(x)
        with self.device.activate():
            for i, layer in enumerate(self.layers):
                try:
                    x = layer.forward(x)
                except (ValueError, TypeError) as exc:
                    raise _at_layer(i, layer, exc) from None
        self._output_shape = tuple(x.shape)
        self.last_batch_size = int(x.shape[0])
        return x

    __call__ = forward

    def _check_dtype(self, x) -> None:
        """TypeError unless ``x`` is floating point and no wider than the weights: PyTorch refuses a float64
        input to a float32 layer, and computing silently in float64 would cost twice the memory and time.
        A narrower input (the loader's float32 batches into a float64 model) is computed in the weights'
        dtype, exactly as if it had been cast first."""
        xp = self.device.xp
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"the model expected floating-point input (N, C, H, W), got {x.dtype}: convert images "
                            "first with cnnxp.data.normalize(images) ((x / 255 - 0.1307) / 0.3081 as float32)")
        weight = next((v for layer in self.layers for v in layer.params.values()), None)
        if weight is not None and xp.finfo(x.dtype).bits > xp.finfo(weight.dtype).bits:
            raise TypeError(f"the model's weights are {weight.dtype} but the input is {x.dtype}: convert the input "
                            f"(xp.astype(x, xp.{weight.dtype})) or the model (model.to(device, dtype='{x.dtype}'))")

    @property
    def row_offset(self) -> int:
        """The index of the input's first row in the global batch (0 in one process).

        Data-parallel training sets it for every batch, so that layers drawing random numbers per
        row (Dropout) draw this process's rows of the global batch: the same masks as one process.
        """
        return self._row_offset

    @row_offset.setter
    def row_offset(self, value: int) -> None:
        self._row_offset = int(value)
        for layer in self.layers:
            if hasattr(layer, "row_offset"):
                layer.row_offset = self._row_offset

    def backward(self, grad_out, need_input_grad: bool = True):
        """Back-propagate ``grad_out`` (dL/d output), filling every layer's ``grads``.

        Returns dL/d input, or None with ``need_input_grad=False``, which lets the
        first layer skip computing it (training never needs it).
        """
        expected = getattr(self, "_output_shape", None)
        shape = tuple(getattr(grad_out, "shape", ()))
        if expected is not None and shape != expected:
            raise ValueError(f"Sequential.backward expected grad_out of the output's shape {expected} (dL/d output, "
                             f"e.g. the grad that softmax_cross_entropy returns), got {shape}")
        with self.device.activate():
            for k in range(len(self.layers) - 1, -1, -1):
                grad_out = self.layers[k].backward(grad_out, need_input_grad=need_input_grad or k > 0)
        return grad_out if need_input_grad else None

    def train(self, mode: bool = True) -> Sequential:
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def to(self, device: Any, xp=None, dtype: Any = None) -> Sequential:
        """Move every parameter and buffer to ``device`` (a name, or a device object with ``xp=``), in place."""
        dev = backend.get_device(device, xp)
        if dtype is not None:
            dtype = backend.float_dtype(dev.xp, dtype)
        with dev.activate():
            for layer in self.layers:
                layer.to(dev, dtype=dtype)
        self.device = dev
        return self

    # -- containers ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def parameters(self) -> Parameters:
        """The parameter arrays, in order, as PyTorch's ``model.parameters()`` gives them.

        The list remembers its model, so ``SGD(model.parameters(), lr=0.1)`` works as in PyTorch
        (the optimizers update the model's layers, whose arrays they may replace).
        """
        return Parameters((layer.params[name] for _, layer, name in self.parameter_slots()), model=self)

    def named_parameters(self):
        """Yield ``(key, array)`` for every parameter, keys dotted as in the state dict (``"0.weight"``)."""
        for key, layer, name in self.parameter_slots():
            yield key, layer.params[name]

    def parameter_slots(self):
        """Yield ``(key, layer, name)`` for every parameter: where it lives, for code that replaces it
        (``layer.params[name] = ...``) or reads its gradient (``layer.grads[name]``)."""
        for i, layer in enumerate(self.layers):
            for name in layer.params:
                yield f"{i}.{name}", layer, name

    def num_parameters(self) -> int:
        return sum(math.prod(array.shape) for _, array in self.named_parameters())

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Parameters and buffers under dotted keys (``"0.weight"``, ``"2.running_mean"``), on the model's device."""
        state = {}
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for name, value in store.items():
                    state[f"{i}.{name}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays from ``state`` (any device or library) into the model, on the model's device.

        A PyTorch ``nn.Sequential`` of the same layers has the same keys (`cnnxp.interop`): its
        state dict loads as it is, BatchNorm's ``num_batches_tracked`` counters skipped (cnnxp
        does not count batches; a set momentum never reads the count).
        Raises KeyError naming missing or unexpected keys (when ``strict``) and
        ValueError for a shape that does not match.
        """
        own = self.state_dict()
        state = {key: value for key, value in state.items() if not self._is_batch_count(key)}
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise KeyError(
                    f"state dict does not match the model: missing keys {missing}, unexpected keys {unexpected}"
                )
        xp = self.device.xp
        with self.device.activate():  # every entry converted and checked first: a failed load changes nothing
            loaded = {key: backend.to_device(state[key], self.device) for key in own if key in state}
            for key, value in loaded.items():
                if tuple(value.shape) != tuple(own[key].shape):
                    raise ValueError(
                        f"state dict entry {key!r} has shape {tuple(value.shape)}, "
                        f"the model expects {tuple(own[key].shape)}"
                    )
            loaded = {key: xp.astype(value, own[key].dtype, copy=True) for key, value in loaded.items()}
        for key, value in loaded.items():
            index, name = key.split(".", 1)
            layer = self.layers[int(index)]
            store = layer.params if name in layer.params else layer.buffers
            store[name] = value

    def _is_batch_count(self, key: str) -> bool:
        index, _, name = key.partition(".")
        return (name == "num_batches_tracked" and index.isdigit() and int(index) < len(self.layers)
                and isinstance(self.layers[int(index)], BatchNorm2D))

    def rng_state(self) -> dict[str, str]:
        """The random state of every Dropout layer, by layer index (JSON strings)."""
        return {str(i): layer.get_rng_state() for i, layer in enumerate(self.layers) if isinstance(layer, Dropout)}

    def set_rng_state(self, state: dict[str, str]) -> None:
        for key, value in state.items():
            self.layers[int(key)].set_rng_state(value)

    # -- display --------------------------------------------------------------------

    def summary(self, input_shape=(1, 28, 28)) -> str:
        """A table of layers, output shapes and parameter counts for inputs of ``input_shape`` (batch axis excluded)."""
        shape = (1, *tuple(input_shape))
        rows = [("layer", "output shape", "params")]
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except (ValueError, TypeError) as exc:
                raise _at_layer(i, layer, exc) from None
            count = sum(math.prod(v.shape) for v in layer.params.values())
            rows.append((f"{i}: {layer!r}", str(("N", *shape[1:])).replace("'", ""), f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        out = [f"{rows[0][0]:<{widths[0]}}  {rows[0][1]:<{widths[1]}}  {rows[0][2]:>{widths[2]}}", line]
        out += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows[1:]]
        out += [line, f"total parameters: {self.num_parameters():,}   device: {self.device.name}"]
        return "\n".join(out)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(device={self.device.name!r},\n{inner}\n)"
