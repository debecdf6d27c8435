"""Timing that is honest on GPUs: wait for the device before reading the clock.

CUDA kernels run asynchronously, so a clock read right after a call measures
only the launch. `synchronize` waits for the device's work to finish; on the
CPU (and any library without queued work) it does nothing.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import array_api_compat

from .backend import get_device
from .losses import softmax_cross_entropy

__all__ = ["synchronize", "layer_times", "format_layer_times"]


def synchronize(device: Any = "cpu") -> None:
    """Block until all work queued on ``device`` (a name or `Device`) has finished; a no-op off CUDA.

    Decided by the device's library, not its name: a torch model on ``torch.device("cuda")``
    is named "cuda:0" too, and waits with ``torch.cuda.synchronize``.
    """
    dev = get_device(device)
    if array_api_compat.is_cupy_namespace(dev.xp):
        import cupy

        with dev.native:
            cupy.cuda.get_current_stream().synchronize()
        dev.native.synchronize()
    elif array_api_compat.is_torch_namespace(dev.xp) and getattr(dev.native, "type", "") == "cuda":
        import torch

        torch.cuda.synchronize(dev.native)


def layer_times(model, x, y=None, repeats: int = 5, warmup: int = 1) -> list[dict[str, Any]]:
    """Per-layer forward and backward wall time (seconds, the median of ``repeats``) on a batch ``x``.

    The device is synchronised around every layer, so each time is that layer's
    own work. The backward pass starts from the softmax cross-entropy gradient
    against ``y`` (class 0 for every sample when ``y`` is None). Layers run in
    training mode, in their declared order, as `Sequential` runs them.

    The model comes back as it was: its mode, BatchNorm's running statistics (which
    the training-mode passes update), the Dropout generators, and every layer's
    gradients and cache.

    Returns one dict per layer: ``index``, ``layer``, ``output_shape``, ``forward_s``, ``backward_s``.
    """
    xp = model.device.xp
    device = model.device
    if y is None:
        with device.activate():
            y = xp.zeros(int(x.shape[0]), dtype=xp.int64, device=device.native)
    was_training = model.training
    xp_copy = functools.partial(xp.asarray, copy=True)
    with device.activate():  # CuPy copies onto the current GPU
        saved = [({k: xp_copy(v) for k, v in layer.buffers.items()}, dict(layer.grads), layer.cache)
                 for layer in model.layers]
    rng_state = model.rng_state()
    model.train()
    forward = [[] for _ in model.layers]
    backward = [[] for _ in model.layers]
    shapes, shape = [], tuple(x.shape)
    for layer in model.layers:
        shape = tuple(layer.output_shape(shape))
        shapes.append(shape)
    try:
        with device.activate():
            for run in range(warmup + repeats):
                out = x
                for i, layer in enumerate(model.layers):
                    synchronize(device)
                    start = time.perf_counter()
                    out = layer.forward(out)
                    synchronize(device)
                    if run >= warmup:
                        forward[i].append(time.perf_counter() - start)
                _, grad = softmax_cross_entropy(out, y)
                for i in range(len(model.layers) - 1, -1, -1):
                    synchronize(device)
                    start = time.perf_counter()
                    grad = model.layers[i].backward(grad, need_input_grad=i > 0)
                    synchronize(device)
                    if run >= warmup:
                        backward[i].append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        for layer, (buffers, grads, cache) in zip(model.layers, saved, strict=True):
            layer.buffers.update(buffers)
            layer.grads, layer.cache = grads, cache
        model.set_rng_state(rng_state)
    rows = []
    for i, layer in enumerate(model.layers):
        rows.append({
            "index": i,
            "layer": repr(layer),
            "output_shape": shapes[i],
            "forward_s": sorted(forward[i])[len(forward[i]) // 2],
            "backward_s": sorted(backward[i])[len(backward[i]) // 2],
        })
    return rows


def format_layer_times(rows: list[dict[str, Any]], batch_size: int | None = None) -> str:
    """The per-layer table as text: forward and backward milliseconds and each layer's share of the total."""
    total = sum(r["forward_s"] + r["backward_s"] for r in rows) or 1.0
    header = ("layer", "output shape", "forward ms", "backward ms", "share")
    lines = [(f"{r['index']}: {r['layer']}", str(r["output_shape"]), f"{1e3 * r['forward_s']:.3f}",
              f"{1e3 * r['backward_s']:.3f}", f"{100 * (r['forward_s'] + r['backward_s']) / total:.1f}%")
             for r in rows]
    fwd = sum(r["forward_s"] for r in rows)
    bwd = sum(r["backward_s"] for r in rows)
    footer = ("total", "", f"{1e3 * fwd:.3f}", f"{1e3 * bwd:.3f}", "100.0%")
    table = [header, *lines, footer]
    widths = [max(len(row[c]) for row in table) for c in range(5)]

    def fmt(row):
        return (f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                f"{row[3]:>{widths[3]}}  {row[4]:>{widths[4]}}")

    rule = "-" * len(fmt(header))
    out = [fmt(header), rule, *[fmt(r) for r in lines], rule, fmt(footer)]
    if batch_size:
        out.append(f"batch of {batch_size}: {batch_size / (fwd + bwd):,.0f} images/s for forward + backward")
    return "\n".join(out)
