"""Softmax cross-entropy: the loss and its gradient in one pass."""

from __future__ import annotations

from array_api_compat import device as device_of
from array_api_compat import is_numpy_array

from ._checks import check_real
from .backend import on_device_of
from .ops._namespace import array_namespace

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

    Labels outside ``[0, K)``: NumPy labels are checked on the spot (ValueError). Labels on a
    device are never read back (that would wait for the GPU at every call); an out-of-range
    label makes the loss NaN instead, as PyTorch's CUDA kernels stop on a device-side assert.
    ``check_labels=False`` skips even that (`cnnxp.train.fit` checks its loader's labels once).
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
    with on_device_of(logits):  # arrays made here land on the logits' GPU, whichever is current
        return _loss_and_grad(xp, logits, labels, label_smoothing, check_labels)[:2]


def cross_entropy_with_plain(logits, labels, *, label_smoothing: float = 0.0, check_labels: bool = True):
    """`softmax_cross_entropy`'s ``(loss, grad)`` and the plain cross-entropy beside it (the same value
    without label smoothing): what training reports, comparable with a test loss, at the cost of one
    sum. Inputs are those of `softmax_cross_entropy`, and are assumed checked by it once."""
    xp = array_namespace(logits, labels)
    with on_device_of(logits):
        return _loss_and_grad(xp, logits, labels, check_label_smoothing(label_smoothing), check_labels)


def _loss_and_grad(xp, logits, labels, label_smoothing: float, check_labels: bool):
    """`softmax_cross_entropy` once its inputs are checked, and the plain loss beside it: about fifteen
    array operations, no read-back."""
    n, k = logits.shape
    rows = labels[:, None]
    outside = None
    if check_labels:
        outside = xp.any((labels < 0) | (labels >= k))
        if is_numpy_array(labels):  # on the host: reading it costs nothing
            if bool(outside):
                raise ValueError(f"labels must be class indices in [0, {k}), got values outside that range")
            outside = None
        else:  # clamped for the lookup below; the loss then says NaN
            rows = xp.minimum(xp.maximum(rows, 0), k - 1)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    exp = xp.exp(shifted)
    total = xp.sum(exp, axis=1, keepdims=True)
    # -log p[label] = log(sum(exp)) - shifted[label]: only the labelled class's logit enters, so
    # the loss is finite whenever that class's log-probability is (masked -inf logits elsewhere).
    log_total = xp.log(total)
    nll = log_total - xp.take_along_axis(shifted, rows, axis=1)
    target = xp.astype(rows == xp.arange(k, dtype=labels.dtype, device=device_of(labels)), logits.dtype)
    plain = nll
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
        nll = (1.0 - label_smoothing) * nll + (label_smoothing / k) * xp.sum(log_total - shifted, axis=1, keepdims=True)
    loss = xp.sum(nll) / n  # an empty batch: NaN, as PyTorch's mean over nothing
    if outside is not None:
        loss = xp.where(outside, float("nan"), loss)
    plain_loss = loss if plain is nll else xp.sum(plain) / n
    if outside is not None and plain is not nll:
        plain_loss = xp.where(outside, float("nan"), plain_loss)
    grad = (exp / total - target) * (1.0 / max(n, 1))  # empty when the batch is
    return loss, grad, plain_loss

