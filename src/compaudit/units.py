"""Units of measurement: every number compaudit reports carries one, and only this module formats it.

A probe declares the unit of each metric it reports once, in its ``units`` table (name -> unit);
:meth:`compaudit.probes.base.Probe.run` stamps each metric with it and refuses a metric the table
does not name. The report, the export, ``compare``, the findings script and the docs format a value
with :func:`format_value`, from its unit, never by hand: a share stored as 0.48 is "48.0%", not
"0.48%".

The units (:data:`UNITS`):

============  ===========================================================  =============
unit          what the stored value is                                      shown as
============  ===========================================================  =============
fraction      a share or probability in [0, 1] (accuracies, rates)          ``48.0%``
pp            a difference of two fractions                                 ``+1.5 pp``
bytes         a size in bytes                                               ``1.20 MB``
ms            milliseconds                                                  ``0.123 ms``
s             seconds                                                       ``1.23 s``
MACs          multiply-accumulate operations                                ``1.20 M``
params        a count of parameters                                         ``12,345``
bits          bits per stored weight                                        ``8 bits``
count         a count of samples or events                                  ``42``
ratio         a dimensionless ratio (x times)                               ``0.95x``
p-value       a test's p-value in [0, 1]                                    ``0.032``
statistic     a test statistic                                              ``3.14``
nats          a log-loss in nats                                            ``0.312``
norm          a perturbation's size in the attack's norm, in input units    ``0.1234``
score         a dimensionless score on its own scale (SSIM, silhouette...)  ``0.845``
flag          a yes/no, stored as 1.0 or 0.0                                ``yes``/``no``
============  ===========================================================  =============
"""

from __future__ import annotations

import math
from typing import Final, Literal

Unit = Literal[
    "fraction",
    "pp",
    "bytes",
    "ms",
    "s",
    "MACs",
    "params",
    "bits",
    "count",
    "ratio",
    "p-value",
    "statistic",
    "nats",
    "norm",
    "score",
    "flag",
]

#: every unit, with the one-line meaning the docs and the export's schema show
UNITS: Final[dict[str, str]] = {
    "fraction": "a share in [0, 1], shown as a percentage",
    "pp": "a difference of two fractions, shown in percentage points",
    "bytes": "bytes",
    "ms": "milliseconds",
    "s": "seconds",
    "MACs": "multiply-accumulate operations",
    "params": "parameters",
    "bits": "bits per stored weight",
    "count": "a count",
    "ratio": "a dimensionless ratio",
    "p-value": "a p-value",
    "statistic": "a test statistic",
    "nats": "nats (log-loss)",
    "norm": "a perturbation norm, in input units",
    "score": "a dimensionless score",
    "flag": "yes (1) or no (0)",
}

#: units whose values are shares: scaled by 100 for display
PERCENT_UNITS: Final[frozenset[str]] = frozenset({"fraction", "pp"})


def check_unit(unit: str) -> str:
    """``unit`` if it is one of :data:`UNITS`; else a ``ValueError`` naming it."""
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of: {', '.join(UNITS)}")
    return unit


#: spellings of units that stores written before :data:`UNITS` existed may hold
LEGACY_UNITS: Final[dict[str, str]] = {"B": "bytes"}


def canonical_unit(unit: str) -> str:
    """``unit`` in the spelling of :data:`UNITS` (an old spelling such as ``"B"`` → ``"bytes"``);
    any other text is returned as it is."""
    return LEGACY_UNITS.get(unit, unit)


def difference_unit(unit: str) -> str:
    """The unit of a difference of two values of ``unit`` (and of their spread: a standard
    deviation, a confidence interval's half-width): two fractions differ by percentage points; a
    difference of flags or p-values is a plain number; any other unit is its own."""
    unit = canonical_unit(unit)
    if unit in PERCENT_UNITS:
        return "pp"
    if unit in ("flag", "p-value"):
        return "score"
    return unit


def _si(value: float, suffixes: tuple[tuple[str, float], ...], digits: int, sign: str) -> str | None:
    for suffix, div in suffixes:
        if abs(value) >= div:
            return f"{value / div:{sign}.{digits}f} {suffix}"
    return None


def format_value(value: float | None, unit: str, *, digits: int | None = None, signed: bool = False) -> str:
    """``value`` as a person reads it in ``unit`` (an en dash for a missing or NaN value).

    ``digits``: decimals after the point of the shown number (each unit has its default; for a
    ``p-value``, significant digits); ``signed``: a leading ``+`` on positive values (a difference;
    percentage points always carry their sign). A unit outside :data:`UNITS` (a store's free text)
    is shown as a plain number; an old spelling (:data:`LEGACY_UNITS`) as its unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    unit = canonical_unit(unit)
    sign = "+" if signed else ""
    if math.isinf(value):
        return ("+∞" if signed else "∞") if value > 0 else "−∞"
    if unit == "fraction":
        return f"{100 * value:{sign}.{1 if digits is None else digits}f}%"
    if unit == "pp":
        return f"{100 * value:+.{1 if digits is None else digits}f} pp"
    if unit == "bytes":
        big = _si(value, (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)), 2 if digits is None else digits, sign)
        return big if big is not None else f"{value:{sign},.0f} B"
    if unit == "MACs":
        big = _si(value, (("G", 1e9), ("M", 1e6), ("k", 1e3)), 2 if digits is None else digits, sign)
        return big if big is not None else f"{value:{sign},.0f}"
    if unit == "ms":
        return f"{value:{sign}.{3 if digits is None else digits}f} ms"
    if unit == "s":
        return f"{value:{sign}.3g} s" if digits is None else f"{value:{sign}.{digits}f} s"
    if unit in ("params", "count"):
        if value.is_integer() or digits is None:
            return f"{value:{sign},.0f}"
        return f"{value:{sign}.{digits}f}"
    if unit == "bits":
        shown = f"{value:{sign}g}" if digits is None else f"{value:{sign}.{digits}f}"
        return f"{shown} bits"
    if unit == "ratio":
        return f"{value:{sign}.{2 if digits is None else digits}f}x"
    if unit == "flag":
        return "yes" if value >= 0.5 else "no"
    if unit == "p-value":
        return f"{value:{sign}.{3 if digits is None else digits}g}"
    if digits is not None:
        return f"{value:{sign}.{digits}f}"
    return f"{value:{sign}.4g}"


def format_precise(value: float | None, unit: str, *, significant: int = 6, signed: bool = False) -> str:
    """``value`` in ``unit`` (:func:`format_value`) with ``significant`` significant digits in the
    shown number, enough to tell close values apart (``compaudit compare``); flags as
    :func:`format_value` shows them."""
    if value is None or not math.isfinite(float(value)):
        return format_value(value, unit, signed=signed)
    value = float(value)
    unit = canonical_unit(unit)
    if unit == "p-value":
        return format_value(value, unit, digits=significant, signed=signed)
    if unit == "flag":
        return format_value(value, unit)
    shown = abs(value)
    if unit in PERCENT_UNITS:
        shown *= 100.0
    elif unit in ("bytes", "MACs"):
        shown = next((shown / div for div in (1e9, 1e6, 1e3) if shown >= div), shown)
    if unit in ("bytes", "MACs", "params", "count", "bits") and shown == abs(value) and value.is_integer():
        return format_value(value, unit, signed=signed)  # a whole number shown unscaled: every digit
    if unit not in UNITS:
        return f"{value:{'+' if signed else ''}.{significant}g}"
    magnitude = math.floor(math.log10(shown)) if shown > 0 else 0
    digits = min(max(significant - 1 - magnitude, 0), 12)
    # no trailing zeros: the fewest decimals that show the same rounded number
    digits = next(d for d in range(digits + 1) if round(shown, d) == round(shown, digits))
    return format_value(value, unit, digits=digits, signed=signed)


def format_spread(value: float | None, unit: str) -> str:
    """The size of a spread of values of ``unit`` (a standard deviation, an interval's half-width),
    unsigned, in the unit of their differences (:func:`difference_unit`): ``1.2 pp`` for fractions."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = format_value(abs(float(value)), difference_unit(unit))
    return text[1:] if text.startswith("+") else text


def scale(unit: str) -> tuple[float, str]:
    """``(factor, suffix)`` for an axis or a column header showing values of ``unit``:
    fractions are plotted times 100 with ``" (%)"``, percentage points times 100 with ``" (pp)"``."""
    unit = canonical_unit(unit)
    if unit == "fraction":
        return 100.0, " (%)"
    if unit == "pp":
        return 100.0, " (pp)"
    if unit in ("ms", "s", "bytes", "MACs", "bits", "nats"):
        return 1.0, f" ({unit})"
    return 1.0, ""
