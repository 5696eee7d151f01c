"""Assemble what the report shows from a run's store: one self-contained HTML page."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from compaudit._version import __version__
from compaudit.elements import Cell, Figure, Section, SectionData, Table, highlight
from compaudit.probes import PROBES, declared_unit
from compaudit.records import RecordTable
from compaudit.report.overview import (
    Overview,
    build_overview,
    seed_groups,
    sweep_curves,
    sweep_groups,
    variant_warnings,
)
from compaudit.report.sections import render_section
from compaudit.results import Declared, Role
from compaudit.store import ResultRef, Store, write_atomic
from compaudit.units import format_value

__all__ = ["Cell", "ReportData", "Table", "collect", "render_report", "write_report"]


@dataclass
class ReportData:
    name: str
    status: str
    created: str
    summary: Table
    sections: list[Section] = field(default_factory=list)
    #: every warning once, sorted
    warnings: list[str] = field(default_factory=list)
    #: the same warnings grouped by the variant they concern
    warnings_by_variant: dict[str, list[str]] = field(default_factory=dict)
    overview: Overview | None = None
    #: the warnings that invalidate numbers (gradient masking, collapse, NaN outputs), by variant
    severe: dict[str, list[str]] = field(default_factory=dict)
    #: one figure per sweep: every summary metric against the compression level
    sweeps: list[Figure] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lineage: Table | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    experiment_yaml: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    version: str = __version__


def _plan_keys(store: Store) -> tuple[list[ResultRef], list[tuple[str, str, str]]]:
    """The run's plan as the store reads it (:meth:`Store.plan_refs`: with identities), and as
    ``(variant, probe, key)`` triples in report order."""
    refs = store.plan_refs()
    return refs, [(r.variant, r.probe, r.key) for r in refs]


def _ordered(keys: list[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    variants: list[str] = []
    probes: list[str] = []
    for v, p, _ in keys:
        if v not in variants:
            variants.append(v)
        if p not in probes:
            probes.append(p)
    return variants, probes


def summary_columns(records: RecordTable, probes: list[str]) -> list[Declared]:
    """The summary columns the probes declare, in the experiment's order, that some record has."""
    columns = [d for p in probes if p in PROBES for d in PROBES.get(p).views(p, Role.SUMMARY)]
    return [d for d in columns if records.first(None, d.probe, d.spec.name, **d.view.params) is not None]


def summary_values(
    records: RecordTable, variants: list[str], present: list[Declared]
) -> dict[str, list[float | None]]:
    """Per variant, the value of each summary column (None where not measured)."""
    return {v: [records.value(v, d.probe, d.spec.name, **d.view.params) for d in present] for v in variants}


def _records(store: Store, keys: list[ResultRef]) -> RecordTable:
    """The run's metric records in plan order; units of results stored before probes declared them
    come from the registered probes' declarations."""
    return store.records(keys, unit_of=declared_unit)


def summary_frame(store: Store) -> tuple[dict[str, list[float | None]], list[str]]:
    """The report's summary as plain numbers: per variant a row, and the column titles (what
    :meth:`compaudit.api.AuditResult.table` turns into a DataFrame)."""
    refs, keys = _plan_keys(store)
    variants, probes = _ordered(keys)
    records = _records(store, refs)
    present = summary_columns(records, probes)
    rows = summary_values(records, variants, present)
    return {v: rows[v] for v in variants if any(x is not None for x in rows[v])}, [d.title for d in present]


def collect_warnings(store: Store) -> list[str]:
    """Every warning of a run's stored results and variants, each once, sorted."""
    _, keys = _plan_keys(store)
    stored = {k: store.result(k) for _, _, k in keys}
    skipped: dict[str, list[str]] = {}
    for j in store.meta("plan", []) or []:
        info = store.variant_info(j.get("variant_key", "")) or {}
        if info.get("skipped"):
            skipped[j["variant"]] = list(info["skipped"])
    return sorted({w.text for ws in variant_warnings(stored, keys, skipped).values() for w in ws})


def collect(store: Store) -> ReportData:
    plan: list[dict[str, str]] = store.meta("plan", []) or []
    refs, keys = _plan_keys(store)
    records = _records(store, refs)
    variants, probes = _ordered(keys)

    # summary: columns contributed by the probes, in the order of the experiment
    present = summary_columns(records, probes)
    values = summary_values(records, variants, present)
    rows: list[list[Cell]] = []
    for v in variants:
        if all(x is None for x in values[v]):  # a sweep's selection record is not a variant
            continue
        row = [Cell(v)]
        for d, val in zip(present, values[v], strict=True):
            row.append(Cell(d.spec.format(val), val))
        rows.append(row)
    for i, d in enumerate(present, start=1):
        highlight(rows, i, d.spec.better)
    summary = Table(
        "Every summary metric",
        ["Variant"] + [d.title for d in present],
        rows,
        note="Green: best of the column; red: worst. Latency is wall-clock and varies between runs.",
    )

    # one section per probe, from the probe's renderer (or every metric, variants as rows)
    stored = {k: store.result(k) for _, _, k in keys}
    sections: list[Section] = []
    for p in probes:
        tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for v, pp, k in keys:
            res = stored[k]
            if pp == p and res is not None and res.tables:
                tables[v] = res.tables
        recs = records.where(probe=p).to_rows()
        specs = PROBES.get(p).specs() if p in PROBES else {}
        doc = PROBES.doc(p) if p in PROBES else ""
        sections.append(render_section(SectionData(p, recs, tables, variants, specs, doc)))

    failures: list[str] = []
    missing: dict[str, list[str]] = {}
    for v, p, k in keys:
        res = stored[k]
        if res is None:
            missing.setdefault(v, []).append(p)
        elif res.status == "error":
            failures.append(f"{v} × {p}: {res.error}")
    failures += [f"{v}: not run yet ({', '.join(ps)})" for v, ps in missing.items()]

    ids = records.identities()
    baselines = {v for v in variants if (ident := ids.get(v)) is not None and ident.name == "baseline"}
    lineage_rows: list[list[Cell]] = []
    seen: set[str] = set()
    skipped: dict[str, list[str]] = {}
    info: dict[str, Any]
    for j in plan:
        vk = j.get("variant_key", "")
        if vk in seen:
            continue
        seen.add(vk)
        info = store.variant_info(vk) or {}
        if info.get("skipped"):
            skipped[j["variant"]] = list(info["skipped"])
        parts = []
        for st in info.get("lineage", []):
            args = ", ".join(f"{k}={v}" for k, v in st["params"].items() if k != "on_unsupported")
            part = f"{st['method']}({args})"
            ft = st.get("finetune")
            if ft:
                part += f" → {ft['objective']} fine-tune {len(ft['history'])} epoch(s)"
            parts.append(part)
        text = " → ".join(parts)
        if info.get("deployed") and info.get("runtime"):
            # what runs the deployed model and what stands in for it in gradients and saliency
            text += f"; runs in {info['runtime']}"
            if info.get("surrogate"):
                text += f"; surrogate: {info['surrogate']}"
        if j["variant"] in baselines:
            text = _baseline_lineage(info) or text
        lineage_rows.append([Cell(j["variant"]), Cell(text or "–"), Cell(vk)])
    lineage = Table("Variants and their lineage", ["Variant", "Steps", "Key"], lineage_rows)

    structured = variant_warnings(stored, keys, skipped)
    by_variant = {v: [w.text for w in ws] for v, ws in structured.items()}
    warnings = sorted({w for ws in by_variant.values() for w in ws})
    seeds = store.meta("seeds") or []
    groups = seed_groups(variants, ids) if len(seeds) > 1 else None
    overview = build_overview(records, variants, by_variant, groups, baselines)
    sweeps = [
        fig
        for runs in sweep_groups(store.meta("sweeps", []) or [], seeds=groups is not None)
        if (fig := sweep_curves(runs, records, present)) is not None
    ]

    created = store.meta("finished") or store.meta("started") or 0.0
    return ReportData(
        name=str(store.meta("name", store.root.name)),
        status=str(store.meta("status", "unknown")),
        created=dt.datetime.fromtimestamp(float(created), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary,
        sections=sections,
        warnings=warnings,
        warnings_by_variant=by_variant,
        # the banner reads each warning's severity, never its words
        severe={v: sev for v, ws in structured.items() if (sev := [w.text for w in ws if w.invalidates])},
        overview=overview,
        sweeps=sweeps,
        failures=failures,
        lineage=lineage,
        data_info=store.meta("data", {}) or {},
        experiment_yaml=str(store.meta("experiment", "")),
        environment=store.meta("environment", {}) or {},
    )


def render_report(store: Store) -> str:
    env = Environment(
        loader=PackageLoader("compaudit.report", "templates"), autoescape=select_autoescape(["html"])
    )
    data = collect(store)
    return env.get_template("report.html").render(r=data, json=json)


def write_report(store: Store, path: Path | None = None) -> Path:
    """Render the report of ``store`` to ``path`` (default ``RUN/report.html``), atomically."""
    path = path or store.root / "report.html"
    write_atomic(path, render_report(store))
    return path


def _baseline_lineage(info: dict[str, Any]) -> str:
    """How the baseline came to be: its pretrained weights (and a replaced head), its training."""
    parts = []
    weights = info.get("pretrained")
    if isinstance(weights, dict):
        text = f"weights {weights.get('source')}"
        if weights.get("head"):
            text += (
                f"; head {weights['head']} replaced "
                f"({weights.get('checkpoint_classes')} → {weights.get('classes')} classes)"
            )
        parts.append(text)
    if info.get("train"):
        verb = "fine-tuned" if parts else "trained"
        parts.append(
            f"{verb} {len(info['train'])} epochs, best val accuracy "
            f"{format_value(info['best_val_accuracy'], 'fraction', digits=2)} "
            f"at epoch {info['best_epoch']}"
        )
    return "; ".join(parts)
