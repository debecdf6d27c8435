"""What a training run shows while it runs: the progress bar of an epoch and its one-line summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from .backend import to_numpy

__all__ = ["EpochProgress", "format_epoch"]


class EpochProgress:
    """The progress bar of one epoch: a tqdm bar on stderr with the running loss, accuracy and speed.

    The running sums live on the device; they are read back to the host only when
    the bar's text is refreshed, at most every ``REFRESH_SECONDS`` and after the
    last step, never at every step.
    """

    REFRESH_SECONDS = 0.5

    def __init__(self, bar, total: int, xp):
        self.bar, self.total, self.xp = bar, total, xp
        self.start = time.perf_counter()
        self.last_shown = 0.0

    @classmethod
    def open(cls, total: int, desc: str, enabled: bool, xp) -> EpochProgress | None:
        """A display for ``total`` steps, or None; tqdm's ``disable=None`` hides it when stderr is not a terminal
        (a log file, CI), except in a Jupyter notebook, whose cells show it."""
        if not enabled:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency, but a bare library install still trains
            return None
        options = {"disable": None, "file": sys.stderr}
        if _in_notebook():  # Jupyter: a widget bar where ipywidgets is installed, else a text bar in the cell
            try:
                import ipywidgets  # noqa: F401
                from tqdm.notebook import tqdm
                options = {}
            except ImportError:
                options = {"disable": False, "file": sys.stdout}
        bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                   mininterval=cls.REFRESH_SECONDS, **options)
        if bar.disable:  # stderr is not a terminal: no bar, and no reading the sums back for one
            return None
        return cls(bar, total, xp)

    def update(self, loss_sum, correct, seen: int) -> None:
        """One step done; ``loss_sum`` and ``correct`` are the epoch's running sums over ``seen`` images."""
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.last_shown < self.REFRESH_SECONDS and self.bar.n != self.total:
            return
        self.last_shown = now
        xp = self.xp
        values = to_numpy(xp.stack([xp.astype(loss_sum, xp.float32), xp.astype(correct, xp.float32)]))
        self.bar.set_postfix_str(f"loss {values[0] / seen:.4f} acc {100 * values[1] / seen:.2f}% "
                                 f"{seen / (now - self.start):,.0f} img/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell), whose outputs are not terminals."""
    shell = sys.modules.get("IPython")
    shell = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  train loss ... acc ...%  test loss ... acc ...%  4.2 s  11,000 img/s``."""
    text = f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.2f}%"
    if row.get("test_loss") is not None:
        text += f"  test loss {row['test_loss']:.4f} acc {100 * row['test_accuracy']:.2f}%"
    return text + f"  {row['seconds']:.1f} s  {row['images_per_second']:,.0f} img/s"
