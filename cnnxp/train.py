"""Training: fit / evaluate / predict, the per-epoch history, and checkpoints that resume exactly.

Everything runs on the model's device. Metrics are accumulated there (a loss sum
and a correct count per epoch) and reach the host through `cnnxp.to_numpy` at
most once per batch: for the progress bar, about twice a second; otherwise once
per epoch.

A checkpoint is one ``.npz`` file without pickles (``numpy.load(path,
allow_pickle=False)`` reads it): the model's state dict under ``model/``, the
optimizer's under ``optimizer/``, the loader's shuffling state under
``loader/``, and a JSON string ``meta`` with the epoch, the run's configuration,
the history and the Dropout generators' states. It is written to a temporary
file next to the target and renamed into place, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np  # host side only: checkpoint files and metrics after to_numpy

from . import ops
from .backend import to_device, to_numpy
from .data.idx import usual_file_mode
from .losses import check_label_smoothing, softmax_cross_entropy
from .timing import synchronize

__all__ = [
    "History",
    "EvalResult",
    "Checkpoint",
    "CheckpointError",
    "fit",
    "evaluate",
    "predict",
    "cosine_lr",
    "exponential_lr",
    "save_checkpoint",
    "load_checkpoint",
    "restore",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = 1

#: The columns of one epoch's row in a `History`.
HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "seconds",
    "images_per_second",
)


class History:
    """Per-epoch metrics: a list of dicts with the keys of ``HISTORY_KEYS`` (test values None without an eval loader).

    Examples
    --------
    >>> h = History()
    >>> h.append({"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9})
    >>> len(h), h["train_loss"]
    (1, [0.5])
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        """``h[i]``: the i-th epoch's row; ``h["test_accuracy"]``: that column as a list."""
        if isinstance(key, str):
            return [row.get(key) for row in self.rows]
        return self.rows[key]

    @property
    def last(self) -> dict[str, Any] | None:
        return self.rows[-1] if self.rows else None

    def to_json(self) -> str:
        return json.dumps(self.rows)

    @classmethod
    def from_json(cls, text: str) -> History:
        return cls(json.loads(text))

    def __repr__(self) -> str:
        return f"History({len(self)} epochs)"


@dataclass
class EvalResult:
    """What `evaluate` returns: mean loss, accuracy, the confusion matrix (rows: true class, columns: predicted).

    ``predictions`` and ``labels`` (host int64 arrays in the loader's order) are
    filled only with ``return_predictions=True``.
    """

    loss: float
    accuracy: float
    confusion: np.ndarray
    num_samples: int
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each class (NaN for a class absent from the data)."""
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / totals


# -- the training loop ---------------------------------------------------------------


def exponential_lr(base_lr: float, gamma: float = 0.6) -> Callable[[int, int, int], float]:
    """A learning-rate schedule for `fit`: ``base_lr * gamma ** (epochs done)``, decayed smoothly every step.

    Like ``torch.optim.lr_scheduler.ExponentialLR``, but continuous within an epoch. The
    rate depends only on how far training has come, not on how many epochs the run
    will have, so one epoch plus a resume to two follows the same rates as two straight.
    """

    def schedule(step: int, steps_per_epoch: int, epochs: int) -> float:
        return base_lr * gamma ** (step / max(steps_per_epoch, 1))

    return schedule


def cosine_lr(base_lr: float, final_fraction: float = 0.0) -> Callable[[int, int, int], float]:
    """A learning-rate schedule for `fit`: ``base_lr`` decayed along a half cosine over all ``epochs``.

    The rate depends on the run's total number of epochs: a run resumed with a
    larger ``epochs`` than it started with follows a different curve.
    """

    def schedule(step: int, steps_per_epoch: int, epochs: int) -> float:
        progress = min(step / max(steps_per_epoch * epochs, 1), 1.0)
        return base_lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return schedule


def _num_classes(model) -> int | None:
    for layer in reversed(model.layers):
        weight = layer.params.get("weight")
        if weight is not None and len(weight.shape) == 2:
            return int(weight.shape[0])
    return None


def _checked_once(model, loader, label_smoothing: float = 0.0, classes: int | None = None, what: str = "training"):
    """The loss without its per-batch label check (a device-to-host read each batch), after
    checking the loader's labels once; loaders that cannot tell their labels keep the check."""
    label_smoothing = check_label_smoothing(label_smoothing)  # before any training, not at the first batch
    classes = classes or _num_classes(model)
    label_range = getattr(loader, "label_range", None)
    if classes is None or label_range is None:
        return functools.partial(softmax_cross_entropy, label_smoothing=label_smoothing)
    low, high = label_range
    if low < 0 or high >= classes:
        raise ValueError(f"the {what} labels run from {low} to {high}, but the model has {classes} classes: "
                         f"labels must be class indices in [0, {classes})")
    return functools.partial(softmax_cross_entropy, check_labels=False, label_smoothing=label_smoothing)


def _correct(xp, logits, labels):
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64))


def _format_epoch(row: dict[str, Any], epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.2f}%"
    )
    if row.get("test_loss") is not None:
        text += f"  test loss {row['test_loss']:.4f} acc {100 * row['test_accuracy']:.2f}%"
    return text + f"  {row['seconds']:.1f} s  {row['images_per_second']:,.0f} img/s"


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or None. tqdm's ``disable=None`` turns it off when stderr is not a terminal."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a bare library install still trains
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=None, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def fit(
    model,
    optimizer,
    train_loader,
    epochs: int,
    eval_loader=None,
    *,
    history: History | None = None,
    loss_fn=softmax_cross_entropy,
    label_smoothing: float = 0.0,
    lr_schedule: Callable[[int, int, int], float] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    on_epoch_end: Callable[[History], None] | None = None,
) -> History:
    """Train ``model`` until ``epochs`` epochs are done in all, evaluating after each one.

    Parameters
    ----------
    model : Sequential
    optimizer : cnnxp.optim optimizer of ``model``
    train_loader : iterable of ``(x, y)`` on the model's device, with ``len()``
    epochs : int
        The total number of epochs. With a ``history`` of ``k`` epochs (a resumed
        run), epochs ``k + 1 .. epochs`` are trained.
    eval_loader : iterable of ``(x, y)``, optional
        Evaluated after each epoch (test loss and accuracy in the history).
    history : History, optional
        The history so far; rows are appended to it.
    loss_fn : callable ``(logits, labels) -> (loss, grad_logits)``
        Used for training and for the test loss.
    label_smoothing : float in [0, 1)
        Train the default loss against smoothed targets (``softmax_cross_entropy``'s
        ``label_smoothing``); the test loss stays the plain cross-entropy, comparable
        between runs. Only with the default ``loss_fn``.
    lr_schedule : callable ``(step, steps_per_epoch, epochs) -> lr``, optional
        Sets ``optimizer.lr`` before every step, ``step`` counting from 0 over the
        whole run (see `exponential_lr`, `cosine_lr`).
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    log : callable, optional
        Called with a one-line summary after each epoch (``None``: silent).
    on_epoch_end : callable, optional
        Called with the history after each epoch (checkpoints are written here).

    Returns
    -------
    History
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    epochs = int(epochs)
    history = History() if history is None else history
    xp = model.device.xp
    steps_per_epoch = len(train_loader)
    eval_loss_fn = loss_fn
    if loss_fn is softmax_cross_entropy:
        loss_fn = _checked_once(model, train_loader, label_smoothing)
    elif label_smoothing:
        raise ValueError("label_smoothing applies to the default loss only: smooth the targets inside your loss_fn")
    for epoch in range(len(history) + 1, epochs + 1):
        model.train()
        step = (epoch - 1) * steps_per_epoch
        bar = _progress_bar(steps_per_epoch, f"epoch {epoch}/{epochs}", progress)
        loss_sum = correct = None
        seen = 0
        last_shown = 0.0
        start = time.perf_counter()
        try:
            # The loss and the running sums are made here, outside the model's own calls: on CuPy,
            # new arrays go to the current GPU, so the model's device is made current for them.
            with model.device.activate():
                for x, y in train_loader:
                    if lr_schedule is not None:
                        optimizer.lr = lr_schedule(step, steps_per_epoch, epochs)
                    logits = model(x)
                    loss, grad = loss_fn(logits, y)
                    model.backward(grad, need_input_grad=False)
                    optimizer.step()
                    step += 1
                    batch = int(y.shape[0])
                    seen += batch
                    batch_loss = loss * batch
                    batch_correct = _correct(xp, logits, y)
                    loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                    correct = batch_correct if correct is None else correct + batch_correct
                    if bar is not None:
                        bar.update(1)
                        now = time.perf_counter()
                        if now - last_shown >= 0.5 or bar.n == steps_per_epoch:
                            last_shown = now
                            values = to_numpy(xp.stack([xp.astype(loss_sum, xp.float32),
                                                        xp.astype(correct, xp.float32)]))
                            bar.set_postfix_str(
                                f"loss {values[0] / seen:.4f} acc {100 * values[1] / seen:.2f}% "
                                f"{seen / (now - start):,.0f} img/s", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        if seen == 0:
            raise ValueError("the training loader yielded no batches")
        synchronize(model.device)
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "train_loss": float(to_numpy(loss_sum)) / seen,
            "train_accuracy": float(to_numpy(correct)) / seen,
            "test_loss": None,
            "test_accuracy": None,
            "seconds": seconds,
            "images_per_second": seen / seconds,
        }
        if eval_loader is not None:
            eval_start = time.perf_counter()
            result = evaluate(model, eval_loader, loss_fn=eval_loss_fn)
            row["test_loss"], row["test_accuracy"] = result.loss, result.accuracy
            row["eval_seconds"] = time.perf_counter() - eval_start
        history.append(row)
        if log is not None:
            log(_format_epoch(row, epochs))
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history


def evaluate(model, loader, *, loss_fn=softmax_cross_entropy, num_classes: int | None = None,
             return_predictions: bool = False) -> EvalResult:
    """Mean loss, accuracy and confusion matrix of ``model`` (in eval mode) over ``loader``.

    Everything is accumulated on the model's device and moved to the host once at
    the end. The model's train/eval mode is restored afterwards.
    """
    xp = model.device.xp
    k = num_classes or _num_classes(model)
    if loss_fn is softmax_cross_entropy:  # labels checked once here, not read back every batch
        loss_fn = _checked_once(model, loader, classes=k, what="evaluation")
    was_training = model.training
    model.eval()
    loss_sum = confusion = None
    preds, labels = [], []
    seen = 0
    try:
        with model.device.activate():
            for x, y in loader:
                logits = model(x)
                if k is None:
                    k = int(logits.shape[1])
                loss, _ = loss_fn(logits, y)
                batch = int(y.shape[0])
                seen += batch
                pred = xp.argmax(logits, axis=1)
                classes = xp.arange(k, dtype=y.dtype, device=model.device.native)
                # confusion[i, j] = #(true i, predicted j), as a product of one-hot matrices
                true_hot = xp.astype(y[:, None] == classes[None, :], xp.float32)
                pred_hot = xp.astype(pred[:, None] == xp.astype(classes, pred.dtype)[None, :], xp.float32)
                batch_confusion = xp.astype(xp.permute_dims(true_hot, (1, 0)) @ pred_hot, xp.int64)
                batch_loss = loss * batch
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                confusion = batch_confusion if confusion is None else confusion + batch_confusion
                if return_predictions:
                    preds.append(pred)
                    labels.append(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no batches")
    confusion_host = to_numpy(confusion).astype(np.int64)
    result = EvalResult(
        loss=float(to_numpy(loss_sum)) / seen,
        accuracy=float(np.trace(confusion_host)) / seen,
        confusion=confusion_host,
        num_samples=seen,
    )
    if return_predictions:
        result.predictions = to_numpy(xp.concat(preds)).astype(np.int64)
        result.labels = to_numpy(xp.concat(labels)).astype(np.int64)
    return result


def predict(model, x, batch_size: int | None = None):
    """Classes and class probabilities for inputs ``x`` (N, C, H, W), on the model's device.

    ``x`` may live anywhere (a NumPy array is moved to the model's device). The
    model runs in eval mode; its mode is restored afterwards.

    Returns
    -------
    classes : int array (N,)
    probabilities : array (N, classes), rows sum to one
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"predict: batch_size must be a positive integer or None, got {batch_size!r}")
    x = to_device(x, model.device)
    xp = model.device.xp
    n = int(x.shape[0])
    step = max(n, 1) if batch_size is None else int(batch_size)
    was_training = model.training
    model.eval()
    try:
        with model.device.activate():
            # an empty batch goes through once, so the result has the right shape (0, classes)
            outs = [model(x[i:i + step, ...]) for i in range(0, max(n, 1), step)]
            logits = outs[0] if len(outs) == 1 else xp.concat(outs)
            probs = ops.softmax(logits, axis=1)
            return xp.argmax(probs, axis=1), probs
    finally:
        model.train(was_training)


# -- checkpoints -------------------------------------------------------------------------


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
    extra: dict[str, Any] = field(default_factory=dict)


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


def write_arrays_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an ``.npz`` to ``path`` through a temporary file in the same directory.

    The target is replaced only once the whole file is on disk; on any failure the
    temporary file is removed and the previous file (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, usual_file_mode())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except OSError as exc:  # name the file being written, not the temporary one
        Path(tmp_name).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def save_checkpoint(path: str | os.PathLike, model, optimizer, *, epoch: int, history: History | None = None,
                    config: dict[str, Any] | None = None, loader=None) -> Path:
    """Write a checkpoint atomically (see the module docstring for its layout); returns the path."""
    arrays = checkpoint_arrays(model, optimizer, epoch=epoch, history=history, config=config, loader=loader)
    return write_arrays_atomic(path, arrays)


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
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # BadZipFile, EOFError, ValueError, OSError, zlib.error ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            "it may be truncated or not a cnnxp checkpoint"
        ) from None
    if "meta" not in arrays:
        raise CheckpointError(f"{str(path)!r} is not a cnnxp checkpoint: it has no 'meta' entry")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        epoch = int(meta["epoch"])
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
    parts: dict[str, dict[str, Any]] = {"model": {}, "optimizer": {}, "loader": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group in parts and name:
            parts[group][name] = value
    optimizer_state: dict[str, Any] = {}
    for key, value in parts["optimizer"].items():
        optimizer_state[key] = value if key.startswith("state.") else value.item()
    return Checkpoint(
        epoch=epoch,
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
