"""One section of the report per probe.

Every probe gets the generic section (every metric, variants as rows) unless a renderer is
registered for it here; a renderer mirrors the seed papers' tables and figures for its probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compaudit.probes import MEASURED_ON, PROBES
from compaudit.report.elements import Cell, Section, Table, highlight, metric_unit
from compaudit.report.figures import (
    accuracy_vs_severity,
    class_delta_heatmap,
    confusion_deltas,
    reliability_diagram,
    robustness_curves,
    tsne_grid,
)
from compaudit.units import format_value

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

    def unit(self, metric: str) -> str:
        """The unit of ``metric``: the probe's declaration, else its stored records' unit."""
        return metric_unit(self.records, self.probe, metric)

    def text(self, value: float | None, metric: str, **kw: Any) -> str:
        """``value`` of ``metric`` formatted from its unit (:func:`compaudit.units.format_value`)."""
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


Renderer = Callable[[ProbeData], Section]
RENDERERS: dict[str, Renderer] = {}


def renderer(probe: str) -> Callable[[Renderer], Renderer]:
    def deco(fn: Renderer) -> Renderer:
        RENDERERS[probe] = fn
        return fn

    return deco


#: the column (generic tables) or table (other renderers) that says where numbers were measured
MEASURED_COLUMN = "Measured on"


def render_section(data: ProbeData) -> Section:
    """The probe's section; every section says on which device each variant's numbers were
    measured (a column of the generic table, else a small table of its own)."""
    section = RENDERERS.get(data.probe, generic)(data)
    if not any(MEASURED_COLUMN in t.columns for t in section.tables):
        section.add(device_table(data))
    return section


def device_table(data: ProbeData) -> Table | None:
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
            cells.append(Cell(format_value(val, str(hit["unit"]) if hit else ""), val))
        rows.append(cells)
    return Table(title, ["Variant", *devices, *labels], rows)


#: a column of a metric table: title, metric, which end is better ("high", "low", None); its values
#: are formatted from the metric's unit
Column = tuple[str, str, str | None]


def metric_table(
    data: ProbeData,
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


def generic(data: ProbeData) -> Section:
    section = Section(f"Probe: {data.probe}", note=_doc(data.probe))
    section.add(generic_table(data, "All metrics"))
    return section


@renderer("adversarial")
def adversarial(data: ProbeData) -> Section:
    section = generic(data)
    checks = masking_checks(data)
    if checks is not None:
        section.add(checks)
    for fig in robustness_curves(data.records):
        section.add(fig)
    return section


def masking_checks(data: ProbeData) -> Table | None:
    """Every gradient-masking check of every variant, failed ones first: the evidence behind the
    verdict (Carlini et al. 2019), each with its numbers."""
    rows: list[list[Cell]] = []
    for v in data.variants:
        found = data.tables.get(v, {}).get("masking_checks", [])
        for r in sorted(found, key=lambda r: bool(r.get("passed"))):
            passed = bool(r.get("passed"))
            rows.append(
                [
                    Cell(v),
                    Cell(str(r.get("check", ""))),
                    Cell(str(r.get("verdict", "gradient masking"))),
                    Cell(str(r.get("route", ""))),
                    Cell("passed" if passed else "FAILED", 1.0 if passed else 0.0, "" if passed else "worst"),
                    Cell(str(r.get("detail", ""))),
                ]
            )
    if not rows:
        return None
    return Table(
        "Gradient-masking checks: the measured evidence behind each verdict",
        ["Variant", "Check", "Evidence of", "Route", "Result", "Numbers"],
        rows,
        note="A variant is flagged for gradient masking when a check of that kind fails (Athalye et al. "
        "2018; Carlini et al. 2019); a failed convergence check says the attack was too short, not that "
        "the model masks its gradients. "
        "That a deployed int8 model has no gradient path is information, not evidence: its naive "
        "numbers are flagged because BPDA, transfer or an unbounded attack measure far lower accuracy.",
    )


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
                (clean, "clean_accuracy"),
                (data.value(v, "mean_corruption_accuracy"), "mean_corruption_accuracy"),
                (data.value(v, "mce"), "mce"),
                (data.value(v, "relative_mce"), "relative_mce"),
            ]
            vals += [
                (data.value(v, "corruption_mean_accuracy", corruption=c), "corruption_mean_accuracy")
                for c in corruptions
            ]
            rows.append([Cell(v)] + [Cell(data.text(x, m), x) for x, m in vals])
        for col, better in ((2, "high"), (3, "low"), (4, "low")):
            highlight(rows, col, better)
        section.add(
            Table(
                "Common corruptions: accuracy averaged over severities",
                columns,
                rows,
                note="mCE: corruption errors summed over severities, divided by the baseline's, averaged "
                "over corruption types (1.00x = as robust as the baseline; lower is better; Hendrycks & "
                "Dietterich print 100%). Relative mCE first subtracts each model's clean error.",
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
            cells.append(Cell(data.text(val, "source_accuracy"), val))
            for s, t in pairs:
                if s != src:
                    continue
                acc = data.value(v, "target_accuracy", domain=t)
                delta = data.value(v, "target_accuracy_delta", domain=t)
                text = data.text(acc, "target_accuracy") + (
                    f" ({data.text(delta, 'target_accuracy_delta')})" if delta is not None else ""
                )
                cells.append(Cell(text, acc))
                if acc is not None:
                    means.append(acc)
        m = sum(means) / len(means) if means else None
        cells.append(Cell(data.text(m, "mean_target_accuracy"), m))
        rows.append(cells)
    for col in range(1, len(columns)):
        highlight(rows, col, "high")
    return Table(
        "Domain shift: source validation and target-domain accuracy",
        columns,
        rows,
        note="source → target: accuracy on the target domain of a model trained and compressed on the "
        "source; in brackets its change in percentage points against the baseline of the same source.",
    )


# ---------------------------------------------------------------- classes


@renderer("classes")
def classes(data: ProbeData) -> Section:
    section = Section("Probe: classes", note=_doc("classes"))
    spec: list[tuple[str, str, dict[str, Any], str | None]] = [
        ("Accuracy", "accuracy", {}, "high"),
        ("Δ accuracy", "accuracy_delta", {}, "high"),
        ("95% CI of Δ", "", {}, None),
        ("Flips", "flip_rate", {}, "low"),
        ("Correct → wrong", "flips_correct_to_wrong", {}, "low"),
        ("Wrong → correct", "flips_wrong_to_correct", {}, None),
        ("McNemar p", "mcnemar_p", {}, None),
        ("Worst class Δ", "max_class_drop", {}, "high"),
        ("Mean confidence", "mean_confidence", {}, None),
        ("Confidence on flips", "mean_confidence_flipped", {}, None),
        ("ECE", "ece", {}, "low"),
        ("NLL", "nll", {}, "low"),
    ]
    rows: list[list[Cell]] = []
    for v in data.variants:
        if data.value(v, "accuracy") is None:
            continue
        cells = [Cell(v)]
        for _, metric, params, _ in spec:
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
                text = (
                    "–"
                    if lo is None or hi is None
                    else f"[{data.text(lo, 'accuracy_delta_ci_low', digits=2)}, "
                    f"{data.text(hi, 'accuracy_delta_ci_high', digits=2)}]"
                )
                cells.append(Cell(text, lo))
                continue
            val = data.value(v, metric, **params)
            cells.append(Cell(data.text(val, metric), val))
        rows.append(cells)
    for i, (_, _, _, better) in enumerate(spec, start=1):
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
                    f"({format_value(float(r['baseline_confidence']), 'fraction', digits=0)}), "
                    f"variant {r['variant_prediction']} "
                    f"({format_value(float(r['variant_confidence']), 'fraction', digits=0)})",
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


# ---------------------------------------------------------------- explain


@renderer("explain")
def explain(data: ProbeData) -> Section:
    """Seed 004's metrics table, seed 003's drift, and seed 000's Figure 5: a CAM grid with the
    samples as rows and the original image then every variant as columns, one grid per method."""
    section = Section("Probe: explain", note=_doc("explain"))
    methods = data.distinct("adcc", "method") or data.distinct("average_drop", "method")
    spec: list[Column] = [
        ("Average Drop", "average_drop", "low"),
        ("Increase in Conf.", "increase_in_confidence", "high"),
        ("Coherency", "coherency", "high"),
        ("Coherency (SSIM)", "coherency_ssim", "high"),
        ("Complexity", "complexity", "low"),
        ("ADCC", "adcc", "high"),
        ("Drift: MAD", "saliency_mad", "low"),
        ("Drift: Spearman", "saliency_spearman", "high"),
        ("Drift: top-k IoU", "saliency_topk_iou", "high"),
    ]
    for method in methods:
        section.add(
            metric_table(
                data,
                f"Saliency quality and drift: {method}",
                spec,
                where={"method": method},
                label=lambda v: v + (" (surrogate)" if data.value(v, "surrogate") == 1.0 else ""),
                note="Poppi et al. 2021 on softmax probabilities (model in eval mode, maps at input "
                "resolution): lower Average Drop and Complexity, higher Coherency and ADCC are better. "
                "Drift compares each variant's maps with the baseline's on the same images (seed 003). "
                "(surrogate): an int8 variant explained through its fake-quant surrogate; its "
                "confidences come from the int8 model.",
            )
        )
    for method in data.distinct_table("grid", "method"):
        grid = _cam_grid(data, method)
        if grid is not None:
            section.add(grid)
    notes = [
        [Cell(v), Cell(str(r.get("method", r.get("layer", "")))), Cell(str(r["note"]))]
        for v in data.variants
        for r in data.tables.get(v, {}).get("notes", [])
    ]
    if notes:
        section.add(Table("Notes", ["Variant", "Method", "Note"], notes))
    return section


def _cam_grid(data: ProbeData, method: str) -> Table | None:
    by_variant = {
        v: {int(r["index"]): r for r in data.tables.get(v, {}).get("grid", []) if r["method"] == method}
        for v in data.variants
    }
    by_variant = {v: rows for v, rows in by_variant.items() if rows}
    if not by_variant:
        return None
    indices = list(next(iter(by_variant.values())))
    rows: list[list[Cell]] = []
    for idx in indices:
        first = next(r[idx] for r in by_variant.values() if idx in r)
        cells = [Cell(f"{first['label']} (#{idx})"), Cell("", image=str(first["image"]))]
        for v in by_variant:
            r = by_variant[v].get(idx)
            cells.append(Cell("" if r else "–", image=str(r["overlay"]) if r else None))
        rows.append(cells)
    layers = {v: next(iter(r.values())).get("layer", "") for v, r in by_variant.items()}
    return Table(
        f"Saliency maps: {method} (samples × variants, the input first)",
        ["Sample", "Input", *by_variant],
        rows,
        note="Layers: " + "; ".join(f"{v}: {layer}" for v, layer in layers.items() if layer),
    )


# ---------------------------------------------------------------- embedding


@renderer("embedding")
def embedding(data: ProbeData) -> Section:
    section = Section("Probe: embedding", note=_doc("embedding"))
    spec: list[Column] = [
        ("Silhouette (t-SNE)", "silhouette", "high"),
        ("Silhouette (features)", "silhouette_features", "high"),
        ("k-NN acc (t-SNE)", "knn_accuracy_embedding", "high"),
        ("k-NN acc (features)", "knn_accuracy_features", "high"),
        ("Trustworthiness", "trustworthiness", "high"),
        ("k-NN acc on adversarial", "adversarial_knn_accuracy_features", "high"),
    ]
    combos: list[tuple[str, str]] = []
    for r in data.records:
        if r["metric"] == "silhouette" and (r["layer"], r["inputs"]) not in combos:
            combos.append((r["layer"], r["inputs"]))
    for layer, inputs in combos:
        section.add(
            metric_table(
                data,
                f"Feature-space structure: layer {layer}, {inputs} inputs",
                spec,
                where={"layer": layer, "inputs": inputs},
                note="Silhouette with the classes as clusters; k-NN accuracy in the 2-D t-SNE embedding and "
                "in the original features; trustworthiness of the embedding (Venna & Kaski 2001).",
            )
        )
    for layer in data.distinct_table("tsne", "layer"):
        section.add(tsne_grid(data.tables, layer))
    return section
