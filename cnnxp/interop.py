"""PyTorch and cnnxp, both ways: the same layers under the same state-dict keys.

A cnnxp `Sequential` and a ``torch.nn.Sequential`` of the corresponding layers name their
parameters and buffers alike (``"0.weight"``, ``"1.running_mean"``), with the same shapes and
memory layout, so their state dicts pass between them as they are:
``model.load_state_dict(torch_model.state_dict())`` works (BatchNorm's ``num_batches_tracked``
counter, which cnnxp does not keep, is skipped), and ``torch_state_dict(model)`` gives what
``torch_model.load_state_dict`` takes. `to_torch` and `from_torch` build the other side's
network as well.

=================  ===========================================================
cnnxp              PyTorch
=================  ===========================================================
Conv2D             nn.Conv2d (zero padding, no groups or dilation)
Dense              nn.Linear
MaxPool2D          nn.MaxPool2d (no dilation, ceil_mode=False)
AvgPool2D          nn.AvgPool2d (count_include_pad=True, ceil_mode=False)
ReLU, Flatten      nn.ReLU, nn.Flatten (start_dim=1)
Softmax            nn.Softmax(dim=1)
Dropout            nn.Dropout
BatchNorm2D        nn.BatchNorm2d (affine, with running statistics, a momentum)
=================  ===========================================================

PyTorch is imported only when one of these functions runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from .layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Softmax
from .model import Sequential

__all__ = ["from_torch", "to_torch", "torch_state_dict"]


def torch_state_dict(model: Sequential) -> dict[str, Any]:
    """``model``'s state dict as CPU torch tensors, with the ``num_batches_tracked`` entries that
    ``torch.nn.BatchNorm2d`` expects (0: cnnxp does not count, and a set momentum never reads it)."""
    import torch

    state = {key: torch.from_numpy(np.array(backend.to_numpy(value))) for key, value in model.state_dict().items()}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, BatchNorm2D):
            state[f"{i}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def to_torch(model: Sequential):
    """A ``torch.nn.Sequential`` computing what ``model`` computes, on the CPU, with its weights and mode.

    Raises TypeError naming the first layer that has no PyTorch counterpart in the table above
    (a subclass of one of them included: it may compute something else).
    """
    import torch
    from torch import nn

    modules = []
    for i, layer in enumerate(model.layers):
        kind = type(layer)  # exactly: a subclass may compute something else
        if kind is Conv2D:
            module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                               layer.padding, bias="bias" in layer.params)
        elif kind is Dense:
            module = nn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params)
        elif kind is MaxPool2D:
            module = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif kind is AvgPool2D:
            module = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif kind is BatchNorm2D:
            module = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        elif kind is Dropout:
            module = nn.Dropout(layer.p)
        elif kind in (ReLU, Flatten, Softmax):
            module = {ReLU: nn.ReLU, Flatten: nn.Flatten, Softmax: lambda: nn.Softmax(dim=1)}[kind]()
        else:
            raise TypeError(f"to_torch: layer {i} ({layer.name}) has no PyTorch counterpart; it converts "
                            "Conv2D, Dense, MaxPool2D, AvgPool2D, BatchNorm2D, Dropout, ReLU, Flatten and Softmax")
        modules.append(module)
    net = nn.Sequential(*modules)
    state = torch_state_dict(model)
    dtype = next(iter(state.values())).dtype if state else torch.float32
    net.to(dtype if dtype.is_floating_point else torch.float32)
    net.load_state_dict(state)
    return net.train(model.training)


def _refuse(i: int, module, why: str):
    raise TypeError(f"from_torch: module {i} ({module!r}) {why}; cnnxp has no such layer")


def from_torch(net, device: Any = "cpu") -> Sequential:
    """A cnnxp `Sequential` computing what the ``torch.nn.Sequential`` ``net`` computes, with its weights
    and mode, on ``device``.

    Raises TypeError naming the first module, or the first setting of one, that cnnxp does not have.
    """
    from torch import nn

    if not isinstance(net, nn.Sequential):
        raise TypeError(f"from_torch expected a torch.nn.Sequential, got {type(net).__name__}: "
                        "wrap the layers in nn.Sequential(...) (cnnxp models are sequences of layers)")
    layers = []
    for i, m in enumerate(net):
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros":
                _refuse(i, m, "uses string padding, groups, dilation or a non-zero padding mode")
            layer = Conv2D(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            layer = Dense(m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, nn.MaxPool2d):
            if m.dilation not in (1, (1, 1)) or m.ceil_mode or m.return_indices:
                _refuse(i, m, "uses dilation, ceil_mode or return_indices")
            layer = MaxPool2D(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or not m.count_include_pad or m.divisor_override is not None:
                _refuse(i, m, "uses ceil_mode, count_include_pad=False or divisor_override")
            layer = AvgPool2D(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.BatchNorm2d):
            if not m.affine or not m.track_running_stats or m.momentum is None:
                _refuse(i, m, "has no affine parameters, no running statistics or a cumulative momentum (None)")
            layer = BatchNorm2D(m.num_features, eps=m.eps, momentum=m.momentum)
        elif isinstance(m, nn.Dropout):
            layer = Dropout(m.p)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                _refuse(i, m, "flattens other axes than 1 to the last")
            layer = Flatten()
        elif isinstance(m, nn.Softmax):
            if m.dim not in (1, -3):
                _refuse(i, m, "normalises another axis than 1")
            layer = Softmax()
        elif isinstance(m, nn.ReLU):
            layer = ReLU()
        else:
            _refuse(i, m, "is not one of Conv2d, Linear, MaxPool2d, AvgPool2d, BatchNorm2d, Dropout, Flatten, "
                          "Softmax and ReLU")
        layers.append(layer)
    state = net.state_dict()
    dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
    model = Sequential(layers)
    if dtypes:
        model.to("cpu", dtype=str(next(iter(dtypes))).removeprefix("torch."))
    model.load_state_dict(state)
    return model.to(device).train(net.training)
