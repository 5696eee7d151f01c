"""One section of the report per probe.

Every probe gets the generic section (every metric, variants as rows) unless a renderer is
registered for it here; a renderer mirrors the seed papers' tables and figures for its probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compaudit.probes import PROBES
from compaudit.report.elements import Cell, Section, Table, fmt_value, highlight
from compaudit.report.figures import (
    accuracy_vs_severity,
    class_delta_heatmap,
    confusion_deltas,
    reliability_diagram,
    robustness_curves,
)

_ID_KEYS = ("variant", "probe", "metric", "value", "unit", "noisy")


@dataclass
class ProbeData:
    """What a renderer gets: the probe's metric records and tables, and the variants in order."""

    probe: str
    records: list[dict[str, Any]]
    tables: dict[str, dict[str, list[dict[str, Any]]]]  # variant -> table name -> rows
    variants: list[str]

    def value(self, variant: str, metric: str, **params: Any) -> float | None:
        for r in self.records:
            if (
                r["variant"] == variant
                and r["metric"] == metric
                and all(r.get(k) == v for k, v in params.items())
            ):
                return None if r["value"] is None else float(r["value"])
        return None

    def distinct(self, metric: str, param: str) -> list[Any]:
        out: list[Any] = []
        for r in self.records:
            if r["metric"] == metric and param in r and r[param] not in out:
                out.append(r[param])
        return out


Renderer = Callable[[ProbeData], Section]
RENDERERS: dict[str, Renderer] = {}


def renderer(probe: str) -> Callable[[Renderer], Renderer]:
    def deco(fn: Renderer) -> Renderer:
        RENDERERS[probe] = fn
        return fn

    return deco


def render_section(data: ProbeData) -> Section:
    return RENDERERS.get(data.probe, generic)(data)


def _doc(probe: str) -> str:
    return PROBES.doc(probe) if probe in PROBES else ""


def label(rec: dict[str, Any]) -> str:
    extra = {k: v for k, v in rec.items() if k not in _ID_KEYS}
    if not extra:
        return str(rec["metric"])
    return f"{rec['metric']} ({', '.join(f'{k}={v}' for k, v in extra.items())})"


def generic_table(data: ProbeData, title: str, records: list[dict[str, Any]] | None = None) -> Table:
    """Every metric as a column, variants as rows."""
    recs = data.records if records is None else records
    labels: list[str] = []
    for r in recs:
        lab = label(r)
        if lab not in labels:
            labels.append(lab)
    rows: list[list[Cell]] = []
    for v in data.variants:
        by_label = {label(r): r for r in recs if r["variant"] == v}
        if not by_label:
            continue
        cells = [Cell(v)]
        for lab in labels:
            hit = by_label.get(lab)
            val = None if hit is None or hit["value"] is None else float(hit["value"])
            cells.append(Cell(fmt_value(val, "", hit["unit"] if hit else ""), val))
        rows.append(cells)
    return Table(title, ["Variant", *labels], rows)


def generic(data: ProbeData) -> Section:
    section = Section(f"Probe: {data.probe}", note=_doc(data.probe))
    section.add(generic_table(data, "All metrics"))
    return section


@renderer("adversarial")
def adversarial(data: ProbeData) -> Section:
    section = generic(data)
    for fig in robustness_curves(data.records):
        section.add(fig)
    return section


# ---------------------------------------------------------------- shift


def _split_name(variant: str) -> tuple[str, str]:
    """(source prefix, short name) of ``SOURCE/NAME`` (prefix "" for a single-source run)."""
    head, _, tail = variant.rpartition("/")
    return head, tail


@renderer("shift")
def shift(data: ProbeData) -> Section:
    section = Section("Probe: shift", note=_doc("shift"))
    targets = data.distinct("target_accuracy", "domain")
    if targets:
        section.add(_domain_table(data))
    corruptions = data.distinct("corruption_mean_accuracy", "corruption")
    if corruptions:
        columns = ["Variant", "Clean (subset)", "Mean corruption acc", "mCE", "Relative mCE"]
        columns += [c.replace("_", " ") for c in corruptions]
        rows: list[list[Cell]] = []
        for v in data.variants:
            clean = data.value(v, "clean_accuracy")
            if clean is None:
                continue
            vals = [
                (clean, "pct"),
                (data.value(v, "mean_corruption_accuracy"), "pct"),
                (data.value(v, "mce"), "pct"),
                (data.value(v, "relative_mce"), "pct"),
            ]
            vals += [(data.value(v, "corruption_mean_accuracy", corruption=c), "pct") for c in corruptions]
            rows.append([Cell(v)] + [Cell(fmt_value(x, f), x) for x, f in vals])
        for col, better in ((2, "high"), (3, "low"), (4, "low")):
            highlight(rows, col, better)
        section.add(
            Table(
                "Common corruptions: accuracy averaged over severities",
                columns,
                rows,
                note="mCE: corruption errors summed over severities, divided by the baseline's, averaged "
                "over corruption types (100% = as robust as the baseline; lower is better). Relative mCE "
                "first subtracts each model's clean error.",
            )
        )
        section.add(accuracy_vs_severity(data.records))
    return section


def _domain_table(data: ProbeData) -> Table:
    """Seed 001's Tables 1-2: the source's validation accuracy and each source -> target pair's
    accuracy, with its change against the baseline of the same source."""
    sources: list[str] = []
    names: list[str] = []
    pairs: list[tuple[str, str]] = []
    for r in data.records:
        src, short = _split_name(r["variant"])
        if src not in sources:
            sources.append(src)
        if short not in names:
            names.append(short)
        if r["metric"] == "target_accuracy" and (src, r["domain"]) not in pairs:
            pairs.append((src, r["domain"]))
    source_label = {
        src: src or next((r["source"] for r in data.records if r["metric"] == "source_accuracy"), "source")
        for src in sources
    }
    columns = ["Variant"]
    for src in sources:
        columns.append(f"{source_label[src]} (val)")
        columns += [f"{source_label[src]} → {t}" for s, t in pairs if s == src]
    columns.append("Mean target acc")
    rows: list[list[Cell]] = []
    for short in names:
        cells = [Cell(short)]
        means: list[float] = []
        for src in sources:
            v = f"{src}/{short}" if src else short
            val = data.value(v, "source_accuracy")
            cells.append(Cell(fmt_value(val, "pct"), val))
            for s, t in pairs:
                if s != src:
                    continue
                acc = data.value(v, "target_accuracy", domain=t)
                delta = data.value(v, "target_accuracy_delta", domain=t)
                text = fmt_value(acc, "pct") + (f" ({100 * delta:+.1f})" if delta is not None else "")
                cells.append(Cell(text, acc))
                if acc is not None:
                    means.append(acc)
        m = sum(means) / len(means) if means else None
        cells.append(Cell(fmt_value(m, "pct"), m))
        rows.append(cells)
    for col in range(1, len(columns)):
        highlight(rows, col, "high")
    return Table(
        "Domain shift: source validation and target-domain accuracy",
        columns,
        rows,
        note="source → target: accuracy on the target domain of a model trained and compressed on the "
        "source; in brackets its change in points against the baseline of the same source.",
    )


# ---------------------------------------------------------------- classes


@renderer("classes")
def classes(data: ProbeData) -> Section:
    section = Section("Probe: classes", note=_doc("classes"))
    spec: list[tuple[str, str, dict[str, Any], str, str | None]] = [
        ("Accuracy", "accuracy", {}, "pct", "high"),
        ("Δ accuracy", "accuracy_delta", {}, "pp", "high"),
        ("95% CI of Δ", "", {}, "", None),
        ("Flips", "flip_rate", {}, "pct", "low"),
        ("Correct → wrong", "flips_correct_to_wrong", {}, "pct", "low"),
        ("Wrong → correct", "flips_wrong_to_correct", {}, "pct", None),
        ("McNemar p", "mcnemar_p", {}, "float", None),
        ("Worst class Δ", "max_class_drop", {}, "pp", "high"),
        ("Mean confidence", "mean_confidence", {}, "pct", None),
        ("Confidence on flips", "mean_confidence_flipped", {}, "pct", None),
        ("ECE", "ece", {}, "float", "low"),
        ("NLL", "nll", {}, "float", "low"),
    ]
    rows: list[list[Cell]] = []
    for v in data.variants:
        if data.value(v, "accuracy") is None:
            continue
        cells = [Cell(v)]
        for _, metric, params, fmt, _ in spec:
            if not metric:
                lo = next(
                    (
                        r["value"]
                        for r in data.records
                        if r["variant"] == v and r["metric"] == "accuracy_delta_ci_low"
                    ),
                    None,
                )
                hi = next(
                    (
                        r["value"]
                        for r in data.records
                        if r["variant"] == v and r["metric"] == "accuracy_delta_ci_high"
                    ),
                    None,
                )
                text = "–" if lo is None or hi is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}] pp"
                cells.append(Cell(text, lo))
                continue
            val = data.value(v, metric, **params)
            cells.append(Cell(fmt_value(val, fmt), val))
        rows.append(cells)
    for i, (_, _, _, _, better) in enumerate(spec, start=1):
        highlight(rows, i, better)
    section.add(
        Table(
            "Prediction flips, significance and confidence against the baseline",
            ["Variant"] + [s[0] for s in spec],
            rows,
            note="Flips: share of test samples whose predicted class changed. McNemar: exact binomial test "
            "below 25 discordant samples, chi-square with continuity correction above. CI: paired "
            "bootstrap percentile interval. ECE: 15 equal-width confidence bins.",
        )
    )
    section.add(class_delta_heatmap(data.records))
    section.add(confusion_deltas(data.tables, [str(c) for c in data.distinct("class_accuracy", "class")]))
    section.add(reliability_diagram(data.tables))
    section.add(_exemplars(data))
    return section


def _exemplars(data: ProbeData) -> Table | None:
    """One row per variant and kind of exemplar, the samples side by side."""
    rows: list[list[Cell]] = []
    for v in data.variants:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in data.tables.get(v, {}).get("exemplars", []):
            by_kind.setdefault(str(r["kind"]), []).append(r)
        for kind, items in by_kind.items():
            gallery = [
                (
                    str(r.get("thumbnail") or ""),
                    f"{r['label']}: {r['baseline_prediction']}→{r['variant_prediction']}",
                    f"test sample {r['index']}, label {r['label']}; baseline {r['baseline_prediction']} "
                    f"({100 * float(r['baseline_confidence']):.0f}%), variant {r['variant_prediction']} "
                    f"({100 * float(r['variant_confidence']):.0f}%)",
                )
                for r in items
            ]
            rows.append([Cell(v), Cell(kind.replace("_", " ")), Cell("", gallery=gallery)])
    if not rows:
        return None
    return Table(
        "Samples most affected by compression (compression-identified exemplars)",
        ["Variant", "Kind", "Samples (label: baseline → variant prediction; hover for confidences)"],
        rows,
        note="Per variant: flipped samples and the largest confidence drops, largest change first "
        "(after Hooker et al. 2019).",
    )
