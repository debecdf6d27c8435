"""Training: `fit`, its loop `train_epoch` and the per-epoch `History` (`evaluate` and `predict`, from
`cnnxp.evaluation`, are here too).

Everything runs on the model's device. Metrics are accumulated there (a loss sum
and a correct count per epoch) and reach the host through `cnnxp.to_numpy` at
most once per batch: for the progress bar and the divergence check, about twice a
second; otherwise once per epoch.

The loop itself is `train_epoch` (forward, loss, backward, step, the running sums); `fit`
runs it once per epoch, then evaluates, logs and calls back (checkpoints: `cnnxp.checkpoint`).
A loss or weights that are no longer finite end `fit` with `DivergedError`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._checks import check_int
from .backend import to_numpy
from .evaluation import EvalResult, _checked_once, _totals, evaluate, predict
from .layers import Softmax
from .losses import softmax_cross_entropy
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


# -- the loss and the metrics of a step ------------------------------------------------


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
