"""Where new arrays land: in the context of the device an input lives on.

CuPy's creation functions (and array-api-compat's wrappers of them) allocate on the *current*
GPU whatever ``device=`` says, so work on an array of ``cuda:1`` must run with ``cuda:1``
current. A CuPy device is itself that context; other libraries' devices either are one too
(entering it is then what they want) or need none. The check is on the device object, not the
library: nothing here names CuPy.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import array_api_compat

__all__ = ["device_context", "on_input_device"]


def device_context(x: Any):
    """A context in which new arrays land where ``x`` lives (none needed for NumPy or non-arrays)."""
    dev = getattr(x, "device", None)  # the standard's attribute: cheaper than a lookup of the namespace
    if dev is None or isinstance(dev, str):  # NumPy's "cpu"; not an array
        return contextlib.nullcontext()
    if not hasattr(dev, "__enter__"):
        try:
            dev = array_api_compat.device(x)  # libraries whose attribute is not the device itself
        except (TypeError, AttributeError):
            return contextlib.nullcontext()
    if hasattr(dev, "__enter__") and hasattr(dev, "__exit__"):
        return dev
    return contextlib.nullcontext()


def on_input_device(fn):
    """Run ``fn`` in the `device_context` of its first argument (an op called directly, outside a layer)."""

    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        with device_context(x):
            return fn(x, *args, **kwargs)

    return run
