"""Accuracy probe: top-1 (and top-5) accuracy, likelihood and confidence, and agreement with the
baseline; for a deployed variant (int8 kernels, an ONNX Runtime or OpenVINO file), agreement with
the float model it came from. Flags variants whose outputs contain NaN or whose accuracy collapsed
to chance."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from compaudit.inference import Predictions, predict
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams, shared_predictions_batch_size
from compaudit.results import MetricSpec, ProbeResult, Role, Severity, View, summary
from compaudit.units import format_value
from compaudit.variant import Variant


class AccuracyParams(ProbeParams):
    splits: list[str] = Field(default_factory=lambda: ["test", "val"], min_length=1)
    collapse_margin: float = Field(
        default=0.05, ge=0.0, le=1.0, description="flag a variant whose accuracy is within this of chance"
    )
    batch_size: int | None = shared_predictions_batch_size()


@PROBES.register("accuracy")
class Accuracy(Probe[AccuracyParams]):
    """Top-1/top-5 accuracy, NLL, confidence and agreement with the baseline, per split."""

    Params: ClassVar[type[ProbeParams]] = AccuracyParams
    execution_params: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "accuracy",
            "fraction",
            better="high",
            views=(
                summary("Test accuracy", split="test"),
                View(
                    (Role.HEADLINE, Role.PARETO),
                    "Clean accuracy",
                    {"split": "test"},
                    note="test split",
                    order=30,
                    key="accuracy",
                    axis="clean accuracy",
                ),
            ),
        ),
        MetricSpec("top5_accuracy", "fraction", better="high"),
        MetricSpec("nll", "nats", better="low", views=(summary("NLL", split="test"),)),
        MetricSpec("mean_confidence", "fraction", doc="the mean max-softmax probability"),
        MetricSpec("nonfinite_output_share", "fraction", better="low"),
        MetricSpec(
            "collapsed",
            "flag",
            better="low",
            doc="accuracy at chance level (within collapse_margin): the variant's numbers measure noise",
            views=(View((Role.DISQUALIFIES,)),),
        ),
        MetricSpec("accuracy_delta", "pp", better="high", views=(summary("Δ accuracy", split="test"),)),
        MetricSpec(
            "agreement",
            "fraction",
            better="high",
            doc="the share of samples whose predicted class is the baseline's",
            views=(summary("Agreement with baseline", split="test"),),
        ),
        MetricSpec(
            "surrogate_agreement",
            "fraction",
            better="high",
            doc="a deployed model's (int8 kernels, an ONNX Runtime or OpenVINO file) share of samples "
            "whose predicted class is that of the float model it came from (its surrogate)",
            views=(summary("Agreement with float source", split="test"),),
        ),
    )
    #: 2: ``surrogate_agreement`` of deployed variants
    version: ClassVar[int] = 2

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        res = ProbeResult()
        k = ctx.data.num_classes
        for split in p.splits:
            pred = ctx.predictions(variant, split, batch_size=p.batch_size)
            finite = torch.isfinite(pred.logits).all(dim=1)
            nan_share = 1.0 - float(finite.double().mean())
            acc = pred.accuracy
            res.add("accuracy", acc, split=split)
            if k > 5:
                top5 = pred.logits.topk(5, dim=1).indices.eq(pred.labels[:, None]).any(dim=1)
                res.add("top5_accuracy", float(top5.double().mean()), split=split)
            res.add("nll", _nll(pred), split=split)
            res.add(
                "mean_confidence", float(pred.probabilities.max(dim=1).values.double().mean()), split=split
            )
            res.add("nonfinite_output_share", nan_share, split=split)
            if nan_share > 0:
                res.warn(
                    "nonfinite_outputs",
                    f"{variant.name}: outputs contain NaN or infinity on "
                    f"{format_value(nan_share, 'fraction')} of the {split} split",
                    severity=Severity.INVALIDATES,
                )
            collapsed = acc <= 1.0 / k + p.collapse_margin
            res.add("collapsed", float(collapsed), split=split)
            if collapsed:
                res.warn(
                    "collapsed",
                    f"{variant.name}: {split} accuracy {format_value(acc, 'fraction')} has collapsed to "
                    f"chance level ({format_value(1.0 / k, 'fraction')})",
                    severity=Severity.INVALIDATES,
                )
            if not variant.is_baseline:
                base = ctx.predictions(ctx.baseline, split, batch_size=p.batch_size)
                res.add("accuracy_delta", acc - base.accuracy, split=split)
                res.add("agreement", float((pred.predicted == base.predicted).double().mean()), split=split)
            if variant.deployed is not None and variant.surrogate is not None:
                source = predict(
                    variant.surrogate,
                    ctx.data.split(split),
                    batch_size=ctx.batch_size if p.batch_size is None else p.batch_size,
                    device=ctx.device,
                    desc=f"{variant.name}: predict {split} (float source)",
                )
                same = float((pred.predicted == source.predicted).double().mean())
                res.add("surrogate_agreement", same, split=split)
                res.measured_on("float source", ctx.device_for(variant.surrogate))
        return res


def _nll(pred: Predictions) -> float:
    return float(F.cross_entropy(pred.logits.double(), pred.labels, reduction="mean"))
