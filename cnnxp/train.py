"""Training: fit / evaluate / predict, the per-epoch history and the learning-rate schedules.

Everything runs on the model's device. Metrics are accumulated there (a loss sum
and a correct count per epoch) and reach the host through `cnnxp.to_numpy` at
most once per batch: for the progress bar and the divergence check, about twice a
second; otherwise once per epoch.

The loop itself is `train_epoch` (forward, loss, backward, step, the running sums); `fit`
runs it once per epoch, then evaluates, logs and calls back (checkpoints: `cnnxp.checkpoint`).
A loss or weights that are no longer finite end `fit` with `DivergedError`.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np  # host side only: metrics after to_numpy

from . import ops
from ._checks import check_int
from .backend import to_device, to_numpy
from .layers import Softmax
from .losses import check_label_smoothing, cross_entropy_with_plain, softmax_cross_entropy
from .progress import EpochProgress, format_epoch
from .schedules import cosine_lr, exponential_lr
from .timing import synchronize

__all__ = ["History", "EvalResult", "HISTORY_KEYS", "fit", "train_epoch", "EpochProgress", "evaluate", "predict",
           "cosine_lr", "exponential_lr", "DivergedError"]

#: The columns of one epoch's row in a `History`.
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "images_per_second")
#: How often `fit` reads the running loss back during an epoch to notice divergence (a GPU synchronises
#: then, so never at every step; with a data-parallel loader only the epoch's total is checked).
DIVERGENCE_CHECK_SECONDS = 0.5


class DivergedError(FloatingPointError):
    """Training diverged: ``loss`` (the running mean) or, after an epoch's last step, a weight or the
    optimizer's state is not finite (``detail`` says which). ``epoch`` (1-based) and ``step`` (within it,
    where noticed) say when; the model holds the diverged weights, the history the epochs before.
    """

    def __init__(self, epoch: int | None, step: int, loss: float, detail: str | None = None):
        self.epoch, self.step, self.loss, self.detail = epoch, step, float(loss), detail
        self.facts = f"diverged at epoch {epoch}, step {step}: {detail or f'loss {self.loss}'}"
        super().__init__(self.facts + "; lower the learning rate")


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


# -- the loss and the metrics of a step ------------------------------------------------


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
    # Training with label smoothing reports the plain cross-entropy beside the smoothed objective.
    loss = cross_entropy_with_plain if label_smoothing else softmax_cross_entropy
    if classes is None or label_range is None:
        return functools.partial(loss, label_smoothing=label_smoothing)
    low, high = label_range
    if low < 0 or high >= classes:
        raise ValueError(f"the {what} labels run from {low} to {high}, but the model has {classes} classes: "
                         f"labels must be class indices in [0, {classes})")
    return functools.partial(loss, check_labels=False, label_smoothing=label_smoothing)


def _fit_losses(model, loader, loss_fn, label_smoothing: float):
    """`fit`'s (training loss, test loss): label smoothing trains the default loss only, and the test
    loss stays unsmoothed, comparable between runs."""
    if loss_fn is softmax_cross_entropy:
        if model.layers and isinstance(model.layers[-1], Softmax):
            warnings.warn("the model ends in Softmax, and softmax_cross_entropy applies its own softmax: it would "
                          "train on probabilities squashed twice (slowly, and worse); drop the last layer and "
                          "train on logits (cnnxp.train.predict gives probabilities)", UserWarning, stacklevel=3)
        return _checked_once(model, loader, label_smoothing), loss_fn
    if label_smoothing:
        raise ValueError("label_smoothing applies to the default loss only: smooth the targets inside your loss_fn")
    return loss_fn, loss_fn


def _correct(xp, logits, labels):
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64))


# -- the training loop ---------------------------------------------------------------


def train_epoch(model, optimizer, loader, loss_fn=softmax_cross_entropy, *, first_step: int = 0,
                lr_at: Callable[[int], float] | None = None, progress: EpochProgress | None = None,
                check_seconds: float | None = None):
    """One pass over ``loader``: forward, loss, backward and an optimizer step for every batch.

    ``lr_at(step)`` (optional) sets the learning rate before each step, ``step``
    counting on from ``first_step``. ``loss_fn(logits, labels)`` returns ``(loss, grad)``, or
    ``(loss, grad, shown)`` where the loss to report differs from the objective (fit's default
    loss with label smoothing: the plain cross-entropy). Returns ``(loss_sum, correct, seen)``: the
    summed (shown) loss and the number of correct predictions as device scalars (None
    without batches) and the number of images; nothing is read back to the host
    here, except through ``progress`` and, every ``check_seconds`` (None: never), the
    running loss, to raise `DivergedError` (``epoch`` None) once it is not finite.
    """
    xp = model.device.xp
    loss_sum = correct = None
    seen = 0
    step = first_step
    next_check = None if check_seconds is None else time.perf_counter() + check_seconds
    sharded = getattr(loader, "comm", None) is not None
    # The loss and the running sums are made here, outside the model's own calls: on CuPy,
    # new arrays go to the current GPU, so the model's device is made current for them.
    with model.device.activate():
        for x, y in loader:
            if sharded:  # this process's rows of the global batch: its rows of the Dropout masks too
                model.row_offset = loader.row_offset
            if lr_at is not None:
                optimizer.lr = lr_at(step)
            logits = model(x)
            loss, grad, *shown = loss_fn(logits, y)
            model.backward(grad, need_input_grad=False)
            optimizer.step()
            step += 1
            batch = int(y.shape[0])
            if batch == 0:  # an empty share of a short global batch: its NaN loss counts for nothing
                continue
            seen += batch
            batch_loss = (shown[0] if shown else loss) * batch
            batch_correct = _correct(xp, logits, y)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            if progress is not None:
                progress.update(loss_sum, correct, seen)
            if next_check is not None and time.perf_counter() >= next_check:
                next_check = time.perf_counter() + check_seconds
                _check_finite(float(to_numpy(loss_sum)) / seen, None, step - first_step)
    return loss_sum, correct, seen


def _check_finite(loss: float, epoch: int | None, step: int, model=None, optimizer=None) -> None:
    """DivergedError when ``loss`` is not finite, or (given them) a weight, a buffer or the optimizer's state."""
    if not math.isfinite(loss):
        raise DivergedError(epoch, step, loss)
    if model is None:
        return
    xp = model.device.xp
    with model.device.activate():  # one read per part, once per epoch
        for what, arrays in (("weights are", model.state_dict().values()),
                             ("optimizer's state is", getattr(optimizer, "state", {}).values())):
            flags = [xp.all(xp.isfinite(a)) for a in arrays]
            if flags and not bool(to_numpy(xp.all(xp.stack(flags)))):
                raise DivergedError(epoch, step, loss, f"the {what} no longer finite (loss {loss:.4g})")


def _totals(model, loader, sums, seen: int):
    """``(sums as host arrays, seen)`` over every process of a data-parallel ``loader`` (one
    allreduce; float64 counts are exact), or this process's own. A None sum (no batches) is 0."""
    xp = model.device.xp
    comm = getattr(loader, "comm", None)
    with model.device.activate():
        zero = xp.zeros((), dtype=xp.float64, device=model.device.native)
        parts = [zero if s is None else xp.astype(s, xp.float64) for s in sums]
        if comm is not None:
            shapes = [tuple(p.shape) for p in parts]
            flat = xp.concat([xp.reshape(p, (-1,)) for p in parts] + [xp.reshape(zero + seen, (1,))])
            flat = to_numpy(comm.allreduce(flat))
            seen, cuts = int(flat[-1]), np.cumsum([0] + [math.prod(s) for s in shapes])
            return [flat[a:b].reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes, strict=True)], seen
        return [to_numpy(p) for p in parts], seen


def _fit_epoch(model, optimizer, loader, loss_fn, lr_at, *, epoch: int, epochs: int, steps: int,
               progress: bool) -> dict[str, Any]:
    """Train epoch ``epoch`` of ``epochs`` (``steps`` steps) with its progress bar; its history row, no test yet."""
    model.train()
    bar = EpochProgress.open(steps, f"epoch {epoch}/{epochs}", progress, model.device.xp)
    start = time.perf_counter()
    # A data-parallel loader's processes would each notice at another step: there only the total counts.
    check = None if getattr(loader, "comm", None) is not None else DIVERGENCE_CHECK_SECONDS
    try:
        loss_sum, correct, seen = train_epoch(model, optimizer, loader, loss_fn, lr_at=lr_at, progress=bar,
                                              first_step=(epoch - 1) * steps, check_seconds=check)
    except DivergedError as exc:
        raise DivergedError(epoch, exc.step, exc.loss) from None
    finally:
        if bar is not None:
            bar.close()
    (loss_total, correct_total), seen = _totals(model, loader, (loss_sum, correct), seen)
    if seen == 0:
        raise ValueError("the training loader yielded no batches")
    _check_finite(float(loss_total) / seen, epoch, steps, model, optimizer)
    synchronize(model.device)
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch,
        "train_loss": float(loss_total) / seen,
        "train_accuracy": float(correct_total) / seen,
        "test_loss": None,
        "test_accuracy": None,
        "seconds": seconds,
        "images_per_second": seen / seconds,
    }


def _test_metrics(model, loader, loss_fn) -> dict[str, float]:
    start = time.perf_counter()
    result = evaluate(model, loader, loss_fn=loss_fn)
    return {"test_loss": result.loss, "test_accuracy": result.accuracy, "eval_seconds": time.perf_counter() - start}


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

    Raises
    ------
    DivergedError
        When the training loss stops being finite (read back every `DIVERGENCE_CHECK_SECONDS`
        and at the end of each epoch) or a weight does (checked after each epoch): that
        epoch is not added to the history and ``on_epoch_end`` is not called for it.
    """
    epochs = check_int(epochs, "fit", "epochs")
    history = History() if history is None else history
    steps_per_epoch = len(train_loader)
    train_loss_fn, test_loss_fn = _fit_losses(model, train_loader, loss_fn, label_smoothing)
    lr_at = None if lr_schedule is None else (lambda step: lr_schedule(step, steps_per_epoch, epochs))
    for epoch in range(len(history) + 1, epochs + 1):
        row = _fit_epoch(model, optimizer, train_loader, train_loss_fn, lr_at, epoch=epoch, epochs=epochs,
                         steps=steps_per_epoch, progress=progress)
        if eval_loader is not None:
            row.update(_test_metrics(model, eval_loader, test_loss_fn))
        history.append(row)
        if log is not None:
            log(format_epoch(row, epochs))
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history


def evaluate(model, loader, *, loss_fn=softmax_cross_entropy, num_classes: int | None = None,
             return_predictions: bool = False) -> EvalResult:
    """Mean loss, accuracy and confusion matrix of ``model`` (in eval mode) over ``loader``.

    Everything is accumulated on the model's device and moved to the host once at
    the end. The model's train/eval mode is restored afterwards. With a data-parallel
    loader every process evaluates its share and gets the numbers of the whole set.
    """
    xp = model.device.xp
    k = num_classes or _num_classes(model)
    if loss_fn is softmax_cross_entropy:  # labels checked once here, not read back every batch
        loss_fn = _checked_once(model, loader, classes=k, what="evaluation")
    was_training = model.training
    model.eval()
    loss_sum = confusion = None
    preds, labels, rows = [], [], []
    seen = 0
    try:
        with model.device.activate():
            for b, (x, y) in enumerate(loader):
                logits = model(x)
                if k is None:
                    k = int(logits.shape[1])
                loss, _ = loss_fn(logits, y)
                batch = int(y.shape[0])
                seen += batch
                rows.append(b * getattr(loader, "batch_size", 0) + getattr(loader, "row_offset", 0))
                if batch == 0:  # an empty share of a short global batch
                    preds.append(xp.argmax(logits, axis=1))
                    labels.append(y)
                    continue
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
    if confusion is None and k is not None:
        confusion = np.zeros((k, k))  # every process sends the same shapes, batches or not
    (loss_total, confusion_host), seen = _totals(model, loader, (loss_sum, confusion), seen)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no batches")
    confusion_host = confusion_host.astype(np.int64)
    result = EvalResult(
        loss=float(loss_total) / seen,
        accuracy=float(np.trace(confusion_host)) / seen,
        confusion=confusion_host,
        num_samples=seen,
    )
    if return_predictions:
        result.predictions, result.labels = _gathered(xp, loader, preds, labels, rows)
    return result


def _gathered(xp, loader, preds, labels, rows):
    """Predictions and labels in the loader's order as host int64 arrays; from every process, for a
    data-parallel loader (each batch's share placed at its row in the global batch)."""
    pred = to_numpy(xp.concat(preds)).astype(np.int64) if preds else np.zeros(0, np.int64)
    true = to_numpy(xp.concat(labels)).astype(np.int64) if labels else np.zeros(0, np.int64)
    comm = getattr(loader, "comm", None)
    if comm is None:
        return pred, true
    position = np.concatenate([row + np.arange(int(p.shape[0])) for row, p in zip(rows, preds, strict=True)]
                              or [np.zeros(0, np.int64)])
    pieces = comm.allgather((position, pred, true))
    position, pred, true = (np.concatenate([piece[i] for piece in pieces]) for i in range(3))
    order = np.argsort(position, kind="stable")
    return pred[order], true[order]


def predict(model, x, batch_size: int | None = None):
    """Classes and class probabilities for inputs ``x`` (N, C, H, W), on the model's device.

    ``x`` may live anywhere (a NumPy array is moved to the model's device). The
    model runs in eval mode; its mode is restored afterwards.

    Returns
    -------
    classes : int array (N,)
    probabilities : array (N, classes), rows sum to one
    """
    if batch_size is not None:
        batch_size = check_int(batch_size, "predict", "batch_size")
    x = to_device(x, model.device)
    xp = model.device.xp
    n = int(x.shape[0])
    step = max(n, 1) if batch_size is None else batch_size
    was_training = model.training
    model.eval()
    try:
        with model.device.activate():
            # an empty batch goes through once, so the result has the right shape (0, classes)
            outs = [model(x[i:min(n, i + step), ...]) for i in range(0, max(n, 1), step)]  # stops in bounds
            logits = outs[0] if len(outs) == 1 else xp.concat(outs)
            probs = ops.softmax(logits, axis=1)
            return xp.argmax(probs, axis=1), probs
    finally:
        model.train(was_training)


_MOVED_TO_CHECKPOINT = ("save_checkpoint", "load_checkpoint", "restore", "Checkpoint", "CheckpointError",
                        "CHECKPOINT_FORMAT", "checkpoint_arrays")


def __getattr__(name: str):
    """The checkpoint functions lived here before `cnnxp.checkpoint`: still found, with a warning."""
    if name in _MOVED_TO_CHECKPOINT:
        import warnings

        from . import checkpoint

        warnings.warn(f"cnnxp.train.{name} moved to cnnxp.checkpoint.{name}", DeprecationWarning, stacklevel=2)
        return getattr(checkpoint, name)
    raise AttributeError(f"module 'cnnxp.train' has no attribute {name!r}")
