"""SGD and Adam, with their state in one small dict that saves and restores exactly."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from . import backend
from ._checks import check_real

__all__ = ["SGD", "Adam"]


class Optimizer:
    """Updates every parameter of a model from its ``grads``, in place, on the model's device."""

    def __init__(self, model, lr: float, weight_decay: float = 0.0):
        owner = type(self).__name__
        if not (hasattr(model, "named_parameters") and hasattr(model, "device")):
            raise TypeError(f"{owner} expected a cnnxp Sequential as its model, got {type(model).__name__}: "
                            f"{owner}(model, lr=...) with model = Sequential([...])")
        if next(iter(model.named_parameters()), None) is None:
            raise ValueError(f"{owner} got a model with no parameters: nothing to train")
        lr = check_real(lr, owner, "learning rate", 0.0, low_open=True)
        weight_decay = check_real(weight_decay, owner, "weight_decay", 0.0)
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.state: dict[str, Any] = {}  # per-parameter arrays, keyed "<slot>.<param key>"
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The learning rate; whatever number is set (a schedule's NumPy scalar, say) is kept as a float,
        so updates on any device multiply by a Python number."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = float(value)

    def _grad(self, layer, name):
        grad = layer.grads.get(name)
        if grad is None:
            raise RuntimeError(f"no gradient for {layer.name}.{name}: run model.backward before optimizer.step()")
        if self.weight_decay:
            grad = grad + self.weight_decay * layer.params[name]
        return grad

    def step(self) -> None:
        self.step_count += 1
        with self.model.device.activate():
            for key, layer, name in self.model.named_parameters():
                self._update(key, layer.params[name], self._grad(layer, name))

    def _update(self, key, param, grad):
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, the step count and every state array (on the model's device)."""
        return {"step": self.step_count, "lr": self.lr, "weight_decay": self.weight_decay,
                **self._hyper(), **{f"state.{k}": v for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict` output saved on any device; arrays move to the model's device.

        Everything is checked before anything changes: a KeyError (a parameter the model does not
        have, a missing field) or ValueError (a shape that does not match) leaves the optimizer as it was.
        """
        dev = self.model.device
        step, lr, weight_decay = int(state["step"]), float(state["lr"]), float(state["weight_decay"])
        params = {key: layer.params[name] for key, layer, name in self.model.named_parameters()}
        new_state = {}
        for k, v in state.items():
            if not k.startswith("state."):
                continue
            slot_key = k[len("state."):]
            param_key = slot_key.split(".", 1)[-1]
            if param_key not in params:
                raise KeyError(f"optimizer state has {param_key!r}, which the model does not have")
            if tuple(v.shape) != tuple(params[param_key].shape):
                raise ValueError(f"optimizer state {slot_key!r} has shape {tuple(v.shape)}, "
                                 f"the parameter has {tuple(params[param_key].shape)}")
            new_state[slot_key] = dev.xp.astype(backend.to_device(v, dev), params[param_key].dtype, copy=True)
        self._set_hyper(state)
        self.step_count, self.lr, self.weight_decay, self.state = step, lr, weight_decay, new_state

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

    def _update(self, key, param, grad):
        if self.momentum:
            buf = self.state.get(f"momentum.{key}")
            if buf is None:
                buf = grad + 0.0
            else:
                buf *= self.momentum
                buf += grad
            self.state[f"momentum.{key}"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad

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

    def _update(self, key, param, grad):
        b1, b2 = self.betas
        m = self.state.get(f"m.{key}")
        v = self.state.get(f"v.{key}")
        if m is None:
            m, v = grad * (1 - b1), (grad * grad) * (1 - b2)
        else:
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * (grad * grad)
        self.state[f"m.{key}"], self.state[f"v.{key}"] = m, v
        t = self.step_count
        step_size = self.lr / (1 - b1**t)
        denom = array_namespace(v).sqrt(v) / (1 - b2**t) ** 0.5 + self.eps
        param -= step_size * (m / denom)

    def _hyper(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps}

    def _set_hyper(self, state):
        betas = (float(state.get("beta1", self.betas[0])), float(state.get("beta2", self.betas[1])))
        self.betas, self.eps = betas, float(state.get("eps", self.eps))
