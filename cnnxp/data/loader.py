"""A device-aware batch loader for image classification datasets, and the normalisation it applies.

The dataset moves to the device once, as uint8 (a quarter of float32's size) when
it is; each batch is gathered and converted to normalised float32 there. Shuffling
draws a permutation on the host from a seeded NumPy ``Generator``, so the same
seed gives the same batches on every device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .._checks import check_int
from ..backend import get_device, to_device, to_numpy
from .augment import RandomShift

__all__ = ["DataLoader", "NORMALIZE_MEAN", "NORMALIZE_STD", "normalize"]

#: Mean and standard deviation of MNIST's training pixels scaled to [0, 1]; a batch is
#: ``(x / 255 - NORMALIZE_MEAN) / NORMALIZE_STD``, as in PyTorch's MNIST examples.
#: Fashion-MNIST uses the same constants: the network only needs inputs of order one.
NORMALIZE_MEAN = 0.1307
NORMALIZE_STD = 0.3081


def _as_nchw(images: np.ndarray) -> np.ndarray:
    """Images as (N, C, H, W), any channel count, from (N, H, W) or (N, C, H, W); uint8 or floating.

    A trailing axis of 1, 3 or 4 after two larger ones looks like channels-last: said, not guessed.
    """
    if images.ndim == 3:
        images = images.reshape(images.shape[0], 1, *images.shape[1:])
    elif images.ndim != 4:
        raise ValueError(f"DataLoader expected images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    elif images.shape[3] in (1, 3, 4) and images.shape[1] > 4 and images.shape[2] > 4:
        raise ValueError(f"DataLoader expected images of shape (N, C, H, W), got {images.shape}, which looks "
                         "channels-last (N, H, W, C): pass images.transpose(0, 3, 1, 2)")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise TypeError(f"DataLoader expected uint8 images (0..255) or floating-point ones (0..1), got "
                        f"{images.dtype}: pass the arrays load_dataset returns")
    return images


def _per_channel(xp, values, channels: int, device, what: str):
    """``values`` as a Python float (one for every channel) or a (1, C, 1, 1) float32 array on ``device``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return float(values)
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size != channels:
        raise ValueError(f"{what} needs one value or one per channel ({channels}), got {arr.size}")
    return to_device(arr.reshape(1, channels, 1, 1), device)


def normalize(images, mean=NORMALIZE_MEAN, std=NORMALIZE_STD):
    """Images as a network takes them: float32 (N, C, H, W), ``(pixels - mean) / std`` per channel.

    ``images``: uint8 (N, H, W) or (N, C, H, W) with values 0..255 (divided by 255 first), or
    floating-point ones with values 0..1; on any device, and returned there. ``mean`` and
    ``std``: one number, or one per channel (as ``torchvision.transforms.Normalize``).

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.full((2, 28, 28), 255, np.uint8)).shape
    (2, 1, 28, 28)
    """
    from array_api_compat import array_namespace

    from ..backend import array_device

    xp = array_namespace(images)
    if len(images.shape) == 3:
        images = xp.reshape(images, (images.shape[0], 1, *images.shape[1:]))
    scale = 255.0 if images.dtype == xp.uint8 else 1.0
    dev = array_device(images)
    channels = int(images.shape[1])
    with dev.activate():
        m = _per_channel(xp, mean, channels, dev, "normalize mean")
        s = _per_channel(xp, std, channels, dev, "normalize std")
        return (xp.astype(images, xp.float32) / scale - m) / s


class DataLoader:
    """Iterate over ``(x, y)`` batches on a device, one epoch per ``iter()``.

    Parameters
    ----------
    images : array, shape (N, H, W) or (N, C, H, W)
        uint8 pixel values 0..255 (as `load_dataset` returns them), or floating-point values
        0..1 (kept as float32), any number of channels, on any device.
    labels : array of integers, shape (N,)
    batch_size : int
        At least 1.
    shuffle : bool
        Draw a new order every epoch (otherwise the dataset's order).
    seed : int
        Seed of the host generator that draws the orders.
    device : str or Device or a native device object
        Anything `cnnxp.get_device` accepts (``"cpu"``, ``"cuda:0"``, a `Device`, or a
        library's device object together with ``xp``).
    drop_last : bool
        Leave out the last batch when it is smaller than ``batch_size``.
    random_shift : int
        Training-time augmentation: move each image by a random whole number of pixels,
        up to ``random_shift`` in each direction, filling with background (0); short for
        ``augment=RandomShift(random_shift)``. 0 (the default) turns it off.
    augment : callable, optional
        Training-time augmentation ``augment(pixels, rng) -> pixels`` applied to each batch
        on the device, on float32 pixel values as stored (0..255 for uint8) before normalisation, such as
        `cnnxp.data.RandomAffine`. It draws from the loader's seeded generator (the one
        that draws the order), so runs repeat and resume exactly.
    xp : module, optional
        The namespace of a native ``device`` object.
    mean, std : float or sequence of floats
        Normalisation, one number or one per channel (MNIST's by default, as in PyTorch's
        MNIST examples; ``(0.4914, 0.4822, 0.4465)`` and ``(0.2470, 0.2435, 0.2616)`` for
        CIFAR-10, say): each batch is ``(pixels - mean) / std`` on pixels scaled to 0..1.
    comm : communicator, optional
        Data-parallel loading (`cnnxp.distributed`): every process draws the same order and
        takes its own contiguous share of each global batch of ``batch_size`` samples (process
        ``r`` of ``P`` rows ``r * n // P`` to ``(r + 1) * n // P`` of a batch of ``n``, so none is
        padded or dropped and every process runs the same number of steps, some on an empty
        share of a short last batch). Augmentation is drawn for the whole global batch and
        applied to this process's rows; `row_offset` says where they start.

    Yields
    ------
    x : float32 array (B, C, H, W) on the device, ``(pixels / 255 - mean) / std`` (``/ 255`` for uint8 only)
    y : int64 array (B,) on the device

    Attributes
    ----------
    row_offset : int
        Of the batch last yielded: the index of its first row in the global batch (0 in one process).
    global_batch : int
        Of the batch last yielded: how many samples the global batch holds.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnxp.data import DataLoader
    >>> loader = DataLoader(np.zeros((10, 28, 28), np.uint8), np.arange(10), batch_size=4)
    >>> len(loader), [tuple(x.shape) for x, y in loader]
    (3, [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)])
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        device: Any = "cpu",
        drop_last: bool = False,
        *,
        random_shift: int = 0,
        augment: Any = None,
        xp: ModuleType | None = None,
        comm: Any = None,
        mean: Any = NORMALIZE_MEAN,
        std: Any = NORMALIZE_STD,
    ) -> None:
        images = _as_nchw(to_numpy(images))
        labels = to_numpy(labels)
        if labels.ndim != 1:
            raise ValueError(f"DataLoader expected labels of shape (N,), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"DataLoader expected integer class labels, got {labels.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"DataLoader got {images.shape[0]} images but {labels.shape[0]} labels: they must match"
            )
        self.batch_size = check_int(batch_size, "DataLoader", "batch_size")
        self.seed = check_int(seed, "DataLoader", "seed", least=0)
        if self.seed >= 2**63:  # stored as int64 in the loader's state and in checkpoints
            raise ValueError(f"DataLoader seed must be below 2**63, got {self.seed}")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.random_shift = check_int(random_shift, "DataLoader", "random_shift", least=0)
        if augment is not None and not callable(augment):
            raise TypeError(f"DataLoader augment must be a callable transform(pixels, rng), got {augment!r}")
        if augment is not None and self.random_shift:
            raise ValueError("DataLoader: give random_shift or augment, not both (random_shift=N is "
                             "augment=RandomShift(N))")
        self.augment = RandomShift(self.random_shift) if self.random_shift else augment
        self.comm = comm if comm is not None and comm.size > 1 else None
        if self.comm is not None and self.augment is not None and not hasattr(self.augment, "draw"):
            raise TypeError("DataLoader: a data-parallel loader draws augmentation for the whole global batch, so "
                            f"its transform needs draw(rng, n) and apply(pixels, params), as RandomAffine has; "
                            f"got {self.augment!r}")
        self.row_offset, self.global_batch = 0, 0
        self.device = get_device(device, xp)
        self.num_samples = int(images.shape[0])
        #: Smallest and largest label, read once on the host (training checks them against the model).
        self.label_range = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        self.epoch = 0
        self._rng = np.random.default_rng(self.seed)
        self._images = to_device(np.ascontiguousarray(images if images.dtype == np.uint8 else
                                                      images.astype(np.float32, copy=False)), self.device)
        self._scale = 255.0 if images.dtype == np.uint8 else 1.0
        channels = int(images.shape[1])
        with self.device.activate():
            self.mean = _per_channel(self.device.xp, mean, channels, self.device, "DataLoader mean")
            self.std = _per_channel(self.device.xp, std, channels, self.device, "DataLoader std")
        self._labels = to_device(labels.astype(np.int64), self.device)

    def __len__(self) -> int:
        """The number of batches in one epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """Start an epoch: draw its order now, then yield its batches."""
        order = self._rng.permutation(self.num_samples) if self.shuffle else None
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
        # Each batch is made inside the device's context (CuPy allocates on the current GPU,
        # whatever device= says), and the context is left before the batch is handed out.
        # The epoch's order crosses to the device once, not once per batch.
        with self.device.activate():
            order = None if order is None else to_device(order, self.device)
        for b in range(len(self)):
            with self.device.activate():
                batch = self._batch(b, order)
            yield batch

    def _batch(self, b: int, order) -> tuple[Any, Any]:
        xp = self.device.xp
        first = b * self.batch_size
        n = min(first + self.batch_size, self.num_samples) - first
        lo, hi = self._share(n)
        self.row_offset, self.global_batch = lo, n
        start, stop = first + lo, first + hi
        if order is None:
            images = self._images[start:stop, ...]
            labels = self._labels[start:stop]
        else:
            index = order[start:stop]
            images = xp.take(self._images, index, axis=0)
            labels = xp.take(self._labels, index, axis=0)
        # Cast before any arithmetic: uint8 would wrap.
        pixels = xp.astype(images, xp.float32)
        if self.augment is not None and self.comm is None:
            pixels = self.augment(pixels, self._rng)
        elif self.augment is not None:  # the global batch's draws, this process's rows
            pixels = self.augment.apply(pixels, self.augment.draw(self._rng, n)[lo:hi])
        return (pixels / self._scale - self.mean) / self.std, labels

    def _share(self, n: int) -> tuple[int, int]:
        """This process's rows ``lo:hi`` of a global batch of ``n``: all of them in one process."""
        if self.comm is None:
            return 0, n
        rank, size = self.comm.rank, self.comm.size
        return rank * n // size, (rank + 1) * n // size

    def state_dict(self) -> dict[str, Any]:
        """The epoch counter and the shuffling generator's state, as values an npz stores without pickle.

        Taken between epochs, loading it into a loader over the same data reproduces
        every following epoch's order exactly.
        """
        return {
            "epoch": np.int64(self.epoch),
            "seed": np.int64(self.seed),
            "rng_state": json.dumps(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (also after a round trip through ``numpy.savez``)."""
        try:
            rng_state = json.loads(str(np.asarray(state["rng_state"])))
            epoch = int(np.asarray(state["epoch"]))
            seed = int(np.asarray(state.get("seed", self.seed)))
        except KeyError as exc:
            raise ValueError(f"DataLoader.load_state_dict: missing key {exc.args[0]!r}") from None
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = rng_state
        except (TypeError, ValueError) as exc:
            raise ValueError(f"DataLoader.load_state_dict: bad generator state ({exc})") from None
        self._rng, self.epoch, self.seed = rng, epoch, seed

    def __repr__(self) -> str:
        return (
            f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, device={self.device.name!r}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, epoch={self.epoch})"
        )
