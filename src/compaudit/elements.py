"""What a report page is made of (sections of tables and figures) and the generic pieces a probe's
own section is built from.

A leaf of the types layer: the probes build their sections from these (:meth:`compaudit.probes.Probe.
section`), the report core arranges them; neither needs the other's names.
"""

from __future__ import annotations

import base64
import csv
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compaudit.records import CORE_COLUMNS
from compaudit.results import MEASURED_ON, MetricSpec, VariantId
from compaudit.units import format_value


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


#: the columns of a flat metric record that are not the metric's params: what a generic column
#: label leaves out
_ID_KEYS = CORE_COLUMNS


def identity_of(rec: Mapping[str, Any]) -> VariantId:
    """Who the variant of flat metric record ``rec`` is, from its identity columns
    (``variant_source``, ``variant_seed``, ``variant_name``); a record without them (from an export
    written before they existed) is its whole label, with no source and no seed."""
    name = rec.get("variant_name")
    if not name:
        return VariantId(str(rec["variant"]))
    seed = rec.get("variant_seed")
    return VariantId(str(name), str(rec.get("variant_source") or ""), None if seed is None else int(seed))


@dataclass
class SectionData:
    """What a probe's section is made from: its metric records and tables, the variants in order,
    the probe's metric declarations (``specs``, by metric name) and its one-line description."""

    probe: str
    records: list[dict[str, Any]]
    tables: dict[str, dict[str, list[dict[str, Any]]]]  # variant -> table name -> rows
    variants: list[str]
    specs: Mapping[str, MetricSpec] = field(default_factory=dict)
    doc: str = ""

    def value(self, variant: str, metric: str, **params: Any) -> float | None:
        for r in self.records:
            if (
                r["variant"] == variant
                and r["metric"] == metric
                and all(r.get(k) == v for k, v in params.items())
            ):
                return None if r["value"] is None else float(r["value"])
        return None

    def identity(self, variant: str) -> VariantId:
        """Who ``variant`` is (:func:`identity_of` its first record; its label alone when it has none)."""
        rec = next((r for r in self.records if r["variant"] == variant), {"variant": variant})
        return identity_of(rec)

    def unit(self, metric: str) -> str:
        """The unit of ``metric``: the probe's declaration, else its stored records' unit."""
        spec = self.specs.get(metric)
        if spec is not None:
            return spec.unit
        stored = (str(r.get("unit") or "") for r in self.records if r["metric"] == metric)
        return next((u for u in stored if u), "")

    def text(self, value: float | None, metric: str, **kw: Any) -> str:
        """``value`` of ``metric`` formatted from its unit (:func:`compaudit.units.format_value`)."""
        spec = self.specs.get(metric)
        if spec is not None:
            return spec.format(value, **kw)
        return format_value(value, self.unit(metric), **kw)

    def distinct_table(self, table: str, column: str) -> list[Any]:
        """The values of ``column`` in table ``table`` of every variant, in order of appearance."""
        out: list[Any] = []
        for tables in self.tables.values():
            for r in tables.get(table, []):
                if column in r and r[column] not in out:
                    out.append(r[column])
        return out

    def measured_on(self, variant: str) -> str:
        """Where ``variant``'s numbers of this probe were measured: one device (``cuda:0``), or each
        kind of number's (``outputs: cpu; attack (bpda): cuda:0``); "" when the result predates it."""
        rows = [r for r in self.tables.get(variant, {}).get(MEASURED_ON, []) if "device" in r]
        devices = list(dict.fromkeys(str(r["device"]) for r in rows))
        if len(devices) <= 1:
            return devices[0] if devices else ""
        return "; ".join(f"{r.get('what', '?')}: {r['device']}" for r in rows)

    def distinct(self, metric: str, param: str) -> list[Any]:
        out: list[Any] = []
        for r in self.records:
            if r["metric"] == metric and param in r and r[param] not in out:
                out.append(r[param])
        return out


#: the column (generic tables) or table (other renderers) that says where numbers were measured
MEASURED_COLUMN = "Measured on"


def device_table(data: SectionData) -> Table | None:
    """Variant → the device(s) its numbers of this probe were measured on (None: nothing recorded)."""
    rows = [[Cell(v), Cell(where)] for v in data.variants if (where := data.measured_on(v))]
    if not rows:
        return None
    return Table(
        "Where the numbers were measured",
        ["Variant", MEASURED_COLUMN],
        rows,
        note="Int8 deployed models run on the CPU (PyTorch's int8 kernels are CPU kernels), also when "
        "the experiment's device is a GPU.",
    )


def label(rec: dict[str, Any]) -> str:
    extra = {k: v for k, v in rec.items() if k not in _ID_KEYS}
    if not extra:
        return str(rec["metric"])
    return f"{rec['metric']} ({', '.join(f'{k}={v}' for k, v in extra.items())})"


def generic_table(data: SectionData, title: str, records: list[dict[str, Any]] | None = None) -> Table:
    """Every metric as a column, variants as rows."""
    recs = data.records if records is None else records
    labels: list[str] = []
    for r in recs:
        lab = label(r)
        if lab not in labels:
            labels.append(lab)
    shown = [v for v in data.variants if any(r["variant"] == v for r in recs)]
    where = {v: data.measured_on(v) for v in shown}
    devices = [MEASURED_COLUMN] if any(where.values()) else []
    rows: list[list[Cell]] = []
    for v in shown:
        by_label = {label(r): r for r in recs if r["variant"] == v}
        cells = [Cell(v)] + [Cell(where[v] or "–") for _ in devices]
        for lab in labels:
            hit = by_label.get(lab)
            val = None if hit is None or hit["value"] is None else float(hit["value"])
            spec = data.specs.get(str(hit["metric"])) if hit else None
            text = (
                spec.format(val) if spec is not None else format_value(val, str(hit["unit"]) if hit else "")
            )
            cells.append(Cell(text, val))
        rows.append(cells)
    return Table(title, ["Variant", *devices, *labels], rows)


#: a column of a metric table: title, metric, which end is better ("high", "low", None); its values
#: are formatted from the metric's unit
Column = tuple[str, str, str | None]


def metric_table(
    data: SectionData,
    title: str,
    columns: list[Column],
    *,
    where: dict[str, Any],
    note: str = "",
    label: Callable[[str], str] = str,
) -> Table:
    """Variants as rows, one column per metric measured with the params ``where`` (columns no
    variant has are left out, variants with none of them too), best and worst highlighted."""
    present = [
        c
        for c in columns
        if any(r["metric"] == c[1] and all(r.get(k) == x for k, x in where.items()) for r in data.records)
    ]
    rows: list[list[Cell]] = []
    for v in data.variants:
        values = [data.value(v, c[1], **where) for c in present]
        if all(x is None for x in values):
            continue
        rows.append(
            [Cell(label(v))] + [Cell(data.text(x, c[1]), x) for x, c in zip(values, present, strict=True)]
        )
    for i, c in enumerate(present, start=1):
        highlight(rows, i, c[2])
    return Table(title, ["Variant"] + [c[0] for c in present], rows, note=note)


def generic_section(data: SectionData) -> Section:
    """Every metric as a column, variants as rows: the section of a probe that declares none."""
    section = Section(f"Probe: {data.probe}", note=data.doc)
    section.add(generic_table(data, "All metrics"))
    return section
