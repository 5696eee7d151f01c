"""One error policy for both executors (see :mod:`compaudit.run`): bad input and a baseline that
cannot be built or trained stop the run with one line and exit code 2 and remove what the run
created (a run folder being resumed is left intact); a variant whose build raises and a probe
that raises become error rows while the rest goes on, locally as under Ray."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from compaudit import METHODS, PROBES, Experiment, Store, run_experiment
from compaudit.errors import CompauditError
from compaudit.run.plan import make_plan
from tests import ray_probe
from tests.conftest import tiny_config, write_yaml
from tests.test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def raising_factory(**_: Any) -> nn.Module:
    """A user's model factory with a bug (``model: {name: tests.test_error_policy:raising_factory}``)."""
    raise RuntimeError("the factory has a bug")


def _small(**overrides: Any) -> dict[str, Any]:
    """The tiny experiment at its smallest: 1 epoch on 300 digits, one variant, the accuracy probe."""
    cfg = tiny_config(**overrides)
    cfg["data"]["params"] = {"size": 16, "max_train": 300, "max_test": 100}
    cfg["model"].setdefault("train", {})["epochs"] = 1
    cfg["variants"] = cfg["variants"][:1]
    cfg["probes"] = [{"name": "accuracy", "params": {"splits": ["test"]}}]
    return cfg


# ---------------------------------------------------------------- the run stops: one line, exit 2


def test_a_model_factory_that_raises_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _small(model={"name": "tests.test_error_policy:raising_factory"})
    exp = write_yaml(tmp_path / "e.yaml", cfg)
    out = tmp_path / "run"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(
        err, "model.name", "tests.test_error_policy:raising_factory", "the factory has a bug"
    )
    assert "Traceback" not in err
    assert not out.exists()


def test_a_diverging_baseline_is_one_line_exit_2_and_removes_the_new_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _small()
    cfg["model"]["train"].update(lr=1e6, schedule="constant")
    exp = write_yaml(tmp_path / "e.yaml", cfg)
    for out in (tmp_path / "new", tmp_path / "empty"):  # a folder it creates, an empty one it was given
        if out.name == "empty":
            out.mkdir()
        code, _, err = run_cli(["run", str(exp), "--out", str(out), "--quiet"], capsys)
        assert code == 2
        assert_one_line_error(err, "baseline", "diverged")
        assert not (out / "results.sqlite").exists()
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_a_resumed_run_folder_is_left_intact_when_its_baseline_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    good = _small()
    first = run_experiment(Experiment.from_dict(good), out, report=False)
    assert first.new == 2 and not first.failed
    stored = sorted(p.name for p in out.rglob("*"))
    bad = _small()
    bad["model"]["train"].update(lr=1e6, schedule="constant")  # another baseline, in the same folder
    exp = write_yaml(tmp_path / "bad.yaml", bad)
    code, _, err = run_cli(["run", str(exp), "--out", str(out), "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "diverged")
    with Store(out) as store:  # what the first run stored is all still there
        assert all(store.has_result(j.key) for j in make_plan(Experiment.from_dict(good)).jobs)
        assert store.meta("status") == "failed"
    assert set(stored) <= {p.name for p in out.rglob("*")}


# ---------------------------------------------------------------- the rest goes on: error rows


@pytest.fixture
def plugins() -> Iterator[None]:
    """The buggy probe and the failing method of :mod:`tests.ray_probe`, for this test only."""
    with PROBES.temporary("buggy", ray_probe.Buggy), METHODS.temporary("break_build", ray_probe.BreakBuild):
        yield


def _faulty(**overrides: Any) -> dict[str, Any]:
    """A variant that builds, one whose build raises, and a probe with a bug on the baseline."""
    cfg = _small(**overrides)
    cfg["variants"].append({"name": "broken", "steps": [{"method": "break_build"}]})
    cfg["probes"] = [
        {"name": "accuracy", "params": {"splits": ["test"]}},
        {"name": "buggy", "params": {"variant": "baseline"}},
    ]
    return cfg


def _rows(out: Path, exp: Experiment) -> dict[tuple[str, str], tuple[str, str | None]]:
    """``{(variant, probe): (status, error)}`` of every job of ``exp`` stored in ``out``."""
    rows = {}
    with Store(out) as store:
        for job in make_plan(exp).jobs:
            stored = store.result(job.key)
            assert stored is not None, (job.variant, job.probe)
            rows[(job.variant, job.probe)] = (stored.status, stored.error)
    return rows


EXPECTED: dict[tuple[str, str], tuple[str, str | None]] = {
    ("baseline", "accuracy"): ("ok", None),
    ("baseline", "buggy"): ("error", "ZeroDivisionError: division by zero"),
    ("pruned50", "accuracy"): ("ok", None),
    ("pruned50", "buggy"): ("ok", None),
    ("broken", "accuracy"): ("error", "build of broken failed: RuntimeError: broken on purpose"),
    ("broken", "buggy"): ("error", "build of broken failed: RuntimeError: broken on purpose"),
}


def test_a_probe_bug_and_a_failed_build_are_error_rows_and_the_rest_goes_on(
    tmp_path: Path, plugins: None
) -> None:
    exp = Experiment.from_dict(_faulty())
    summary = run_experiment(exp, tmp_path / "run", report=False)
    assert _rows(tmp_path / "run", exp) == EXPECTED
    assert summary.new == 3 and len(summary.failed) == 3
    with Store(tmp_path / "run") as store:
        assert store.meta("status") == "failed"
    # a rerun retries exactly the failed jobs, and they fail the same way
    again = run_experiment(exp, tmp_path / "run", report=False)
    assert (again.new, again.cached, len(again.failed)) == (0, 3, 3)


def test_a_probe_bug_is_exit_code_1_not_a_traceback(
    tmp_path: Path, plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _faulty()
    cfg["variants"] = []
    exp = write_yaml(tmp_path / "e.yaml", cfg)
    code, _, _ = run_cli(["run", str(exp), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 1
    assert (tmp_path / "run" / "report.html").is_file()


def test_under_ray_the_same_failures_give_the_same_rows(
    tmp_path: Path, plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    # the workers of the local cluster import tests.ray_probe (they inherit the driver's environment)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    exp = Experiment.from_dict(_faulty(executor="ray", ray={"num_cpus": 2}))
    start = time.perf_counter()
    summary = run_experiment(exp, tmp_path / "run", report=False)
    assert _rows(tmp_path / "run", exp) == EXPECTED, f"after {time.perf_counter() - start:.0f}s"
    assert summary.new == 3 and len(summary.failed) == 3


def test_bad_input_raises_before_anything_is_written(tmp_path: Path) -> None:
    cfg = _small()
    cfg["variants"][0]["steps"][0]["method"] = "no_such_method"
    with pytest.raises(CompauditError, match=r"variants\[0\]\.steps\[0\]\.method: unknown method"):
        run_experiment(Experiment.from_dict(cfg), tmp_path / "run")
    assert not (tmp_path / "run").exists()
