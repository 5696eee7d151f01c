"""Figures of the report, rendered with matplotlib (Agg) to inline PNG data URIs: the page stays
one self-contained file."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from typing import Any

from compaudit.report.elements import Figure, metric_unit, to_csv
from compaudit.units import scale


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def robustness_curves(records: list[dict[str, Any]]) -> list[Figure]:
    """One figure per attack with two or more strengths: robust accuracy against eps, one line per
    variant, on the per-sample worst case over routes (or the only route)."""
    plt = _plt()

    # (attack) -> variant -> eps -> (route -> value)
    data: dict[str, dict[str, dict[float, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["probe"] != "adversarial" or r["metric"] != "robust_accuracy" or "sanity" in str(r.get("route")):
            continue
        data[r["attack"]][r["variant"]].setdefault(float(r["eps"]), {})[str(r["route"])] = float(r["value"])
    k, suffix = scale(metric_unit(records, "adversarial", "robust_accuracy"))
    figures: list[Figure] = []
    for attack, by_variant in data.items():
        if max((len(v) for v in by_variant.values()), default=0) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for variant, by_eps in by_variant.items():
            xs = sorted(by_eps)
            ys = []
            for e in xs:
                routes = by_eps[e]
                ys.append(routes.get("worst", min(routes.values())))
            ax.plot(xs, [k * y for y in ys], marker="o", label=variant)
        ax.set_xlabel("eps (attack strength)")
        ax.set_ylabel(f"robust accuracy{suffix}, worst route")
        ax.set_title(f"{attack}: robust accuracy vs eps")
        ax.set_ylim(-0.02 * k, 1.02 * k)
        if (
            all(e > 0 for v in by_variant.values() for e in v)
            and max(max(v) for v in by_variant.values())
            / max(min(min(v) for v in by_variant.values()), 1e-12)
            > 50
        ):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(by_variant) > 6 else 1, loc="best")
        rows = [
            {"variant": v, "eps": e, "robust_accuracy": routes.get("worst", min(routes.values()))}
            for v, by_eps in by_variant.items()
            for e, routes in sorted(by_eps.items())
        ]
        figures.append(Figure(f"{attack}: robust accuracy vs eps", _png(fig), to_csv(rows)))
        plt.close(fig)
    return figures


def accuracy_vs_severity(records: list[dict[str, Any]]) -> Figure | None:
    """Mean accuracy over corruption types against severity, one line per variant (clean at 0)."""
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r["metric"] == "severity_accuracy":
            by_variant[r["variant"]][int(r["severity"])] = float(r["value"])
        elif r["metric"] == "clean_accuracy":
            by_variant[r["variant"]][0] = float(r["value"])
    if not by_variant:
        return None
    k, suffix = scale(metric_unit(records, "shift", "severity_accuracy"))
    plt = _plt()
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
    uri = _png(fig)
    plt.close(fig)
    return Figure("Accuracy under common corruptions vs severity", uri, to_csv(rows))


def class_delta_heatmap(records: list[dict[str, Any]]) -> Figure | None:
    """Variants x classes: each class's accuracy change against the baseline, in points (seed 003)."""
    deltas = [r for r in records if r["metric"] == "class_accuracy_delta"]
    if not deltas:
        return None
    variants = list(dict.fromkeys(r["variant"] for r in deltas))
    classes = list(dict.fromkeys(str(r["class"]) for r in deltas))
    k, suffix = scale(metric_unit(records, "classes", "class_accuracy_delta"))
    grid = [[math.nan] * len(classes) for _ in variants]
    for r in deltas:
        grid[variants.index(r["variant"])][classes.index(str(r["class"]))] = k * float(r["value"])
    finite = [abs(x) for row in grid for x in row if not math.isnan(x)]
    lim = max(max(finite, default=0.01 * k), 0.01 * k)
    plt = _plt()
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
    uri = _png(fig)
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
    plt = _plt()
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
    uri = _png(fig)
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
    plt = _plt()
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
    uri = _png(fig)
    plt.close(fig)
    return Figure("Confusion matrix differences", uri, to_csv(csv_rows))


def tsne_grid(tables: dict[str, dict[str, list[dict[str, Any]]]], layer: str) -> Figure | None:
    """One t-SNE panel per variant (same style, one colour per class, one legend), clean points as
    dots and adversarial ones as crosses (seed 000 Figure 4, seed 002 Figure 3)."""
    series = {
        v: [r for r in t.get("tsne", []) if r.get("layer") == layer]
        for v, t in tables.items()
        if t.get("tsne")
    }
    series = {v: rows for v, rows in series.items() if rows}
    if not series:
        return None
    classes = list(dict.fromkeys(str(r["label"]) for rows in series.values() for r in rows))
    try:
        classes.sort(key=int)
    except ValueError:
        classes.sort()
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    n = len(series)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.1 * cols, 3.0 * nrows + 0.6), squeeze=False)
    csv_rows = []
    has_adv = any(bool(r.get("adversarial")) for rows in series.values() for r in rows)
    for ax, (v, rows) in zip(axes.flat, series.items(), strict=False):
        for adv, marker, size in ((False, "o", 6), (True, "x", 10)):
            pts = [r for r in rows if bool(r.get("adversarial")) == adv]
            if not pts:
                continue
            colors = [cmap(classes.index(str(r["label"])) % cmap.N) for r in pts]
            ax.scatter(
                [r["x"] for r in pts],
                [r["y"] for r in pts],
                c=colors,
                s=size,
                marker=marker,
                linewidths=0.6,
                alpha=0.8,
            )
        ax.set_title(v, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        csv_rows += [{"variant": v, **r} for r in rows]
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", color=cmap(i % cmap.N), label=c)
        for i, c in enumerate(classes[:20])
    ]
    if has_adv:
        handles += [
            Line2D([], [], marker="o", linestyle="", color="grey", label="clean"),
            Line2D([], [], marker="x", linestyle="", color="grey", label="adversarial"),
        ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 12), fontsize=7, frameon=False)
    fig.suptitle(f"t-SNE of layer {layer}, one panel per variant")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    uri = _png(fig)
    plt.close(fig)
    return Figure(f"t-SNE of layer {layer}", uri, to_csv(csv_rows))
