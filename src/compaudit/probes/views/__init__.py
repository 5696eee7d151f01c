"""The report sections of the probes that mirror a paper's tables and figures.

Each module is one probe's view: ``section(data: SectionData) -> Section``, which the probe's
class returns from :meth:`compaudit.probes.Probe.section`. A view builds its section from
:mod:`compaudit.elements` and the records and tables its probe stored, and reads units and the
probe's description from the data (``data.unit``, ``data.doc``), never from the registry: the
views sit in the probes layer, below the report that arranges them, and import no other probe.
"""
