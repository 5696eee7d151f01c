"""Run the digits version of each seed paper's recipe and check the paper's findings on it.

For every seed paper (``../shared/seeds/000`` to ``004``), ``examples/seedNNN_digits.yaml`` is the
paper's experiment scaled down to the embedded digits data. This script runs the five recipes
(resuming whatever is already stored under ``--out``), reads their results back through
:func:`compaudit.export_frame`, and checks each finding the paper states against our numbers. It
prints a Markdown table per paper (the paper's finding, our numbers, whether the finding holds on
digits) and can write it to a file; ``docs/reproductions.md`` is that output with commentary.

A finding that does not hold is not an error: the script fails (exit 1) only when a recipe fails or
a number a finding needs is missing.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compaudit import export_frame, load_experiment, run_experiment

HERE = Path(__file__).resolve().parent
RECIPES = ("seed000", "seed001", "seed002", "seed003", "seed004")
TITLES = {
    "seed000": "Seed 000 — behaviours of pretrained compressed CNNs (VGG-6; C&W, t-SNE, CAM)",
    "seed001": "Seed 001 — robustness of compressed ResNets to distribution shift",
    "seed002": "Seed 002 — adversarial fine-tuning of compressed networks",
    "seed003": "Seed 003 — beyond test accuracy (LeNet-5; classes, flips, confidence, saliency)",
    "seed004": "Seed 004 — knowledge distillation and CAM explainability",
}

HOLDS, FAILS, PARTLY, UNTESTED = "holds", "does not hold", "partly", "not tested"
#: silhouettes closer than this count as equal (t-SNE maps of a few hundred digits vary about as much)
SIL_TOL = 0.02


class Missing(Exception):
    """A number a finding needs is not in the run."""


@dataclass
class Finding:
    paper: str  # the paper's claim, with its number where it gives one
    ours: str  # our numbers, in words
    verdict: str


class Run:
    """The results of one recipe run, with lookups by variant, probe, metric and parameters."""

    def __init__(self, out: Path) -> None:
        self.df = export_frame(out)
        self.seeds = sorted({v.split("/")[0] for v in self.df["variant"] if v.startswith("seed")})

    def values(self, variant: str, probe: str, metric: str, **params: Any) -> list[float]:
        """One value per seed (one value for a single-seed run)."""
        names = [f"{s}/{variant}" for s in self.seeds] if self.seeds else [variant]
        out = []
        for name in names:
            sel = (self.df["variant"] == name) & (self.df["probe"] == probe) & (self.df["metric"] == metric)
            for k, v in params.items():
                if k not in self.df.columns:
                    raise Missing(f"{name} {probe}/{metric}: no column {k!r}")
                sel &= self.df[k].astype(str) == str(v)
            rows = self.df[sel]
            if len(rows) != 1:
                raise Missing(f"{name} {probe}/{metric} {params}: {len(rows)} rows")
            out.append(float(rows["value"].iloc[0]))
        return out

    def get(self, variant: str, probe: str, metric: str, **params: Any) -> float:
        """The value (the mean over seeds)."""
        return statistics.fmean(self.values(variant, probe, metric, **params))

    def fmt(self, variant: str, probe: str, metric: str, kind: str = "pct", **params: Any) -> str:
        """``98.1%`` or, over seeds, ``98.1% ± 0.4``."""
        vals = self.values(variant, probe, metric, **params)
        scale, unit = (100.0, "%") if kind == "pct" else (1.0, "")
        mean = statistics.fmean(vals) * scale
        digits = 1 if kind == "pct" else 3
        text = f"{mean:.{digits}f}{unit}"
        if len(vals) > 1:
            text += f" ± {statistics.stdev(vals) * scale:.{digits}f}"
        return text

    def samples(self, variant: str, probe: str) -> int:
        """How many test samples ``probe`` used (its ``clean_accuracy`` row's ``samples``)."""
        df = self.df
        name = f"{self.seeds[0]}/{variant}" if self.seeds else variant
        rows = df[(df["variant"] == name) & (df["probe"] == probe) & (df["metric"] == "clean_accuracy")]
        if len(rows) != 1:
            raise Missing(f"{name} {probe}: no clean_accuracy row")
        return int(rows["samples"].iloc[0])

    def size(self, variant: str) -> float:
        """The smallest of the dense file, the sparse file and the packed size (as the report)."""
        sizes = []
        for m in ("file_bytes", "sparse_file_bytes", "packed_bytes"):
            with contextlib.suppress(Missing):
                sizes.append(self.get(variant, "efficiency", m))
        if not sizes:
            raise Missing(f"{variant}: no size")
        return min(sizes)


def verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def all_some_none(found: list[str], of: list[str], partly: str) -> str:
    """The verdict on "every one of ``of``": holds if ``found`` is all of them, ``partly`` if some."""
    return HOLDS if len(found) == len(of) else partly if found else FAILS


def acc(run: Run, v: str) -> float:
    return run.get(v, "accuracy", "accuracy", split="test")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


# --- seed 000 -------------------------------------------------------------------------------


def seed000(run: Run) -> list[Finding]:
    out = []
    sel = run.df[(run.df["metric"] == "selected_level")]
    picked = [str(v) for v in sel["selected_variant"].dropna()] if "selected_variant" in sel else []
    if not picked:
        raise Missing("seed000: the sweep selected no level")
    pruned = picked[0].split("/", 1)[-1]
    compressed = [pruned, "quantized", "quantized-int8-deployed", "ablated", "pruned+quantized"]
    base = acc(run, "baseline")
    drops = {v: acc(run, v) - base for v in compressed}
    out.append(
        Finding(
            "Every compressed model keeps test accuracy within 5% of the baseline (Table II; pruning "
            "is tuned to that rule).",
            f"baseline {pct(base)}; "
            + ", ".join(f"{v} {pp(d)}" for v, d in drops.items())
            + f" (the sweep kept {pruned})",
            verdict(all(d >= -0.05 for d in drops.values())),
        )
    )
    sizes = {v: run.size(v) for v in ["baseline", *compressed]}
    smaller = [v for v in compressed if v != "ablated" and sizes[v] < sizes["baseline"]]
    most = min(compressed, key=lambda v: sizes[v])
    shrink = len(smaller) == len(compressed) - 1 and sizes["ablated"] > sizes["baseline"]
    out.append(
        Finding(
            "Model size shrinks for every method except layer ablation, which grows VGG-6 (the "
            "flattened layer gets wider); quantization shrinks it most.",
            ", ".join(f"{v} {sizes[v] / 1024:.0f} KiB" for v in sizes)
            + f" (the smallest of dense, sparse and packed files); smallest: {most}",
            FAILS
            if not shrink
            else HOLDS
            if most.startswith("quantized")
            else PARTLY + f": all but ablation shrink, but {most} stored sparse is smaller than 8 bits",
        )
    )
    sil = {v: run.get(v, "embedding", "silhouette", inputs="clean", layer="penultimate") for v in sizes}
    worse = [v for v in compressed if sil[v] < sil["baseline"] - SIL_TOL]
    out.append(
        Finding(
            "t-SNE: no compressed model separates the classes worse than the baseline (Fig. 2).",
            "silhouette of the t-SNE map (lower by more than "
            f"{SIL_TOL} counts as worse): " + ", ".join(f"{v} {sil[v]:.3f}" for v in sil),
            HOLDS if not worse else PARTLY + f": {', '.join(worse)} lower",
        )
    )
    best = max(sil, key=lambda v: sil[v])
    out.append(
        Finding(
            "t-SNE: the quantized model shows the most distinct clusters.",
            f"highest silhouette: {best} ({sil[best]:.3f}); quantized {sil['quantized']:.3f}",
            FAILS
            if sil["quantized"] < sil[best] - SIL_TOL
            else HOLDS
            if best.startswith("quantized")
            else HOLDS + f" (within {SIL_TOL} of the highest)",
        )
    )

    def cw(v: str, eps: float) -> float:
        """Robust accuracy under C&W at L2 <= eps: the worst route where there are several."""
        try:
            return run.get(v, "adversarial", "robust_accuracy", attack="cw", eps=eps, route="worst")
        except Missing:
            return run.get(v, "adversarial", "robust_accuracy", attack="cw", eps=eps, route="white-box")

    n = run.samples("baseline", "adversarial")
    tol = 4 / n  # four samples of the attacked set
    rob = {v: cw(v, 1.0) for v in sizes}
    weaker = [v for v in compressed if rob[v] < rob["baseline"] - tol]
    out.append(
        Finding(
            "C&W: none of the compressed models defends worse than the baseline (Table III).",
            f"robust accuracy under C&W L2 ≤ 1.0 ({n} samples; lower by more than {pct(tol)} counts): "
            + ", ".join(f"{v} {pct(rob[v])}" for v in rob),
            HOLDS if not weaker else FAILS + f": {', '.join(weaker)} lower",
        )
    )
    q = "quantized-int8-deployed"
    naive = run.get(q, "adversarial", "robust_accuracy", attack="cw", eps=0.5, route="naive")
    worst = cw(q, 0.5)
    float_base = cw("baseline", 0.5)
    masking = run.get(q, "adversarial", "gradient_masking")
    out.append(
        Finding(
            "C&W is not effective against the quantized models (the paper reads this as robustness).",
            f"int8 model at L2 ≤ 0.5: naive route (the int8 model's own gradients) {pct(naive)}, worst "
            f"of naive/BPDA/transfer {pct(worst)}, float baseline {pct(float_base)}; gradient-masking "
            f"flag {masking:.0f}",
            (
                PARTLY + ": only on the naive route; through a differentiable surrogate the attack "
                "works, so it is gradient masking, not robustness"
            )
            if naive > worst + 0.05
            else verdict(naive > float_base + 0.1),
        )
    )
    t_base = run.get("baseline", "adversarial", "seconds_per_sample", attack="cw", eps=0.5, route="white-box")
    t_pr = run.get(pruned, "adversarial", "seconds_per_sample", attack="cw", eps=0.5, route="white-box")
    out.append(
        Finding(
            "C&W runs about 1.57× quicker on the pruned model than on the baseline.",
            f"{t_base / t_pr:.2f}× (seconds per sample {t_base:.4f} vs {t_pr:.4f}; wall-clock, noisy; "
            "unstructured sparsity keeps dense kernels)",
            verdict(t_base / t_pr >= 1.2),
        )
    )
    drop = {
        v: run.get(v, "explain", "average_drop", method="gradcam", layer=_layer(run, v, "gradcam"))
        for v in sizes
    }
    rho = {v: run.get(v, "explain", "saliency_spearman", method="gradcam") for v in compressed}
    out.append(
        Finding(
            "CAM: the compressed models keep (and even sharpen) the localization of the baseline "
            "(Fig. 5, judged by eye).",
            "Grad-CAM Average Drop (lower is better): "
            + ", ".join(f"{v} {drop[v]:.1f}" for v in drop)
            + "; rank correlation of the maps with the baseline's: "
            + ", ".join(f"{v} {rho[v]:.2f}" for v in rho),
            verdict(all(rho[v] >= 0.5 for v in rho) and all(drop[v] <= drop["baseline"] + 5 for v in rho)),
        )
    )
    return out


def _layer(run: Run, variant: str, method: str) -> str:
    """The saliency layer the explain probe used for ``variant`` and ``method`` (found again on each
    variant)."""
    df = run.df
    names = [f"{s}/{variant}" for s in run.seeds] if run.seeds else [variant]
    rows = df[
        (df["variant"].isin(names))
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
    tgt = {v: run.get(v, "shift", "mean_target_accuracy") for v in ["baseline", *compressed]}
    src = {v: acc(run, v) for v in tgt}
    below = [v for v in compressed if tgt[v] < tgt["baseline"]]
    out.append(
        Finding(
            "Compressed models are less robust to domain shift than their original network.",
            "mean accuracy on the 4 restyled test sets (source test accuracy): "
            + ", ".join(f"{v} {pct(tgt[v])} ({pct(src[v])})" for v in tgt),
            all_some_none(below, compressed, PARTLY + f": lower for {', '.join(below)}"),
        )
    )
    mono = all(tgt[a] >= tgt[b] for a, b in itertools.pairwise(levels))
    out.append(
        Finding(
            "Target-domain accuracy falls as the compression (pruning) ratio grows.",
            " → ".join(f"{v.split('@')[1]}: {pct(tgt[v])}" for v in levels),
            verdict(mono),
        )
    )
    kd_params = run.get("kd-resnet18", "efficiency", "params")
    nearest = min(levels, key=lambda v: abs(run.get(v, "efficiency", "params") - kd_params))
    out.append(
        Finding(
            "Networks compressed by knowledge distillation are much more robust to distribution "
            "shift than pruned ones.",
            f"KD ResNet-18 ({kd_params / 1e3:.0f}k params) {pct(tgt['kd-resnet18'])} vs the pruned "
            f"level nearest in size, {nearest} ({run.get(nearest, 'efficiency', 'params') / 1e3:.0f}k), "
            f"{pct(tgt[nearest])}",
            verdict(tgt["kd-resnet18"] > tgt[nearest]),
        )
    )
    others = [*levels, "kd-resnet18"]
    out.append(
        Finding(
            "Post-training int8 quantization is the most robust to distribution shift, ahead of "
            "pruned and distilled models (Tables 1–2).",
            f"int8 {pct(tgt['ptsq-int8'])} vs best other {max(others, key=lambda v: tgt[v])} "
            f"{pct(max(tgt[v] for v in others))}; "
            f"int8 minus baseline {pp(tgt['ptsq-int8'] - tgt['baseline'])}",
            verdict(all(tgt["ptsq-int8"] > tgt[v] for v in others)),
        )
    )
    naive = run.get("ptsq-int8", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="naive")
    worst = run.get("ptsq-int8", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="worst")
    clean = run.get(
        "ptsq-int8", "adversarial", "clean_accuracy", samples=run.samples("ptsq-int8", "adversarial")
    )
    out.append(
        Finding(
            "Gradient-based attacks barely reduce the accuracy of the int8 model (88.3% → 87.9% for "
            "ResNet-18), which the paper attributes to gradient masking (Table 3).",
            f"int8 under PGD L∞ 0.1: clean {pct(clean)}, naive route {pct(naive)}, worst of "
            f"naive/BPDA/transfer {pct(worst)}",
            (HOLDS + " on the naive route, and our BPDA/transfer routes confirm it is masking")
            if naive > clean - 0.1 and worst < naive - 0.2
            else verdict(naive > clean - 0.1),
        )
    )
    adv = {v: run.get(v, "adversarial", "average_adversarial_accuracy") for v in ["baseline", *others]}
    pruned_worse = [v for v in levels if adv[v] < adv["baseline"]]
    out.append(
        Finding(
            "Pruned networks are more vulnerable to adversarial perturbations; distilled ones less so.",
            "average adversarial accuracy over attacks and strengths: "
            + ", ".join(f"{v} {pct(adv[v])}" for v in adv),
            verdict(len(pruned_worse) == len(levels) and adv["kd-resnet18"] > min(adv[v] for v in levels)),
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

    def rob(v: str) -> float:
        return run.get(v, "adversarial", "robust_accuracy_worst")

    def robf(v: str) -> str:
        return run.fmt(v, "adversarial", "robust_accuracy_worst")

    def accf(v: str) -> str:
        return run.fmt(v, "accuracy", "accuracy", split="test")

    n = len(run.seeds) or 1
    plain = ["st-pruned", "st-int8"]
    out.append(
        Finding(
            "Compression does not in itself cost robustness.",
            f"PGD-20 robust accuracy, mean ± std over {n} seeds: baseline {robf('baseline')}, "
            + ", ".join(f"{v} {robf(v)}" for v in plain),
            verdict(all(rob(v) >= rob("baseline") - 0.05 for v in plain)),
        )
    )
    pairs = [("st-pruned-ft", "st-pruned-advft"), ("st-int8-ft", "st-int8-advft")]
    out.append(
        Finding(
            "Adversarial fine-tuning improves robustness far more than standard fine-tuning "
            "(Tables 3 and 5).",
            "; ".join(f"{a} {robf(a)} vs {b} {robf(b)}" for a, b in pairs),
            verdict(all(rob(b) > rob(a) + 0.10 for a, b in pairs)),
        )
    )
    gaps = {
        kind: (
            abs(acc(run, f"st-{kind}-advft") - acc(run, f"rb-{kind}-advft")),
            abs(rob(f"st-{kind}-advft") - rob(f"rb-{kind}-advft")),
        )
        for kind in ("int8", "pruned")
    }
    out.append(
        Finding(
            "With adversarial fine-tuning, standard models come close to robust (adversarially "
            "trained) models; for PTQ within 5 points on both test and robust accuracy.",
            "; ".join(
                f"{k}: st vs rb test {accf(f'st-{k}-advft')} vs {accf(f'rb-{k}-advft')}, robust "
                f"{robf(f'st-{k}-advft')} vs {robf(f'rb-{k}-advft')}"
                for k in gaps
            ),
            (HOLDS + ("" if max(gaps["pruned"]) < 0.05 else " for PTQ; pruning stays further apart"))
            if max(gaps["int8"]) < 0.05
            else FAILS + f": for PTQ {100 * max(gaps['int8']):.0f} points apart",
        )
    )
    kinds = ["pruned", "pruned-ft", "pruned-advft", "int8", "int8-ft", "int8-advft"]
    both = [
        k for k in kinds if acc(run, f"rb-{k}") >= acc(run, f"st-{k}") and rob(f"rb-{k}") >= rob(f"st-{k}")
    ]
    rob_better = [k for k in kinds if rob(f"rb-{k}") >= rob(f"st-{k}")]
    out.append(
        Finding(
            "In general the robust models do better on both measures.",
            f"robust base ahead on robust accuracy in {len(rob_better)}/6 cells, on both in "
            f"{len(both)}/6; robust base {accf('robust')} test, {robf('robust')} robust",
            HOLDS
            if len(both) >= 4
            else (PARTLY + ": on robust accuracy only" if len(rob_better) >= 4 else FAILS),
        )
    )
    cost = [(a, b) for a, b in pairs if acc(run, b) < acc(run, a)]
    out.append(
        Finding(
            "Adversarial fine-tuning trades some clean accuracy for robustness.",
            "; ".join(f"test accuracy {a} {accf(a)} vs {b} {accf(b)}" for a, b in pairs),
            verdict(len(cost) == len(pairs)),
        )
    )
    return out


# --- seed 003 -------------------------------------------------------------------------------


def seed003(run: Run) -> list[Finding]:
    out = []
    variants = ["pruned", "ptq-w8a8", "ptq-w4a8", "pruned+ptq-w8a8"]
    base = acc(run, "baseline")
    delta = {v: acc(run, v) - base for v in variants}
    eight = [v for v in variants if v != "ptq-w4a8"]
    out.append(
        Finding(
            "Accuracy drops by less than 1 point after compression; 4-bit PTQ sometimes degrades severely.",
            f"baseline {pct(base)}; " + ", ".join(f"{v} {pp(d)}" for v, d in delta.items()),
            verdict(all(delta[v] > -0.01 for v in eight))
            + ("" if delta["ptq-w4a8"] > -0.05 else "; 4-bit degraded severely, as in the paper"),
        )
    )
    flips = {v: run.get(v, "classes", "flip_rate", split="test") for v in variants}
    out.append(
        Finding(
            "Up to 7.5% of the predictions change class, more than the accuracy change shows.",
            "prediction flips: " + ", ".join(f"{v} {pct(f)}" for v, f in flips.items()),
            verdict(all(flips[v] >= abs(delta[v]) for v in variants) and max(flips.values()) > 0),
        )
    )
    classes = sorted({str(c) for c in run.df["class"].dropna()}) if "class" in run.df else []
    worst: dict[str, tuple[float, str, bool]] = {}
    for v in variants:
        best = (0.0, "", False)
        for c in classes:
            d = run.get(v, "classes", "class_accuracy_delta", split="test", **{"class": c})
            lo = run.get(
                v, "classes", "class_accuracy_delta_ci_low", split="test", level=0.95, **{"class": c}
            )
            hi = run.get(
                v, "classes", "class_accuracy_delta_ci_high", split="test", level=0.95, **{"class": c}
            )
            if abs(d) > abs(best[0]):
                best = (d, c, lo > 0 or hi < 0)
        worst[v] = best
    big = max(abs(w[0]) for w in worst.values())
    out.append(
        Finding(
            "Class-level accuracy changes by up to 15 points, with no pattern in the classes affected.",
            "largest class change (95% bootstrap interval excludes 0?): "
            + ", ".join(
                f"{v} class {c} {pp(d)} ({'yes' if sig else 'no'})" for v, (d, c, sig) in worst.items()
            ),
            (HOLDS if any(w[2] for w in worst.values()) else PARTLY + ": none significant at 95%")
            if big >= 0.05
            else FAILS,
        )
    )
    conf = {
        v: (
            run.get(v, "classes", "mean_confidence_flipped", split="test"),
            run.get(v, "classes", "mean_confidence", split="test"),
        )
        for v in variants
    }
    ok = [v for v, (f, m) in conf.items() if not math.isnan(f) and f < m]
    out.append(
        Finding(
            "Compression can change prediction confidence strongly, especially for the samples whose "
            "prediction changed.",
            "mean confidence on flipped samples vs all: "
            + ", ".join(f"{v} {'—' if math.isnan(f) else pct(f)} vs {pct(m)}" for v, (f, m) in conf.items()),
            verdict(len(ok) >= 3) + (f" ({len(ok)}/{len(variants)} variants)" if ok else ""),
        )
    )
    mad = {v: run.get(v, "explain", "saliency_mad", method="gradient") for v in variants}
    mean_mad = statistics.fmean(mad.values())
    out.append(
        Finding(
            "Saliency maps change significantly after compression: mean absolute deviation ~7.5% on average.",
            "MAD of the normalised gradient saliency maps against the baseline's: "
            + ", ".join(f"{v} {pct(m)}" for v, m in mad.items())
            + f"; mean {pct(mean_mad)}",
            HOLDS
            if mean_mad >= 0.0375
            else FAILS + f": the maps move {0.075 / mean_mad:.0f}× less than the paper's ~7.5%",
        )
    )
    return out


# --- seed 004 -------------------------------------------------------------------------------


def seed004(run: Run) -> list[Finding]:
    t, s = "baseline", "kd-resnet18"

    def cam(v: str, metric: str) -> float:
        return run.get(v, "explain", metric, method="cam", layer=_layer(run, v, "cam"))

    at, as_ = acc(run, t), acc(run, s)
    return [
        Finding(
            "The distilled ResNet-18 student reaches accuracy similar to the WRN-28-10 teacher.",
            f"teacher {pct(at)}, student {pct(as_)} "
            f"(params {run.get(t, 'efficiency', 'params') / 1e3:.0f}k → "
            f"{run.get(s, 'efficiency', 'params') / 1e3:.0f}k)",
            verdict(abs(at - as_) < 0.03),
        ),
        Finding(
            "The student's CAMs have a lower Average Drop (8% vs the teacher's 12%).",
            f"Average Drop: teacher {cam(t, 'average_drop'):.2f}%, student {cam(s, 'average_drop'):.2f}%",
            lower(cam(s, "average_drop"), cam(t, "average_drop")),
        ),
        Finding(
            "The student's CAMs have a lower Complexity (2.73 vs 5.65).",
            f"Complexity (mean L1 of the normalised map): teacher {cam(t, 'complexity'):.3f}, "
            f"student {cam(s, 'complexity'):.3f}",
            lower(cam(s, "complexity"), cam(t, "complexity")),
        ),
        Finding(
            "The student's CAMs have a higher Coherency (SSIM).",
            f"Coherency (SSIM): teacher {cam(t, 'coherency_ssim'):.3f}, "
            f"student {cam(s, 'coherency_ssim'):.3f}",
            lower(-cam(s, "coherency_ssim"), -cam(t, "coherency_ssim")),
        ),
    ]


def lower(a: float, b: float, rel: float = 0.05) -> str:
    """The verdict on "``a`` is lower than ``b``": values within ``rel`` (relative) of each other
    count as equal, as differences that small are within the spread of a few hundred digits."""
    if abs(a - b) <= rel * max(abs(a), abs(b)):
        return FAILS + f": equal within {rel:.0%}"
    return verdict(a < b)


CHECKS: dict[str, Callable[[Run], list[Finding]]] = {
    "seed000": seed000,
    "seed001": seed001,
    "seed002": seed002,
    "seed003": seed003,
    "seed004": seed004,
}


def markdown(name: str, findings: Iterable[Finding], seconds: float | None) -> str:
    lines = [f"### {TITLES[name]}", ""]
    lines.append(f"Recipe: `examples/{name}_digits.yaml`" + (f" ({seconds:.0f} s)" if seconds else "") + ".")
    lines += ["", "| # | The paper's finding | Ours on digits | On digits |", "|---|---|---|---|"]
    for i, f in enumerate(findings, 1):
        cells = [str(i), f.paper, f.ours, f"**{f.verdict}**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"), help="folder of the five runs")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    ap.add_argument("--only", choices=RECIPES, action="append", help="run only these recipes")
    ap.add_argument("--no-run", action="store_true", help="read the stored runs, run nothing")
    ap.add_argument("--update-docs", type=Path, help="replace the findings part of this Markdown file")
    args = ap.parse_args(argv)
    parts, failed = [], []
    for name in args.only or RECIPES:
        out = args.out / name
        seconds = None
        if not args.no_run:
            start = time.perf_counter()
            summary = run_experiment(load_experiment(HERE / f"{name}_digits.yaml"), out)
            seconds = time.perf_counter() - start
            print(
                f"{name}: {summary.new} new, {summary.cached} cached, "
                f"{len(summary.failed)} failed, {seconds:.0f} s"
            )
            if summary.failed:
                failed.append(f"{name}: {len(summary.failed)} failed job(s)")
        try:
            findings = CHECKS[name](Run(out))
        except Missing as exc:
            failed.append(f"{name}: {exc}")
            continue
        parts.append(markdown(name, findings, seconds))
    text = "\n".join(parts)
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
