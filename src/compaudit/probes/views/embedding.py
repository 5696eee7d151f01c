"""The embedding probe's section: feature-space structure per layer and inputs (silhouette, k-NN
accuracy, trustworthiness) and a t-SNE panel per variant (seed 000 Figure 4, seed 002 Figure 3)."""

from __future__ import annotations

import math
from typing import Any

from compaudit import imaging
from compaudit.elements import Column, Figure, Section, SectionData, metric_table, to_csv

#: the structure table of one (layer, inputs): title, metric, which end is better
_METRICS: list[Column] = [
    ("Silhouette (t-SNE)", "silhouette", "high"),
    ("Silhouette (features)", "silhouette_features", "high"),
    ("k-NN acc (t-SNE)", "knn_accuracy_embedding", "high"),
    ("k-NN acc (features)", "knn_accuracy_features", "high"),
    ("Trustworthiness", "trustworthiness", "high"),
    ("k-NN acc on adversarial", "adversarial_knn_accuracy_features", "high"),
]


def section(data: SectionData) -> Section:
    """One structure table per (layer, inputs) measured, then one t-SNE grid per layer."""
    out = Section(f"Probe: {data.probe}", note=data.doc)
    combos: list[tuple[str, str]] = []
    for r in data.records:
        if r["metric"] == "silhouette" and (r["layer"], r["inputs"]) not in combos:
            combos.append((r["layer"], r["inputs"]))
    for layer, inputs in combos:
        out.add(
            metric_table(
                data,
                f"Feature-space structure: layer {layer}, {inputs} inputs",
                _METRICS,
                where={"layer": layer, "inputs": inputs},
                note="Silhouette with the classes as clusters; k-NN accuracy in the 2-D t-SNE embedding and "
                "in the original features; trustworthiness of the embedding (Venna & Kaski 2001).",
            )
        )
    for layer in data.distinct_table("tsne", "layer"):
        out.add(tsne_grid(data.tables, layer))
    return out


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
    plt = imaging.plt()
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
    uri = imaging.png(fig)
    plt.close(fig)
    return Figure(f"t-SNE of layer {layer}", uri, to_csv(csv_rows))
