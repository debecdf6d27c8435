"""Evaluation and prediction: a model's loss, accuracy and confusion matrix over a loader, and its
classes and probabilities for a batch; with a data-parallel loader, the numbers of the whole set.

Everything is accumulated on the model's device and moved to the host once at the end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np  # host side only: metrics after to_numpy

from . import ops
from ._checks import check_int
from .backend import to_device, to_numpy
from .losses import check_label_smoothing, cross_entropy_with_plain, softmax_cross_entropy

__all__ = ["EvalResult", "evaluate", "predict"]


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


