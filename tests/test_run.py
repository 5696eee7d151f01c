"""End to end: a real tiny experiment, cached reruns, determinism, crash recovery, export, report."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from compaudit import Experiment, Store, run_experiment
from compaudit.cli import export_rows, main
from tests.conftest import tiny_config, write_yaml

N_JOBS = 6  # 3 variants (baseline + 2) x 2 probes


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every metric except those marked noisy (wall-clock latency)."""
    return [r for r in rows if not r["noisy"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("run") / "a"
    summary = run_experiment(Experiment.from_dict(tiny_config()), out)
    return out, summary


def test_run_writes_report_database_and_every_result(first_run: tuple[Path, Any]) -> None:
    out, summary = first_run
    assert (out / "report.html").is_file()
    assert (out / "results.sqlite").is_file()
    assert summary.new == N_JOBS and summary.cached == 0 and not summary.failed
    assert summary.trained == ["baseline", "pruned80-ft"]
    rows = export_rows(out)
    by = {(r["variant"], r["metric"], r.get("split"), r.get("batch_size")): r["value"] for r in rows}
    assert by[("baseline", "accuracy", "test", None)] > 0.5  # trained well above chance (0.1)
    # pruning shows in the measured footprint: fewer non-zero weights, same parameter count
    assert by[("pruned50", "nonzero_params", None, None)] < by[("baseline", "nonzero_params", None, None)]
    assert by[("pruned50", "params", None, None)] == by[("baseline", "params", None, None)]
    assert by[("pruned80-ft", "sparsity", None, None)] > by[("pruned50", "sparsity", None, None)]
    assert by[("pruned50", "latency", None, 1)] > 0


def test_rerun_trains_and_probes_nothing(
    first_run: tuple[Path, Any], caplog: pytest.LogCaptureFixture
) -> None:
    out, _ = first_run
    before = (out / "results.sqlite").stat().st_mtime_ns, export_rows(out)
    with caplog.at_level("INFO", logger="compaudit"):
        summary = run_experiment(Experiment.from_dict(tiny_config()), out)
    assert summary.new == 0 and summary.cached == N_JOBS and summary.trained == []
    assert "training" not in caplog.text and "fine-tuning" not in caplog.text
    assert caplog.text.count("cached:") == N_JOBS
    assert export_rows(out) == before[1]


def test_changed_variant_reruns_only_that_variant(first_run: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    cfg = tiny_config()
    cfg["variants"][0]["steps"][0]["params"]["sparsity"] = 0.6
    cfg["variants"][1]["name"] = "renamed"  # a rename changes no key: its results stay cached
    summary = run_experiment(Experiment.from_dict(cfg), out)
    assert summary.new == 2 and summary.cached == 4 and summary.trained == []
    variants = {r["variant"] for r in export_rows(out)}
    assert variants == {"baseline", "pruned50", "renamed"}


def test_same_experiment_twice_from_scratch_gives_identical_metrics(
    first_run: tuple[Path, Any], tmp_path: Path
) -> None:
    run_experiment(Experiment.from_dict(tiny_config()), tmp_path / "b")
    assert stable(export_rows(tmp_path / "b")) == stable(export_rows(first_run[0]))


def test_other_seed_gives_other_numbers(first_run: tuple[Path, Any], tmp_path: Path) -> None:
    run_experiment(Experiment.from_dict(tiny_config(seed=1)), tmp_path / "c")
    a = {(r["variant"], r["metric"], r.get("split")): r["value"] for r in stable(export_rows(first_run[0]))}
    c = {(r["variant"], r["metric"], r.get("split")): r["value"] for r in stable(export_rows(tmp_path / "c"))}
    assert a[("baseline", "nll", "test")] != c[("baseline", "nll", "test")]


def test_export_json_and_csv_hold_the_same_table(
    first_run: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = first_run[0]
    for fmt in ("json", "csv"):
        with pytest.raises(SystemExit) as exc:
            main(["export", str(out), "--format", fmt])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        if fmt == "json":
            records = json.loads(text)
        else:  # the first line of a CSV export declares its column types, as a comment
            body = "".join(ln for ln in io.StringIO(text) if not ln.startswith("#"))
            records = list(csv.DictReader(io.StringIO(body)))
        assert len(records) == len(export_rows(out))
        for key in ("variant", "probe", "metric", "value"):
            assert all(key in r for r in records)
        accs = [r for r in records if r["metric"] == "accuracy" and r["variant"] == "baseline"]
        assert {r["split"] for r in accs} == {"test", "val"}
        assert {float(r["value"]) for r in accs} == {
            r["value"] for r in export_rows(out) if r["metric"] == "accuracy" and r["variant"] == "baseline"
        }


def test_report_is_self_contained_and_shows_every_variant(first_run: tuple[Path, Any]) -> None:
    html = (first_run[0] / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset"
    assert "<link" not in html and "@import" not in html
    for name in (
        "baseline",
        "pruned50",
        "pruned80-ft",
        "Test accuracy",
        "Non-zero parameters",
        "Latency b=1",
    ):
        assert name in html
    assert "train / val / test images" in html  # sample sizes are stated
    assert "prune_unstructured(sparsity=0.8" in html  # lineage


def test_report_command_rebuilds_the_page(
    first_run: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = first_run[0]
    (out / "report.html").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(out)])
    assert exc.value.code == 0
    assert (out / "report.html").is_file()
    with pytest.raises(SystemExit):
        main(["list", str(out.parent)])
    listing = capsys.readouterr().out
    assert "tiny" in listing and "complete" in listing


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return int(c.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.Error:
        return 0


# the kill during training runs with the slow tests (make test-slow): the default suite keeps the
# kill while probing, and its 10-minute budget
@pytest.mark.parametrize("when", [pytest.param("training", marks=pytest.mark.slow), "probing"])
def test_kill_9_then_rerun_completes_with_each_result_once(
    when: str, first_run: tuple[Path, Any], tmp_path: Path
) -> None:
    cfg = tiny_config()
    cfg["model"]["train"]["epochs"] = 8
    # slow probes, so the kill lands between two stored results
    cfg["probes"][1]["params"] = {"batch_sizes": [1, 64], "repeats": 40, "warmup": 1}
    exp = write_yaml(tmp_path / "exp.yaml", cfg)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "compaudit", "run", str(exp), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if when == "training" and list((out / "models").glob("*.train-state.pt")):
                break
            if when == "probing" and 2 <= _count(out / "results.sqlite") < N_JOBS:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _count(out / "results.sqlite")
    assert killed_at < N_JOBS
    rerun = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)  # without -q: see the log
    assert rerun.returncode == 0, rerun.stderr
    if when == "training":
        assert "resuming at epoch" in rerun.stderr
    with Store(out) as store:
        assert store.count_results() == N_JOBS
    with sqlite3.connect(out / "results.sqlite") as c:
        per_result = c.execute("SELECT result_key, COUNT(*) FROM metrics GROUP BY result_key").fetchall()
        dupes = c.execute(
            "SELECT COUNT(*) FROM (SELECT result_key, metric, params FROM metrics"
            " GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    assert len(per_result) == N_JOBS and all(n > 0 for _, n in per_result)
    assert dupes == 0
    assert not list(out.rglob("*.tmp*"))
    # the interrupted-and-resumed run gives the same numbers as an uninterrupted one
    ref = tmp_path / "ref"
    run_experiment(Experiment.from_dict(cfg), ref)
    assert stable(export_rows(out)) == stable(export_rows(ref))


def test_a_second_run_on_a_locked_folder_is_refused(first_run: tuple[Path, Any]) -> None:
    from compaudit.errors import CompauditError
    from compaudit.run.session import run_lock

    out = first_run[0]
    with run_lock(out), pytest.raises(CompauditError, match="another compaudit run is writing"):
        run_experiment(Experiment.from_dict(tiny_config()), out)


def test_stale_temporaries_of_a_killed_run_are_removed(first_run: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    litter = [out / "models" / "0123456789abcdef.pt.tmp4242", out / ".report.html.tmp77"]
    for p in litter:
        p.write_bytes(b"half")
    keep = out / "notes.tmp.txt"
    keep.write_text("mine")
    run_experiment(Experiment.from_dict(tiny_config()), out)
    assert not any(p.exists() for p in litter)
    assert keep.exists()


def test_every_variant_knows_its_source_and_seed_as_data() -> None:
    """The planner gives each variant (baseline included) its identity; its label is its name, and
    a domain named like a seed is still a source (nothing parses names)."""
    from compaudit.results import VariantId
    from compaudit.run.plan import make_plans

    cfg = tiny_config(
        domains={
            "seed7": {"name": "digits", "params": {"size": 16}},
            "b": {"name": "digits", "params": {"size": 16}},
        },
        sources=["seed7", "b"],
        seeds=[0, 3],
    )
    del cfg["data"], cfg["seed"]
    plans = make_plans(Experiment.from_dict(cfg))
    ids = [vp.identity for p in plans for vp in p.all_variants]
    assert all(
        vp.identity is not None and vp.identity.label == vp.name for p in plans for vp in p.all_variants
    )
    assert VariantId("baseline", "seed7", 3) in ids and VariantId("pruned50", "b", 0) in ids
    assert {(i.source, i.seed) for i in ids if i is not None} == {
        ("seed7", 0),
        ("seed7", 3),
        ("b", 0),
        ("b", 3),
    }
    single = make_plans(Experiment.from_dict(tiny_config()))[0]
    assert single.baseline.identity == VariantId("baseline")


def test_a_renamed_variant_gets_its_new_identity_from_the_plan_not_the_cache(tmp_path: Path) -> None:
    cfg = tiny_config(probes=[{"name": "accuracy", "params": {"splits": ["test"]}}])
    del cfg["seed"]
    cfg["seeds"] = [0, 1]
    cfg["model"]["train"]["epochs"] = 1
    cfg["variants"] = cfg["variants"][:1]
    run_experiment(Experiment.from_dict(cfg), tmp_path / "run")
    cfg["variants"][0]["name"] = "renamed"  # same chain, same keys: every result comes from the cache
    summary = run_experiment(Experiment.from_dict(cfg), tmp_path / "run")
    assert summary.new == 0
    rows = [r for r in export_rows(tmp_path / "run") if r["metric"] == "accuracy"]
    assert {(r["variant"], r["variant_name"], r["variant_seed"]) for r in rows} == {
        ("seed0/baseline", "baseline", 0),
        ("seed1/baseline", "baseline", 1),
        ("seed0/renamed", "renamed", 0),
        ("seed1/renamed", "renamed", 1),
    }
