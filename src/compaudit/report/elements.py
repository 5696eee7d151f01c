"""What a report page is made of: sections of tables and figures."""

from __future__ import annotations

import base64
import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from compaudit.probes import declared_unit


@dataclass
class Cell:
    """A table cell: its text, the number behind it (for sorting and highlights), a CSS class and
    an optional inline image (a thumbnail)."""

    text: str
    value: float | None = None
    cls: str = ""
    image: str | None = None
    #: a small gallery: (image URI, caption, tooltip) per sample
    gallery: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""


@dataclass
class Figure:
    """An inline PNG and, for download, the data it shows as CSV text."""

    title: str
    uri: str
    csv: str = ""

    @property
    def csv_uri(self) -> str:
        return "data:text/csv;base64," + base64.b64encode(self.csv.encode("utf-8")).decode("ascii")

    @property
    def csv_name(self) -> str:
        stem = "".join(ch if ch.isalnum() else "_" for ch in self.title.lower()).strip("_")
        return f"{stem[:60]}.csv"


@dataclass
class Section:
    """One probe's part of the page: tables and figures, shown in the order they were added."""

    title: str
    note: str = ""
    blocks: list[Table | Figure] = field(default_factory=list)

    def add(self, block: Table | Figure | None) -> None:
        if block is not None:
            self.blocks.append(block)

    @property
    def tables(self) -> list[Table]:
        return [b for b in self.blocks if isinstance(b, Table)]

    @property
    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Records as CSV text, columns in order of first appearance."""
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def metric_unit(records: Iterable[dict[str, Any]], probe: str, metric: str) -> str:
    """The unit values of ``metric`` of ``probe`` are shown in: the one the registered probe declares
    (:meth:`compaudit.probes.Probe.unit_of`), else that of a stored record of it ("" if none)."""
    unit = declared_unit(probe, metric)
    if unit:
        return unit
    stored = (str(r.get("unit") or "") for r in records if r["probe"] == probe and r["metric"] == metric)
    return next((u for u in stored if u), "")


def highlight(rows: list[list[Cell]], col: int, better: str | None) -> None:
    """Mark the best and the worst value of column ``col`` (``better``: "high" or "low")."""
    if better is None:
        return
    vals = [v for r in rows if (v := r[col].value) is not None and not math.isnan(v)]
    if len(set(vals)) < 2:
        return
    best, worst = (max(vals), min(vals)) if better == "high" else (min(vals), max(vals))
    for r in rows:
        if r[col].value == best:
            r[col].cls = "best"
        elif r[col].value == worst:
            r[col].cls = "worst"
