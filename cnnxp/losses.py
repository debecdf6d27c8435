"""Softmax cross-entropy: the loss and its gradient in one pass."""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from . import ops
from ._checks import check_real

__all__ = ["softmax_cross_entropy"]


def check_label_smoothing(value) -> float:
    """``value`` as a float in [0, 1): TypeError for a non-number, ValueError outside the range."""
    return check_real(value, "", "label_smoothing", 0.0, 1.0, high_open=True)


def softmax_cross_entropy(logits, labels, *, label_smoothing: float = 0.0, check_labels: bool = True):
    """Mean cross-entropy of ``softmax(logits)`` against integer class ``labels``.

    Like ``torch.nn.functional.cross_entropy(logits, labels, label_smoothing=...)``;
    computed through a shifted log-softmax, so logits of 1e4 give finite values.

    Parameters
    ----------
    logits : array (N, K), floating
    labels : array (N,), integer class indices in [0, K)
    label_smoothing : float in [0, 1)
        The target is ``(1 - label_smoothing) * one_hot(labels) + label_smoothing / K``
        instead of the one-hot vector (0, the default: plain cross-entropy).

    Returns
    -------
    loss : 0-d array (on the logits' device)
    grad_logits : array (N, K), ``(softmax(logits) - target) / N``

    ``check_labels=False`` skips the range check of the labels, which reads a value
    back from the device (a synchronisation on a GPU); `cnnxp.train.fit` checks its
    loader's labels once instead.
    """
    for name, value in (("logits", logits), ("labels", labels)):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"softmax_cross_entropy expected {name} as an array, got {type(value).__name__}: "
                            "convert it with cnnxp.to_device(..., model.device)")
    xp = array_namespace(logits, labels)
    if not xp.isdtype(logits.dtype, "real floating"):
        raise TypeError(f"softmax_cross_entropy expected floating-point logits, got {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy expected logits of shape (N, classes), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"softmax_cross_entropy expected labels of shape ({logits.shape[0]},) to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    label_smoothing = check_label_smoothing(label_smoothing)
    n, k = logits.shape
    if check_labels and bool(xp.any((labels < 0) | (labels >= k))):
        raise ValueError(f"labels must be class indices in [0, {k}), got values outside that range")
    log_probs = ops.log_softmax(logits, axis=1)
    classes = xp.arange(k, dtype=labels.dtype, device=device_of(labels))
    target = xp.astype(labels[:, None] == classes[None, :], logits.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
    # Only the classes the target weighs enter the sum (a masked -inf logit times a zero weight
    # would be NaN); as in PyTorch, the loss is finite whenever the labelled class's log-probability is.
    weighed = xp.where(target > 0, log_probs, xp.zeros((), dtype=log_probs.dtype, device=device_of(logits)))
    loss = -xp.sum(weighed * target) / n
    grad = (xp.exp(log_probs) - target) / n
    return loss, grad
