"""The shift probe's section: seed 001's domain-shift tables (source validation and each
source → target accuracy) and the common-corruption benchmark (Hendrycks & Dietterich 2019)."""

from __future__ import annotations

from collections import defaultdict

from compaudit import imaging
from compaudit.elements import Cell, Figure, Section, SectionData, Table, highlight, identity_of, to_csv
from compaudit.results import VariantId
from compaudit.units import scale


def section(data: SectionData) -> Section:
    """The domain table when targets were measured, the corruption table and curve when
    corruptions were."""
    out = Section(f"Probe: {data.probe}", note=data.doc)
    if data.distinct("target_accuracy", "domain"):
        out.add(domain_table(data))
    corruptions = data.distinct("corruption_mean_accuracy", "corruption")
    if corruptions:
        out.add(corruption_table(data, corruptions))
        out.add(accuracy_vs_severity(data))
    return out


def corruption_table(data: SectionData, corruptions: list[str]) -> Table:
    """Per variant: clean accuracy, mean corruption accuracy, mCE and relative mCE, and each
    corruption's accuracy averaged over severities."""
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
    return Table(
        "Common corruptions: accuracy averaged over severities",
        columns,
        rows,
        note="mCE: corruption errors summed over severities, divided by the baseline's, averaged "
        "over corruption types (1.00x = as robust as the baseline; lower is better; Hendrycks & "
        "Dietterich print 100%). Relative mCE first subtracts each model's clean error.",
    )


def _trained_on(data: SectionData) -> str:
    """The domain a single-source run trained on: the param ``source`` of ``source_accuracy``."""
    rec = next((r for r in data.records if r["metric"] == "source_accuracy"), {})
    return str(rec.get("source", "source"))


def domain_table(data: SectionData) -> Table:
    """Seed 001's Tables 1-2: the source's validation accuracy and each source -> target pair's
    accuracy, with its change against the baseline of the same source.

    Rows are the variants' names, column groups their source and seed (the records' identity
    columns): ``amazon/int8`` and ``webcam/int8`` are one row."""
    ids: dict[str, VariantId] = {}
    sources: list[str] = []
    names: list[str] = []
    pairs: list[tuple[str, str]] = []
    for r in data.records:
        vid = ids.setdefault(r["variant"], identity_of(r))
        src, short = vid.prefix, vid.name
        if src not in sources:
            sources.append(src)
        if short not in names:
            names.append(short)
        if r["metric"] == "target_accuracy" and (src, r["domain"]) not in pairs:
            pairs.append((src, r["domain"]))
    label = {(vid.prefix, vid.name): v for v, vid in ids.items()}
    source_label = {src: src or _trained_on(data) for src in sources}
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
            v = label.get((src, short))
            val = None if v is None else data.value(v, "source_accuracy")
            cells.append(Cell(data.text(val, "source_accuracy"), val))
            for s, t in pairs:
                if s != src:
                    continue
                acc = None if v is None else data.value(v, "target_accuracy", domain=t)
                delta = None if v is None else data.value(v, "target_accuracy_delta", domain=t)
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


def accuracy_vs_severity(data: SectionData) -> Figure | None:
    """Mean accuracy over corruption types against severity, one line per variant (clean at 0)."""
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    for r in data.records:
        if r["metric"] == "severity_accuracy":
            by_variant[r["variant"]][int(r["severity"])] = float(r["value"])
        elif r["metric"] == "clean_accuracy":
            by_variant[r["variant"]][0] = float(r["value"])
    if not by_variant:
        return None
    k, suffix = scale(data.unit("severity_accuracy"))
    plt = imaging.plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    rows = []
    for v, by_sev in by_variant.items():
        xs = sorted(by_sev)
        ax.plot(xs, [k * by_sev[x] for x in xs], marker="o", label=v)
        rows += [{"variant": v, "severity": x, "accuracy": by_sev[x]} for x in xs]
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel(f"accuracy{suffix}, mean over corruptions")
    ax.set_title("Accuracy under common corruptions vs severity")
    ax.set_xticks(range(0, 6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(by_variant) > 6 else 1, loc="best")
    uri = imaging.png(fig)
    plt.close(fig)
    return Figure("Accuracy under common corruptions vs severity", uri, to_csv(rows))
