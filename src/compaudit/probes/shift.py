"""Shift probe: what compression does to accuracy when the inputs move away from the training
distribution.

Two kinds of shift, each optional:

- **Domain shift** (seed 001, ``001_5343f4a55429e52f.txt``): the experiment's ``domains`` are other
  data sets with the source's classes (Office-31's amazon, webcam and dslr; a styled copy of
  ``digits`` in CI). The probe reports the source's validation accuracy, every target's accuracy,
  the gap between them, and the change relative to the baseline. With ``sources`` listing several
  domains the experiment trains and compresses on each in turn, so one file covers all six
  Office-31 pairs.
- **Common corruptions** (Hendrycks & Dietterich 2019, ImageNet-C / CIFAR-10-C): the 15 corruption
  types at 5 severities, applied on the fly to a fixed, stratified subset of the test split
  (:mod:`compaudit.data.corruptions`), or read from the pre-generated CIFAR-10-C ``.npy`` files
  (``cifar_c: FOLDER``). Corrupted images are rounded to 8 bits, as the published sets are.
  Reported: accuracy per corruption and severity, the mean corruption accuracy, and the corruption
  errors normalised by the baseline's: ``CE_c = sum_s E_{c,s} / sum_s E^base_{c,s}``, ``mCE`` their
  mean, and the relative ``CE`` that first subtracts each model's clean error. The baseline, as the
  reference model, has ``mCE = 1`` by definition (ImageNet-C normalises by AlexNet instead).

Every variant sees exactly the same corrupted images: they depend on the run's seed, the
corruption and the severity only, and are computed once per run.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from compaudit.data.base import ArrayDataset, sample_indices
from compaudit.data.corruptions import CORRUPTIONS, available_corruptions
from compaudit.inference import predict
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.probes.views import shift as views_shift
from compaudit.progress import progress
from compaudit.results import MetricSpec, ProbeResult, Role, Severity, View, summary
from compaudit.runtime import derive_seed
from compaudit.units import format_value
from compaudit.variant import Variant

if TYPE_CHECKING:
    from compaudit.config import Experiment

#: corrupted copies kept in memory (as uint8) for the whole run up to this size; beyond it they
#: are recomputed for each variant (deterministically, so every variant still sees the same ones)
CACHE_BYTES = 1.5 * 2**30


class ShiftParams(ProbeParams):
    domains: list[str] | None = Field(
        default=None, description="target domains (default: every domain of the experiment but the source)"
    )
    corruptions: list[str] | Literal["all"] = Field(
        default="all", description="corruption types ('all': the 15 of ImageNet-C; [] for none)"
    )
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    samples: int | None = Field(
        default=1000, ge=1, description="test images corrupted (a fixed stratified subset; null: all)"
    )
    cifar_c: Path | None = Field(
        default=None, description="folder of the CIFAR-10-C .npy files, read instead of corrupting"
    )
    batch_size: int = Field(default=256, ge=1)

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= 5]
        if bad:
            raise ValueError(f"severities go from 1 to 5 (got {bad[0]})")
        if len(set(v)) != len(v):
            raise ValueError("a severity is listed twice")
        return sorted(v)

    @field_validator("corruptions")
    @classmethod
    def _corruptions(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            for name in v:
                if name not in CORRUPTIONS:
                    raise ValueError(f"unknown corruption {name!r}; choose from: {', '.join(CORRUPTIONS)}")
            if len(set(v)) != len(v):
                raise ValueError("a corruption is listed twice")
        return v


@PROBES.register("shift")
class Shift(Probe[ShiftParams]):
    """Accuracy on other domains (seed 001) and under the 15 common corruptions (mCE)."""

    #: its part of the report (:mod:`compaudit.probes.views.shift`)
    section = staticmethod(views_shift.section)

    Params: ClassVar[type[ProbeParams]] = ShiftParams
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("source_accuracy", "fraction", better="high"),
        MetricSpec("target_accuracy", "fraction", better="high"),
        MetricSpec(
            "shift_gap",
            "pp",
            better="low",
            doc="source accuracy minus target accuracy: a difference of two fractions",
        ),
        MetricSpec("target_accuracy_delta", "pp", better="high"),
        MetricSpec(
            "mean_target_accuracy",
            "fraction",
            better="high",
            views=(
                summary("Target-domain acc"),
                View(
                    (Role.HEADLINE,),
                    "Target-domain acc",
                    note="mean over the target domains",
                    order=50,
                    key="target",
                ),
            ),
        ),
        MetricSpec("mean_target_accuracy_delta", "pp", better="high"),
        MetricSpec("clean_accuracy", "fraction", better="high"),
        MetricSpec("corruption_accuracy", "fraction", better="high"),
        MetricSpec("severity_accuracy", "fraction", better="high"),
        MetricSpec("corruption_mean_accuracy", "fraction", better="high"),
        MetricSpec(
            "mean_corruption_accuracy",
            "fraction",
            better="high",
            views=(
                summary("Corruption acc"),
                View(
                    (Role.HEADLINE,),
                    "Mean corruption acc",
                    note="mean over corruptions and severities",
                    order=60,
                    key="corruption",
                ),
            ),
        ),
        # CE, relative CE and their means are the variant's summed errors divided by the baseline's
        # (1 = as robust as the baseline), not shares of the samples: ratios (Hendrycks & Dietterich
        # print them times 100 with a % sign)
        MetricSpec(
            "corruption_error", "ratio", nan="the baseline makes no error under the corruption", better="low"
        ),
        MetricSpec(
            "relative_corruption_error",
            "ratio",
            nan="the baseline's error does not rise under the corruption",
            better="low",
        ),
        MetricSpec(
            "mce", "ratio", nan="no corruption error is defined", better="low", views=(summary("mCE"),)
        ),
        MetricSpec("relative_mce", "ratio", nan="no relative corruption error is defined", better="low"),
    )

    @property
    def p(self) -> ShiftParams:
        return self.params

    @property
    def corruption_names(self) -> list[str]:
        """The corruptions to apply: ``all`` means the 15 where frost's photographs are installed
        (the ``corruptions`` extra), the other 14 otherwise (with a warning in every result)."""
        c = self.p.corruptions
        return list(available_corruptions()) if c == "all" else list(c)

    def describe(self) -> dict[str, Any]:
        # the corruptions actually applied are part of the key: installing the extra later reruns
        return {**super().describe(), "applied_corruptions": self.corruption_names}

    def targets(self, domains: list[str], source: str | None) -> list[str]:
        if self.p.domains is not None:
            return list(self.p.domains)
        return [d for d in domains if d != source]

    def needs_domains(self, exp: Experiment) -> list[str]:
        return self.targets(list(exp.domains), exp.source)

    def check_experiment(self, exp: Experiment) -> str | None:
        for d in self.p.domains or []:
            if d not in exp.domains:
                known = ", ".join(exp.domains) or "the experiment defines none"
                return f"domains: {d!r} is not one of the experiment's domains ({known})"
        if self.p.domains is not None and exp.source in self.p.domains:
            return f"domains: {exp.source!r} is the source domain; list only targets"
        if not self.needs_domains(exp) and not self.corruption_names:
            return "nothing to measure: no target domains and no corruptions"
        missing = [c for c in self.corruption_names if c not in available_corruptions()]
        if missing:
            return (
                f"corruptions: {missing[0]!r} needs the frost photographs of the imagecorruptions package; "
                "pip install 'compaudit[corruptions]' or leave it out"
            )
        if self.p.cifar_c is not None and (
            exp.data.name not in ("cifar10", "cifar100") or "max_test" in exp.data.params
        ):
            return (
                "cifar_c: needs the data set's whole test split in its original order "
                "(data cifar10 or cifar100 without max_test)"
            )
        return None

    def check_inputs(self, exp: Experiment) -> str | None:
        if self.p.cifar_c is not None:
            folder = self.p.cifar_c
            if not folder.is_dir():
                return f"cifar_c: folder {str(folder)!r} does not exist"
            for name in ["labels", *self.corruption_names]:
                if not (folder / f"{name}.npy").is_file():
                    return f"cifar_c: {str(folder / (name + '.npy'))!r} is missing"
        return None

    # ------------------------------------------------------------------ measuring

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        res = ProbeResult()
        source_acc = ctx.predictions(variant, "val").accuracy
        res.add("source_accuracy", source_acc, split="val", source=ctx.source or ctx.data.name)
        self._domains(variant, ctx, res, source_acc)
        if self.corruption_names:
            self._corruptions(variant, ctx, res)
            if self.p.corruptions == "all" and "frost" not in self.corruption_names:
                res.warn(
                    "corruption_unavailable",
                    "shift: frost left out of the corruptions (its photographs come with the "
                    "imagecorruptions package: pip install 'compaudit[corruptions]')",
                    severity=Severity.INFO,
                )
        return res

    def _mean_accuracy(self, variant: Variant, data: ArrayDataset, ctx: ProbeContext, what: str) -> float:
        return float(self._accuracy(variant, data, ctx, what).mean())

    def _accuracy(self, variant: Variant, data: ArrayDataset, ctx: ProbeContext, what: str) -> Tensor:
        """Per-sample correctness of ``variant`` on ``data``; ``what`` names the data in progress."""
        pred = predict(
            variant.inference_model,
            data,
            batch_size=self.p.batch_size,
            device=ctx.device,
            desc=f"{variant.name}: predict {what}",
        )
        return (pred.predicted == pred.labels).double()

    def _domains(self, variant: Variant, ctx: ProbeContext, res: ProbeResult, source_acc: float) -> None:
        names = self.targets(list(ctx.domains), ctx.source)
        accs, deltas = [], []
        for name in names:
            data = ctx.domains[name].test
            assert isinstance(data, ArrayDataset)
            acc = self._mean_accuracy(variant, data, ctx, f"domain {name}")
            res.add("target_accuracy", acc, domain=name)
            res.add("shift_gap", source_acc - acc, domain=name)
            accs.append(acc)
            if not variant.is_baseline:
                base = ctx.shared(
                    f"shift/domain/{name}",
                    partial(self._mean_accuracy, ctx.baseline, data, ctx, f"domain {name}"),
                )
                res.add("target_accuracy_delta", acc - base, domain=name)
                deltas.append(acc - base)
        if accs:
            res.add("mean_target_accuracy", sum(accs) / len(accs))
        if deltas:
            res.add("mean_target_accuracy_delta", sum(deltas) / len(deltas))
            worst = min(zip(deltas, names, strict=True))
            if worst[0] < -0.10:
                res.warn(
                    "domain_accuracy_drop",
                    f"{variant.name}: accuracy on domain {worst[1]} changes by "
                    f"{format_value(worst[0], 'pp')} against the baseline's",
                )

    def _subset(self, ctx: ProbeContext) -> ArrayDataset:
        """The clean test images the corruptions are applied to (the same for every variant)."""

        def make() -> ArrayDataset:
            test = ctx.data.test
            assert isinstance(test, ArrayDataset)
            return test.subset(self._rows(ctx))

        return ctx.shared(f"shift/subset/{self.p.samples}", make)

    def _corrupted(self, ctx: ProbeContext, name: str, severity: int) -> ArrayDataset:
        """The corrupted subset, rounded to 8 bits like the published sets (cached when it fits)."""
        clean = self._subset(ctx)
        lo, hi = ctx.data.bounds

        def make() -> tuple[Tensor, Tensor]:
            if self.p.cifar_c is not None:
                from compaudit.data.cifar_c import load_cifar_c

                rows = self._rows(ctx)
                ds = load_cifar_c(self.p.cifar_c, name, severity, indices=rows)
                return _to_uint8(ds.x, (0.0, 1.0)), ds.y
            from compaudit.data.corruptions import corrupt

            seed = derive_seed(ctx.seed, "corruption", name, str(severity))
            x = corrupt(clean.x, name, severity, seed=seed, bounds=(lo, hi))
            return _to_uint8(x, (lo, hi)), clean.y

        n_sets = len(self.corruption_names) * len(self.p.severities)
        if n_sets * clean.x.numel() <= CACHE_BYTES:
            x8, y = ctx.shared(f"shift/corrupted/{self.p.cifar_c}/{name}/{severity}/{len(clean)}", make)
        else:
            x8, y = make()
        return ArrayDataset(x8.float() / 255.0 * (hi - lo) + lo, y)

    def _rows(self, ctx: ProbeContext) -> Tensor:
        """Positions of the subset in the test split (also the rows of a CIFAR-10-C block):
        a fixed stratified sample of ``samples``, or every row."""
        test = ctx.data.test
        assert isinstance(test, ArrayDataset)
        n = len(test) if self.p.samples is None else self.p.samples
        return sample_indices(test.y, n, seed=derive_seed(ctx.seed, "shift-subset"))

    def _corruptions(self, variant: Variant, ctx: ProbeContext, res: ProbeResult) -> None:
        clean = self._subset(ctx)
        sev = self.p.severities
        names = self.corruption_names

        def errors_of(v: Variant) -> tuple[float, dict[tuple[str, int], float]]:
            clean_err = 1.0 - float(self._accuracy(v, clean, ctx, "clean subset").mean())
            errs: dict[tuple[str, int], float] = {}
            jobs = [(c, s) for c in names for s in sev]
            for c, s in progress(jobs, desc=f"{v.name}: corruptions", total=len(jobs)):
                corrupted = self._corrupted(ctx, c, s)
                errs[(c, s)] = 1.0 - float(self._accuracy(v, corrupted, ctx, f"{c} s{s}").mean())
            return clean_err, errs

        key = f"shift/baseline-errors/{self.p.cifar_c}/{len(clean)}/{names}/{sev}"
        base_clean, base = ctx.shared(key, lambda: errors_of(ctx.baseline))
        clean_err, errs = (base_clean, base) if variant.is_baseline else errors_of(variant)
        res.add("clean_accuracy", 1.0 - clean_err, samples=len(clean))
        for (c, s), e in errs.items():
            res.add("corruption_accuracy", 1.0 - e, corruption=c, severity=s)
        for s in sev:
            res.add("severity_accuracy", 1.0 - sum(errs[(c, s)] for c in names) / len(names), severity=s)
        ces, rel_ces = [], []
        for c in names:
            res.add("corruption_mean_accuracy", 1.0 - sum(errs[(c, s)] for s in sev) / len(sev), corruption=c)
            ce = _ratio(sum(errs[(c, s)] for s in sev), sum(base[(c, s)] for s in sev))
            rel = _ratio(
                sum(errs[(c, s)] - clean_err for s in sev), sum(base[(c, s)] - base_clean for s in sev)
            )
            res.add("corruption_error", ce, corruption=c)
            res.add("relative_corruption_error", rel, corruption=c)
            ces.append(ce)
            rel_ces.append(rel)
        res.add("mean_corruption_accuracy", 1.0 - sum(errs.values()) / len(errs))
        res.add("mce", _nanmean(ces))
        res.add("relative_mce", _nanmean(rel_ces))
        undefined = [c for c, r in zip(names, rel_ces, strict=True) if math.isnan(r)]
        if undefined and variant.is_baseline:
            res.warn(
                "relative_ce_undefined",
                f"shift: the baseline's error does not rise under {', '.join(undefined)}; their relative "
                "corruption error is undefined and left out of the relative mCE",
                severity=Severity.INFO,
            )


def _to_uint8(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    return ((x - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 1e-12 else float("nan")


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")
