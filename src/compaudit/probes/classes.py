"""Classes probe: what compression changes at the level of classes and single samples.

Seed 003 (``003_7af53373951fb382.txt``, Schwaiger et al., SafeAI 2022) found that compression which
costs less than 1 pp of accuracy still changes up to 7.5% of the predictions, moves the accuracy of
single classes by up to 15 pp, and changes the confidence drastically, above all on the samples
whose prediction changed. This probe measures each of these against the baseline, on one split:

- accuracy overall and per class, their deltas, and the worst class drop (a warning names every
  class that lost more than 10 pp);
- prediction flips: the share of samples whose predicted class changed, split into correct → wrong,
  wrong → correct and wrong → another wrong class (shares and counts), and McNemar's test of the
  paired correctness (:func:`compaudit.stats.mcnemar`: exact binomial below 25 discordant pairs,
  continuity-corrected chi-square above);
- confidence: mean max-softmax (overall and on the flipped samples), its mean change per sample,
  expected calibration error with the reliability bins of both models, and NLL;
- paired percentile bootstrap intervals of the accuracy delta, overall and per class
  (:func:`compaudit.stats.paired_bootstrap_ci`; seeded from the run's seed and the variant's key, so a
  rerun gives the same numbers), and percentile bootstrap intervals of the mean confidence, overall
  and on the flipped samples (:func:`compaudit.stats.bootstrap_ci`; NaN with no flip), all as
  ``<metric>_ci_low`` / ``<metric>_ci_high`` with the param ``level``;
- tables: the confusion counts of both models and their difference, the reliability bins, and
  exemplars with thumbnails.

Exemplars are what Hooker et al. 2019 ("What do compressed deep neural networks forget?") call
compression-identified exemplars, here for one variant against one baseline. *Confidence* is, as
everywhere in this probe, a model's max-softmax: the probability it gives to its own prediction.
Three kinds, at most ``exemplars`` rows each: the flips correct → wrong and wrong → correct, the
largest absolute confidence change first; and ``confidence_drop``: among the samples whose
prediction did not change, those whose confidence fell the most, i.e. the largest drop of the
probability of the (shared) predicted class (only drops; near-flips). Ties keep the split's order.
With several seeds per variant (a later issue) Hooker's definition applies instead: samples where
the modal prediction of the variants disagrees with that of the baselines; not implemented here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import Field

from compaudit.errors import ProbeError
from compaudit.imaging import to_png_data_uri
from compaudit.inference import Predictions
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams, shared_predictions_batch_size
from compaudit.probes.views import classes as views_classes
from compaudit.progress import progress
from compaudit.results import MetricSpec, ProbeResult, Role, View, summary
from compaudit.runtime import derive_seed
from compaudit.stats import (
    bootstrap_ci,
    expected_calibration_error,
    mcnemar,
    paired_bootstrap_ci,
    reliability_bins,
)
from compaudit.units import format_value
from compaudit.variant import Variant

#: a class whose accuracy falls by more than this (a share) gets a warning; seed 003 saw up to 15 pp
CLASS_DROP_WARNING = 0.10

EXEMPLAR_KINDS = ("correct_to_wrong", "wrong_to_correct", "confidence_drop")
#: the kinds of prediction flips (metrics ``flips_KIND`` and ``flips_KIND_count``)
FLIP_KINDS = ("correct_to_wrong", "wrong_to_correct", "wrong_to_wrong")


class ClassesParams(ProbeParams):
    split: Literal["test", "val"] = "test"
    bins: int = Field(default=15, ge=1, le=1000, description="equal-width confidence bins of the ECE")
    bootstrap: int = Field(
        default=1000, ge=0, description="resamples of the paired bootstrap; 0 disables the intervals"
    )
    level: float = Field(default=0.95, gt=0.0, lt=1.0, description="level of the bootstrap intervals")
    exemplars: int = Field(default=8, ge=0, description="exemplar rows per kind")
    thumbnail_scale: int = Field(default=2, ge=1, le=16, description="thumbnail upscale (nearest)")
    batch_size: int | None = shared_predictions_batch_size()


@PROBES.register("classes")
class Classes(Probe[ClassesParams]):
    """Per-class accuracy, prediction flips, confusion and confidence changes against the baseline."""

    #: its part of the report (:mod:`compaudit.probes.views.classes`)
    section = staticmethod(views_classes.section)

    Params: ClassVar[type[ProbeParams]] = ClassesParams
    #: 2: bootstrap intervals of the mean confidence, overall and on the flipped samples
    version: ClassVar[int] = 2
    execution_params: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("accuracy", "fraction", nan="the split is empty", better="high"),
        MetricSpec("class_accuracy", "fraction", better="high"),
        MetricSpec("mean_confidence", "fraction", nan="the split is empty", doc="mean max-softmax"),
        MetricSpec(
            "mean_confidence_flipped",
            "fraction",
            nan="no prediction flipped",
            doc="mean max-softmax on the flipped samples",
        ),
        MetricSpec(
            "ece",
            "fraction",
            better="low",
            doc="the bin-weighted mean gap |accuracy - confidence|: a share, shown in % as Guo et al. do",
            views=(summary("ECE"),),
        ),
        MetricSpec("nll", "nats", nan="the split is empty", better="low"),
        MetricSpec("accuracy_delta", "pp", better="high"),
        MetricSpec("class_accuracy_delta", "pp", better="high"),
        MetricSpec("max_class_drop", "pp", better="high", views=(summary("Worst class Δ"),)),
        MetricSpec(
            "flip_rate",
            "fraction",
            better="low",
            views=(
                summary("Flips"),
                View(
                    (Role.HEADLINE,),
                    "Flips",
                    note="share of test predictions that differ from the baseline's",
                    order=70,
                    key="flips",
                ),
            ),
        ),
        *(MetricSpec(f"flips_{kind}", "fraction") for kind in FLIP_KINDS),
        *(MetricSpec(f"flips_{kind}_count", "count") for kind in FLIP_KINDS),
        MetricSpec("mcnemar_statistic", "statistic"),
        MetricSpec("mcnemar_p", "p-value"),
        MetricSpec(
            "confidence_change",
            "pp",
            doc="mean per-sample change of the max-softmax: a difference of two fractions",
        ),
        *(
            MetricSpec(f"{m}_ci_{end}", unit, nan=nan)
            for m, unit, nan in (
                ("accuracy_delta", "pp", ""),
                ("class_accuracy_delta", "pp", ""),
                ("mean_confidence", "fraction", "the split is empty"),
                ("mean_confidence_flipped", "fraction", "no prediction flipped"),
            )
            for end in ("low", "high")
        ),
    )

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        split = p.split
        names = ctx.data.classes
        k = len(names)
        res = ProbeResult()

        pred = ctx.predictions(variant, split, batch_size=p.batch_size)
        if pred.logits.ndim != 2 or pred.logits.shape[1] != k:
            raise ProbeError(
                f"{variant.name!r} outputs {tuple(pred.logits.shape[1:])} scores per sample; "
                f"the data set has {k} classes"
            )
        v = _Outputs(pred)
        present = [c for c in range(k) if np.any(v.labels == c)]

        res.add("accuracy", v.correct.mean() if v.n else float("nan"), split=split)
        for c in present:
            res.add("class_accuracy", v.class_accuracy(c), split=split, **_cls(names[c]))
        res.add("mean_confidence", v.confidence.mean() if v.n else float("nan"), split=split)
        if p.bootstrap > 0:
            seed = derive_seed(ctx.seed, "classes-bootstrap", variant.key, split, "confidence")
            lo, hi = bootstrap_ci(v.confidence, resamples=p.bootstrap, level=p.level, seed=seed)
            res.add("mean_confidence_ci_low", lo, split=split, level=p.level)
            res.add("mean_confidence_ci_high", hi, split=split, level=p.level)
        res.add("ece", expected_calibration_error(v.confidence, v.correct, p.bins), split=split)
        res.add("nll", _nll(pred), split=split)
        reliability = [
            {"model": "variant", **row} for row in reliability_bins(v.confidence, v.correct, p.bins)
        ]
        vconf = _confusion(v.labels, v.predicted, k)

        if variant.is_baseline:
            res.tables["confusion"] = _confusion_rows(vconf, vconf, names)
            res.tables["reliability"] = reliability
            return res

        base_pred = ctx.predictions(ctx.baseline, split, batch_size=p.batch_size)
        if not torch.equal(base_pred.labels, pred.labels):
            raise ProbeError(f"the baseline's and {variant.name!r}'s {split} labels differ")
        b = _Outputs(base_pred)
        res.tables["confusion"] = _confusion_rows(vconf, _confusion(b.labels, b.predicted, k), names)
        res.tables["reliability"] = reliability + [
            {"model": "baseline", **row} for row in reliability_bins(b.confidence, b.correct, p.bins)
        ]

        # accuracy, overall and per class
        res.add("accuracy_delta", v.correct.mean() - b.correct.mean(), split=split)
        deltas: dict[int, float] = {}
        for c in present:
            deltas[c] = v.class_accuracy(c) - b.class_accuracy(c)
            res.add("class_accuracy_delta", deltas[c], split=split, **_cls(names[c]))
        res.add("max_class_drop", min([0.0, *deltas.values()]), split=split)
        for c in present:
            if deltas[c] < -CLASS_DROP_WARNING:
                res.warn(
                    "class_accuracy_drop",
                    f"{variant.name}: {split} accuracy of class {names[c]!r} changed by "
                    f"{format_value(deltas[c], 'pp')} "
                    f"({format_value(b.class_accuracy(c), 'fraction')} → "
                    f"{format_value(v.class_accuracy(c), 'fraction')})",
                )

        # flips
        flipped = v.predicted != b.predicted
        kinds = {
            "correct_to_wrong": b.correct & ~v.correct,
            "wrong_to_correct": ~b.correct & v.correct,
            "wrong_to_wrong": ~b.correct & ~v.correct & flipped,
        }
        assert tuple(kinds) == FLIP_KINDS
        res.add("flip_rate", flipped.mean(), split=split)
        for kind, mask in kinds.items():
            res.add(f"flips_{kind}", mask.mean(), split=split)
        for kind, mask in kinds.items():
            res.add(f"flips_{kind}_count", int(mask.sum()), split=split)
        test = mcnemar(b.correct, v.correct)
        res.add("mcnemar_statistic", test.statistic, split=split)
        res.add("mcnemar_p", test.p_value, split=split)

        # confidence
        res.add(
            "mean_confidence_flipped",
            v.confidence[flipped].mean() if flipped.any() else float("nan"),
            split=split,
        )
        res.add("confidence_change", (v.confidence - b.confidence).mean(), split=split)

        # bootstrap intervals of the accuracy deltas and of the confidence on the flipped samples
        if p.bootstrap > 0:
            seed = derive_seed(ctx.seed, "classes-bootstrap", variant.key, split, "confidence-flipped")
            lo, hi = bootstrap_ci(v.confidence[flipped], resamples=p.bootstrap, level=p.level, seed=seed)
            res.add("mean_confidence_flipped_ci_low", lo, split=split, level=p.level)
            res.add("mean_confidence_flipped_ci_high", hi, split=split, level=p.level)
            seed = derive_seed(ctx.seed, "classes-bootstrap", variant.key, split)
            lo, hi = paired_bootstrap_ci(
                b.correct, v.correct, resamples=p.bootstrap, level=p.level, seed=seed
            )
            res.add("accuracy_delta_ci_low", lo, split=split, level=p.level)
            res.add("accuracy_delta_ci_high", hi, split=split, level=p.level)
            for c in progress(present, desc=f"{variant.name}: bootstrap per class", total=len(present)):
                m = v.labels == c
                seed = derive_seed(ctx.seed, "classes-bootstrap", variant.key, split, names[c])
                lo, hi = paired_bootstrap_ci(
                    b.correct[m], v.correct[m], resamples=p.bootstrap, level=p.level, seed=seed
                )
                res.add("class_accuracy_delta_ci_low", lo, split=split, level=p.level, **_cls(names[c]))
                res.add("class_accuracy_delta_ci_high", hi, split=split, level=p.level, **_cls(names[c]))

        res.tables["exemplars"] = self._exemplars(v, b, kinds, flipped, ctx)
        return res

    def _exemplars(
        self,
        v: _Outputs,
        b: _Outputs,
        kinds: dict[str, NDArray[np.bool_]],
        flipped: NDArray[np.bool_],
        ctx: ProbeContext,
    ) -> list[dict[str, Any]]:
        """Rows of the exemplars table (confidence: max-softmax)."""
        p = self.params
        if p.exemplars == 0:
            return []
        change = v.confidence - b.confidence
        chosen: list[tuple[str, NDArray[np.intp]]] = []
        for kind in EXEMPLAR_KINDS:
            if kind == "confidence_drop":
                idx = np.flatnonzero(~flipped & (change < 0))
                order = np.argsort(change[idx], kind="stable")  # largest drop first
            else:
                idx = np.flatnonzero(kinds[kind])
                order = np.argsort(-np.abs(change[idx]), kind="stable")  # largest change first
            chosen.append((kind, idx[order][: p.exemplars]))
        dataset = ctx.data.split(p.split)
        names = ctx.data.classes
        rows: list[dict[str, Any]] = []
        for kind, idx in chosen:
            for i in idx.tolist():
                image = dataset[i][0]
                rows.append(
                    {
                        "kind": kind,
                        "index": i,
                        "label": names[int(v.labels[i])],
                        "baseline_prediction": names[int(b.predicted[i])],
                        "variant_prediction": names[int(v.predicted[i])],
                        "baseline_confidence": float(b.confidence[i]),
                        "variant_confidence": float(v.confidence[i]),
                        "confidence_change": float(change[i]),
                        "thumbnail": to_png_data_uri(image, ctx.data.bounds, p.thumbnail_scale),
                    }
                )
        return rows


class _Outputs:
    """One model's predictions on one split as numpy arrays."""

    def __init__(self, pred: Predictions) -> None:
        prob = pred.probabilities.double().numpy()
        self.labels: NDArray[np.int64] = pred.labels.numpy().astype(np.int64)
        self.predicted: NDArray[np.int64] = pred.predicted.numpy().astype(np.int64)
        self.correct: NDArray[np.bool_] = self.predicted == self.labels
        #: max-softmax: the probability of the predicted class
        self.confidence: NDArray[np.float64] = prob.max(axis=1)
        self.n = len(self.labels)

    def class_accuracy(self, c: int) -> float:
        return float(self.correct[self.labels == c].mean())


def _cls(name: str) -> dict[str, Any]:
    """The params naming a class (``class`` is a Python keyword)."""
    return {"class": name}


def _confusion(labels: NDArray[np.int64], predicted: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """Counts ``[true, predicted]`` of shape (k, k)."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k).astype(np.int64)


def _confusion_rows(
    variant: NDArray[np.int64], baseline: NDArray[np.int64], names: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t, q in zip(*np.nonzero((variant > 0) | (baseline > 0)), strict=True):
        count, base = int(variant[t, q]), int(baseline[t, q])
        rows.append(
            {"true": names[t], "predicted": names[q], "count": count, "baseline": base, "delta": count - base}
        )
    return rows


def _nll(pred: Predictions) -> float:
    if pred.labels.numel() == 0:
        return float("nan")
    return float(F.cross_entropy(pred.logits.double(), pred.labels, reduction="mean"))
