"""Pure array functions behind the layers, written once against the Array API standard.

Every function takes its namespace from its inputs (``array_namespace``) and allocates with
their dtype and device, so the same code runs on NumPy, CuPy and any other conforming library.
Forward functions return ``(out, cache)``, the cache a small named type; backward functions
take ``(grad_out, cache)`` and return the gradients, so the math is tested without any layer.

Where to start: the plain modules, short and written to be read, each the oracle its fast twin
is tested against:

- `conv`: padding, window slices, ``im2col`` / ``col2im``, and the convolution as one matrix product;
- `pool`: max pooling (stacked windows, ``argmax``: PyTorch's first-maximum rule) and average pooling;
- `softmax`: softmax, log-softmax and softmax's backward.

The fast modules are what the layers run (`cnnxp.layers.conv` and `cnnxp.layers.pool` name them
in one import line each): the same results, to rounding for the convolution and exactly for pooling:

- `conv_fast`: im2col with no layout copies, batch slices for bounded memory, flat-row columns
  for inference, and ``algorithm="auto"``, the choice between im2col and the algorithm of
- `conv_toeplitz`: the convolution as rows against a Toeplitz matrix of the weights;
- `pool_fast`: max pooling by a separable pairwise maximum, its gradient by a first-maximum walk;
- `blocks`: how a device slices the batch for the fast kernels (`Blocks`: cache-sized slices
  on a CPU, the whole batch on a GPU), passed to them as ``blocks=`` by the layers.

This package re-exports the fast entry points under the plain names (``cnnxp.ops.conv2d_forward``
is `conv_fast.conv2d_forward`). ``cnnxp.ops.softmax`` is the function, which hides the module of
that name: import from the module with ``from cnnxp.ops.softmax import ...``.
"""

from . import blocks, conv, conv_fast, conv_toeplitz, pool, pool_fast
from .blocks import Blocks, images_per_slice
from .conv import ConvCache, col2im, conv_output_size, im2col, pad2d, window_slices
from .conv_fast import (
    CONV_ALGORITHMS,
    TOEPLITZ_MAX_WORK,
    Im2colCache,
    SlicedIm2colCache,
    conv2d_backward,
    conv2d_forward,
)
from .conv_toeplitz import SlicedToeplitzCache, ToeplitzCache, toeplitz_weight, toeplitz_weight_grad
from .pool import AvgPoolCache, MaxPoolCache, PoolGeometry
from .pool_fast import (
    SeparableMaxPoolCache,
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from .softmax import log_softmax, softmax, softmax_backward

__all__ = [
    "blocks",
    "conv",
    "conv_fast",
    "conv_toeplitz",
    "pool",
    "pool_fast",
    "conv_output_size",
    "pad2d",
    "window_slices",
    "im2col",
    "col2im",
    "Blocks",
    "images_per_slice",
    "CONV_ALGORITHMS",
    "TOEPLITZ_MAX_WORK",
    "toeplitz_weight",
    "toeplitz_weight_grad",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "log_softmax",
    "softmax",
    "softmax_backward",
    "ConvCache",
    "Im2colCache",
    "SlicedIm2colCache",
    "ToeplitzCache",
    "SlicedToeplitzCache",
    "PoolGeometry",
    "MaxPoolCache",
    "SeparableMaxPoolCache",
    "AvgPoolCache",
]
