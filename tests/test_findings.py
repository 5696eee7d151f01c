"""The findings of ``examples/digits_findings.py`` can fail: each decision fed numbers that must fail
does, and numbers that must hold do; the three checks that used to hold whatever the numbers (seed 003's
flips, seed 000's "most distinct clusters" and its Average Drop tolerance) fail on the numbers that
exposed them, through the script's own table code; a baseline flagged for gradient masking fails the
script.

``FINDINGS`` (environment) points the module at another copy of the script (e.g. the previous
version, to check that these tests catch its bugs)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(
    os.environ.get("FINDINGS", Path(__file__).resolve().parents[1] / "examples" / "digits_findings.py")
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_findings_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


F = _load()


def est(value: float, half: float = 0.0, unit: str = "fraction") -> Any:
    return F.Est(value, value - half, value + half, unit)


def holds(verdict: str) -> bool:
    return verdict.startswith(F.HOLDS)


def fails(verdict: str) -> bool:
    """Not a "holds" (nor a "partly"): does not hold or inconclusive."""
    return verdict.startswith((F.FAILS, F.INCONCLUSIVE))


# --- the generic decisions -------------------------------------------------------------------


def test_beats_needs_the_interval() -> None:
    assert holds(F.decide_beats(est(0.60, 0.02), est(0.50, 0.02)))
    assert fails(F.decide_beats(est(0.51, 0.02), est(0.50, 0.02)))  # a tie within the interval
    assert fails(F.decide_beats(est(0.40, 0.02), est(0.50, 0.02)))
    assert holds(F.decide_beats(est(0.40, 0.02), est(0.50, 0.02), higher=False))
    assert fails(F.decide_beats(est(0.49, 0.02), est(0.50, 0.02), higher=False))


def test_not_worse_fails_on_a_shown_harm_only() -> None:
    base = est(0.80, 0.03)
    assert holds(F.decide_not_worse({"a": est(0.79, 0.03)}, base))
    assert fails(F.decide_not_worse({"a": est(0.79, 0.03), "b": est(0.60, 0.03)}, base))
    # lower is better (Average Drop)
    assert fails(F.decide_not_worse({"a": est(0.95, 0.03)}, base, higher_is_better=False))


def test_similar_and_bounds() -> None:
    assert holds(F.decide_similar(est(0.96, 0.02), est(0.97, 0.02)))
    assert fails(F.decide_similar(est(0.80, 0.02), est(0.97, 0.02)))
    assert holds(F.decide_within({"a": est(-0.01, 0.01, "pp")}, 0.05))
    assert fails(F.decide_within({"a": est(-0.06, 0.01, "pp")}, 0.05))
    assert F.decide_within({"a": est(-0.04, 0.02, "pp")}, 0.05).startswith(F.INCONCLUSIVE)
    assert holds(F.decide_close({"t": (est(0.97, 0.01), est(0.975, 0.01))}, 0.05))
    assert fails(F.decide_close({"t": (est(0.56, 0.05), est(0.78, 0.01))}, 0.05))
    assert fails(F.decide_close({"t": (est(0.56, 0.05), est(0.58, 0.05))}, 0.05))  # interval spans 5 pts


def test_verdict_words_are_defined_and_inconclusive_is_not_holds() -> None:
    assert F.INCONCLUSIVE in F.VERDICTS and F.INCONCLUSIVE != F.HOLDS
    assert F.kind(F.INCONCLUSIVE + ": x") == F.INCONCLUSIVE


# --- seed 000 -------------------------------------------------------------------------------


def test_000_most_distinct_tie_does_not_hold() -> None:
    sil = {
        "baseline": est(0.846, 0.01, "score"),
        "quantized": est(0.845, 0.01, "score"),
        "quantized-int8-deployed": est(0.844, 0.01, "score"),
        "pruned+quantized": est(0.848, 0.01, "score"),
    }
    assert fails(F.decide_000_most_distinct(sil, "quantized", twins=("quantized-int8-deployed",)))
    # even with no interval at all, 0.845 is not the highest
    exact = {k: est(v.value, 0.0, "score") for k, v in sil.items()}
    assert fails(F.decide_000_most_distinct(exact, "quantized", twins=("quantized-int8-deployed",)))
    sil["quantized"] = est(0.90, 0.01, "score")
    assert holds(F.decide_000_most_distinct(sil, "quantized", twins=("quantized-int8-deployed",)))


def test_000_sizes_and_speedup_and_cw() -> None:
    compressed = ["pruned@0.9", "quantized", "ablated"]
    good = {"baseline": 100.0, "pruned@0.9": 60.0, "quantized": 30.0, "ablated": 200.0}
    assert holds(F.decide_000_sizes(good, compressed))
    assert fails(F.decide_000_sizes({**good, "ablated": 90.0}, compressed))
    assert fails(F.decide_000_speedup(0.0097, 0.0094))
    assert holds(F.decide_000_speedup(0.0160, 0.0100))
    # masking: the naive route far above the worst -> partly, never holds
    v = F.decide_000_cw_quantized(est(0.995, 0.02), est(0.89, 0.04), est(0.89, 0.04))
    assert v.startswith(F.PARTLY)
    assert fails(F.decide_000_cw_quantized(est(0.89, 0.04), est(0.89, 0.04), est(0.89, 0.04)))
    assert holds(F.decide_000_cw_quantized(est(0.99, 0.01), est(0.99, 0.01), est(0.60, 0.05)))


# --- seed 001 -------------------------------------------------------------------------------


def test_001_decisions() -> None:
    assert fails(F.decide_001_falls([est(0.485, 0.03), est(0.341, 0.03), est(0.450, 0.03)]))
    assert fails(F.decide_001_falls([est(0.48, 0.03), est(0.47, 0.03), est(0.46, 0.03)]))  # no fall
    assert holds(F.decide_001_falls([est(0.60, 0.03), est(0.50, 0.03), est(0.40, 0.03)]))
    assert fails(F.decide_001_barely(0.95, 0.80, 0.03, 200, 0.004))  # a 15-point drop is not "barely"
    assert F.decide_001_barely(0.95, 0.945, 0.035, 200, 0.004).startswith(F.HOLDS + " on the naive")
    adv = {"baseline": est(0.29, 0.03), "p1": est(0.28, 0.03), "kd": est(0.30, 0.03)}
    assert fails(F.decide_001_adversarial(adv, ["p1"], "kd"))
    adv = {"baseline": est(0.40, 0.03), "p1": est(0.20, 0.03), "kd": est(0.35, 0.03)}
    assert holds(F.decide_001_adversarial(adv, ["p1"], "kd"))


# --- seed 002 -------------------------------------------------------------------------------


def test_002_robust_better() -> None:
    tie = (est(0.97, 0.02), est(0.97, 0.02), est(0.50, 0.05), est(0.52, 0.05))
    assert fails(F.decide_002_robust_better(dict.fromkeys("abcdef", tie)))
    rob = (est(0.97, 0.02), est(0.97, 0.02), est(0.30, 0.05), est(0.70, 0.05))
    assert F.decide_002_robust_better(dict.fromkeys("abcdef", rob)).startswith(F.PARTLY)
    both = (est(0.80, 0.02), est(0.95, 0.02), est(0.30, 0.05), est(0.70, 0.05))
    assert holds(F.decide_002_robust_better(dict.fromkeys("abcdef", both)))


# --- seed 003 -------------------------------------------------------------------------------


def test_003_flips_equal_to_the_accuracy_change_do_not_hold() -> None:
    delta = {"a": -0.02, "b": 0.0}
    # the old check ("flips >= |Δacc|") held here: a flip rate equal to |Δacc|
    assert fails(F.decide_003_flips({"a": est(0.02, 0.01), "b": est(0.0, 0.0)}, delta))
    assert fails(F.decide_003_flips({"a": est(0.05, 0.04), "b": est(0.0, 0.0)}, delta))  # interval
    assert holds(F.decide_003_flips({"a": est(0.075, 0.02), "b": est(0.03, 0.015)}, delta))


def test_003_classes_confidence_mad() -> None:
    assert fails(F.decide_003_classes({"a 2": est(-0.029, 0.05, "pp"), "b 6": est(-0.056, 0.06, "pp")}))
    assert holds(F.decide_003_classes({"a 2": est(-0.15, 0.06, "pp")}))
    tie = (est(0.90, 0.10), est(0.93, 0.01))
    assert fails(F.decide_003_confidence({"a": tie, "b": tie}))
    nan = (F.Est(math.nan, math.nan, math.nan, "fraction"), est(0.93, 0.01))
    low = (est(0.45, 0.10), est(0.93, 0.01))
    assert F.decide_003_confidence({"a": low, "b": nan}).startswith(F.PARTLY)
    assert holds(F.decide_003_confidence({"a": low, "b": low}))
    assert fails(F.decide_003_mad({"a": est(0.024, 0.003), "b": est(0.014, 0.002)}))
    assert holds(F.decide_003_mad({"a": est(0.07, 0.01), "b": est(0.08, 0.01)}))


# --- the three bugs, through the script's own table code -------------------------------------


class _Rows:
    """Rows of an export frame for a fake run."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, variant: str, probe: str, metric: str, value: float, unit: str, **params: Any) -> None:
        self.rows.append({"variant": variant, "probe": probe, "metric": metric, "value": value, **params})
        self.rows[-1]["unit"] = unit

    def ci(
        self, variant: str, probe: str, metric: str, value: float, half: float, unit: str, **params: Any
    ) -> None:
        self.add(variant, probe, metric, value, unit, **params)
        self.add(variant, probe, f"{metric}_ci_low", value - half, unit, level=0.95, **params)
        self.add(variant, probe, f"{metric}_ci_high", value + half, unit, level=0.95, **params)


def _run(rows: _Rows) -> Any:
    from compaudit.export import rows_frame

    run = F.Run.__new__(F.Run)
    run.df = rows_frame(rows.rows)
    run.seeds = []
    run.test_samples = 359
    return run


SEED000 = ["baseline", "pruned@0.9", "quantized", "quantized-int8-deployed", "ablated", "pruned+quantized"]


def _seed000_rows(silhouettes: dict[str, float], drops: dict[str, float], masking: float = 0.0) -> _Rows:
    r = _Rows()
    r.add("pruned@0.9", "sweep", "selected_level", 0.9, "fraction", selected_variant="pruned@0.9")
    sizes = {"baseline": 5e6, "pruned@0.9": 7e5, "quantized": 1.3e6, "ablated": 1e7}
    for v in SEED000:
        r.add(v, "accuracy", "accuracy", 0.98, "fraction", split="test")
        r.add(v, "efficiency", "file_bytes", sizes.get(v, 1.3e6), "bytes")
        r.add(v, "efficiency", "params", 1e5, "params")
        r.ci(v, "embedding", "silhouette", silhouettes[v], 0.01, "score", inputs="clean", layer="first_fc")
        r.add(v, "adversarial", "clean_accuracy", 0.98, "fraction", samples=200)
        r.add(v, "adversarial", "gradient_masking", masking if v == "baseline" else 0.0, "flag")
        for eps in (0.5, 1.0):
            for route in ("white-box", "naive", "worst"):
                r.add(
                    v, "adversarial", "robust_accuracy", 0.56, "fraction", attack=F.CW, eps=eps, route=route
                )
                r.add(v, "adversarial", "seconds_per_sample", 0.01, "s", attack=F.CW, eps=eps, route=route)
        r.ci(v, "explain", "average_drop", drops[v], 0.05, "fraction", method="gradcam", layer="features.3")
        if v != "baseline":
            r.add(v, "explain", "saliency_spearman", 0.95, "score", method="gradcam")
    return r


def test_000_finding_4_reads_a_tie_as_not_holding() -> None:
    sil = dict(zip(SEED000, [0.846, 0.785, 0.845, 0.844, 0.767, 0.848], strict=True))
    drops = dict.fromkeys(SEED000, 0.006)
    findings = F.seed000(_run(_seed000_rows(sil, drops)))
    distinct = next(f for f in findings if "most distinct" in f.paper)
    assert not distinct.verdict.startswith(F.HOLDS), distinct.verdict


def test_000_average_drop_difference_of_0_3_is_not_within_tolerance() -> None:
    sil = dict.fromkeys(SEED000, 0.85)
    drops = {**dict.fromkeys(SEED000, 0.6), "pruned@0.9": 0.9}  # 0.3 worse on the 0-1 scale
    findings = F.seed000(_run(_seed000_rows(sil, drops)))
    cam = next(f for f in findings if "localization" in f.paper)
    assert not cam.verdict.startswith(F.HOLDS), cam.verdict
    assert "0.9%" not in cam.ours and "90.0%" in cam.ours  # formatted from the unit, not by hand


def _seed003_rows(flip: float, delta: float) -> _Rows:
    """Accuracies exact in binary (15/16 and 15/16 + delta), so |Δacc| is exactly -delta."""
    r = _Rows()
    for v in ["baseline", "pruned", "ptq-w8a8", "ptq-w4a8", "pruned+ptq-w8a8"]:
        acc = 0.9375 + (0.0 if v == "baseline" else delta)
        r.add(v, "accuracy", "accuracy", acc, "fraction", split="test")
        if v == "baseline":
            continue
        r.ci(v, "classes", "accuracy_delta", delta, 0.01, "pp", split="test")
        r.add(v, "classes", "flip_rate", flip, "fraction", split="test")
        r.ci(v, "classes", "class_accuracy_delta", -0.03, 0.05, "pp", split="test", **{"class": "2"})
        r.ci(v, "classes", "mean_confidence_flipped", 0.45, 0.1, "fraction", split="test")
        r.ci(v, "classes", "mean_confidence", 0.93, 0.01, "fraction", split="test")
        r.ci(v, "explain", "saliency_mad", 0.025, 0.003, "fraction", method="gradient")
    return r


def test_003_flips_through_the_table() -> None:
    findings = F.seed003(_run(_seed003_rows(flip=0.0625, delta=-0.0625)))  # flips == |Δacc|
    flips = next(f for f in findings if "change class" in f.paper)
    assert not flips.verdict.startswith(F.HOLDS), flips.verdict
    findings = F.seed003(_run(_seed003_rows(flip=0.075, delta=-0.0078125)))
    flips = next(f for f in findings if "change class" in f.paper)
    assert flips.verdict.startswith(F.HOLDS), flips.verdict


# --- a masking baseline fails the script ------------------------------------------------------


def test_masked_baseline_fails_the_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    sil = dict.fromkeys(SEED000, 0.85)
    drops = dict.fromkeys(SEED000, 0.006)
    clean = _run(_seed000_rows(sil, drops, masking=0.0))
    masked = _run(_seed000_rows(sil, drops, masking=1.0))
    argv = ["--no-run", "--only", "seed000", "--out", str(tmp_path)]
    monkeypatch.setattr(F, "Run", lambda out, *a, **k: clean)
    assert F.main(argv) == 0
    monkeypatch.setattr(F, "Run", lambda out, *a, **k: masked)
    assert F.main(argv) == 1
    err = capsys.readouterr().err
    assert "seed000" in err and "baseline" in err and "gradient masking" in err


def test_masking_errors_pure() -> None:
    assert F.masking_errors("seed002", {"seed0/baseline": 0.0, "seed1/baseline": 0.0}) == []
    lines = F.masking_errors("seed002", {"seed0/baseline": 0.0, "seed1/baseline": 1.0})
    assert len(lines) == 1 and "seed002" in lines[0] and "seed1/baseline" in lines[0]
    assert F.masking_errors("seed000", {"baseline": math.nan})  # missing verdict is an error too


# --- the interval helpers the probes and the script use ---------------------------------------


def test_interval_helpers() -> None:
    import numpy as np
    from sklearn.metrics import silhouette_score

    from compaudit import stats

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 30)
    x = rng.normal(size=(150, 2)) + 3.0 * y[:, None]
    point = silhouette_score(x, y)
    lo, hi = stats.silhouette_bootstrap_ci(x, y, resamples=200, seed=1)
    assert lo < point < hi and hi - lo < 0.1
    assert (lo, hi) == stats.silhouette_bootstrap_ci(x, y, resamples=200, seed=1)  # seeded
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    onehot = (y[:, None] == np.arange(5)).astype(float)
    assert stats._weighted_silhouette(dist, y, onehot, np.ones((1, 150)))[0] == pytest.approx(point)
    lo, hi = stats.bootstrap_ci([0.1, 0.2, float("nan"), 0.3, 0.4], resamples=500, seed=0)
    assert 0.1 <= lo < 0.25 < hi <= 0.4
    wl, wh = stats.wilson_interval(0.5, 100)
    assert wl == pytest.approx(0.4038, abs=1e-3) and wh == pytest.approx(0.5962, abs=1e-3)
    dl, dh = stats.difference_ci(0.6, (0.5, 0.7), 0.5, (0.4, 0.6))
    assert dl == pytest.approx(0.1 - math.hypot(0.1, 0.1)) and dh == pytest.approx(0.1 + math.hypot(0.1, 0.1))


def test_summary_counts_each_verdict_and_inconclusive_is_not_holds() -> None:
    findings = [
        F.Finding("a", "x", F.HOLDS),
        F.Finding("b", "x", F.FAILS + ": equal within the interval"),
        F.Finding("c", "x", F.INCONCLUSIVE),
        F.Finding("d", "x", F.PARTLY + ": one of two"),
    ]
    table = F.summary_table([("seed003", findings)])
    header, _, row = table.strip().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    names = [c.strip() for c in header.strip("|").split("|")]
    counts = dict(zip(names, cells, strict=True))
    assert counts["findings checked"] == "4"
    assert counts[F.HOLDS] == "1" and counts[F.INCONCLUSIVE] == "1" and counts[F.FAILS] == "1"
    assert counts[F.PARTLY] == "1" and counts[F.UNTESTED] == "0"
