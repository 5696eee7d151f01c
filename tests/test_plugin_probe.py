"""A probe defined only here appears everywhere: the overview, the summary table, the export, its
own section, the red banner of its invalidating warning. Nothing outside this file names it: the
report reads the probe's declarations (:class:`compaudit.results.MetricSpec`) and its
:meth:`~compaudit.probes.Probe.section` hook, and the banner reads warnings' severity."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import torch

import compaudit
from compaudit import PROBES, DataBundle, Probe, ProbeContext, ProbeParams, ProbeResult
from compaudit.elements import Cell, Section, SectionData, Table
from compaudit.export import export_frame
from compaudit.results import MetricSpec, Role, Severity, View, summary
from compaudit.variant import Variant


class LogitParams(ProbeParams):
    #: a variant whose mean max-logit is below this is "flat" (an invalidating warning)
    flat_below: float = 1e9


class LogitScale(Probe[LogitParams]):
    """Mean absolute logit of the test split: how peaked a model's outputs are."""

    Params: ClassVar[type[ProbeParams]] = LogitParams
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "mean_abs_logit",
            "score",
            better="high",
            views=(
                summary("Mean |logit|"),
                View((Role.HEADLINE,), "Logit scale", note="mean absolute logit, test split", order=5),
            ),
        ),
        MetricSpec("max_logit", "score"),
    )

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        logits = ctx.predictions(variant).logits
        res = ProbeResult()
        res.add("mean_abs_logit", float(logits.abs().mean()))
        top = float(logits.max(dim=1).values.mean())
        res.add("max_logit", top)
        if top < self.params.flat_below:
            res.warn(
                "flat_logits", f"{variant.name}: logits are flat ({top:.3g})", severity=Severity.INVALIDATES
            )
        return res

    @classmethod
    def section(cls, data: SectionData) -> Section:
        section = Section("Logit scale, by the probe itself", note=data.doc)
        rows = [[Cell(v), Cell(data.text(data.value(v, "max_logit"), "max_logit"))] for v in data.variants]
        section.add(Table("Max logit per variant", ["Variant", "Max logit"], rows))
        return section


def test_a_probe_defined_in_a_test_appears_everywhere(
    trained_cnn: torch.nn.Module, digits16: DataBundle, tmp_path: Path
) -> None:
    with PROBES.temporary("logit_scale", LogitScale):
        result = compaudit.audit(
            trained_cnn,
            digits16,
            variants={"pruned": {"method": "prune_unstructured", "params": {"sparsity": 0.5}}},
            probes=["accuracy", "logit_scale"],
            out=tmp_path / "run",
        )
        html = (result.out / "report.html").read_text()
        table = result.table()
    # the summary table (and the API's table built from it)
    assert "Mean |logit|" in table.columns
    assert table.loc["pruned", "Mean |logit|"] > 0
    # the export: every metric with its declared unit
    frame = export_frame(result.out)
    mine = frame[frame.probe == "logit_scale"]
    assert set(mine.metric) == {"mean_abs_logit", "max_logit"}
    assert set(mine.unit) == {"score"}
    # the overview's headline column, first by its declared order
    overview = html[html.index('id="overview"') :]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", overview)
    assert "Logit scale" in headers and headers.index("Logit scale") < headers.index("Clean accuracy")
    # its own section, built by its own hook
    assert "Logit scale, by the probe itself" in html and "Max logit per variant" in html
    # an invalidating warning puts the variant in the red banner, whatever its words
    banner = html[html.index('class="banner severe"') :].split("</div>")[0]
    assert "logits are flat" in banner and "pruned" in banner
