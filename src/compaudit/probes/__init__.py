"""Probes: families of measurements over a variant."""

from compaudit.probes import accuracy as _accuracy  # noqa: F401  (registers)
from compaudit.probes import adversarial as _adversarial  # noqa: F401  (registers)
from compaudit.probes import classes as _classes  # noqa: F401  (registers)
from compaudit.probes import efficiency as _efficiency  # noqa: F401  (registers)
from compaudit.probes import embedding as _embedding  # noqa: F401  (registers)
from compaudit.probes import explain as _explain  # noqa: F401  (registers)
from compaudit.probes import shift as _shift  # noqa: F401  (registers)
from compaudit.probes.base import (
    MEASURED_ON,
    PROBES,
    Metric,
    Probe,
    ProbeContext,
    ProbeParams,
    ProbeResult,
    SummaryColumn,
)

__all__ = [
    "MEASURED_ON",
    "PROBES",
    "Metric",
    "Probe",
    "ProbeContext",
    "ProbeParams",
    "ProbeResult",
    "SummaryColumn",
]
