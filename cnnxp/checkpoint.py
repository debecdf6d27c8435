"""Checkpoints that resume exactly: one ``.npz`` file, written whole or not at all, checked when read.

A checkpoint is one ``.npz`` file without pickles (``numpy.load(path,
allow_pickle=False)`` reads it):

- ``model/<key>``: the model's state dict (``0.weight``, ``1.running_mean``, ...);
- ``optimizer/<key>``: the optimizer's state dict (``step``, ``lr``, ``state.<buffer>``, ...);
- ``loader/<key>``: the training loader's shuffling state (``seed``, ``rng_state``, ...);
- ``meta``: a JSON string with ``format`` (`CHECKPOINT_FORMAT`), ``epoch``, the run's
  ``config``, the ``history`` rows and ``model_rng``, the Dropout generators' states.

It is written through `cnnxp._files.atomic_write` (a temporary file next to the
target, renamed into place), so a crash mid-write leaves the previous checkpoint
intact, and never from weights or optimizer state that are not finite (a diverged run).
`load_checkpoint` checks every entry before anything is used (`check_entries`: arrays real
and finite, scalars scalars within their range, every optimizer state slot covering the
same parameters); `restore` checks that the checkpoint fits the model, its optimizer (every
state slot the optimizer keeps, or none after 0 steps) and its loader, then loads it, on any
device. Each problem is one `CheckpointError` naming the file and the entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np  # host side: checkpoints hold NumPy arrays

from ._files import atomic_write
from .backend import to_numpy
from .train import History

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CHECKPOINT_FORMAT",
    "check_entries",
    "checkpoint_arrays",
    "write_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "restore",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk; arrays are NumPy arrays on the host."""

    epoch: int
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, Any]
    loader_state: dict[str, Any] | None
    model_rng: dict[str, str]
    config: dict[str, Any]
    history: History
    path: Path | None = None


# -- writing -----------------------------------------------------------------------------


def _host_value(value):
    if isinstance(value, (bool, int, float, str, np.generic)):
        return np.asarray(value)
    return to_numpy(value)


def checkpoint_arrays(model, optimizer, *, epoch: int, history: History | None = None,
                      config: dict[str, Any] | None = None, loader=None) -> dict[str, np.ndarray]:
    """The host arrays of a checkpoint (what `save_checkpoint` writes), taken now."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        arrays[f"model/{key}"] = np.array(to_numpy(value), copy=True)
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arrays[f"optimizer/{key}"] = np.array(_host_value(value), copy=True)
    if loader is not None and hasattr(loader, "state_dict"):
        for key, value in loader.state_dict().items():
            arrays[f"loader/{key}"] = np.asarray(value)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "config": config or {},
        "history": (history or History()).rows,
        "model_rng": model.rng_state(),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    return arrays


def _write_npz(file, arrays: dict[str, np.ndarray]) -> None:
    np.savez(file, **arrays)


def write_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write checkpoint ``arrays`` (from `checkpoint_arrays`) to ``path`` atomically; returns the path.

    The target is replaced only once the whole file is on disk; on any failure the
    temporary file is removed and the previous file (if any) is left as it was. An
    OSError names ``path``, never the temporary file. Arrays that are not finite (a
    diverged run's weights) are refused with CheckpointError before anything is written.
    """
    path = Path(path)
    check_entries(arrays, path, writing=True)
    with atomic_write(path, "wb") as f:
        _write_npz(f, arrays)
    return path


def save_checkpoint(path: str | os.PathLike, model, optimizer, *, epoch: int, history: History | None = None,
                    config: dict[str, Any] | None = None, loader=None) -> Path:
    """Write a checkpoint atomically (see the module docstring for its layout); returns the path."""
    arrays = checkpoint_arrays(model, optimizer, epoch=epoch, history=history, config=config, loader=loader)
    return write_checkpoint(path, arrays)


# -- checks ------------------------------------------------------------------------------

#: The scalar entries a checkpoint may hold: (integer only, test, rule).
_SCALARS = {
    "optimizer/step": (True, lambda v: v >= 0, "an integer >= 0"),
    "optimizer/lr": (False, lambda v: v >= 0, "a finite number >= 0"),
    "optimizer/weight_decay": (False, lambda v: v >= 0, "a finite number >= 0"),
    "optimizer/momentum": (False, lambda v: v >= 0, "a finite number >= 0"),
    "optimizer/nesterov": (True, lambda v: v in (0, 1), "0 or 1"),
    "optimizer/beta1": (False, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer/beta2": (False, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer/eps": (False, lambda v: v > 0, "a finite number > 0"),
    "loader/epoch": (True, lambda v: v >= 0, "an integer >= 0"),
    "loader/seed": (True, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
}
#: What an optimizer's (a loader's) part must hold when the checkpoint has one.
_REQUIRED = {"optimizer": ("optimizer/step", "optimizer/lr", "optimizer/weight_decay"),
             "loader": ("loader/epoch", "loader/rng_state")}


def _bad(path: Path, key: str, rule: str, value, writing: bool = False) -> CheckpointError:
    if writing:
        return CheckpointError(f"refusing to write the checkpoint {str(path)!r}: {key!r} holds {value} "
                               "(did training diverge?)")
    return CheckpointError(f"checkpoint {str(path)!r} has a bad {key!r}: expected {rule}, got {value}")


def _shown(value: np.ndarray) -> str:
    """What a bad entry holds, in a few words."""
    if value.ndim:
        return f"an array of shape {value.shape} ({value.dtype})"
    return f"{value.item()!r} ({value.dtype})"


def _check_array(key: str, value: np.ndarray, path: Path, writing: bool) -> None:
    """Weights and optimizer state: real floating-point arrays, every value finite."""
    if value.dtype.kind != "f":
        what = "complex values" if value.dtype.kind == "c" else f"{value.dtype} values"
        raise _bad(path, key, "real floating-point values", what, writing)
    bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    if bad:
        raise _bad(path, key, "finite values", f"{bad} of {value.size} values NaN or infinite", writing)


def _check_scalar(key: str, value: np.ndarray, path: Path) -> None:
    """A scalar entry (a step count, a learning rate, ...) stored as a 0-d number within its range."""
    integer, valid, rule = _SCALARS.get(key, (False, lambda v: True, "a finite number"))
    kinds = "iu" if integer else "iuf"
    ok = value.ndim == 0 and value.dtype.kind in kinds
    ok = ok and (integer or np.isfinite(value)) and bool(valid(value.item()))
    if not ok:
        raise _bad(path, key, rule, _shown(value))


def _check_generator(key: str, state, path: Path) -> None:
    """A random generator's state as JSON that NumPy's default generator takes (without using it)."""
    try:
        np.random.default_rng().bit_generator.state = json.loads(str(state))
    except (ValueError, TypeError, KeyError) as exc:
        raise _bad(path, key, "a generator state (JSON)", f"one NumPy refuses ({exc})") from None


def _check_slots(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Every optimizer state slot (Adam's ``m`` and ``v``, SGD's ``momentum``) covers the same parameters."""
    slots: dict[str, set[str]] = {}
    for key in arrays:
        if key.startswith("optimizer/state."):
            slot, _, name = key[len("optimizer/state."):].partition(".")
            slots.setdefault(slot, set()).add(name)
    every = set().union(*slots.values()) if slots else set()
    for slot, names in slots.items():
        if names != every:
            missing = ", ".join(repr(f"optimizer/state.{slot}.{n}") for n in sorted(every - names))
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}: every optimizer state slot must "
                                  "cover every parameter, or a resume is not exact")


def check_entries(arrays: dict[str, np.ndarray], path: str | os.PathLike, writing: bool = False) -> None:
    """CheckpointError for the first entry of a checkpoint's ``arrays`` that is not what it must be.

    Weights and optimizer state: real, finite floating-point arrays. Scalars (``optimizer/step``,
    ``optimizer/lr``, ``loader/epoch``, ...): 0-d numbers within their range. Generator states:
    JSON that NumPy takes. Each part's required entries, and every optimizer state slot covering
    the same parameters. With ``writing``, only the arrays are checked (nothing non-finite is
    written).
    """
    path = Path(path)
    for key, value in arrays.items():
        value = np.asarray(value)
        if key.startswith(("model/", "optimizer/state.")):
            _check_array(key, value, path, writing)
        elif writing:
            continue
        elif key.startswith(("optimizer/", "loader/")) and key != "loader/rng_state":
            _check_scalar(key, value, path)
        elif key == "loader/rng_state":
            _check_generator(key, value, path)
    if writing:
        return
    for part, required in _REQUIRED.items():
        if any(k.startswith(part + "/") for k in arrays):
            missing = [k for k in required if k not in arrays]
            if missing:
                raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing[0]!r}: a checkpoint with "
                                      f"{part} state holds {', '.join(map(repr, required))}")
    _check_slots(arrays, path)


# -- reading -----------------------------------------------------------------------------


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first local header, or an empty archive


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every entry of the ``.npz`` at ``path``, or CheckpointError for a file NumPy cannot read."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in _ZIP_MAGIC:  # NumPy would try it as a pickle and suggest allow_pickle=True: never
        raise CheckpointError(f"{str(path)!r} is not an npz checkpoint: it starts with {head!r}, not with b'PK' "
                              "as an npz does; pass a checkpoint.npz written by train.py")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:  # BadZipFile, EOFError, ValueError, OSError, zlib.error ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            "it may be truncated or not a cnnxp checkpoint"
        ) from None


def _read_meta(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """The checked ``meta`` entry, taken out of ``arrays``: format, epoch, and the types of the rest."""
    if "meta" not in arrays:
        raise CheckpointError(f"{str(path)!r} is not a cnnxp checkpoint: it has no 'meta' entry")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        meta["epoch"] = int(meta["epoch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unreadable 'meta' entry ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {meta.get('format')!r}, this version reads {CHECKPOINT_FORMAT}"
        )
    for key, kind in (("config", dict), ("model_rng", dict), ("history", list)):
        if key in meta and not isinstance(meta[key], kind):
            raise CheckpointError(f"checkpoint {str(path)!r} has a bad {key!r} in its 'meta' entry: expected "
                                  f"a {kind.__name__}, got {type(meta[key]).__name__}")
    for i, row in enumerate(meta.get("history", [])):
        if not isinstance(row, dict) or row.get("epoch") != i + 1:
            raise CheckpointError(f"checkpoint {str(path)!r} has a bad history row {i + 1}: expected "
                                  f"a dict of that epoch's metrics with \"epoch\": {i + 1}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get("model_rng", {}).items()):
        raise CheckpointError(f"checkpoint {str(path)!r} has a bad 'model_rng' entry: expected layer indices "
                              "mapped to generator states")
    return meta


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, on the host.

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    CheckpointError
        When the file is not a cnnxp checkpoint (truncated, corrupt, another format) or an
        entry is not what it must be (`check_entries`: NaN weights, an array where a
        scalar belongs, an optimizer slot missing a parameter, ...); one line naming the
        file and the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    arrays = _read_arrays(path)
    meta = _read_meta(arrays, path)
    check_entries(arrays, path)
    for key, value in meta.get("model_rng", {}).items():
        _check_generator(f"meta model_rng {key}", value, path)
    parts: dict[str, dict[str, Any]] = {"model": {}, "optimizer": {}, "loader": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group in parts and name:
            parts[group][name] = value
    optimizer_state: dict[str, Any] = {}
    for key, value in parts["optimizer"].items():
        optimizer_state[key] = value if key.startswith("state.") else value.item()
    return Checkpoint(
        epoch=meta["epoch"],
        model_state=parts["model"],
        optimizer_state=optimizer_state,
        loader_state=parts["loader"] or None,
        model_rng=dict(meta.get("model_rng", {})),
        config=dict(meta.get("config", {})),
        history=History(meta.get("history", [])),
        path=path,
    )


def restore(checkpoint: Checkpoint, model, optimizer=None, loader=None) -> None:
    """Load a checkpoint into a model (on any device), its optimizer and its training loader.

    Everything is checked before anything changes (`_check_fits`): a CheckpointError naming the
    file and the entry leaves the model, optimizer and loader as they were.
    """
    _check_fits(checkpoint, model, optimizer)
    try:  # what `load_checkpoint` did not check (a Checkpoint made by hand) still ends as one CheckpointError
        model.load_state_dict(checkpoint.model_state)
        model.set_rng_state(checkpoint.model_rng)
        if optimizer is not None and checkpoint.optimizer_state:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        if loader is not None and checkpoint.loader_state is not None:
            loader.load_state_dict(checkpoint.loader_state)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        where = f" {str(checkpoint.path)!r}" if checkpoint.path else ""
        raise CheckpointError(f"checkpoint{where} cannot be restored ({type(exc).__name__}: {exc})") from None


def _check_fits(checkpoint: Checkpoint, model, optimizer) -> None:
    """CheckpointError unless the checkpoint's weights, generators and optimizer state fit these."""
    where = f"checkpoint {str(checkpoint.path)!r}" if checkpoint.path else "the checkpoint"
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = checkpoint.model_state
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{where} does not fit the model: missing keys {missing}, unexpected keys {unexpected}")
    for key, shape in own.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{where} does not fit the model: 'model/{key}' has shape "
                                  f"{tuple(state[key].shape)}, the model's is {shape}")
    for key in checkpoint.model_rng:
        layer = model.layers[int(key)] if key.isdigit() and int(key) < len(model.layers) else None
        if not hasattr(layer, "set_rng_state"):
            raise CheckpointError(f"{where} has random-generator states that do not fit the model: layer {key} "
                                  "is not a Dropout layer of it")
    if optimizer is not None and checkpoint.optimizer_state:
        _check_optimizer(checkpoint.optimizer_state, optimizer, where)


def _expected_slots(optimizer, state: dict[str, Any]) -> set[str] | None:
    """The state slots ``optimizer`` keeps once it has stepped (None: not known for this kind)."""
    from .optim import SGD, Adam

    if isinstance(optimizer, Adam):
        return {"m", "v"}
    if isinstance(optimizer, SGD):
        return {"momentum"} if float(state.get("momentum", optimizer.momentum)) > 0 else set()
    slots = getattr(type(optimizer), "SLOTS", ())
    return set(slots) if slots else None


def _check_optimizer(state: dict[str, Any], optimizer, where: str) -> None:
    """Every state slot this optimizer keeps, for every parameter of its model (none at all after 0 steps)."""
    try:
        slots = optimizer._read_slots(state)  # a parameter it lacks, a slot missing one, a wrong shape
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{where} does not fit the optimizer: {exc.args[0]}") from None
    expected, name = _expected_slots(optimizer, state), type(optimizer).__name__
    if expected is None:
        return
    if set(slots) - expected:
        raise CheckpointError(f"{where} has optimizer state {sorted(set(slots) - expected)} that {name} does not "
                              "keep: it was saved by another optimizer")
    if set(slots) != expected and (slots or int(state["step"]) > 0):
        lacking = ", ".join(f"'optimizer/state.{slot}.*'" for slot in sorted(expected - set(slots)))
        raise CheckpointError(f"{where} lacks {lacking} after {int(state['step'])} steps of {name}: "
                              "a resume would not be exact")
