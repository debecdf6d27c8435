"""SGD and Adam over one flat buffer: a step is a handful of whole-model array operations.

The optimizer keeps every parameter of the model in one flat array and gives each layer a
view of its slice (``layer.params["weight"]`` is a reshaped slice of the buffer). A step
gathers the gradients into one flat array (`Optimizer.flat_grads`, the array data-parallel
training averages across processes) and updates the buffer and its state (momentum, Adam's
moments: flat arrays too) in place, so the layers see the new weights through their views.
On a GPU that is a few kernel launches per step instead of several per parameter.

Putting a new array into ``layer.params[name]`` (loading a state dict, moving the model)
still sets that weight: the next step finds that the layer no longer holds its view, copies
the model's arrays into the buffer again and hands out new views.

The state saves per parameter (``state_dict`` keys such as ``"state.momentum.0.weight"``), as
before the flat buffer, so checkpoints of either kind load.
"""

from __future__ import annotations

import math
from typing import Any

from . import backend
from ._checks import check_real
from .ops._namespace import array_namespace

__all__ = ["SGD", "Adam", "Optimizer"]


def _the_model(model, owner: str):
    """The model an optimizer updates: given itself, or through ``model.parameters()`` (PyTorch's habit)."""
    model = getattr(model, "model", model)  # model.parameters() remembers its model
    if hasattr(model, "parameter_slots") and hasattr(model, "device"):
        return model
    raise TypeError(f"{owner} expected a cnnxp Sequential or its parameters(), got {type(model).__name__}: "
                    f"{owner}(model, lr=...) or {owner}(model.parameters(), lr=...) (it updates the layers' "
                    "arrays in place, so it needs the model they belong to)")


class Optimizer:
    """Updates every parameter of a model from its ``grads``, in place, on the model's device.

    Subclasses name their state slots (``SLOTS``) and implement `_update` on flat arrays.
    """

    SLOTS: tuple[str, ...] = ()

    def __init__(self, model, lr: float, weight_decay: float = 0.0):
        owner = type(self).__name__
        model = _the_model(model, owner)
        self._slots = list(model.parameter_slots())
        if not self._slots:
            raise ValueError(f"{owner} got a model with no parameters: nothing to train")
        lr = check_real(lr, owner, "learning rate", 0.0, low_open=True)
        weight_decay = check_real(weight_decay, owner, "weight_decay", 0.0)
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.state: dict[str, Any] = {}  # slot name -> flat array, laid out like the parameter buffer
        self.step_count = 0
        self._flat = None  # the parameter buffer
        self._views: list[Any] = []  # what each layer was given: a view of its slice of the buffer

    @property
    def lr(self) -> float:
        """The learning rate; whatever number is set (a schedule's NumPy scalar, say) is kept as a float,
        so updates on any device multiply by a Python number."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        # A finite number >= 0 (a schedule may end at 0); NaN or infinity would make every weight NaN.
        self._lr = check_real(value, type(self).__name__, "learning rate", 0.0)

    # -- the flat buffer ------------------------------------------------------------------------------

    def flat_params(self):
        """The parameter buffer, every layer holding a view of its slice; (re)built when a layer
        holds another array than its view (a weight set with ``params[name] = ...``, a moved model)."""
        if self._flat is not None and all(layer.params[name] is view
                                          for (_, layer, name), view in zip(self._slots, self._views, strict=True)):
            return self._flat
        xp = self.model.device.xp
        arrays = [layer.params[name] for _, layer, name in self._slots]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"{type(self).__name__} updates all parameters in one buffer, so they must share a "
                            f"dtype, got {sorted(map(str, dtypes))}: cast the model with model.to(device, dtype=...)")
        flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays])
        self._views, start = [], 0
        for (_, layer, name), a in zip(self._slots, arrays, strict=True):
            size = math.prod(a.shape)
            layer.params[name] = xp.reshape(flat[start:start + size], tuple(a.shape))
            self._views.append(layer.params[name])
            start += size
        self._flat = flat
        self.state = {slot: backend.to_device(v, self.model.device) for slot, v in self.state.items()}
        return flat

    def flat_grads(self):
        """Every parameter's gradient in one flat array, in the buffer's order (weight decay not added)."""
        xp = self.model.device.xp
        grads = []
        for _, layer, name in self._slots:
            grad = layer.grads.get(name)
            if grad is None:
                raise RuntimeError(f"no gradient for {layer.name}.{name}: run model.backward before optimizer.step()")
            grads.append(xp.reshape(grad, (-1,)))
        return xp.concat(grads)

    def step(self) -> None:
        """One update of every parameter from the gradients of the last ``model.backward``."""
        with self.model.device.activate():
            self.apply(self.flat_grads())

    def apply(self, grad) -> None:
        """Update the parameters with the flat gradient ``grad`` (from `flat_grads`, averaged across
        processes by data-parallel training)."""
        with self.model.device.activate():
            flat = self.flat_params()
            self.step_count += 1
            if self.weight_decay:
                grad = grad + self.weight_decay * flat
            self._update(flat, grad)

    def _update(self, flat, grad) -> None:
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, the step count and every state array, one per parameter and slot
        (``"state.<slot>.<parameter key>"``, views of the flat state on the model's device)."""
        state = {"step": self.step_count, "lr": self.lr, "weight_decay": self.weight_decay, **self._hyper()}
        xp = self.model.device.xp
        for slot, flat in self.state.items():
            start = 0
            for key, layer, name in self._slots:
                shape = tuple(layer.params[name].shape)
                size = math.prod(shape)
                state[f"state.{slot}.{key}"] = xp.reshape(flat[start:start + size], shape)
                start += size
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict` output saved on any device; arrays move to the model's device.

        Everything is checked before anything changes: a KeyError (a parameter the model does not
        have, a slot that lacks one of the model's parameters, a missing field) or ValueError (a
        shape that does not match) leaves the optimizer as it was.
        """
        step, lr, weight_decay = int(state["step"]), float(state["lr"]), float(state["weight_decay"])
        slots = self._read_slots(state)
        dev = self.model.device
        with dev.activate():
            new_state = {}
            for slot, arrays in slots.items():
                pieces = [dev.xp.reshape(backend.to_device(arrays[key], dev), (-1,)) for key, _, _ in self._slots]
                new_state[slot] = dev.xp.astype(dev.xp.concat(pieces), self._dtype(), copy=True)
        self._set_hyper(state)
        self.step_count, self.lr, self.weight_decay, self.state = step, lr, weight_decay, new_state

    def _read_slots(self, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """``{slot: {parameter key: array}}`` from a state dict's ``state.*`` entries, checked against the model."""
        shapes = {key: tuple(layer.params[name].shape) for key, layer, name in self._slots}
        slots: dict[str, dict[str, Any]] = {}
        for k, v in state.items():
            if not k.startswith("state."):
                continue
            slot, _, key = k[len("state."):].partition(".")
            if key not in shapes:
                raise KeyError(f"optimizer state has {key!r}, which the model does not have")
            if tuple(v.shape) != shapes[key]:
                raise ValueError(f"optimizer state '{slot}.{key}' has shape {tuple(v.shape)}, "
                                 f"the parameter has {shapes[key]}")
            slots.setdefault(slot, {})[key] = v
        for slot, arrays in slots.items():
            missing = [key for key in shapes if key not in arrays]
            if missing:
                raise KeyError(f"optimizer state {slot!r} lacks {', '.join(map(repr, missing))}: "
                               "a resume would not be exact")
        return slots

    def _dtype(self):
        return self._slots[0][1].params[self._slots[0][2]].dtype

    def _hyper(self) -> dict[str, Any]:
        return {}

    def _set_hyper(self, state) -> None:
        pass


class SGD(Optimizer):
    """Stochastic gradient descent, as `torch.optim.SGD <https://pytorch.org/docs/stable/generated/torch.optim.SGD.html>`_.

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` (``buf = g`` on the first
    step), then ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; finally ``p -= lr * g``.
    """

    def __init__(self, model, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(model, lr, weight_decay)
        momentum = check_real(momentum, "SGD", "momentum", 0.0)
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)

    def _update(self, flat, grad):
        if self.momentum:
            buf = self.state.get("momentum")
            if buf is None:
                buf = array_namespace(grad).asarray(grad, copy=True)
            else:
                buf *= self.momentum
                buf += grad
            self.state["momentum"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        flat -= self.lr * grad

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": int(self.nesterov)}

    def _set_hyper(self, state):
        momentum, nesterov = float(state.get("momentum", self.momentum)), bool(int(state.get("nesterov", self.nesterov)))
        self.momentum, self.nesterov = momentum, nesterov


class Adam(Optimizer):
    """Adam, as `torch.optim.Adam <https://pytorch.org/docs/stable/generated/torch.optim.Adam.html>`_ (L2 ``weight_decay`` added to the gradient)."""

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(model, lr, weight_decay)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"Adam betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = (check_real(b, "Adam", "beta", 0.0, 1.0) for b in betas)
        if not (b1 < 1.0 and b2 < 1.0):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas!r}")
        self.betas, self.eps = (b1, b2), check_real(eps, "Adam", "eps", 0.0, low_open=True)

    def _update(self, flat, grad):
        b1, b2 = self.betas
        m, v = self.state.get("m"), self.state.get("v")
        if m is None:
            m, v = grad * (1 - b1), (grad * grad) * (1 - b2)
        else:
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * (grad * grad)
        self.state["m"], self.state["v"] = m, v
        t = self.step_count
        step_size = self.lr / (1 - b1**t)
        denom = array_namespace(v).sqrt(v) / (1 - b2**t) ** 0.5 + self.eps
        flat -= step_size * (m / denom)

    def _hyper(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps}

    def _set_hyper(self, state):
        betas = (float(state.get("beta1", self.betas[0])), float(state.get("beta2", self.betas[1])))
        self.betas, self.eps = betas, float(state.get("eps", self.eps))
