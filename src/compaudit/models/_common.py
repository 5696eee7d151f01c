"""Argument checks and small helpers shared by the built-in architectures.

A factory raises :class:`ValueError` for arguments that make its architecture impossible;
:func:`compaudit.models.build_model` turns that into a one-line :class:`~compaudit.errors.ModelError`.
"""

from __future__ import annotations

import math


def check_io(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """Validate the common factory arguments; return ``(H, W)`` as plain ints."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        h, w = input_size
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (height, width), got {input_size!r}") from None
    for side in (h, w):
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"input_size must be two positive integers, got {input_size!r}")
    return int(h), int(w)


def check_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_positive_int(name: str, value: int) -> None:
    """``value`` must be an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_dropout(value: float) -> None:
    """A dropout probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, round(channels * width))


def pooled(size: int, times: int) -> int:
    """The side length after ``times`` 2x2 max-pools (stride 2, no padding, floor)."""
    for _ in range(times):
        size //= 2
    return size
