"""Command line: ``python scripts/export.py CHECKPOINT OUT.onnx [--input-shape C,H,W] [--opset N]``.

Reads a checkpoint as evaluate.py does (the model it names, restored on the CPU) and writes
it as an ONNX file, as `cnnxp.export.to_onnx` does, in two halves: the model is built and
checked first, the file written only then. Bad input (a missing or unreadable
checkpoint, a shape that does not fit the model, no ``onnx`` package) ends with one line,
``export.py: error: ...``, and status 2 before anything is written; a file that cannot be
written, with one line and status 1. Success prints one line naming the file and its size.
"""

import os
import sys

# Run from a fresh clone without installing: put the repository root, not scripts/, on the path
# (scripts/inspect.py would otherwise shadow the standard library's inspect module).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from cnnxp import models  # noqa: E402
from cnnxp.checkpoint import Checkpoint  # noqa: E402
from cnnxp.cli.common import (  # noqa: E402
    Parser,
    RunError,
    UsageError,
    one_line,
    read_checkpoint,
    restore_or_refuse,
    run_program,
)
from cnnxp.export import DEFAULT_OPSET, OnnxUnavailableError, onnx_model, write_onnx  # noqa: E402

PROG = "export.py"

#: One image of every dataset cnnxp loads, as the loader feeds it: one channel of 28x28.
DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "mnist-sample": (1, 28, 28)}
DEFAULT_SHAPE = (1, 28, 28)


@dataclass
class Export:
    """What `_prepare` hands `_export`: the checked ONNX model, and what it was made from."""

    checkpoint: Checkpoint
    model_name: str
    input_shape: tuple[int, int, int]
    proto: Any


def _shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` as three positive ints; anything else one line from argparse."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers, e.g. 1,28,28), got {text!r}")
    return shape


def _parser() -> Parser:
    p = Parser(prog=PROG, description="Export a checkpoint's model as an ONNX file (dynamic batch axis).")
    p.add_argument("checkpoint", help="a checkpoint.npz written by train.py")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="one image's shape (default: the checkpoint's dataset's, 1,28,28)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    return p


def _prepare(args) -> Export:
    """Read the checkpoint, restore its model and build the ONNX model: every failure a UsageError (status 2)."""
    checkpoint = read_checkpoint(args.checkpoint)
    name = checkpoint.config.get("model")
    if name is None:
        raise UsageError(f"checkpoint {args.checkpoint!r} does not say which model it holds")
    model = models.build(name, seed=0, device="cpu")
    restore_or_refuse(checkpoint, model)
    shape = args.input_shape or DATASET_SHAPES.get(checkpoint.config.get("dataset"), DEFAULT_SHAPE)
    try:
        proto = onnx_model(model, shape, opset=args.opset)
    except (ValueError, TypeError, OnnxUnavailableError) as exc:  # a shape or opset that does not fit, no onnx
        raise UsageError(one_line(exc)) from None
    return Export(checkpoint, name, shape, proto)


def _export(args, job: Export) -> None:
    """Write the file (one that cannot be written: a RunError, status 1) and say what it holds."""
    try:
        out = write_onnx(job.proto, args.out)
    except OSError as exc:
        raise RunError(f"cannot write {str(args.out)!r}: {exc.strerror or exc}") from None
    c, h, w = job.input_shape
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {job.model_name} from {args.checkpoint} "
          f"(epoch {job.checkpoint.epoch}), input images (N, {c}, {h}, {w}), opset {args.opset}")


def main(argv=None) -> int:
    """The exit status: 0, 1 when the file cannot be written, 2 for bad input (nothing written then)."""
    return run_program(PROG, argv, _parser, _prepare, _export)


if __name__ == "__main__":
    sys.exit(main())
