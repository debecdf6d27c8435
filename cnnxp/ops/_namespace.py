"""`array_namespace`: array-api-compat's, with the answer for NumPy arrays given at once.

Every op and layer asks its inputs for their namespace; array-api-compat's lookup tries each
library it knows in turn (about a microsecond), some fifty times a training step. For plain
NumPy arrays the answer is always array-api-compat's NumPy namespace, so it is returned
directly; anything else (CuPy, array_api_strict, a NumPy subclass, a mix) asks array-api-compat.
"""

from __future__ import annotations

import array_api_compat
import array_api_compat.numpy
import numpy as np  # only to recognise NumPy's array type: nothing is computed with it

__all__ = ["array_namespace"]

_NUMPY = array_api_compat.numpy


def array_namespace(*arrays):
    """The Array API namespace of ``arrays``, as `array_api_compat.array_namespace` gives it."""
    if arrays and all(type(x) is np.ndarray for x in arrays):
        return _NUMPY
    return array_api_compat.array_namespace(*arrays)
