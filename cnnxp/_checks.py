"""Argument checks, one policy for the whole package.

TypeError when an argument has the wrong type (a float where an int belongs, a
string where a number does); ValueError when it has the right type and a wrong
value (a stride of 0, a pair of three). Each message names the owner (``Conv2D``,
``DataLoader``, ...), the argument, the rule and what came::

    Conv2D stride must be at least 1, got 0
    DataLoader batch_size must be an int, got 2.5 (float)

NumPy integers count as ints and NumPy floats as numbers, as PyTorch takes them;
``bool`` is never a number here.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_int", "check_real", "check_pair", "check_choice"]


def _prefix(owner: str) -> str:
    return f"{owner} " if owner else ""


def _is_int(value) -> bool:
    # ``type(...) is int`` first: the ops check their arguments at every call, and the abstract
    # ``numbers.Integral`` test costs a microsecond each time.
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def check_int(value, owner: str, label: str, least: int | None = 1, below: int | None = None) -> int:
    """``value`` as an int in ``[least, below)`` (either end may be None).

    TypeError for anything but an int (bool included), ValueError outside the range.
    """
    if not _is_int(value):
        raise TypeError(f"{_prefix(owner)}{label} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if least is not None and value < least:
        rule = "a positive int" if least == 1 else f"an int >= {least}"
        raise ValueError(f"{_prefix(owner)}{label} must be {rule}, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{_prefix(owner)}{label} must be below {below}, got {value!r}")
    return value


def check_real(value, owner: str, label: str, low: float, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]``; ``low_open`` / ``high_open`` exclude an end.

    TypeError for a non-number (bool included), ValueError outside the range or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_prefix(owner)}{label} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)
              and math.isfinite(value))
    if not inside:
        upper = f"{high:g}{')' if high_open else ']'}" if math.isfinite(high) else "inf)"
        raise ValueError(f"{_prefix(owner)}{label} must be a finite number in {'(' if low_open else '['}{low:g}, "
                         f"{upper}, got {value!r}")
    return value


def check_pair(value, owner: str, label: str, least: int = 0) -> tuple[int, int]:
    """``(a, b)`` from an int or a pair of ints, each at least ``least``.

    TypeError for other types, ValueError for a sequence that is not a pair or a value
    below ``least`` ("at least 1" for sizes and strides, "non-negative" for padding).
    """
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int \
            and value[0] >= least and value[1] >= least:
        return value  # already a valid pair (what the layers pass the ops at every call)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{_prefix(owner)}{label} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    if not (_is_int(a) and _is_int(b)):
        raise TypeError(f"{_prefix(owner)}{label} must be an int or a pair of ints, got {value!r}")
    if min(a, b) < least:
        rule = "non-negative" if least == 0 else f"at least {least}"
        raise ValueError(f"{_prefix(owner)}{label} must be {rule}, got {value!r}")
    return int(a), int(b)


def check_choice(value, owner: str, label: str, choices) -> str:
    """``value`` if it is one of ``choices`` (strings): TypeError for a non-string, else ValueError listing them."""
    if isinstance(value, str) and value in choices:
        return value
    names = [repr(c) for c in choices]
    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    error = ValueError if isinstance(value, str) else TypeError
    raise error(f"{_prefix(owner)}{label} must be {listed}, got {value!r}")
