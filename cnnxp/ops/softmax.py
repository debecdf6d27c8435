"""Softmax and log-softmax along an axis, stable for any finite input, and softmax's backward."""

from __future__ import annotations

from ._device import on_input_device
from ._namespace import array_namespace

__all__ = ["log_softmax", "softmax", "softmax_backward"]


@on_input_device
def log_softmax(x, axis: int = 1):
    """``log(softmax(x))`` computed without overflow: shift by the maximum first."""
    xp = array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


@on_input_device
def softmax(x, axis: int = 1):
    """Probabilities along ``axis``; stable for any finite input (1e4 included)."""
    xp = array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


@on_input_device
def softmax_backward(grad_out, probs, axis: int = 1):
    """Jacobian-vector product of softmax: ``p * (g - sum(g * p))`` along ``axis``."""
    xp = array_namespace(grad_out, probs)
    return probs * (grad_out - xp.sum(grad_out * probs, axis=axis, keepdims=True))
