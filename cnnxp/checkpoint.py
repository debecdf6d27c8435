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
intact. `load_checkpoint` checks the format before anything is used; `restore` loads
a checkpoint into a model on any device, its optimizer and its loader.
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
    OSError names ``path``, never the temporary file.
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        _write_npz(f, arrays)
    return path


def save_checkpoint(path: str | os.PathLike, model, optimizer, *, epoch: int, history: History | None = None,
                    config: dict[str, Any] | None = None, loader=None) -> Path:
    """Write a checkpoint atomically (see the module docstring for its layout); returns the path."""
    arrays = checkpoint_arrays(model, optimizer, epoch=epoch, history=history, config=config, loader=loader)
    return write_checkpoint(path, arrays)


# -- reading -----------------------------------------------------------------------------


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every entry of the ``.npz`` at ``path``, or CheckpointError for a file NumPy cannot read."""
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
        When the file is not a cnnxp checkpoint (truncated, corrupt, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    arrays = _read_arrays(path)
    meta = _read_meta(arrays, path)
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
    """Load a checkpoint into a model (on any device), its optimizer and its training loader."""
    try:
        model.load_state_dict(checkpoint.model_state)
    except (KeyError, ValueError) as exc:
        where = f" {str(checkpoint.path)!r}" if checkpoint.path else ""
        raise CheckpointError(f"checkpoint{where} does not fit the model: {exc.args[0]}") from None
    try:
        model.set_rng_state(checkpoint.model_rng)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        where = f" {str(checkpoint.path)!r}" if checkpoint.path else ""
        raise CheckpointError(f"checkpoint{where} has random-generator states that do not fit the model "
                              f"({type(exc).__name__}: {exc})") from None
    if optimizer is not None and checkpoint.optimizer_state:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    if loader is not None and checkpoint.loader_state is not None:
        loader.load_state_dict(checkpoint.loader_state)
