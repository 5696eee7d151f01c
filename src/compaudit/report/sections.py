"""One section of the report per probe.

The section is the probe's own (:meth:`compaudit.probes.Probe.section`: the generic table unless
the probe mirrors a paper's tables and figures); a probe that is no longer registered gets the
generic one. The report core adds only what every section has: where its numbers were measured.
"""

from __future__ import annotations

from compaudit.elements import MEASURED_COLUMN, Section, SectionData, device_table, generic_section
from compaudit.probes import PROBES


def render_section(data: SectionData) -> Section:
    """The probe's section; every section says on which device each variant's numbers were
    measured (a column of the generic table, else a small table of its own)."""
    section = PROBES.get(data.probe).section(data) if data.probe in PROBES else generic_section(data)
    if not any(MEASURED_COLUMN in t.columns for t in section.tables):
        section.add(device_table(data))
    return section
