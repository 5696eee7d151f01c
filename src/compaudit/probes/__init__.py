"""Probes: families of measurements over a variant."""

from compaudit.errors import ProbeError
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.results import (
    MEASURED_ON,
    Metric,
    MetricSpec,
    ProbeResult,
    ResultWarning,
    Role,
    Severity,
    View,
)
from compaudit.units import UNITS, canonical_unit

__all__ = [
    "MEASURED_ON",
    "PROBES",
    "Metric",
    "MetricSpec",
    "Probe",
    "ProbeContext",
    "ProbeParams",
    "ProbeResult",
    "ResultWarning",
    "Role",
    "Severity",
    "View",
    "declared_unit",
]


def declared_unit(probe: str, metric: str, stored: str = "") -> str:
    """The unit to show ``metric`` of the probe named ``probe`` in: ``stored`` (a stored record's
    unit) when it is one of :data:`compaudit.units.UNITS`; else, for an empty or old spelling
    (``"B"``), the unit the registered probe declares (:meth:`Probe.unit_of`); else the stored text
    in its current spelling (a probe that is not registered, or no longer reports ``metric``)."""
    if stored in UNITS:
        return stored
    if probe in PROBES:
        try:
            return PROBES.get(probe).unit_of(metric)
        except ProbeError:
            pass
    return canonical_unit(stored)
