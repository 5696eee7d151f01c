"""The classes probe's section: prediction flips, their significance and calibration against the
baseline (seed 003), per-class changes, confusion differences, reliability diagrams and the
samples compression changed most (Hooker et al. 2019)."""

from __future__ import annotations

import math
from typing import Any

from compaudit import imaging
from compaudit.elements import Cell, Figure, Section, SectionData, Table, highlight, to_csv
from compaudit.units import format_value, scale

#: the flips table: title, metric ("" for the confidence interval of Δ), params, which end is better
_FLIPS: list[tuple[str, str, dict[str, Any], str | None]] = [
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


def section(data: SectionData) -> Section:
    """The flips table, then the per-class heatmap, the confusion differences, the reliability
    diagrams and the exemplars."""
    out = Section(f"Probe: {data.probe}", note=data.doc)
    out.add(flips_table(data))
    out.add(class_delta_heatmap(data))
    out.add(confusion_deltas(data.tables, [str(c) for c in data.distinct("class_accuracy", "class")]))
    out.add(reliability_diagram(data.tables))
    out.add(exemplars(data))
    return out


def _first(data: SectionData, variant: str, metric: str) -> Any:
    return next(
        (r["value"] for r in data.records if r["variant"] == variant and r["metric"] == metric),
        None,
    )


def flips_table(data: SectionData) -> Table:
    """Per variant: accuracy and its change, flips, McNemar's p, the worst class, confidence,
    calibration."""
    rows: list[list[Cell]] = []
    for v in data.variants:
        if data.value(v, "accuracy") is None:
            continue
        cells = [Cell(v)]
        for _, metric, params, _ in _FLIPS:
            if not metric:
                lo = _first(data, v, "accuracy_delta_ci_low")
                hi = _first(data, v, "accuracy_delta_ci_high")
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
    for i, (_, _, _, better) in enumerate(_FLIPS, start=1):
        highlight(rows, i, better)
    return Table(
        "Prediction flips, significance and confidence against the baseline",
        ["Variant"] + [s[0] for s in _FLIPS],
        rows,
        note="Flips: share of test samples whose predicted class changed. McNemar: exact binomial test "
        "below 25 discordant samples, chi-square with continuity correction above. CI: paired "
        "bootstrap percentile interval. ECE: 15 equal-width confidence bins.",
    )


def exemplars(data: SectionData) -> Table | None:
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


def class_delta_heatmap(data: SectionData) -> Figure | None:
    """Variants x classes: each class's accuracy change against the baseline, in points (seed 003)."""
    deltas = [r for r in data.records if r["metric"] == "class_accuracy_delta"]
    if not deltas:
        return None
    variants = list(dict.fromkeys(r["variant"] for r in deltas))
    classes = list(dict.fromkeys(str(r["class"]) for r in deltas))
    k, suffix = scale(data.unit("class_accuracy_delta"))
    grid = [[math.nan] * len(classes) for _ in variants]
    for r in deltas:
        grid[variants.index(r["variant"])][classes.index(str(r["class"]))] = k * float(r["value"])
    finite = [abs(x) for row in grid for x in row if not math.isnan(x)]
    lim = max(max(finite, default=0.01 * k), 0.01 * k)
    plt = imaging.plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) + 2.5), 0.42 * len(variants) + 1.6))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(
        range(len(classes)),
        classes,
        rotation=45 if len(classes) > 12 else 0,
        ha="right" if len(classes) > 12 else "center",
    )
    ax.set_yticks(range(len(variants)), variants)
    ax.set_xlabel("class")
    if len(classes) * len(variants) <= 400:
        for i, row in enumerate(grid):
            for j, x in enumerate(row):
                if not math.isnan(x):
                    ax.text(
                        j,
                        i,
                        f"{x:+.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if abs(x) < 0.6 * lim else "white",
                    )
    fig.colorbar(im, ax=ax, label=f"class accuracy change{suffix}")
    ax.set_title("Per-class accuracy change against the baseline")
    uri = imaging.png(fig)
    plt.close(fig)
    rows = [{"variant": r["variant"], "class": r["class"], "accuracy_delta": r["value"]} for r in deltas]
    return Figure("Per-class accuracy change against the baseline", uri, to_csv(rows))


def reliability_diagram(tables: dict[str, dict[str, list[dict[str, Any]]]]) -> Figure | None:
    """Small multiples, one per variant: accuracy per confidence bin (bars) against the diagonal of
    perfect calibration, the baseline's bins as a grey line (Guo et al. 2017)."""
    series: dict[str, list[dict[str, Any]]] = {}
    base: list[dict[str, Any]] = []
    for v, t in tables.items():
        rows = [r for r in t.get("reliability", []) if int(r["count"]) > 0]
        own = [r for r in rows if r.get("model", "variant") == "variant"]
        if own:
            series[v] = own
        if not base:
            base = [r for r in rows if r.get("model") == "baseline"]
    if not series:
        return None
    plt = imaging.plt()
    n = len(series)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.9 * cols, 2.7 * nrows), squeeze=False, sharey=True)
    # the bins' confidences and accuracies are shares (the probe's ``ece`` and ``accuracy`` units)
    k, suffix = scale("fraction")
    csv_rows = []
    for ax, (v, rows) in zip(axes.flat, series.items(), strict=False):
        lows = [k * float(r["bin_low"]) for r in rows]
        widths = [k * (float(r["bin_high"]) - float(r["bin_low"])) for r in rows]
        ax.bar(
            lows,
            [k * float(r["accuracy"]) for r in rows],
            width=widths,
            align="edge",
            color="#2e5e8c",
            alpha=0.8,
            label="accuracy",
        )
        ax.plot([0, k], [0, k], color="black", linestyle="--", linewidth=0.8)
        if base:
            ax.plot(
                [k * float(r["confidence"]) for r in base],
                [k * float(r["accuracy"]) for r in base],
                color="grey",
                linewidth=1,
                marker=".",
                markersize=3,
                label="baseline",
            )
        ax.set_title(v, fontsize=8)
        ax.set_xlim(0, k)
        ax.set_ylim(0, k)
        ax.set_xlabel(f"confidence{suffix}", fontsize=7)
        ax.set_ylabel(f"accuracy{suffix}", fontsize=7)
        ax.tick_params(labelsize=6)
        csv_rows += [{"variant": v, **{k: r[k] for k in r if k != "model"}} for r in rows]
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.suptitle("Reliability diagrams: accuracy per confidence bin (dashed: perfect calibration)")
    fig.tight_layout()
    uri = imaging.png(fig)
    plt.close(fig)
    return Figure("Reliability diagrams", uri, to_csv(csv_rows))


def confusion_deltas(
    tables: dict[str, dict[str, list[dict[str, Any]]]], classes: list[str] | None = None
) -> Figure | None:
    """Small multiples: each variant's confusion matrix minus the baseline's (counts)."""
    mats: dict[str, list[dict[str, Any]]] = {
        v: t["confusion"]
        for v, t in tables.items()
        if t.get("confusion")
        and any(int(r["delta"]) != 0 or r["count"] != r["baseline"] for r in t["confusion"])
    }
    if not mats:
        return None
    seen = dict.fromkeys(
        str(r[k])
        for rows in tables.values()
        for r in rows.get("confusion", [])
        for k in ("true", "predicted")
    )
    # the data set's class order where known; classes never predicted nor seen go last
    classes = [c for c in (classes or []) if c in seen] + [c for c in seen if c not in (classes or [])]
    if len(classes) > 40:
        return None
    plt = imaging.plt()
    n = len(mats)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 3.0 * nrows), squeeze=False)
    lim = max(1, max(abs(int(r["delta"])) for rows in mats.values() for r in rows))
    csv_rows = []
    im = None
    for ax, (v, rows) in zip(axes.flat, mats.items(), strict=False):
        grid = [[0] * len(classes) for _ in classes]
        for r in rows:
            grid[classes.index(str(r["true"]))][classes.index(str(r["predicted"]))] = int(r["delta"])
            csv_rows.append({"variant": v, **r})
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_title(v, fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ticks = range(len(classes)) if len(classes) <= 12 else []
        ax.set_xticks(ticks, [classes[i] for i in ticks], fontsize=6)
        ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="count change against the baseline")
    fig.suptitle("Confusion matrix minus the baseline's (blue: more, red: fewer)")
    uri = imaging.png(fig)
    plt.close(fig)
    return Figure("Confusion matrix differences", uri, to_csv(csv_rows))
