"""ONNX export: a trained `Sequential` as one ``.onnx`` file that ONNX Runtime (or any ONNX runtime) runs.

`to_onnx` writes the model as it computes in eval mode: one ONNX operator per layer
(Dropout, the identity in eval mode, gets none), float32 weights named after the
state dict's keys (``"0.weight"``, ``"1.running_mean"``), one input ``(N, C, H, W)``
and one output whose batch axis ``N`` is dynamic. Nothing is computed with the
model, so its mode, weights and random state are left as they were.

======================  ===================================================================
cnnxp layer             ONNX operator (opset 13 or later)
======================  ===================================================================
Conv2D                  Conv (``pads``, ``strides``; the bias input only when there is one)
MaxPool2D               MaxPool (padding never wins, as cnnxp's -inf; floor rounding)
AvgPool2D               AveragePool with ``count_include_pad=1`` (zero padding counted)
Dense                   Gemm with ``transB=1`` (the weight stays ``(out, in)``)
ReLU, Flatten, Softmax  Relu, Flatten ``axis=1``, Softmax ``axis=1`` (one axis since opset 13)
BatchNorm2D             BatchNormalization with the running statistics and ``epsilon``
Dropout                 none
======================  ===================================================================

The ``onnx`` package is imported only here, when a model is exported:
``pip install 'cnnxp[onnx]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np  # host side: weights go into the file as NumPy arrays

from ._checks import check_int
from ._files import atomic_write
from .backend import to_numpy
from .layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU, Softmax
from .model import Sequential

__all__ = ["to_onnx", "onnx_model", "write_onnx", "OnnxUnavailableError", "DEFAULT_OPSET", "MIN_OPSET"]

#: Opset 17 has every operator used here, and runtimes of recent years read it (ONNX Runtime since 1.12).
DEFAULT_OPSET = 17
#: Softmax works over one axis, as cnnxp's, only from opset 13 on (before, it flattened the trailing axes).
MIN_OPSET = 13


class OnnxUnavailableError(ImportError):
    """The ``onnx`` package is not installed (or cannot be imported)."""


# -- one function per layer type: (ONNX operator, inputs after x, attributes), or None for no node ------

Spec = tuple[str, list[str], dict[str, Any]] | None
Weights = Callable[[str], str]  # a layer's parameter or buffer name -> its initializer's name


def _window(layer) -> dict[str, Any]:
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    return {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw]}


def _conv(layer: Conv2D, weights: Weights) -> Spec:
    inputs = [weights("weight")] + ([weights("bias")] if "bias" in layer.params else [])
    return "Conv", inputs, {**_window(layer), "dilations": [1, 1], "group": 1}


def _maxpool(layer: MaxPool2D, weights: Weights) -> Spec:
    return "MaxPool", [], {**_window(layer), "ceil_mode": 0}


def _avgpool(layer: AvgPool2D, weights: Weights) -> Spec:
    return "AveragePool", [], {**_window(layer), "ceil_mode": 0, "count_include_pad": 1}


def _dense(layer: Dense, weights: Weights) -> Spec:
    inputs = [weights("weight")] + ([weights("bias")] if "bias" in layer.params else [])
    return "Gemm", inputs, {"transB": 1}


def _batchnorm(layer: BatchNorm2D, weights: Weights) -> Spec:
    names = [weights(k) for k in ("weight", "bias", "running_mean", "running_var")]
    return "BatchNormalization", names, {"epsilon": float(layer.eps)}


def _no_node(layer, weights: Weights) -> Spec:
    return None


#: Exact types: a subclass may compute something else (a LeakyReLU made from ReLU), so it is refused.
EXPORTERS: dict[type, Callable[[Any, Weights], Spec]] = {
    Conv2D: _conv,
    MaxPool2D: _maxpool,
    AvgPool2D: _avgpool,
    Dense: _dense,
    ReLU: lambda layer, weights: ("Relu", [], {}),
    Flatten: lambda layer, weights: ("Flatten", [], {"axis": 1}),
    Softmax: lambda layer, weights: ("Softmax", [], {"axis": 1}),
    BatchNorm2D: _batchnorm,
    Dropout: _no_node,
}


# -- checks, before anything is imported or written --------------------------------------------------


def _check_arguments(model, input_shape, opset, input_name, output_name) -> tuple[int, int, int]:
    """The arguments' types and values (one policy: TypeError for a type, ValueError for a value)."""
    if not isinstance(model, Sequential):
        hint = f": wrap it, Sequential([{model.name}(...)])" if isinstance(model, Layer) else ""
        raise TypeError(f"to_onnx expects a cnnxp Sequential, got {type(model).__name__}{hint}")
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"to_onnx input_shape must be a tuple (C, H, W), got {type(input_shape).__name__}")
    if len(input_shape) != 3:
        raise ValueError(f"to_onnx input_shape must be (C, H, W), without the batch axis, got {tuple(input_shape)}")
    shape = tuple(check_int(d, "to_onnx", "input_shape", least=1) for d in input_shape)
    check_int(opset, "to_onnx", "opset", least=MIN_OPSET)
    for label, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str):
            raise TypeError(f"to_onnx {label} must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError(f"to_onnx {label} must not be empty")
    if input_name == output_name:
        raise ValueError(f"to_onnx input_name and output_name must differ, both are {input_name!r}")
    return shape


def _checked_path(path, owner: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{owner} path must be a str or a path, got {type(path).__name__}")
    return Path(path)


def _plan(model: Sequential, input_shape: tuple[int, int, int]) -> list[tuple[int, Layer, tuple]]:
    """Each layer with its output shape (batch axis 1) for ``input_shape``.

    A layer that cannot be exported is a TypeError and an input shape that does not fit a
    layer a ValueError, each one line naming the layer and its position, found before any
    file is touched.
    """
    shape: tuple = (1, *input_shape)
    plan = []
    for i, layer in enumerate(model.layers):
        if type(layer) not in EXPORTERS:
            base = next((t.__name__ for t in EXPORTERS if isinstance(layer, t)), None)
            why = (f"a subclass of {base} may compute something other than {base}" if base else
                   f"{layer.name} has no ONNX translation")
            names = ", ".join(t.__name__ for t in EXPORTERS)
            raise TypeError(f"to_onnx cannot export layer {i} ({layer!r}): {why}; it exports {names}")
        try:
            shape = tuple(layer.output_shape(shape))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"to_onnx input_shape {input_shape} does not fit layer {i} ({layer!r}): "
                             f"{' '.join(str(exc).split())}") from None
        plan.append((i, layer, shape))
    return plan


# -- building the graph ------------------------------------------------------------------------------


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise OnnxUnavailableError(f"ONNX export needs the onnx package ({exc}): pip install 'cnnxp[onnx]'") from None
    return onnx


def _graph(onnx, plan, input_shape, input_name: str, output_name: str):
    """The GraphProto: nodes in the layers' order, float32 initializers, named input and output."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    nodes, initializers, shapes = [], [], {}
    x = input_name
    for i, layer, out_shape in plan:

        def weights(name: str, i=i, layer=layer) -> str:
            value = layer.params[name] if name in layer.params else layer.buffers[name]
            initializers.append(numpy_helper.from_array(np.asarray(to_numpy(value), dtype=np.float32),
                                                        name=f"{i}.{name}"))
            return f"{i}.{name}"

        spec = EXPORTERS[type(layer)](layer, weights)
        if spec is None:
            continue
        op, inputs, attrs = spec
        out = f"{i}.output"
        nodes.append(helper.make_node(op, [x, *inputs], [out], name=f"{i}.{layer.name}", **attrs))
        shapes[out] = out_shape
        x = out
    if not nodes:  # no layer, or Dropout only: the identity, still a graph with a node
        nodes.append(helper.make_node("Identity", [x], [output_name], name="identity"))
    final_shape = plan[-1][2] if plan else (1, *input_shape)
    shapes.pop(nodes[-1].output[0], None)
    nodes[-1].output[0] = output_name
    taken = {t.name for t in initializers} | set(shapes)
    for label, name in (("input_name", input_name), ("output_name", output_name)):
        if name in taken:
            raise ValueError(f"to_onnx {label} {name!r} is the name of an inner tensor: choose another")

    def tensor(name, shape):
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", *shape[1:]])

    return helper.make_graph(
        nodes, "cnnxp", [tensor(input_name, (1, *input_shape))], [tensor(output_name, final_shape)],
        initializer=initializers, value_info=[tensor(name, s) for name, s in shapes.items()],
    )


def onnx_model(model: Sequential, input_shape=(1, 28, 28), *, opset: int = DEFAULT_OPSET,
               input_name: str = "images", output_name: str = "logits"):
    """The ``onnx.ModelProto`` that `to_onnx` writes, checked, in memory (its arguments are `to_onnx`'s).

    For a file elsewhere than on disk (``proto.SerializeToString()``, the bytes ONNX Runtime's
    ``InferenceSession`` also takes), and for programs that check everything before they write.
    """
    shape = _check_arguments(model, input_shape, opset, input_name, output_name)
    plan = _plan(model, shape)
    onnx = _import_onnx()
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"to_onnx opset must be at most {onnx.defs.onnx_opset_version()} (the newest that onnx "
                         f"{onnx.__version__} knows), got {opset}")
    from . import __version__

    graph = _graph(onnx, plan, shape, input_name, output_name)
    opset_id = onnx.helper.make_opsetid("", int(opset))
    proto = onnx.helper.make_model(
        graph, opset_imports=[opset_id], ir_version=onnx.helper.find_min_ir_version_for([opset_id]),
        producer_name="cnnxp", producer_version=__version__,
        doc_string=f"cnnxp Sequential of {len(model.layers)} layers, exported in eval mode",
    )
    onnx.checker.check_model(proto, full_check=True)  # full: ONNX's shape inference must agree with ours
    return proto


def write_onnx(proto, path: str | os.PathLike) -> Path:
    """Write an ``onnx.ModelProto`` at ``path``, whole or not at all (`cnnxp._files.atomic_write`)."""
    path = _checked_path(path, "write_onnx")
    with atomic_write(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def to_onnx(model: Sequential, path: str | os.PathLike, input_shape=(1, 28, 28), *, opset: int = DEFAULT_OPSET,
            input_name: str = "images", output_name: str = "logits") -> Path:
    """Write ``model`` as an ONNX file at ``path``, as it computes in eval mode; returns the path.

    Parameters
    ----------
    model : Sequential
        Made of cnnxp's own layers (see the module's table); on any device and in any float
        dtype: the weights are copied to the host and cast to float32, what runtimes run.
    path : str or os.PathLike
        Written whole or not at all (`cnnxp._files.atomic_write`), its folder made when missing.
    input_shape : (C, H, W)
        One image's shape, without the batch axis; the batch axis ``N`` stays dynamic, so
        one file serves every batch size. Checked against every layer before anything is
        written.
    opset : int
        The ONNX opset, from `MIN_OPSET` to the newest the installed ``onnx`` knows. The file
        declares the oldest IR version that opset allows, so older runtimes read it too.
    input_name, output_name : str
        The graph's input (float32 ``(N, C, H, W)``, normalised as the model's training data
        was) and output (``(N, ...)``: the last layer's output, logits unless it is Softmax).

    Raises
    ------
    TypeError
        For a layer it cannot export (a `Layer` subclass of your own, or of a cnnxp layer,
        which may compute something else), naming the layer and its position; or for an
        argument of the wrong type.
    ValueError
        For an ``input_shape`` that does not fit a layer (naming it), or another bad value.
    OnnxUnavailableError
        An ImportError, when ``onnx`` is not installed.

    Examples
    --------
    >>> from cnnxp.models import lenet5
    >>> from cnnxp.export import to_onnx
    >>> to_onnx(lenet5(seed=0), "lenet5.onnx")  # doctest: +SKIP
    PosixPath('lenet5.onnx')
    """
    _checked_path(path, "to_onnx")  # before the work, not after it
    proto = onnx_model(model, input_shape, opset=opset, input_name=input_name, output_name=output_name)
    return write_onnx(proto, path)
