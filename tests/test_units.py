"""Units: every metric carries the unit its probe declares, and everything formats from it."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from compaudit.data import DataBundle
from compaudit.errors import ProbeError
from compaudit.export import export_rows
from compaudit.probes import PROBES, Probe, ProbeContext, ProbeParams, ProbeResult, declared_unit
from compaudit.report.build import collect, render_report
from compaudit.results import MetricSpec, Role
from compaudit.store import Store
from compaudit.units import UNITS, difference_unit, format_precise, format_spread, format_value, scale
from compaudit.variant import Variant

#: small parameters that make each probe report every metric it can, in seconds on a CPU
FAST: dict[str, dict[str, Any]] = {
    "accuracy": {},
    "efficiency": {"batch_sizes": [1], "repeats": 1, "warmup": 0},
    "classes": {"bootstrap": 20, "exemplars": 1},
    "shift": {"corruptions": ["gaussian_noise"], "severities": [1], "samples": 40},
    "explain": {"methods": ["gradcam", "cam"], "samples": 24, "grid": 1, "batch_size": 24},
    "embedding": {"samples": 30, "adversarial": True, "steps": 1, "plot_points": 10},
}
#: the lead's probe is checked by its own tests (its attack suite takes longer)
SKIPPED = {"adversarial"}


def _contexts(model: nn.Module, data: DataBundle) -> tuple[Variant, Variant, ProbeContext]:
    base = Variant("baseline", "base-key", model)
    pruned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(
                (torch.rand(p.shape, generator=gen) > 0.3).to(p.dtype)
            )  # some zeros: sparse sizes, changed predictions
    # pruned and (as the variant's capabilities say) simulated 4-bit, with a deployed copy whose
    # float source is the pruned model: every metric there is
    child = Variant(
        "pruned",
        "pruned-key",
        pruned,
        lineage=[{"method": "test", "params": {}}],
        parent="base-key",
        bits=4,
        simulated=True,
        deployed=copy.deepcopy(pruned),
        surrogate=pruned,
    )
    ctx = ProbeContext(
        data=data, baseline=base, device=torch.device("cpu"), seed=0, domains={"other": data}, source="digits"
    )
    return base, child, ctx


def test_every_probe_but_the_adversarial_one_is_covered_here() -> None:
    assert set(PROBES.names()) - SKIPPED == set(FAST)


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_metric_a_probe_reports_has_its_declared_unit(
    name: str, trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    base, child, ctx = _contexts(trained_cnn, digits16)
    cls = PROBES.get(name)
    probe = cls.from_spec(name, FAST[name])
    seen: set[str] = set()
    for variant in (base, child):
        res = probe.run(variant, ctx)
        for m in res.metrics:
            assert m.unit in UNITS and m.unit != "", (name, m.name, m.unit)
            assert m.unit == cls.spec_of(m.name).unit
            seen.add(m.name)
    # the declarations name no metric the probe never reports (a typo there would go unnoticed)
    assert set(cls.specs()) == seen, (name, set(cls.specs()) ^ seen)


@pytest.mark.parametrize("name", PROBES.names())
def test_declared_units_are_known_and_cover_the_summary_columns(name: str) -> None:
    cls = PROBES.get(name)
    assert cls.metrics, f"{name} declares no metrics"
    for spec in cls.metrics:
        assert spec.unit in UNITS, (name, spec.name, spec.unit)
    assert cls.views(name, Role.SUMMARY), f"{name} contributes no summary column"


class _Sloppy(Probe[ProbeParams]):
    """Reports a metric it does not declare."""

    metrics: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("declared", "fraction"),)

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        res = ProbeResult()
        res.add("declared", 0.5)
        res.add("forgotten_metric", 3.0)
        return res


def test_an_undeclared_metric_fails_the_probe_naming_it(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, _, ctx = _contexts(trained_cnn, digits16)
    with pytest.raises(ProbeError, match="'forgotten_metric'"):
        _Sloppy("sloppy", _Sloppy.Params()).run(base, ctx)
    with pytest.raises(ValueError, match="unknown unit 'B'"):
        MetricSpec("size", "B")  # a misspelt unit fails where it is declared
    with pytest.raises(ProbeError, match="'nope'"):
        PROBES.get("accuracy").unit_of("nope")


def test_format_value_shows_each_unit() -> None:
    assert format_value(0.48, "fraction") == "48.0%"
    assert format_value(0.48, "fraction", digits=2) == "48.00%"
    assert format_value(0.015, "pp") == "+1.5 pp"
    assert format_value(-0.015, "pp") == "-1.5 pp"
    assert format_value(0.0, "pp") == "+0.0 pp"
    assert format_value(1_234_567, "bytes") == "1.23 MB"
    assert format_value(2_500, "bytes") == "2.50 kB"
    assert format_value(512, "bytes") == "512 B"
    assert format_value(512, "B") == "512 B"  # a store's old spelling
    assert format_value(1_200_000, "MACs") == "1.20 M"
    assert format_value(0.1234, "ms") == "0.123 ms"
    assert format_value(1.5, "s") == "1.5 s"
    assert format_value(12345, "params") == "12,345"
    assert format_value(42, "count") == "42"
    assert format_value(8, "bits") == "8 bits"
    assert format_value(0.95, "ratio") == "0.95x"
    assert format_value(0.032, "p-value") == "0.032"
    assert format_value(1.0, "flag") == "yes" and format_value(0.0, "flag") == "no"
    assert format_value(0.8451, "score") == "0.8451"
    assert format_value(0.02, "fraction", signed=True) == "+2.0%"
    assert format_value(1500, "bytes", signed=True) == "+1.50 kB"
    assert format_value(None, "fraction") == format_value(math.nan, "fraction") == "–"
    assert format_value(3.0, "") == "3"  # no unit: a plain number


def test_differences_spreads_and_axes_follow_the_unit() -> None:
    assert difference_unit("fraction") == "pp" and difference_unit("pp") == "pp"
    assert difference_unit("bytes") == "bytes" and difference_unit("B") == "bytes"
    assert format_spread(0.012, "fraction") == "1.2 pp"
    assert format_spread(0.2, "ms") == "0.200 ms"
    assert scale("fraction") == (100.0, " (%)") and scale("pp") == (100.0, " (pp)")
    assert scale("bytes") == (1.0, " (bytes)") and scale("score") == (1.0, "")
    # compare: enough digits to tell close values apart, no trailing zeros
    assert format_precise(0.123456789, "fraction") == "12.3457%"
    assert format_precise(0.48, "fraction") == "48%"
    assert format_precise(0.5 - 0.48, "pp", signed=True) == "+2 pp"
    assert format_precise(1_234_567, "bytes") == "1.23457 MB"
    assert format_precise(3.2e-7, "p-value") == "3.2e-07"


def test_declared_unit_prefers_a_valid_stored_unit_then_the_declaration() -> None:
    assert declared_unit("accuracy", "accuracy", "") == "fraction"
    assert declared_unit("efficiency", "file_bytes", "B") == "bytes"
    assert declared_unit("efficiency", "latency", "ms") == "ms"
    assert declared_unit("not_a_probe", "m", "u") == "u"
    assert declared_unit("not_a_probe", "m", "B") == "bytes"
    assert declared_unit("accuracy", "no_such_metric", "") == ""


def _old_store(root: Path) -> Path:
    """A run folder whose metrics were stored before probes declared units: "" and "B"."""
    acc, eff = ProbeResult(), ProbeResult()
    acc.add("accuracy", 0.48, split="test")
    acc.add("nll", 1.25, split="test")
    eff.metrics.append(dataclasses.replace(_metric("file_bytes", 1_234_567.0), unit="B"))
    plan = []
    with Store(root, create=True) as store:
        for key, probe, res in (("k-acc", "accuracy", acc), ("k-eff", "efficiency", eff)):
            store.put_result(
                key, variant_key="vk", variant="baseline", probe=probe, spec={}, result=res, seconds=0.0
            )
            plan.append({"variant": "baseline", "probe": probe, "key": key, "variant_key": "vk"})
        store.set_meta(name="old", status="complete", plan=plan, started=0.0)
    return root


def _metric(name: str, value: float) -> Any:
    res = ProbeResult()
    res.add(name, value)
    return res.metrics[0]


def test_the_report_and_the_export_format_from_the_declared_unit(tmp_path: Path) -> None:
    run = _old_store(tmp_path / "run")
    units = {r["metric"]: r["unit"] for r in export_rows(run)}
    assert units == {"accuracy": "fraction", "nll": "nats", "file_bytes": "bytes"}
    with Store(run) as store:
        data = collect(store)
        html = render_report(store)
    assert data.overview is not None and data.overview.table is not None
    overview = data.overview.table
    row = overview.rows[0]
    assert row[overview.columns.index("Clean accuracy")].text == "48.0%"
    assert row[overview.columns.index("Size")].text == "1.23 MB"
    summary = data.summary
    assert summary.rows[0][summary.columns.index("Test accuracy")].text == "48.0%"
    assert summary.rows[0][summary.columns.index("File size")].text == "1.23 MB"
    assert summary.rows[0][summary.columns.index("NLL")].text == "1.25"
    assert "48.0%" in html and "0.48%" not in html
