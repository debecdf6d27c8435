"""Learning-rate schedules for `cnnxp.train.fit`: functions ``(step, steps_per_epoch, epochs) -> lr``.

``step`` counts optimizer steps from 0 over the whole run; `fit` sets ``optimizer.lr`` from the
schedule before every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["exponential_lr", "cosine_lr"]


def exponential_lr(base_lr: float, gamma: float = 0.6) -> Callable[[int, int, int], float]:
    """A learning-rate schedule for `fit`: ``base_lr * gamma ** (epochs done)``, decayed smoothly every step.

    Like ``torch.optim.lr_scheduler.ExponentialLR``, but continuous within an epoch. The
    rate depends only on how far training has come, not on how many epochs the run
    will have, so one epoch plus a resume to two follows the same rates as two straight.
    """

    def schedule(step: int, steps_per_epoch: int, epochs: int) -> float:
        return base_lr * gamma ** (step / max(steps_per_epoch, 1))

    return schedule


def cosine_lr(base_lr: float, final_fraction: float = 0.0) -> Callable[[int, int, int], float]:
    """A learning-rate schedule for `fit`: ``base_lr`` decayed along a half cosine over all ``epochs``.

    The rate depends on the run's total number of epochs: a run resumed with a
    larger ``epochs`` than it started with follows a different curve.
    """

    def schedule(step: int, steps_per_epoch: int, epochs: int) -> float:
        progress = min(step / max(steps_per_epoch * epochs, 1), 1.0)
        return base_lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return schedule
