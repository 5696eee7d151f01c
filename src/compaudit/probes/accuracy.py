"""Accuracy probe: top-1 (and top-5) accuracy, likelihood and confidence, and agreement with the
baseline. Flags variants whose outputs contain NaN or whose accuracy collapsed to chance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from compaudit.inference import Predictions
from compaudit.probes.base import (
    PROBES,
    Probe,
    ProbeContext,
    ProbeParams,
    ProbeResult,
    SummaryColumn,
    shared_predictions_batch_size,
)
from compaudit.units import format_value
from compaudit.variant import Variant


class AccuracyParams(ProbeParams):
    splits: list[str] = Field(default_factory=lambda: ["test", "val"], min_length=1)
    collapse_margin: float = Field(
        default=0.05, ge=0.0, le=1.0, description="flag a variant whose accuracy is within this of chance"
    )
    batch_size: int | None = shared_predictions_batch_size()


@PROBES.register("accuracy")
class Accuracy(Probe):
    """Top-1/top-5 accuracy, NLL, confidence and agreement with the baseline, per split."""

    Params: ClassVar[type[ProbeParams]] = AccuracyParams
    execution_params: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    summary: ClassVar[tuple[SummaryColumn, ...]] = (
        SummaryColumn("Test accuracy", "accuracy", {"split": "test"}, "high"),
        SummaryColumn("Δ accuracy", "accuracy_delta", {"split": "test"}, "high"),
        SummaryColumn("Agreement with baseline", "agreement", {"split": "test"}, "high"),
        SummaryColumn("NLL", "nll", {"split": "test"}, "low"),
    )
    units: ClassVar[Mapping[str, str]] = {
        "accuracy": "fraction",
        "top5_accuracy": "fraction",
        "nll": "nats",
        #: the mean max-softmax probability
        "mean_confidence": "fraction",
        "nonfinite_output_share": "fraction",
        "collapsed": "flag",
        "accuracy_delta": "pp",
        #: the share of samples whose predicted class is the baseline's
        "agreement": "fraction",
    }

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        assert isinstance(p, AccuracyParams)
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
                res.warnings.append(
                    f"{variant.name}: outputs contain NaN or infinity on "
                    f"{format_value(nan_share, 'fraction')} of the {split} split"
                )
            collapsed = acc <= 1.0 / k + p.collapse_margin
            res.add("collapsed", float(collapsed), split=split)
            if collapsed:
                res.warnings.append(
                    f"{variant.name}: {split} accuracy {format_value(acc, 'fraction')} has collapsed to "
                    f"chance level ({format_value(1.0 / k, 'fraction')})"
                )
            if not variant.is_baseline:
                base = ctx.predictions(ctx.baseline, split, batch_size=p.batch_size)
                res.add("accuracy_delta", acc - base.accuracy, split=split)
                res.add("agreement", float((pred.predicted == base.predicted).double().mean()), split=split)
        return res


def _nll(pred: Predictions) -> float:
    return float(F.cross_entropy(pred.logits.double(), pred.labels, reduction="mean"))
