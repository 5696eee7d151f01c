"""The top of the report: the headline table (one row per variant, the numbers a reader compares
first), the Pareto view of size and latency against clean and robust accuracy, the curves of every
summary metric against the compression level of each sweep (seed 002, Figure 1), and the warnings
grouped by variant.

Everything here is computed from stored metric records, so an old run folder gets the same page.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compaudit.elements import Cell, Figure, Table, highlight, to_csv
from compaudit.imaging import plt as _plt
from compaudit.imaging import png as _png
from compaudit.probes import PROBES
from compaudit.records import RecordTable
from compaudit.results import Declared, ResultWarning, Role, Severity, VariantId
from compaudit.units import format_spread, scale


def declared(role: Role, probes: Sequence[str] | None = None) -> list[Declared]:
    """Every view in ``role`` that the registered probes declare (only those of ``probes`` when
    given), ordered by the views' ``order``, ties in the probes' order."""
    names = list(probes) if probes is not None else PROBES.names()
    out = [d for p in names if p in PROBES for d in PROBES.get(p).views(p, role)]
    return sorted(out, key=lambda d: d.view.order)


def view_value(records: RecordTable, d: Declared, variant: str) -> float | None:
    """The value a view shows for ``variant`` (see :class:`compaudit.results.View` for the rules)."""
    view, metric = d.view, d.spec.name
    if view.min_of:
        known = [x for m in (metric, *view.min_of) if (x := records.value(variant, d.probe, m)) is not None]
        return min(known) if known else None
    params = dict(view.params)
    if view.prefer:
        candidates = records.where(probe=d.probe, metric=metric, **params)
        if any(r.matches(**view.prefer) for r in candidates):
            params.update(view.prefer)
        elif candidates:  # the first measured, the same for every variant
            params.update({k: candidates[0].params.get(k) for k in view.prefer})
    if view.smallest is not None:
        key = view.smallest
        hits = [
            (r.params[key], r.value)
            for r in records.where(variant=variant, probe=d.probe, metric=metric, **params)
            if r.params.get(key) is not None and r.value is not None
        ]
        return min(hits)[1] if hits else None
    return records.value(variant, d.probe, metric, **params)


@dataclass
class Overview:
    """What the top of the page shows."""

    table: Table | None
    pareto: Figure | None
    #: the variants on the three-objective front (size, clean accuracy, robust accuracy)
    front: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)


def pareto_front(points: Mapping[str, tuple[float, ...]], senses: Sequence[str]) -> list[str]:
    """The names whose point no other point dominates. ``senses[i]`` says whether objective ``i`` is
    better ``"low"`` or ``"high"``; a point dominates another when it is at least as good in every
    objective and strictly better in one."""
    signed = {
        n: tuple(x if s == "low" else -x for x, s in zip(p, senses, strict=True)) for n, p in points.items()
    }

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(
            x < y for x, y in zip(a, b, strict=True)
        )

    return [n for n, p in signed.items() if not any(dominates(q, p) for m, q in signed.items() if m != n)]


def variant_warnings(
    stored: dict[str, Any], keys: Sequence[tuple[str, str, str]], skipped: dict[str, list[str]]
) -> dict[str, list[ResultWarning]]:
    """Warnings grouped by variant (results' warnings and skipped layers), each text once."""
    out: dict[str, list[ResultWarning]] = {}

    def put(v: str, w: ResultWarning) -> None:
        if all(x.text != w.text for x in out.setdefault(v, [])):
            out[v].append(w)

    for v, _, k in keys:
        res = stored.get(k)
        if res is not None and res.status != "error":
            for w in res.warnings:
                put(v, w if isinstance(w, ResultWarning) else ResultWarning.from_json(w))
    for v, what in skipped.items():
        for s in what:
            put(v, ResultWarning("skipped_layer", f"{v}: skipped {s}", Severity.INFO, v))
    return {v: ws for v, ws in out.items() if ws}


def seed_groups(
    variants: Sequence[str], identities: Mapping[str, VariantId] | None = None
) -> dict[str, list[str]]:
    """Variants grouped across seeds by their identity (``seed0/int8`` and ``seed1/int8``, both
    named ``int8``, → ``int8``; the source domain kept: ``amazon/int8``), in order of first
    appearance. A variant without a known identity is a group of its own."""
    ids = identities or {}
    groups: dict[str, list[str]] = {}
    for v in variants:
        ident = ids.get(v)
        groups.setdefault(ident.group if ident is not None else v, []).append(v)
    return groups


def _mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [float(x) for x in xs if x is not None and not math.isnan(x)]
    if not known:
        return None, None
    mean = sum(known) / len(known)
    if len(known) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in known) / (len(known) - 1))


def build_overview(
    records: RecordTable,
    variants: Sequence[str],
    warnings: dict[str, list[str]],
    groups: Mapping[str, Sequence[str]] | None = None,
    baselines: Collection[str] = (),
) -> Overview:
    """The headline table and the Pareto view. With ``groups`` (a variant's runs under several
    seeds, see :func:`seed_groups`) a row is a group: the mean of its runs ± their sample std."""
    groups = groups or {v: [v] for v in variants}
    probes = records.probes()
    headline = declared(Role.HEADLINE, probes)
    pareto = declared(Role.PARETO, probes)
    per_run = {v: {h.key: view_value(records, h, v) for h in headline} for vs in groups.values() for v in vs}
    values: dict[str, dict[str, float | None]] = {}
    stds: dict[str, dict[str, float | None]] = {}
    for g, members in groups.items():
        values[g], stds[g] = {}, {}
        for h in headline:
            values[g][h.key], stds[g][h.key] = _mean_std([per_run[m][h.key] for m in members])
    warnings = {g: [w for m in members for w in warnings.get(m, [])] for g, members in groups.items()}
    # a collapsed model's numbers measure noise (the accuracy probe's ``collapsed`` metric): it
    # gets no highlight and no place on the front
    flags = {(d.probe, d.spec.name) for d in declared(Role.DISQUALIFIES, probes)}
    collapsed = {r.variant for r in records if (r.probe, r.metric) in flags and r.value}
    broken = {g for g, members in groups.items() if collapsed.intersection(members)}
    seeded = any(len(m) > 1 for m in groups.values())
    # rows for what has headline numbers (a sweep's selection record is not a variant)
    variants = [g for g in groups if any(x is not None for x in values[g].values())]
    present = [h for h in headline if any(values[v][h.key] is not None for v in variants)]
    if not present:
        return Overview(None, None, warnings=warnings)
    keys = {h.key for h in present}
    fronts = [d for d in pareto if d.view.front and d.key in keys]
    objectives = [d.key for d in fronts]
    senses = [d.spec.better or "high" for d in fronts]
    points = {
        v: tuple(float(x) for x in (values[v][k] for k in objectives) if x is not None)
        for v in variants
        if v not in broken and all(values[v][k] is not None for k in objectives)
    }
    front = pareto_front(points, senses) if len(objectives) >= 2 else []

    units = {h.key: h.spec.unit for h in headline}
    rows: list[list[Cell]] = []
    for v in variants:
        row = [Cell(f"{v} (collapsed)" if v in broken else v)]
        for h in present:
            x = values[v][h.key]
            sd = stds.get(v, {}).get(h.key)
            unit = units[h.key]
            text = h.spec.format(x) + (f" ± {format_spread(sd, unit)}" if sd is not None else "")
            row.append(Cell(text, x))
        if len(objectives) >= 2:
            row.append(Cell("✓" if v in front else "", 1.0 if v in front else 0.0))
        n = len(warnings.get(v, []))
        row.append(Cell(f"⚠ {n}" if n else "", float(n), "warn" if n else ""))
        rows.append(row)
    healthy = [r for r, v in zip(rows, variants, strict=True) if v not in broken]
    for i, h in enumerate(present, start=1):
        highlight(healthy, i, h.spec.better)
    columns = ["Variant"] + [h.title for h in present]
    notes = [f"{h.title}: {h.view.note}" for h in present if h.view.note]
    if len(objectives) >= 2:
        columns.append("Pareto")
        notes.append(
            "Pareto: no other variant is at least as good in "
            + ", ".join(d.view.axis or d.title for d in fronts)
            + " and better in one"
        )
    columns.append("Warnings")
    if seeded:
        n = max(len(m) for m in groups.values())
        notes.insert(0, f"each row: mean ± sample std over its runs under {n} seeds (warnings: of all runs)")
    table = Table(
        "Overview" + (" (mean ± std over seeds)" if seeded else ""),
        columns,
        rows,
        note="Green: best of the column; red: worst (collapsed variants left out of both and of the "
        "front). " + "; ".join(notes) + ".",
    )
    axes = [d for d in pareto if d.key in keys]
    return Overview(table, pareto_figure(values, variants, front, axes, broken, baselines), front, warnings)


def pareto_figure(
    values: dict[str, dict[str, float | None]],
    variants: Sequence[str],
    front: Sequence[str],
    axes_declared: Sequence[Declared],
    broken: Collection[str] = (),
    baselines: Collection[str] = (),
) -> Figure | None:
    """Cost against quality, one panel per pair measured: each declared Pareto axis whose metric is
    better low (size, latency) on x against each better high (clean and robust accuracy) on y.
    Filled markers: on the front of the front objectives; the step line: each panel's own
    two-objective front (collapsed variants drawn, never on a front). Each axis is scaled and
    labelled from its metric's declared unit; ``baselines`` are drawn as stars."""
    axes_of = {d.key: (d.view.axis or d.title, *scale(d.spec.unit)) for d in axes_declared}
    front_keys = [d.key for d in axes_declared if d.view.front]
    units = {d.key: d.spec.unit for d in axes_declared}
    xs_keys = [d.key for d in axes_declared if d.spec.better == "low"]
    ys_keys = [d.key for d in axes_declared if d.spec.better == "high"]
    pairs = [
        (x, y)
        for x in xs_keys
        for y in ys_keys
        if sum(values[v][x] is not None and values[v][y] is not None for v in variants) >= 2
    ]
    if not pairs:
        return None
    plt = _plt()
    ncols = 2 if len(pairs) > 1 else 1
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 4.2 * nrows), squeeze=False)
    for ax, (xk, yk) in zip(axes.flat, pairs, strict=False):
        pts = {
            v: (float(values[v][xk] or 0.0) * axes_of[xk][1], float(values[v][yk] or 0.0) * axes_of[yk][1])
            for v in variants
            if values[v][xk] is not None and values[v][yk] is not None
        }
        own = pareto_front({v: p for v, p in pts.items() if v not in broken}, ["low", "high"])
        line = sorted((pts[v] for v in own), key=lambda p: p[0])
        if line:
            xs = [p[0] for p in line]
            ys = [p[1] for p in line]
            ax.step(
                xs, ys, where="post", color="#2e5e8c", alpha=0.5, linewidth=1.2, label="front of this panel"
            )
        for v, (x, y) in pts.items():
            on = v in front
            is_base = v in baselines
            ax.scatter(
                [x],
                [y],
                s=60 if is_base else 36,
                marker="*" if is_base else "o",
                facecolors="#2e5e8c" if on else "white",
                edgecolors="#2e5e8c",
                zorder=3,
            )
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        xs_all = [p[0] for p in pts.values()]
        if min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(axes_of[xk][0] + axes_of[xk][2] + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(axes_of[yk][0] + axes_of[yk][2])
        ax.set_title(f"{axes_of[yk][0]} vs {xk}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Pareto view (filled: on the {' / '.join(axes_of[k][0] for k in front_keys)} front; ★ baseline)",
        fontsize=10,
    )
    fig.tight_layout()
    rows = [
        {
            "variant": v,
            # each column named with its unit: size_bytes, latency_ms, clean_accuracy_fraction
            **{f"{axes_of[k][0].replace(' ', '_')}_{units[k]}": values[v].get(k) for k in xs_keys + ys_keys},
            "pareto": v in front,
        }
        for v in variants
    ]
    out = Figure("Pareto view: size and latency against clean and robust accuracy", _png(fig), to_csv(rows))
    plt.close(fig)
    return out


# ---------------------------------------------------------------- sweeps


def sweep_curves(
    sweep: dict[str, Any] | Sequence[dict[str, Any]],
    records: RecordTable,
    columns: Sequence[Declared],
    identities: Mapping[str, VariantId] | None = None,
) -> Figure | None:
    """One panel per summary metric measured on the sweep's levels: the metric against the
    compression level (seed 002, Figure 1), the baseline as a dashed line. Given the same sweep
    under several seeds (a list, one per seed, levels in the same order), each point is the mean
    over the seeds with an error bar of their sample std, and the baseline is the seeds' mean."""
    runs: list[dict[str, Any]] = [sweep] if isinstance(sweep, dict) else list(sweep)
    first = runs[0]
    name = str(first.get("group") or first["name"]) if len(runs) > 1 else str(first["name"])
    levels: list[Any] = [lv for _, lv in first["levels"]]
    numeric = all(isinstance(lv, int | float) for lv in levels)
    Point = tuple[Any, float, float | None, list[tuple[str, float]]]  # level, mean, std, runs
    panels: list[tuple[Declared, list[Point], float | None, list[tuple[str, float]]]] = []
    for col in columns:
        probe, metric, params = col.probe, col.spec.name, dict(col.view.params)
        pts: list[Point] = []
        for i, lv in enumerate(levels):
            found = [
                (str(sw["levels"][i][0]), x)
                for sw in runs
                if (x := records.value(str(sw["levels"][i][0]), probe, metric, **params)) is not None
            ]
            mean, std = _mean_std([x for _, x in found])
            if mean is not None:
                pts.append((lv, mean, std, found))
        bases = [
            (b, x)
            for sw in runs
            if (x := records.value((b := str(sw.get("baseline", "baseline"))), probe, metric, **params))
            is not None
        ]
        if len(pts) >= 2:
            panels.append((col, pts, _mean_std([x for _, x in bases])[0], bases))
    # a metric the sweep does not move (parameters under quantization, MACs under unstructured
    # pruning) is named, not drawn
    constant = [col.title for col, pts, _, _ in panels if len({round(m, 12) for _, m, _, _ in pts}) == 1]
    panels = [p for p in panels if p[0].title not in constant]
    if not panels:
        return None
    plt = _plt()
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows), squeeze=False)
    csv_rows: list[dict[str, Any]] = []
    units = {id(col): col.spec.unit for col in columns}
    for ax, (col, pts, base, bases) in zip(axes.flat, panels, strict=False):
        k, unit = scale(units[id(col)])
        xs = [float(lv) if numeric else levels.index(lv) for lv, _, _, _ in pts]
        errs = [k * (s or 0.0) for _, _, s, _ in pts]
        ax.errorbar(
            xs,
            [k * m for _, m, _, _ in pts],
            yerr=errs if any(errs) else None,
            marker="o",
            color="#2e5e8c",
            capsize=3,
        )
        if base is not None:
            ax.axhline(k * base, linestyle="--", color="#888", linewidth=1, label="baseline")
        if not numeric:
            ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
        ax.set_title(col.title + unit, fontsize=9)
        ax.set_xlabel(first["param"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        for lv, _, _, found in pts:
            for variant, y in found:
                csv_rows.append(
                    {
                        "sweep": name,
                        "param": first["param"],
                        "level": lv,
                        "variant": variant,
                        "metric": col.title,
                        "value": y,
                        "unit": col.spec.unit,
                    }
                )
        for variant, y in bases:
            csv_rows.append(
                {
                    "sweep": name,
                    "param": first["param"],
                    "level": "baseline",
                    "variant": variant,
                    "metric": col.title,
                    "value": y,
                    "unit": col.spec.unit,
                }
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    over = f", mean ± std over {len(runs)} seeds" if len(runs) > 1 else ""
    fig.suptitle(
        f"Sweep {name}: every summary metric against {first['param']} (dashed: baseline{over})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / (2.6 * nrows)))
    title = f"Sweep {name}: metrics against {first['param']}" + over
    if constant:
        title += f" (the same at every level, not drawn: {', '.join(constant)})"
    out = Figure(title, _png(fig), to_csv(csv_rows))
    plt.close(fig)
    return out


def sweep_identity(sweep: Mapping[str, Any]) -> VariantId:
    """Who a stored sweep is: its plain ``sweep`` name, ``source`` and ``seed`` as the run stored them
    (a sweep stored before they were: its whole name, nothing parsed out of it)."""
    seed = sweep.get("seed")
    return VariantId(
        str(sweep.get("sweep") or sweep["name"]),
        str(sweep.get("source") or ""),
        None if seed is None else int(seed),
    )


def sweep_groups(sweeps: Sequence[dict[str, Any]], seeds: bool) -> list[list[dict[str, Any]]]:
    """The stored sweeps to draw, each as a list of runs: with ``seeds``, the same sweep under every
    seed (one list per :attr:`VariantId.group`, which is also the ``group`` it is drawn under);
    else one each."""
    if not seeds:
        return [[sw] for sw in sweeps]
    groups: dict[str, list[dict[str, Any]]] = {}
    for sw in sweeps:
        group = sweep_identity(sw).group
        groups.setdefault(group, []).append({**sw, "group": group})
    return list(groups.values())
