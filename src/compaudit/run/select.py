"""Choosing the level of a sweep with ``select`` (seed 000's 5% rule, seed 002's matched levels).

Selection reads the accuracy results already stored, so it runs in the process that holds the
store, after every job of the cell has finished, whichever executor ran them. It is cheap, so it
is recomputed on every run; its record is a result of the pseudo-probe ``selection`` keyed by the
keys of the results it read.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from compaudit.results import ProbeResult
from compaudit.run.plan import Plan, SweepPlan
from compaudit.runtime import spec_key
from compaudit.store import Store
from compaudit.units import format_spread

log = logging.getLogger("compaudit")

#: units (:mod:`compaudit.units`) of the metrics of a sweep's selection record (probe ``selection``):
#: the chosen level of the sweep's parameter (a sparsity, a bit width, or a non-numeric level's
#: position) is a number on its own scale; the accuracies are shares
SELECTION_UNITS = {
    "selected_level": "score",
    "selected_accuracy": "fraction",
    "reference_accuracy": "fraction",
}


def select_levels(plan: Plan, store: Store) -> list[tuple[str, str, str]]:
    """Store the selection record of every sweep of ``plan`` with ``select``; returns their
    ``(sweep, "selection", key)``, which the run adds to its stored plan."""
    return [select_level(plan, store, sweep) for sweep in plan.sweeps if sweep.select is not None]


def select_level(plan: Plan, store: Store, sweep: SweepPlan) -> tuple[str, str, str]:
    """Store the most compressed level of ``sweep`` whose accuracy stays within the tolerance of
    the baseline's (or of the ``match`` variant's)."""
    assert sweep.select is not None
    split = sweep.select.split
    acc_jobs = {j.variant: j for j in plan.jobs if j.probe == "accuracy"}

    def accuracy(variant: str) -> float | None:
        job = acc_jobs.get(variant)
        rows = store.metric_rows([(variant, "accuracy", job.key)]) if job else []
        hit = [r["value"] for r in rows if r["metric"] == "accuracy" and r.get("split") == split]
        return float(hit[0]) if hit else None

    reference = sweep.select.match or plan.baseline.name
    base = accuracy(reference)
    res = ProbeResult()
    chosen: tuple[str, Any] | None = None
    if base is not None:
        for name, level in sweep.levels:  # least to most compressed
            acc = accuracy(name)
            if acc is not None and acc >= base - sweep.select.within:
                chosen = (name, level)
    if chosen is None:
        res.warn(
            "no_level_selected",
            f"sweep {sweep.name}: no level keeps {split} accuracy within "
            f"{format_spread(sweep.select.within, 'fraction')} of {reference}'s",
        )
        res.add("selected_level", float("nan"), param=sweep.param, split=split)
    else:
        name, level = chosen
        value = (
            float(level)
            if isinstance(level, int | float)
            else float([lv for _, lv in sweep.levels].index(level))
        )
        res.add("selected_level", value, param=sweep.param, split=split, selected_variant=name)
        res.add("selected_accuracy", accuracy(name) or float("nan"), split=split, selected_variant=name)
    res.add("reference_accuracy", float("nan") if base is None else base, split=split, reference=reference)
    res.metrics = [dataclasses.replace(m, unit=SELECTION_UNITS[m.name]) for m in res.metrics]
    key = spec_key(
        {
            "select": sweep.select.model_dump(),
            "levels": [(n, lv, next(j.key for j in plan.jobs if j.variant == n)) for n, lv in sweep.levels],
            "baseline": plan.baseline.key,
            "match": next((v.key for v in plan.all_variants if v.name == sweep.select.match), None),
        }
    )
    store.put_result(
        key,
        variant_key="",
        variant=sweep.name,
        probe="selection",
        spec={"sweep": sweep.name},
        result=res,
        seconds=0.0,
    )
    if chosen is not None:
        log.info("sweep %s: selected %s (%s = %s)", sweep.name, chosen[0], sweep.param, chosen[1])
    return (sweep.name, "selection", key)
