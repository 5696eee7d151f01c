"""``compare``: two real tiny runs that differ in one variant's sparsity, a renamed variant, a
tampered copy; what differs, what is noise, what explains it, and the page."""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from compaudit import Experiment, Store, run_experiment
from compaudit.cli import export_rows
from compaudit.compare import Comparison, compare_command, compare_runs, render_comparison, write_comparison
from compaudit.errors import CompauditError
from tests.conftest import tiny_config

CHANGED = "pruned50"  # sparsity 0.5 in A, 0.6 in B; everything else is the same


def _changed_config() -> dict[str, Any]:
    cfg = tiny_config()
    cfg["variants"][0]["steps"][0]["params"]["sparsity"] = 0.6
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    run_experiment(Experiment.from_dict(tiny_config()), root / "a")
    run_experiment(Experiment.from_dict(_changed_config()), root / "b")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def comp(runs: tuple[Path, Path]) -> Comparison:
    return compare_runs(*runs)


def _value(run: Path, variant: str, metric: str, **params: Any) -> float:
    hits = [
        r["value"]
        for r in export_rows(run)
        if r["variant"] == variant and r["metric"] == metric and all(r.get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1
    return float(hits[0])


def test_changed_variant_accuracy_differs_with_exact_a_b_and_delta(
    runs: tuple[Path, Path], comp: Comparison
) -> None:
    a, b = runs
    for split in ("test", "val"):
        va, vb = _value(a, CHANGED, "accuracy", split=split), _value(b, CHANGED, "accuracy", split=split)
        assert va != vb
        (d,) = [
            d
            for d in comp.differences
            if (d.variant, d.probe, d.metric, d.params) == (CHANGED, "accuracy", "accuracy", {"split": split})
        ]
        assert (d.a, d.b) == (va, vb)
        assert d.delta == pytest.approx(vb - va)
        assert d.relative == pytest.approx((vb - va) / va)
    # the footprint follows the sparsity
    (nz,) = [d for d in comp.differences if d.variant == CHANGED and d.metric == "nonzero_params"]
    assert nz.b is not None and nz.a is not None and nz.b < nz.a
    # largest relative change first
    sizes = [d.size() for d in comp.differences]
    assert sizes == sorted(sizes, reverse=True)


def test_variants_with_the_same_key_have_no_stable_differences(comp: Comparison) -> None:
    status = {v.name: v.status for v in comp.variants}
    assert status == {"baseline": "unchanged", CHANGED: "changed", "pruned80-ft": "unchanged"}
    assert {d.variant for d in comp.differences} == {CHANGED}
    assert not any(d.same_key for d in comp.differences)  # its weights changed, so its result keys too
    assert not comp.only_a and not comp.only_b and not comp.warnings
    counts = {p.probe: p for p in comp.probes}
    assert counts["accuracy"].differing == sum(d.probe == "accuracy" for d in comp.differences) > 0
    assert counts["efficiency"].only_a == counts["efficiency"].only_b == 0
    assert comp.compared == sum(p.compared for p in comp.probes)


def test_latency_is_noisy_and_never_a_difference(comp: Comparison) -> None:
    assert all(d.metric != "latency" for d in comp.differences)
    latency = [d for d in comp.noisy if d.metric == "latency"]
    assert len(latency) == 6  # 3 variants x batch sizes 1 and 8
    assert all(d.noisy and d.a is not None and d.b is not None for d in latency)
    assert {p.probe: p.noisy for p in comp.probes}["efficiency"] == 6


def test_experiment_diff_shows_the_changed_line_and_the_environment_is_the_same(comp: Comparison) -> None:
    removed = [ln for ln in comp.experiment_diff if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in comp.experiment_diff if ln.startswith("+") and not ln.startswith("+++")]
    assert len(removed) == 1 and removed[0].replace(" ", "") == "-sparsity:0.5"
    assert len(added) == 1 and added[0].replace(" ", "") == "+sparsity:0.6"
    assert comp.environment == []


def test_page_is_self_contained_and_written_atomically_to_the_default_path(
    runs: tuple[Path, Path], comp: Comparison
) -> None:
    a, b = runs
    path = write_comparison(comp)
    assert path == b / f"compare-{a.name}.html" and path.is_file()
    assert not [p.name for p in b.iterdir() if ".tmp" in p.name]
    html = path.read_text(encoding="utf-8")
    assert "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert 'class="sortable"' in html and "<script>" in html
    assert "sparsity: 0.6" in html and "Differences" in html and CHANGED in html
    assert html == render_comparison(comp)


def test_compare_command_writes_the_page_and_returns_a_short_summary(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sub" / "cmp.html"
    text = compare_command(runs[0], runs[1], out, 0.0)
    assert out.is_file()
    lines = text.splitlines()
    assert lines[-1] == f"page: {out}"
    probe_lines = [ln.split()[0] for ln in lines if ln.startswith(("accuracy ", "efficiency "))]
    assert probe_lines == ["accuracy", "efficiency"]
    assert f"1 changed ({CHANGED})" in text and "sparsity: 0.6" in text
    top = [ln for ln in lines if ln.startswith(f"  {CHANGED} · ")]
    assert 0 < len(top) <= 10
    assert "latency" not in "\n".join(top)


def test_a_run_compared_with_itself_has_no_differences(runs: tuple[Path, Path], tmp_path: Path) -> None:
    same = compare_runs(runs[0], runs[0])
    assert same.identical and same.differences == [] and same.compared > 0
    assert same.experiment_diff == [] and same.environment == []
    assert all(v.status == "unchanged" for v in same.variants)
    assert all(d.delta == 0 for d in same.noisy)
    assert "no value differs" in same.summary_text()
    assert write_comparison(same, tmp_path / "self.html").is_file()


def test_a_renamed_variant_is_only_in_one_run_each_and_recognised_by_its_key(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / "renamed"
    shutil.copytree(runs[1], renamed)
    cfg = _changed_config()
    cfg["variants"][1]["name"] = "p80"
    summary = run_experiment(Experiment.from_dict(cfg), renamed)
    assert summary.new == 0  # a rename changes no key: nothing reruns
    c = compare_runs(runs[1], renamed)
    assert {r.variant for r in c.only_a} == {"pruned80-ft"} and {r.variant for r in c.only_b} == {"p80"}
    assert len(c.only_a) == len(c.only_b) > 0 and not c.differences
    status = {v.name: v.status for v in c.variants}
    assert status["pruned80-ft"] == "only in A (renamed to p80)"
    assert status["p80"] == "only in B (renamed from pruned80-ft)"
    assert {p.probe: p.only_a for p in c.probes} == {
        p: sum(r.probe == p for r in c.only_a) for p in ("accuracy", "efficiency")
    }


def _tamper(run: Path, out: Path, variant: str, metric: str, params: dict[str, Any], value: Any) -> Path:
    shutil.copytree(run, out)
    with Store(out) as store:
        plan = store.meta("plan")
        key = next(j["key"] for j in plan if j["variant"] == variant and j["probe"] == "accuracy")
    with sqlite3.connect(out / "results.sqlite") as c:
        n = c.execute(
            "UPDATE metrics SET value = ? WHERE result_key = ? AND metric = ? AND params = ?",
            (value, key, metric, json.dumps(params, sort_keys=True)),
        ).rowcount
    c.close()
    assert n == 1
    return out


def test_tolerance_and_a_value_changed_under_the_same_key(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a = runs[0]
    va = _value(a, "baseline", "accuracy", split="test")
    b = _tamper(a, tmp_path / "b", "baseline", "accuracy", {"split": "test"}, va + 0.001)
    (d,) = compare_runs(a, b).differences
    assert (d.variant, d.a, d.b) == ("baseline", va, va + 0.001)
    assert d.delta == pytest.approx(0.001)
    assert d.same_key  # same weights, same probe parameters: only non-determinism explains it
    c = compare_runs(a, b)
    assert any("baseline" in w and "not deterministic" in w for w in c.warnings)
    assert compare_runs(a, b, tolerance=0.01).differences == []
    assert compare_runs(a, b, tolerance=0.01).compared == c.compared


def test_a_value_missing_on_one_side_is_a_difference(runs: tuple[Path, Path], tmp_path: Path) -> None:
    b = _tamper(runs[0], tmp_path / "b", CHANGED, "nll", {"split": "val"}, None)
    (d,) = compare_runs(runs[0], b, tolerance=1e9).differences
    assert d.metric == "nll" and d.a is not None and d.b is None and d.delta is None
    assert "–" in render_comparison(compare_runs(runs[0], b))


def test_a_folder_that_is_not_a_run_is_a_one_line_error(runs: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompauditError, match="not a compaudit run folder") as exc:
        compare_runs(runs[0], empty)
    assert "\n" not in str(exc.value) and "run B" in str(exc.value)
    with pytest.raises(CompauditError, match="does not exist") as exc:
        compare_command(tmp_path / "nope", runs[0], None, 0.0)
    assert "\n" not in str(exc.value) and "run A" in str(exc.value)
    assert not list(empty.iterdir())


@pytest.mark.parametrize("tolerance", [-0.1, math.nan, math.inf])
def test_a_bad_tolerance_is_a_one_line_error(runs: tuple[Path, Path], tolerance: float) -> None:
    with pytest.raises(CompauditError, match="tolerance") as exc:
        compare_runs(runs[0], runs[1], tolerance=tolerance)
    assert "\n" not in str(exc.value)


def test_out_that_is_a_folder_is_refused(comp: Comparison, tmp_path: Path) -> None:
    with pytest.raises(CompauditError, match="is a folder"):
        write_comparison(comp, tmp_path)
