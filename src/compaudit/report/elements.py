"""What a report page is made of: re-exported from :mod:`compaudit.elements`, where the probes
(which build their own sections) can reach them from below the report."""

from __future__ import annotations

from compaudit.elements import Cell, Figure, Section, Table, highlight, to_csv

__all__ = ["Cell", "Figure", "Section", "Table", "highlight", "to_csv"]
