"""Run the digits version of each seed paper's recipe and check the paper's findings on it.

For every seed paper (``../shared/seeds/000`` to ``004``), ``examples/seedNNN_digits.yaml`` is the
paper's experiment scaled down to the embedded digits data. This script runs the five recipes
(resuming whatever is already stored under ``--out``), reads their results back through
:func:`compaudit.export_frame`, and checks each finding the paper states against our numbers. It
prints a Markdown table per paper (the paper's finding, our numbers, whether the finding holds on
digits) and can write it to a file; ``docs/reproductions.md`` is that output with commentary.

Every finding can fail, and its tolerance is the measured variability of our numbers, stated in its
row: 95% intervals over the evaluated samples (no extra seeds, which would triple the run time):

- accuracies and other shares of samples (test, robust, target-domain accuracy, flip rates): the
  Wilson score interval from the share and the number of samples (for a mean over attacks or
  domains on the same samples, the Wilson interval at that number bounds it);
  the classes probe's paired bootstrap for an accuracy delta on the same samples;
- Average Drop, Complexity, Coherency, saliency MAD (explain probe) and the mean confidence (classes
  probe): the probes' percentile bootstrap over the images (``<metric>_ci_low`` / ``_ci_high``);
- silhouettes (embedding probe): its bootstrap over the embedded points on the fixed map;
- over several seeds (seed 002): the wider of Student's t interval over the seeds and the Wilson
  interval of all seeds' samples pooled;
- the difference of two models: the MOVER interval from their two intervals
  (:func:`compaudit.stats.difference_ci`; it treats them as independent, so it is conservative for
  two models measured on the same samples).

How a verdict is decided, by the kind of claim (each ``decide_*`` function is a pure function of
numbers; ``tests/test_findings.py`` feeds them numbers that must fail and numbers that must hold):

- "A beats B": holds only if the difference's interval lies on the paper's side of 0; a tie
  within the interval does not hold (no effect at this run's resolution);
- "A is not worse than B" (or "similar"): holds unless the difference's interval lies entirely on
  the wrong side of 0 (a shown harm);
- a bound the paper gives ("within 5 points", "under 1 point"): holds if the whole interval is
  within the bound, does not hold if the point estimate is beyond it, and is :data:`INCONCLUSIVE`
  in between.

A finding that does not hold is not an error: the script fails (exit 1) when a recipe fails, a
number a finding needs is missing, or a recipe's float baseline is flagged for gradient masking
by the adversarial probe (``gradient_masking`` = 1 on the variant ``baseline``, or
``seedN/baseline``): a baseline that masks its gradients makes every robustness comparison void.

Every number is shown with :func:`compaudit.units.format_value` in the unit its probe declares (the
export's ``unit`` column); nothing here scales or formats a percentage by hand.

Usage::

    python examples/digits_findings.py [--out runs/recipes] [--markdown FILE] [--only seed003]
    python examples/digits_findings.py --no-run --update-docs docs/reproductions.md

``--update-docs`` replaces the part of that file between ``<!-- findings:begin -->`` and
``<!-- findings:end -->`` with the tables (and where and when they were measured).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compaudit import PROBES, export_frame, load_dataset, load_experiment, run_experiment
from compaudit.stats import difference_ci, wilson_interval
from compaudit.units import format_value

HERE = Path(__file__).resolve().parent
RECIPES = ("seed000", "seed001", "seed002", "seed003", "seed004")
TITLES = {
    "seed000": "Seed 000 — behaviours of pretrained compressed CNNs (VGG-6; C&W, t-SNE, CAM)",
    "seed001": "Seed 001 — robustness of compressed ResNets to distribution shift",
    "seed002": "Seed 002 — adversarial fine-tuning of compressed networks",
    "seed003": "Seed 003 — beyond test accuracy (LeNet-5; classes, flips, confidence, saliency)",
    "seed004": "Seed 004 — knowledge distillation and CAM explainability",
}

#: the verdicts. Only ``holds`` counts as the paper's finding reproduced. ``inconclusive``: the
#: point estimate is on the paper's side of the bound it states, but the 95% interval reaches past
#: that bound, so this run is too small to confirm or refute it.
HOLDS, FAILS, PARTLY, INCONCLUSIVE, UNTESTED = (
    "holds",
    "does not hold",
    "partly",
    "inconclusive",
    "not tested",
)
VERDICTS = (HOLDS, PARTLY, FAILS, INCONCLUSIVE, UNTESTED)
#: the level of every interval (the probes' ``level`` param)
LEVEL = 0.95
#: the variant every recipe compares against (seed 002 runs it once per seed: ``seedN/baseline``)
BASELINE = "baseline"
#: what the adversarial probe calls seed 000's own C&W (its preset: 40 iterations, lr 5e-5, one fixed c)
CW = "C&W, fixed c"


class Missing(Exception):
    """A number a finding needs is not in the run."""


@dataclass
class Finding:
    paper: str  # the paper's claim, with its number where it gives one
    ours: str  # our numbers, in words, with the interval's source
    verdict: str


@dataclass(frozen=True)
class Est:
    """A measured number with its 95% interval and its unit (:mod:`compaudit.units`)."""

    value: float
    low: float
    high: float
    unit: str

    def text(self, signed: bool = False) -> str:
        """``97.2% [95.0%, 98.5%]``: the value and its interval."""
        v, lo, hi = (format_value(x, self.unit, signed=signed) for x in (self.value, self.low, self.high))
        return f"{v} [{lo}, {hi}]"

    @property
    def half(self) -> float:
        """The larger half-width of the interval (what the row states as ``±``)."""
        return max(self.value - self.low, self.high - self.value)


def fv(x: float, unit: str, signed: bool = False) -> str:
    return format_value(x, unit, signed=signed)


def kind(verdict: str) -> str:
    """The verdict word a verdict text starts with (``holds``, ``does not hold``, ...)."""
    for word in VERDICTS:
        if verdict.startswith(word):
            return word
    raise ValueError(f"not a verdict: {verdict!r}")


def diff_unit(unit: str) -> str:
    """The unit of a difference of two values of ``unit`` (of two fractions: percentage points)."""
    return "pp" if unit == "fraction" else unit


def diff(a: Est, b: Est) -> Est:
    """``a - b`` with its MOVER interval (:func:`compaudit.stats.difference_ci`)."""
    lo, hi = difference_ci(a.value, (a.low, a.high), b.value, (b.low, b.high))
    return Est(a.value - b.value, lo, hi, diff_unit(a.unit))


def above(a: Est, b: Est) -> bool:
    """``a`` is higher than ``b`` beyond the difference's interval."""
    return diff(a, b).low > 0


def below(a: Est, b: Est) -> bool:
    """``a`` is lower than ``b`` beyond the difference's interval."""
    return diff(a, b).high < 0


def wilson(share: float, n: int, unit: str = "fraction") -> Est:
    lo, hi = wilson_interval(share, n, level=LEVEL)
    return Est(share, lo, hi, unit)


def verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def all_some_none(found: Sequence[str], of: Sequence[str], partly: str) -> str:
    """The verdict on "every one of ``of``": holds if ``found`` is all of them, ``partly`` if some."""
    return HOLDS if len(found) == len(of) else partly if found else FAILS


# --- the decisions: pure functions of numbers ------------------------------------------------


def decide_beats(a: Est, b: Est, higher: bool = True) -> str:
    """Claim: "``a`` is higher (``higher``) / lower than ``b``": holds only beyond the interval."""
    if (above if higher else below)(a, b):
        return HOLDS
    wrong = a.value < b.value if higher else a.value > b.value
    if wrong and (below if higher else above)(a, b):
        return FAILS + ": the opposite, beyond the interval"
    return FAILS + ": equal within the interval"


def decide_beats_all(a: Est, others: Mapping[str, Est], higher: bool = True) -> str:
    """Claim: "``a`` is higher (lower) than every one of ``others``", each beyond the interval."""
    behind = [v for v, o in others.items() if not (above(a, o) if higher else below(a, o))]
    return HOLDS if not behind else FAILS + f": not beyond the interval of {', '.join(behind)}"


def decide_not_worse(values: Mapping[str, Est], base: Est, higher_is_better: bool = True) -> str:
    """Claim: "None of ``values`` is worse than ``base``": fails for those worse beyond the interval."""
    worse = [v for v, e in values.items() if (below(e, base) if higher_is_better else above(e, base))]
    return HOLDS if not worse else FAILS + f": {', '.join(worse)} worse"


def decide_similar(a: Est, b: Est) -> str:
    """Claim: "``a`` and ``b`` are similar": holds unless the difference's interval excludes 0."""
    d = diff(a, b)
    return HOLDS if d.low <= 0 <= d.high else FAILS + ": different beyond the interval"


def decide_within(deltas: Mapping[str, Est], bound: float) -> str:
    """Claim: "Every delta is above ``-bound``" (a loss of at most ``bound``): holds if every interval
    is, does not hold if a point estimate is beyond, :data:`INCONCLUSIVE` otherwise."""
    beyond = [v for v, d in deltas.items() if d.value < -bound]
    if beyond:
        return FAILS + f": {', '.join(beyond)} beyond {fv(bound, 'pp')}"
    reach = [v for v, d in deltas.items() if d.low < -bound]
    if reach:
        return INCONCLUSIVE + f": the interval of {', '.join(reach)} reaches past {fv(-bound, 'pp')}"
    return HOLDS


def decide_close(pairs: Mapping[str, tuple[Est, Est]], margin: float) -> str:
    """Claim: "Each pair differs by at most ``margin``": holds if every difference's interval lies within
    ``±margin``, does not hold if a difference's point estimate lies beyond, else inconclusive."""
    ds = {k: diff(a, b) for k, (a, b) in pairs.items()}
    apart = [k for k, d in ds.items() if abs(d.value) > margin]
    if apart:
        return (
            FAILS + ": " + ", ".join(f"{k} {fv(ds[k].value, ds[k].unit, signed=True)} apart" for k in apart)
        )
    reach = [k for k, d in ds.items() if d.low < -margin or d.high > margin]
    if reach:
        return INCONCLUSIVE + f": the interval of {', '.join(reach)} reaches past {fv(margin, 'pp')}"
    return HOLDS


def decide_000_sizes(sizes: Mapping[str, float], compressed: Sequence[str]) -> str:
    """Every compressed model but ``ablated`` is smaller than ``baseline``, ``ablated`` larger, the
    quantized ones smallest. File sizes are exact (no interval)."""
    smaller = [v for v in compressed if v != "ablated" and sizes[v] < sizes[BASELINE]]
    most = min(compressed, key=lambda v: sizes[v])
    if len(smaller) < len(compressed) - 1 or sizes["ablated"] <= sizes[BASELINE]:
        return FAILS
    if most.startswith("quantized"):
        return HOLDS
    return PARTLY + f": all but ablation shrink, but {most} stored sparse is smaller than 8 bits"


def decide_000_most_distinct(sil: Mapping[str, Est], which: str, twins: Sequence[str] = ()) -> str:
    """``which`` has the highest silhouette, above every other model (``twins``, the same method
    deployed differently, excepted) beyond the difference's interval."""
    others = {v: e for v, e in sil.items() if v != which and v not in twins}
    return decide_beats_all(sil[which], others)


def decide_000_cw_quantized(naive: Est, worst: Est, float_base: Est) -> str:
    """Claim: "C&W is not effective against the quantized model": partly (gradient masking) when the
    naive route leaves the model more robust than the worst route beyond the interval; else holds
    if the quantized model is more robust than the float baseline beyond the interval."""
    if above(naive, worst):
        return (
            PARTLY + ": only on the naive route; through a differentiable surrogate the attack works, "
            "so it is gradient masking, not robustness"
        )
    return decide_beats(worst, float_base)


def decide_000_speedup(t_base: float, t_pruned: float, paper: float = 1.57) -> str:
    """C&W runs ``paper`` times quicker on the pruned model. One wall-clock measurement per model
    gives no interval, so the bar is the paper's own ratio."""
    return HOLDS if t_base / t_pruned >= paper else FAILS


def decide_001_falls(levels: Sequence[Est]) -> str:
    """Target accuracy falls as the pruning ratio grows: the last level below the first beyond the
    interval, and no step up beyond it."""
    ups = [i for i, (a, b) in enumerate(itertools.pairwise(levels)) if above(b, a)]
    if ups:
        return FAILS + ": rises beyond the interval at step " + ", ".join(str(i + 1) for i in ups)
    return HOLDS if below(levels[-1], levels[0]) else FAILS + ": no fall beyond the interval"


def decide_001_barely(clean: float, naive: float, worst: float, n: int, paper_drop: float) -> str:
    """Gradient attacks (the naive route) barely reduce the int8 model's accuracy: the share of the
    ``n`` samples they flip (``clean - naive``; a sample robust on a route is correct when clean)
    has a Wilson interval that reaches down to the paper's drop. Masking confirmed when the worst
    route is below the naive one beyond their intervals."""
    drop = wilson(max(clean - naive, 0.0), n)
    if drop.low > paper_drop:
        return FAILS + f": the drop's interval lies above the paper's {fv(paper_drop, 'pp')}"
    if below(wilson(worst, n), wilson(naive, n)):
        return HOLDS + " on the naive route, and our BPDA/transfer routes confirm it is masking"
    return HOLDS


def decide_001_adversarial(adv: Mapping[str, Est], pruned: Sequence[str], kd: str) -> str:
    """Pruned models are more vulnerable than the baseline (each below it beyond the interval),
    distilled ones less so (the student above the weakest pruned model beyond the interval)."""
    pruned_worse = all(below(adv[v], adv[BASELINE]) for v in pruned)
    weakest = min(pruned, key=lambda v: adv[v].value)
    kd_better = above(adv[kd], adv[weakest])
    if pruned_worse and kd_better:
        return HOLDS
    if pruned_worse or kd_better:
        return PARTLY + (": pruned models weaker" if pruned_worse else ": the student ahead of pruning")
    return FAILS


def decide_002_robust_better(cells: Mapping[str, tuple[Est, Est, Est, Est]]) -> str:
    """Robust base models do better on both measures "in general" (in more than half the cells):
    per cell (test accuracy standard, robust; robust accuracy standard, robust), ahead on both
    beyond the interval; partly when that holds on robust accuracy only."""
    both = [k for k, (ts, tr, rs, rr) in cells.items() if above(tr, ts) and above(rr, rs)]
    rob = [k for k, (_, _, rs, rr) in cells.items() if above(rr, rs)]
    half = len(cells) / 2
    if len(both) > half:
        return HOLDS
    return PARTLY + ": on robust accuracy only" if len(rob) > half else FAILS


def decide_003_flips(flips: Mapping[str, Est], deltas: Mapping[str, float], factor: float = 3.0) -> str:
    """Prediction changes far exceed the accuracy change: per variant, the flip rate is at least
    ``factor`` times ``|Δacc|`` and its interval lies above ``|Δacc|``."""
    ok = [v for v, f in flips.items() if f.value >= factor * abs(deltas[v]) and f.low > abs(deltas[v])]
    return all_some_none(ok, list(flips), PARTLY + f": {', '.join(ok)}")


def decide_003_classes(class_deltas: Mapping[str, Est]) -> str:
    """Class-level accuracy changes: holds if some class's change (paired bootstrap interval)
    excludes 0."""
    sig = [k for k, d in class_deltas.items() if d.low > 0 or d.high < 0]
    return HOLDS if sig else FAILS + ": no class change beyond its interval"


def decide_003_confidence(conf: Mapping[str, tuple[Est, Est]]) -> str:
    """Per variant (flipped, all): the mean confidence on the flipped samples is below that on all
    samples beyond the interval (no flip: not shown)."""
    ok = [v for v, (f, m) in conf.items() if not math.isnan(f.value) and below(f, m)]
    return all_some_none(ok, list(conf), PARTLY + f": {len(ok)}/{len(conf)} variants")


def mean_est(values: Iterable[Est]) -> Est:
    """The mean of estimates that share images and a baseline: the mean of their values and of
    their intervals' ends (the interval of a mean of values that move together; the widest)."""
    vs = list(values)
    return Est(
        statistics.fmean(e.value for e in vs),
        statistics.fmean(e.low for e in vs),
        statistics.fmean(e.high for e in vs),
        vs[0].unit,
    )


def decide_003_mad(mad: Mapping[str, Est], paper: float = 0.075) -> str:
    """Saliency maps move by about the paper's MAD (~7.5%) on average: holds unless the mean MAD's
    interval lies below it."""
    m = mean_est(mad.values())
    if m.high >= paper:
        return HOLDS
    less = f"{fv(paper / m.value, 'ratio')} less" if m.value > 0 else "less"
    return FAILS + f": the maps move {less} than the paper's {fv(paper, m.unit)}"


def masking_errors(recipe: str, flags: Mapping[str, float]) -> list[str]:
    """One error line per baseline flagged for gradient masking (``flags``: baseline variant name
    -> the adversarial probe's ``gradient_masking``; NaN: not measured)."""
    out = []
    for variant, flag in flags.items():
        if math.isnan(flag):
            out.append(f"{recipe}: {variant} has no gradient_masking verdict from the adversarial probe")
        elif flag >= 0.5:
            out.append(
                f"{recipe}: the float baseline {variant} is flagged for gradient masking "
                "(adversarial probe: gradient_masking = 1); its robustness numbers are void"
            )
    return out


# --- reading a run ----------------------------------------------------------------------------


class Run:
    """The results of one recipe run, with lookups by variant, probe, metric and parameters.

    ``test_samples``: the size of the recipe's test split (accuracy rows carry no sample count)."""

    def __init__(self, out: Path, test_samples: int | None = None) -> None:
        self.df = export_frame(out)
        self.seeds = sorted({v.split("/")[0] for v in self.df["variant"] if v.startswith("seed")})
        self.test_samples = test_samples

    def names(self, variant: str) -> list[str]:
        return [f"{s}/{variant}" for s in self.seeds] if self.seeds else [variant]

    def _rows(self, name: str, probe: str, metric: str, params: Mapping[str, Any]) -> Any:
        df = self.df
        sel = (df["variant"] == name) & (df["probe"] == probe) & (df["metric"] == metric)
        for k, v in params.items():
            if k not in df.columns:
                raise Missing(f"{name} {probe}/{metric}: no column {k!r}")
            sel &= df[k].astype(str) == str(v)
        return df[sel]

    def values(self, variant: str, probe: str, metric: str, **params: Any) -> list[float]:
        """One value per seed (one value for a single-seed run)."""
        out = []
        for name in self.names(variant):
            rows = self._rows(name, probe, metric, params)
            if len(rows) != 1:
                raise Missing(f"{name} {probe}/{metric} {params}: {len(rows)} rows")
            out.append(float(rows["value"].iloc[0]))
        return out

    def get(self, variant: str, probe: str, metric: str, **params: Any) -> float:
        """The value (the mean over seeds)."""
        return statistics.fmean(self.values(variant, probe, metric, **params))

    def unit(self, probe: str, metric: str) -> str:
        """The unit of ``metric``: the export's ``unit`` column, else the probe's declaration."""
        df = self.df
        if "unit" in df.columns:
            units = df[(df["probe"] == probe) & (df["metric"] == metric)]["unit"].dropna()
            units = units[units.astype(str) != ""]
            if len(units):
                return str(units.iloc[0])
        declared = getattr(PROBES.get(probe), "units", {}).get(metric) if probe in PROBES else None
        if not declared:
            raise Missing(f"{probe}/{metric}: no unit (neither in the export nor declared)")
        return str(declared)

    def fmt(self, variant: str, probe: str, metric: str, **params: Any) -> str:
        """The value in its unit (the mean over seeds)."""
        return fv(self.get(variant, probe, metric, **params), self.unit(probe, metric))

    def share(self, variant: str, probe: str, metric: str, n: int, **params: Any) -> Est:
        """A share of ``n`` samples with its Wilson interval; over seeds, the mean with the wider
        of Student's t interval over the seeds and the Wilson interval of the pooled samples."""
        vals = self.values(variant, probe, metric, **params)
        unit = self.unit(probe, metric)
        mean = statistics.fmean(vals)
        est = wilson(mean, n * len(vals), unit)
        if len(vals) > 1:
            from scipy.stats import t

            q = float(t.ppf((1 + LEVEL) / 2, len(vals) - 1))
            half = q * statistics.stdev(vals) / math.sqrt(len(vals))
            # a share cannot leave [0, 1], whatever the t interval's symmetric half-width says
            est = Est(mean, max(0.0, min(est.low, mean - half)), min(1.0, max(est.high, mean + half)), unit)
        return est

    def boot(self, variant: str, probe: str, metric: str, **params: Any) -> Est:
        """A probe's value with its bootstrap interval (``<metric>_ci_low`` / ``_ci_high``)."""
        value = self.get(variant, probe, metric, **params)
        lo = self.get(variant, probe, f"{metric}_ci_low", level=LEVEL, **params)
        hi = self.get(variant, probe, f"{metric}_ci_high", level=LEVEL, **params)
        return Est(value, lo, hi, self.unit(probe, metric))

    def samples(self, variant: str, probe: str) -> int:
        """How many test samples ``probe`` used (its ``clean_accuracy`` row's ``samples``)."""
        rows = self._rows(self.names(variant)[0], probe, "clean_accuracy", {})
        if len(rows) != 1 or "samples" not in rows.columns:
            raise Missing(f"{variant} {probe}: no clean_accuracy row")
        return int(rows["samples"].iloc[0])

    def n_test(self) -> int:
        if self.test_samples is None:
            raise Missing("the size of the test split is unknown")
        return self.test_samples

    def acc(self, variant: str) -> Est:
        """Test accuracy with its Wilson interval over the test split."""
        return self.share(variant, "accuracy", "accuracy", self.n_test(), split="test")

    def size(self, variant: str) -> float:
        """The smallest of the dense file, the sparse file and the packed size (as the report)."""
        sizes = []
        for m in ("file_bytes", "sparse_file_bytes", "packed_bytes"):
            with contextlib.suppress(Missing):
                sizes.append(self.get(variant, "efficiency", m))
        if not sizes:
            raise Missing(f"{variant}: no size")
        return min(sizes)

    def masking_flags(self) -> dict[str, float]:
        """The adversarial probe's ``gradient_masking`` of every baseline (NaN where missing);
        empty when the recipe has no adversarial probe."""
        df = self.df
        if not (df["probe"] == "adversarial").any():
            return {}
        flags = {}
        for name in self.names(BASELINE):
            rows = self._rows(name, "adversarial", "gradient_masking", {})
            flags[name] = float(rows["value"].iloc[0]) if len(rows) == 1 else math.nan
        return flags


def texts(ests: Mapping[str, Est], signed: bool = False) -> str:
    return ", ".join(f"{v} {e.text(signed)}" for v, e in ests.items())


def wilson_note(n: int, what: str = "test images") -> str:
    return f"95% Wilson intervals over {n} {what}"


DIFF_NOTE = "a difference counts when its interval (MOVER, from the two) excludes 0"


# --- seed 000 -------------------------------------------------------------------------------


def seed000(run: Run) -> list[Finding]:
    out = []
    sel = run.df[(run.df["metric"] == "selected_level")]
    picked = [str(v) for v in sel["selected_variant"].dropna()] if "selected_variant" in sel else []
    if not picked:
        raise Missing("seed000: the sweep selected no level")
    pruned = picked[0].split("/", 1)[-1]
    compressed = [pruned, "quantized", "quantized-int8-deployed", "ablated", "pruned+quantized"]
    n = run.n_test()
    acc = {v: run.acc(v) for v in [BASELINE, *compressed]}
    deltas = {v: diff(acc[v], acc[BASELINE]) for v in compressed}
    out.append(
        Finding(
            "Every compressed model keeps test accuracy within 5% of the baseline (Table II; pruning "
            "is tuned to that rule).",
            f"baseline {acc[BASELINE].text()}; change: {texts(deltas, signed=True)} (the sweep kept "
            f"{pruned}; {wilson_note(n)}, MOVER for the change; within 5 points only if the whole "
            "interval is)",
            decide_within(deltas, 0.05),
        )
    )
    sizes = {v: run.size(v) for v in [BASELINE, *compressed]}
    most = min(compressed, key=lambda v: sizes[v])
    bytes_unit = run.unit("efficiency", "file_bytes")
    out.append(
        Finding(
            "Model size shrinks for every method except layer ablation, which grows VGG-6 (the "
            "flattened layer gets wider); quantization shrinks it most.",
            ", ".join(f"{v} {fv(sizes[v], bytes_unit)}" for v in sizes)
            + f" (the smallest of dense, sparse and packed files; exact, no interval); smallest: {most}",
            decide_000_sizes(sizes, compressed),
        )
    )
    # seed 000's t-SNE is of the first fully connected layer (Fig. 2)
    sil = {v: run.boot(v, "embedding", "silhouette", inputs="clean", layer="first_fc") for v in sizes}
    sil_note = (
        "95% bootstrap intervals over the embedded test images, "
        f"±{fv(max(e.half for e in sil.values()), sil[BASELINE].unit)} at most; {DIFF_NOTE}"
    )
    out.append(
        Finding(
            "t-SNE: no compressed model separates the classes worse than the baseline (Fig. 2).",
            f"silhouette of the t-SNE map of the first FC layer: {texts(sil)} ({sil_note})",
            decide_not_worse({v: sil[v] for v in compressed}, sil[BASELINE]),
        )
    )
    best = max(sil, key=lambda v: sil[v].value)
    out.append(
        Finding(
            "t-SNE: the quantized model shows the most distinct clusters.",
            f"highest silhouette: {best} ({sil[best].text()}); quantized {sil['quantized'].text()} "
            f"(the quantized model must beat every other but its int8 twin; {sil_note})",
            decide_000_most_distinct(sil, "quantized", twins=("quantized-int8-deployed",)),
        )
    )

    def cw(v: str, eps: float) -> float:
        """Robust accuracy under C&W at L2 <= eps: the worst route where there are several."""
        try:
            return run.get(v, "adversarial", "robust_accuracy", attack=CW, eps=eps, route="worst")
        except Missing:
            return run.get(v, "adversarial", "robust_accuracy", attack=CW, eps=eps, route="white-box")

    m = run.samples(BASELINE, "adversarial")
    unit = run.unit("adversarial", "robust_accuracy")
    rob = {v: wilson(cw(v, 1.0), m, unit) for v in sizes}
    out.append(
        Finding(
            "C&W: none of the compressed models defends worse than the baseline (Table III).",
            f"robust accuracy under C&W L2 ≤ 1.0: {texts(rob)} ({wilson_note(m, 'attacked samples')}; "
            f"{DIFF_NOTE})",
            decide_not_worse({v: rob[v] for v in compressed}, rob[BASELINE]),
        )
    )
    q = "quantized-int8-deployed"
    naive = wilson(run.get(q, "adversarial", "robust_accuracy", attack=CW, eps=0.5, route="naive"), m, unit)
    worst = wilson(cw(q, 0.5), m, unit)
    float_base = wilson(cw(BASELINE, 0.5), m, unit)
    masking = run.get(q, "adversarial", "gradient_masking")
    out.append(
        Finding(
            "C&W is not effective against the quantized models (the paper reads this as robustness).",
            f"int8 model at L2 ≤ 0.5: naive route (the int8 model's own gradients) {naive.text()}, worst "
            f"of naive/BPDA/transfer {worst.text()}, float baseline {float_base.text()}; gradient-masking "
            f"flag {fv(masking, 'flag')} ({wilson_note(m, 'attacked samples')}; {DIFF_NOTE})",
            decide_000_cw_quantized(naive, worst, float_base),
        )
    )
    t_base = run.get(BASELINE, "adversarial", "seconds_per_sample", attack=CW, eps=0.5, route="white-box")
    t_pr = run.get(pruned, "adversarial", "seconds_per_sample", attack=CW, eps=0.5, route="white-box")
    s_unit = run.unit("adversarial", "seconds_per_sample")
    out.append(
        Finding(
            "C&W runs about 1.57× quicker on the pruned model than on the baseline.",
            f"{fv(t_base / t_pr, 'ratio')} (seconds per sample {fv(t_base, s_unit)} vs {fv(t_pr, s_unit)}; "
            "one wall-clock measurement each, so no interval: the bar is the paper's 1.57×; "
            "unstructured sparsity keeps dense kernels)",
            decide_000_speedup(t_base, t_pr),
        )
    )
    drop = {
        v: run.boot(v, "explain", "average_drop", method="gradcam", layer=_layer(run, v, "gradcam"))
        for v in sizes
    }
    rho = {v: run.get(v, "explain", "saliency_spearman", method="gradcam") for v in compressed}
    rho_unit = run.unit("explain", "saliency_spearman")
    out.append(
        Finding(
            "CAM: the compressed models keep (and even sharpen) the localization of the baseline "
            "(Fig. 5, judged by eye).",
            f"Grad-CAM Average Drop (lower is better): {texts(drop)} (95% bootstrap intervals over "
            f"{n} test images; worse only beyond the difference's interval); rank correlation of the "
            "maps with the baseline's: " + ", ".join(f"{v} {fv(rho[v], rho_unit)}" for v in rho),
            decide_not_worse({v: drop[v] for v in compressed}, drop[BASELINE], higher_is_better=False),
        )
    )
    return out


def _layer(run: Run, variant: str, method: str) -> str:
    """The saliency layer the explain probe used for ``variant`` and ``method`` (found again on each
    variant)."""
    df = run.df
    rows = df[
        (df["variant"].isin(run.names(variant)))
        & (df["probe"] == "explain")
        & (df["metric"] == "average_drop")
        & (df["method"] == method)
    ]
    layers = rows["layer"].dropna().unique()
    if len(layers) != 1:
        raise Missing(f"{variant}: explain layers {list(layers)}")
    return str(layers[0])


# --- seed 001 -------------------------------------------------------------------------------


def seed001(run: Run) -> list[Finding]:
    out = []
    levels = ["filter-pruned@0.3", "filter-pruned@0.5", "filter-pruned@0.7"]
    compressed = [*levels, "kd-resnet18", "ptsq-int8"]
    n = run.n_test()
    t_note = (
        f"95% Wilson intervals at the {n} test images restyled (each image's mean over the domains "
        f"lies in [0, 1], so this bounds the mean's spread); {DIFF_NOTE}"
    )
    tgt = {v: run.share(v, "shift", "mean_target_accuracy", n) for v in [BASELINE, *compressed]}
    src = {v: run.fmt(v, "accuracy", "accuracy", split="test") for v in tgt}
    lower = [v for v in compressed if below(tgt[v], tgt[BASELINE])]
    out.append(
        Finding(
            "Compressed models are less robust to domain shift than their original network.",
            "mean accuracy on the 4 restyled test sets (source test accuracy): "
            + ", ".join(f"{v} {tgt[v].text()} ({src[v]})" for v in tgt)
            + f" ({t_note})",
            all_some_none(lower, compressed, PARTLY + f": lower for {', '.join(lower)}"),
        )
    )
    out.append(
        Finding(
            "Target-domain accuracy falls as the compression (pruning) ratio grows.",
            " → ".join(f"{v.split('@')[1]}: {tgt[v].text()}" for v in levels) + f" ({t_note})",
            decide_001_falls([tgt[v] for v in levels]),
        )
    )
    kd_params = run.get("kd-resnet18", "efficiency", "params")
    p_unit = run.unit("efficiency", "params")
    nearest = min(levels, key=lambda v: abs(run.get(v, "efficiency", "params") - kd_params))
    out.append(
        Finding(
            "Networks compressed by knowledge distillation are much more robust to distribution "
            "shift than pruned ones.",
            f"KD ResNet-18 ({fv(kd_params, p_unit)} params) {tgt['kd-resnet18'].text()} vs the pruned "
            f"level nearest in size, {nearest} ({fv(run.get(nearest, 'efficiency', 'params'), p_unit)}), "
            f"{tgt[nearest].text()} ({t_note})",
            decide_beats(tgt["kd-resnet18"], tgt[nearest]),
        )
    )
    others = [*levels, "kd-resnet18"]
    out.append(
        Finding(
            "Post-training int8 quantization is the most robust to distribution shift, ahead of "
            "pruned and distilled models (Tables 1–2).",
            f"int8 {tgt['ptsq-int8'].text()} vs best other {max(others, key=lambda v: tgt[v].value)} "
            f"{max((tgt[v] for v in others), key=lambda e: e.value).text()}; int8 minus baseline "
            f"{diff(tgt['ptsq-int8'], tgt[BASELINE]).text(signed=True)} ({t_note})",
            decide_beats_all(tgt["ptsq-int8"], {v: tgt[v] for v in others}),
        )
    )
    m = run.samples("ptsq-int8", "adversarial")
    unit = run.unit("adversarial", "robust_accuracy")
    naive = run.get("ptsq-int8", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="naive")
    worst = run.get("ptsq-int8", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="worst")
    clean = run.get("ptsq-int8", "adversarial", "clean_accuracy", samples=m)
    paper_drop = 0.883 - 0.879
    out.append(
        Finding(
            "Gradient-based attacks barely reduce the accuracy of the int8 model (88.3% → 87.9% for "
            "ResNet-18), which the paper attributes to gradient masking (Table 3).",
            f"int8 under PGD L∞ 0.1: clean {fv(clean, unit)}, naive route {fv(naive, unit)} (drop "
            f"{wilson(max(clean - naive, 0.0), m, 'pp').text()}), worst of naive/BPDA/transfer "
            f"{wilson(worst, m, unit).text()} ({wilson_note(m, 'attacked samples')}; barely: the drop's "
            f"interval reaches the paper's {fv(paper_drop, 'pp')})",
            decide_001_barely(clean, naive, worst, m, paper_drop),
        )
    )
    adv = {v: run.share(v, "adversarial", "average_adversarial_accuracy", m) for v in [BASELINE, *others]}
    out.append(
        Finding(
            "Pruned networks are more vulnerable to adversarial perturbations; distilled ones less so.",
            f"average adversarial accuracy over attacks and strengths: {texts(adv)} "
            f"({wilson_note(m, 'attacked samples')}, which bound a mean over attacks; {DIFF_NOTE})",
            decide_001_adversarial(adv, levels, "kd-resnet18"),
        )
    )
    out.append(
        Finding(
            "Larger networks lose more robustness than smaller ones compressed to a similar size.",
            "needs two base architectures; the recipe has one (run it with model.name resnet18 to compare)",
            UNTESTED,
        )
    )
    return out


# --- seed 002 -------------------------------------------------------------------------------


def seed002(run: Run) -> list[Finding]:
    out = []
    k = len(run.seeds) or 1
    m = run.samples(BASELINE, "adversarial")
    n = run.n_test()

    def rob(v: str) -> Est:
        # the per-sample worst case over every attack and route at the headline (norm, eps)
        return run.share(v, "adversarial", "robust_accuracy_headline", m)

    def acc(v: str) -> Est:
        return run.acc(v)

    note = (
        f"mean over {k} seeds; 95% interval: the wider of Student's t over the seeds and Wilson over "
        f"the pooled samples ({k}×{m} attacked, {k}×{n} test); {DIFF_NOTE}"
    )
    plain = ["st-pruned", "st-int8"]
    out.append(
        Finding(
            "Compression does not in itself cost robustness.",
            f"PGD-20 robust accuracy: baseline {rob(BASELINE).text()}, "
            + ", ".join(f"{v} {rob(v).text()}" for v in plain)
            + f" ({note})",
            decide_not_worse({v: rob(v) for v in plain}, rob(BASELINE)),
        )
    )
    pairs = [("st-pruned-ft", "st-pruned-advft"), ("st-int8-ft", "st-int8-advft")]
    out.append(
        Finding(
            "Adversarial fine-tuning improves robustness far more than standard fine-tuning "
            "(Tables 3 and 5).",
            "; ".join(f"{a} {rob(a).text()} vs {b} {rob(b).text()}" for a, b in pairs) + f" ({note})",
            all_some_none(
                [b for a, b in pairs if above(rob(b), rob(a))],
                [b for _, b in pairs],
                PARTLY + ": for " + ", ".join(b for a, b in pairs if above(rob(b), rob(a))),
            ),
        )
    )
    close = {
        f"{family} {what}": (f(f"st-{family}-advft"), f(f"rb-{family}-advft"))
        for family in ("int8", "pruned")
        for what, f in (("test", acc), ("robust", rob))
    }
    ptq = {key: pair for key, pair in close.items() if key.startswith("int8")}
    pruned = {key: pair for key, pair in close.items() if key.startswith("pruned")}
    pruned_verdict = kind(decide_close(pruned, 0.05))
    out.append(
        Finding(
            "With adversarial fine-tuning, standard models come close to robust (adversarially "
            "trained) models; for PTQ within 5 points on both test and robust accuracy.",
            "; ".join(f"{key}: st {a.text()} vs rb {b.text()}" for key, (a, b) in close.items())
            + f" (within 5 points only if the whole interval of the difference is; pruning: "
            f"{pruned_verdict}; {note})",
            decide_close(ptq, 0.05),
        )
    )
    kinds = ["pruned", "pruned-ft", "pruned-advft", "int8", "int8-ft", "int8-advft"]
    cells = {c: (acc(f"st-{c}"), acc(f"rb-{c}"), rob(f"st-{c}"), rob(f"rb-{c}")) for c in kinds}
    rob_ahead = sum(above(rr, rs) for _, _, rs, rr in cells.values())
    both = sum(above(tr, ts) and above(rr, rs) for ts, tr, rs, rr in cells.values())
    out.append(
        Finding(
            "In general the robust models do better on both measures.",
            f"robust base ahead beyond the interval on robust accuracy in {rob_ahead}/6 cells, on both "
            f"in {both}/6; robust base {acc('robust').text()} test, {rob('robust').text()} robust ({note})",
            decide_002_robust_better(cells),
        )
    )
    cost = [b for a, b in pairs if below(acc(b), acc(a))]
    out.append(
        Finding(
            "Adversarial fine-tuning trades some clean accuracy for robustness.",
            "; ".join(f"test accuracy {a} {acc(a).text()} vs {b} {acc(b).text()}" for a, b in pairs)
            + f" ({note})",
            all_some_none(cost, [b for _, b in pairs], PARTLY + f": for {', '.join(cost)}"),
        )
    )
    return out


# --- seed 003 -------------------------------------------------------------------------------


def seed003(run: Run) -> list[Finding]:
    out = []
    variants = ["pruned", "ptq-w8a8", "ptq-w4a8", "pruned+ptq-w8a8"]
    n = run.n_test()
    base = run.acc(BASELINE)
    delta = {v: run.boot(v, "classes", "accuracy_delta", split="test") for v in variants}
    eight = {v: d for v, d in delta.items() if v != "ptq-w4a8"}
    four = delta["ptq-w4a8"]
    out.append(
        Finding(
            "Accuracy drops by less than 1 point after compression; 4-bit PTQ sometimes degrades severely.",
            f"baseline {base.text()}; change: {texts(delta, signed=True)} (95% paired bootstrap "
            f"intervals over {n} test images, classes probe; under 1 point only if the whole interval of "
            "every 8-bit model is)",
            decide_within(eight, 0.01)
            + ("; 4-bit lost more than 1 point, as the paper saw" if four.high < -0.01 else ""),
        )
    )
    f_unit = run.unit("classes", "flip_rate")
    flips = {v: wilson(run.get(v, "classes", "flip_rate", split="test"), n, f_unit) for v in variants}
    out.append(
        Finding(
            "Up to 7.5% of the predictions change class while accuracy moves by under 1 point.",
            f"prediction flips: {texts(flips)} ({wilson_note(n)}); |Δacc|: "
            + ", ".join(f"{v} {fv(abs(d.value), d.unit)}" for v, d in delta.items())
            + " (holds per model when the flip rate is at least 3×|Δacc| and its interval lies above |Δacc|)",
            decide_003_flips(flips, {v: d.value for v, d in delta.items()}),
        )
    )
    classes = sorted({str(c) for c in run.df["class"].dropna()}) if "class" in run.df else []
    worst: dict[str, tuple[str, Est]] = {}
    for v in variants:
        best: tuple[str, Est] | None = None
        for c in classes:
            e = run.boot(v, "classes", "class_accuracy_delta", split="test", **{"class": c})
            if best is None or abs(e.value) > abs(best[1].value):
                best = (c, e)
        if best is None:
            raise Missing(f"{v}: no class_accuracy_delta rows")
        worst[v] = best
    out.append(
        Finding(
            "Class-level accuracy changes by up to 15 points, with no pattern in the classes affected.",
            "largest class change per model: "
            + ", ".join(f"{v} class {c} {e.text(signed=True)}" for v, (c, e) in worst.items())
            + " (95% paired bootstrap intervals within the class, classes probe; holds if one excludes 0)",
            decide_003_classes({f"{v} class {c}": e for v, (c, e) in worst.items()}),
        )
    )
    nan = Est(math.nan, math.nan, math.nan, run.unit("classes", "mean_confidence"))
    conf = {
        # a bootstrap over one flipped sample has no spread to measure: not shown
        v: (
            run.boot(v, "classes", "mean_confidence_flipped", split="test")
            if flips[v].value * n >= 2
            else nan,
            run.boot(v, "classes", "mean_confidence", split="test"),
        )
        for v in variants
    }
    out.append(
        Finding(
            "Compression can change prediction confidence strongly, especially for the samples whose "
            "prediction changed.",
            "mean confidence on flipped samples vs all: "
            + ", ".join(f"{v} {f.text()} vs {a.text()}" for v, (f, a) in conf.items())
            + f" (95% bootstrap intervals over the flipped / all {n} test images, none with under 2 "
            f"flips; {DIFF_NOTE})",
            decide_003_confidence(conf),
        )
    )
    mad = {v: run.boot(v, "explain", "saliency_mad", method="gradient") for v in variants}
    mean = mean_est(mad.values())
    out.append(
        Finding(
            "Saliency maps change significantly after compression: mean absolute deviation ~7.5% on average.",
            f"MAD of the normalised gradient saliency maps against the baseline's: {texts(mad)}; mean "
            f"{mean.text()} (95% bootstrap intervals over {n} test images; the mean's interval is the mean "
            "of the four, as they share images and baseline; holds unless it lies below 7.5%)",
            decide_003_mad(mad),
        )
    )
    return out


# --- seed 004 -------------------------------------------------------------------------------


def seed004(run: Run) -> list[Finding]:
    t, s = BASELINE, "kd-resnet18"
    n = run.n_test()

    def cam(v: str, metric: str) -> Est:
        return run.boot(v, "explain", metric, method="cam", layer=_layer(run, v, "cam"))

    at, as_ = run.acc(t), run.acc(s)
    p_unit = run.unit("efficiency", "params")
    params = {v: fv(run.get(v, "efficiency", "params"), p_unit) for v in (t, s)}
    boot = f"95% bootstrap intervals over {n} test images; {DIFF_NOTE}"
    rows = [
        Finding(
            "The distilled ResNet-18 student reaches accuracy similar to the WRN-28-10 teacher.",
            f"teacher {at.text()}, student {as_.text()} (params {params[t]} → {params[s]}; "
            f"{wilson_note(n)}; similar unless the "
            "difference's interval excludes 0)",
            decide_similar(as_, at),
        )
    ]
    for metric, label, paper, higher in (
        ("average_drop", "Average Drop", "a lower Average Drop (8% vs the teacher's 12%)", False),
        ("complexity", "Complexity (mean of the normalised map)", "a lower Complexity (2.73 vs 5.65)", False),
        ("coherency_ssim", "Coherency (SSIM)", "a higher Coherency (SSIM)", True),
    ):
        te, st = cam(t, metric), cam(s, metric)
        rows.append(
            Finding(
                f"The student's CAMs have {paper}.",
                f"{label}: teacher {te.text()}, student {st.text()} ({boot})",
                decide_beats(st, te, higher=higher),
            )
        )
    return rows


CHECKS: dict[str, Callable[[Run], list[Finding]]] = {
    "seed000": seed000,
    "seed001": seed001,
    "seed002": seed002,
    "seed003": seed003,
    "seed004": seed004,
}


def markdown(name: str, findings: Iterable[Finding], seconds: float | None) -> str:
    lines = [f"### {TITLES[name]}", ""]
    took = f" ({fv(round(seconds), 's')})" if seconds else ""
    lines.append(f"Recipe: `examples/{name}_digits.yaml`{took}.")
    lines += ["", "| # | The paper's finding | Ours on digits | On digits |", "|---|---|---|---|"]
    for i, f in enumerate(findings, 1):
        cells = [str(i), f.paper, f.ours, f"**{f.verdict}**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(results: list[tuple[str, list[Finding]]]) -> str:
    """The counts of each verdict per paper, as a Markdown table (the docs' summary)."""
    lines = [
        "| paper | findings checked | " + " | ".join(VERDICTS) + " |",
        "|---|---|" + "---|" * len(VERDICTS),
    ]
    for name, findings in results:
        counts = [sum(kind(f.verdict) == v for f in findings) for v in VERDICTS]
        lines.append(
            f"| {TITLES[name].split(' — ')[0]} | {len(findings)} | " + " | ".join(map(str, counts)) + " |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"


def update_docs(path: Path, tables: str) -> None:
    """Put ``tables`` between the markers of ``path``, with the version, commit and machine."""
    import os
    import platform
    import subprocess

    import torch

    from compaudit import __version__

    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} part to replace")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    stamp = (
        f"_Measured with compaudit {__version__} (commit `{commit or 'unknown'}`), torch "
        f"{torch.__version__}, {platform.machine()} CPU, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}._"
    )
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{stamp}\n\n{tables}\n{END}{tail}")


def test_split_size(recipe: Path) -> int:
    """The number of test images of the recipe's data set."""
    spec = load_experiment(recipe).data
    return len(load_dataset(spec.name, spec.root, spec.params).test)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"), help="folder of the five runs")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    ap.add_argument("--only", choices=RECIPES, action="append", help="run only these recipes")
    ap.add_argument("--no-run", action="store_true", help="read the stored runs, run nothing")
    ap.add_argument("--update-docs", type=Path, help="replace the findings part of this Markdown file")
    args = ap.parse_args(argv)
    parts, failed = [], []
    results: list[tuple[str, list[Finding]]] = []
    for name in args.only or RECIPES:
        out = args.out / name
        recipe = HERE / f"{name}_digits.yaml"
        seconds = None
        if not args.no_run:
            start = time.perf_counter()
            summary = run_experiment(load_experiment(recipe), out)
            seconds = time.perf_counter() - start
            print(
                f"{name}: {summary.new} new, {summary.cached} cached, "
                f"{len(summary.failed)} failed, {fv(round(seconds), 's')}"
            )
            if summary.failed:
                failed.append(f"{name}: {len(summary.failed)} failed job(s)")
        run = Run(out, test_split_size(recipe))
        failed += masking_errors(name, run.masking_flags())
        try:
            findings = CHECKS[name](run)
        except Missing as exc:
            failed.append(f"{name}: {exc}")
            continue
        parts.append(markdown(name, findings, seconds))
        results.append((name, findings))
    text = "### Summary\n\n" + summary_table(results) + "\n" + "\n".join(parts)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.update_docs and not failed:
        update_docs(args.update_docs, text)
    for f in failed:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
