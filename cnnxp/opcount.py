"""Counting array operations: the GPU's cost model, measured on a machine without one.

On CuPy every array operation is at least one kernel launch or allocation, about
8-30 microseconds of host time whatever the array's size, and every read of a value
back to the host waits for the GPU to finish. Where the arithmetic of a step is a
fraction of a millisecond, as for LeNet-5, the *number* of operations and host
round trips is the cost. `count_ops` counts them on `array_api_strict`, whose arrays
are plain Python objects, so the counts are exact and the same on every machine::

    import array_api_strict as strict
    from cnnxp.opcount import count_ops

    model.to(strict.Device("CPU_DEVICE"), xp=strict)
    with count_ops() as counts:
        train_step(x, y)
    counts.ops, counts.to_device, counts.to_host, counts.by_name.most_common(5)

What counts, once per outermost call (calls that array_api_strict makes internally
are not counted again):

- ``ops``: every call that returns a new array (a function of the namespace or an
  operator; views such as slices and reshapes included, since each costs host time on
  CuPy), every ``x[...] = value`` and every in-place operator (``x += y``).
- ``to_device``: an array made from host data (``asarray`` or ``from_dlpack`` of a
  NumPy array, a list or a Python scalar): a host-to-device copy on a GPU.
- ``to_host``: a value read back (``bool``, ``int``, ``float``, ``complex``,
  ``operator.index``, ``__array__``, DLPack export): a synchronisation on a GPU.

Python scalars inside arithmetic (``x * 0.5``) are kernel arguments on CuPy, not copies,
and are not counted.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["OpCounts", "count_ops"]

_READS = ("__bool__", "__int__", "__float__", "__complex__", "__index__", "__array__", "__dlpack__")
_UPDATES = ("__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__",
            "__imod__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__")
_NOT_OPS = ("__array_namespace__", "__dlpack_device__", "__repr__", "__str__", "__hash__", "__reduce__",
            "__new__", "__init__", "__getattribute__", "__setattr__", "__iter__", "__buffer__", "__len__")


@dataclass
class OpCounts:
    """What `count_ops` saw: totals and the operations by name (``"multiply"``, ``"Array.__getitem__"``).

    ``ops`` counts every operation; ``views`` how many of them only re-described an input's
    memory (a slice, a reshape or transpose that needs no copy): on CuPy those cost host time
    (a few microseconds) but launch nothing. ``kernels`` is the rest: ``ops - views``.
    """

    ops: int = 0
    views: int = 0
    to_device: int = 0
    to_host: int = 0
    by_name: Counter = field(default_factory=Counter)

    @property
    def kernels(self) -> int:
        return self.ops - self.views

    def __str__(self) -> str:
        return (f"{self.ops} operations ({self.kernels} computing, {self.views} views), "
                f"{self.to_device} host-to-device copies, {self.to_host} reads to the host")


_state = threading.local()


def _counted(name: str, fn, counts: OpCounts, array_type):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_state, "depth", 0):
            return fn(*args, **kwargs)
        _state.depth = 1
        try:
            result = fn(*args, **kwargs)
        finally:
            _state.depth = 0
        short = name.rsplit(".", 1)[-1]
        if short in _READS:
            counts.to_host += 1
        elif short in ("asarray", "from_dlpack") and not isinstance(args[0] if args else None, array_type):
            counts.to_device += 1
        elif short in _UPDATES or isinstance(result, array_type) or (
                isinstance(result, (tuple, list)) and any(isinstance(r, array_type) for r in result)):
            counts.ops += 1
            counts.by_name[name] += 1
            if short not in _UPDATES and _is_view(result, args, array_type):
                counts.views += 1
                counts.by_name[f"{name} (view)"] += 1
        return result

    return wrapper


def _is_view(result, args, array_type) -> bool:
    """True when ``result`` is an array sharing memory with an array argument: no data was computed."""
    import numpy as np

    if not isinstance(result, array_type):
        return False
    inputs = [a for a in args if isinstance(a, array_type)]
    return any(np.shares_memory(result._array, a._array) for a in inputs)


@contextlib.contextmanager
def count_ops() -> Iterator[OpCounts]:
    """Count the operations on `array_api_strict` arrays inside the ``with`` block (see the module docstring).

    The namespace and its array type are instrumented only for the duration of the block.
    """
    import array_api_strict as strict

    array_type = type(strict.asarray(0))
    counts = OpCounts()
    patched = []
    for name in strict.__all__:
        fn = getattr(strict, name)
        if callable(fn) and not isinstance(fn, type) and getattr(fn, "__module__", "").startswith("array_api_strict"):
            patched.append((strict, name, fn))
    for name, attr in list(vars(array_type).items()):
        if name in _NOT_OPS or not name.startswith("__") and name not in ("to_device",):
            continue
        if callable(attr):
            patched.append((array_type, name, attr))
    for prop in ("T", "mT"):
        patched.append((array_type, prop, vars(array_type)[prop]))
    try:
        for owner, name, fn in patched:
            label = f"Array.{name}" if owner is array_type else name
            if isinstance(fn, property):
                setattr(owner, name, property(_counted(label, fn.fget, counts, array_type)))
            else:
                setattr(owner, name, _counted(label, fn, counts, array_type))
        yield counts
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)


#: Per-step budgets of the presets (docs/performance.md): computing operations (kernel launches
#: and allocations on a GPU) and views, whatever the batch size; no copy to or from the host.
BUDGETS = {"lenet5": {"kernels": 150, "views": 100}, "fashion": {"kernels": 300, "views": 120}}


def count_training_step(model, optimizer, x, y) -> OpCounts:
    """The operations of one training step (forward, loss, backward, update) on `array_api_strict` arrays.

    ``x`` and ``y`` must already be on the model's device. One step runs first, uncounted, so
    that the optimizer's state exists, as in every step after the first. The loss skips its
    label check, as `cnnxp.train.fit` does after checking its loader's labels once.
    """
    from .losses import softmax_cross_entropy

    def step():
        with model.device.activate():
            _, grad = softmax_cross_entropy(model(x), y, check_labels=False)
            model.backward(grad, need_input_grad=False)
            optimizer.step()

    step()
    with count_ops() as counts:
        step()
    return counts


def count_presets(batch_sizes=(64, 1024), models=("lenet5", "fashion", "seed")) -> list[dict]:
    """One row per preset and batch size: the counts of a training step (`count_training_step`)
    with the optimizer the preset trains with here (SGD with momentum; Adam for ``fashion``)."""
    import array_api_strict as strict
    import numpy as np

    from . import models as presets
    from .backend import get_device, to_device
    from .optim import SGD, Adam

    device = get_device(strict.Device("CPU_DEVICE"), xp=strict)
    rows = []
    for name in models:
        for batch in batch_sizes:
            model = presets.build(name, seed=0, device=device)
            optimizer = Adam(model, lr=1e-3) if name == "fashion" else SGD(model, lr=0.01, momentum=0.9)
            rng = np.random.default_rng(0)
            x = to_device(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), device)
            y = to_device(rng.integers(0, 10, batch), device)
            counts = count_training_step(model, optimizer, x, y)
            rows.append({"model": name, "batch": batch, "optimizer": type(optimizer).__name__, "ops": counts.ops,
                         "kernels": counts.kernels, "views": counts.views, "to_device": counts.to_device,
                         "to_host": counts.to_host, "by_name": dict(counts.by_name.most_common())})
    return rows
