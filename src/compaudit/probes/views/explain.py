"""The explain probe's section: seed 004's saliency metrics, seed 003's drift from the baseline,
and seed 000's Figure 5 (a grid of class activation maps, samples by variants)."""

from __future__ import annotations

from compaudit.elements import Cell, Column, Section, SectionData, Table, metric_table

#: the metrics table of one saliency method: title, metric, which end is better
_METRICS: list[Column] = [
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


def section(data: SectionData) -> Section:
    """Seed 004's metrics table, seed 003's drift, and seed 000's Figure 5: a CAM grid with the
    samples as rows and the original image then every variant as columns, one grid per method."""
    out = Section(f"Probe: {data.probe}", note=data.doc)
    methods = data.distinct("adcc", "method") or data.distinct("average_drop", "method")
    for method in methods:
        out.add(
            metric_table(
                data,
                f"Saliency quality and drift: {method}",
                _METRICS,
                where={"method": method},
                label=lambda v: v + (" (surrogate)" if data.value(v, "surrogate") == 1.0 else ""),
                note="Poppi et al. 2021 on softmax probabilities (model in eval mode, maps at input "
                "resolution): lower Average Drop and Complexity, higher Coherency and ADCC are better. "
                "Drift compares each variant's maps with the baseline's on the same images (seed 003). "
                "(surrogate): a deployed variant without a gradient (int8 kernels, an ONNX Runtime or "
                "OpenVINO file) explained through its surrogate (the fake-quant model of a torch int8 "
                "variant, else the float model the file came from); its confidences come from the "
                "deployed model.",
            )
        )
    for method in data.distinct_table("grid", "method"):
        out.add(cam_grid(data, method))
    notes = [
        [Cell(v), Cell(str(r.get("method", r.get("layer", "")))), Cell(str(r["note"]))]
        for v in data.variants
        for r in data.tables.get(v, {}).get("notes", [])
    ]
    if notes:
        out.add(Table("Notes", ["Variant", "Method", "Note"], notes))
    return out


def cam_grid(data: SectionData, method: str) -> Table | None:
    """The saliency maps of ``method``: one row per sample (its label and input image), one column
    per variant that has maps of it (None: no variant has)."""
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
