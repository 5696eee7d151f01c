"""Every example experiment validates and plans; the digits one builds every method and runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from compaudit import METHODS, load_experiment, run_experiment
from compaudit.cli import export_rows
from compaudit.run.plan import make_plans

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_is_an_example_per_seed_paper() -> None:
    names = {p.name for p in EXAMPLES}
    for seed in ("seed000", "seed001", "seed002", "seed003", "seed004"):
        assert any(n.startswith(seed) for n in names), seed
    assert "digits_all_methods.yaml" in names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_and_plans(path: Path) -> None:
    exp = load_experiment(path)
    for plan in make_plans(exp):
        assert len(plan.jobs) == len(plan.all_variants) * len(exp.probes)


def test_seed001_example_plans_all_six_office31_pairs() -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "examples" / "seed001_office31.yaml")
    pairs = set()
    for plan in make_plans(exp):
        shift = plan.probes["shift"]
        source = plan.experiment.source
        assert plan.baseline.name == f"{source}/baseline"
        pairs |= {(source, t) for t in shift.needs_domains(plan.experiment)}
    assert pairs == {
        (s, t) for s in ("amazon", "webcam", "dslr") for t in ("amazon", "webcam", "dslr") if s != t
    }


def test_digits_example_builds_every_method(tmp_path: Path) -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "examples" / "digits_all_methods.yaml")
    used = {s.method for v in exp.concrete_variants() for s in v.steps}
    assert used == set(METHODS.names())
    summary = run_experiment(exp, tmp_path / "run")
    assert not summary.failed
    rows = export_rows(tmp_path / "run")
    acc = {r["variant"]: r["value"] for r in rows if r["metric"] == "accuracy" and r["split"] == "test"}
    assert set(acc) == {"baseline", *(v.name for v in exp.concrete_variants())}
    assert acc["baseline"] > 0.9 and acc["filters50-ft"] > 0.9 and acc["int8"] > 0.9
    # extreme levels collapse to chance, and the results say so rather than reporting them silently
    collapsed = {
        r["variant"] for r in rows if r["metric"] == "collapsed" and r["split"] == "test" and r["value"]
    }
    assert collapsed == {v for v, a in acc.items() if a <= 0.1 + 0.05}
    assert "unstructured@0.9" in collapsed
    html = (tmp_path / "run" / "report.html").read_text()
    assert "unstructured@0.9: test accuracy" in html and "collapsed to chance" in html
    again = run_experiment(exp, tmp_path / "run")
    assert again.new == 0 and again.trained == []
