"""The Ray executor: tasks on a local cluster, a killed task recorded and retried on rerun, the
same numbers as the local executor. Skipped without the ``ray`` extra (except the checks that
need no cluster)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from compaudit import METHODS, PROBES, Experiment, Store, run_experiment
from compaudit.errors import ConfigError
from compaudit.run.plan import make_plan
from tests import ray_probe
from tests.conftest import tiny_cnn, tiny_config, write_yaml

ROOT = Path(__file__).resolve().parents[1]


def _ray_config(marker: Path, **ray: Any) -> dict[str, Any]:
    """The tiny experiment, shortened (1 baseline epoch, two probes), on a 2-CPU local Ray cluster;
    its ``kill_worker`` probe kills the task of (``pruned50``, ``kill_worker``) while ``marker``
    exists."""
    cfg = tiny_config(executor="ray", ray={"num_cpus": 2, **ray})
    cfg["model"]["train"]["epochs"] = 1
    cfg["probes"] = [
        {"name": "accuracy", "params": {"splits": ["test"]}},
        {"name": "kill_worker", "params": {"marker": str(marker), "variant": "pruned50"}},
    ]
    return cfg


@pytest.fixture
def workers_import_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the ``kill_worker`` probe and the ``break_build`` method for this test only, and let
    the workers of the local cluster import ``tests.ray_probe`` (they inherit the driver's
    environment)."""
    pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    with (
        PROBES.temporary("kill_worker", ray_probe.KillWorker),
        METHODS.temporary("break_build", ray_probe.BreakBuild),
    ):
        yield


def test_killed_task_is_recorded_and_a_rerun_completes_it(tmp_path: Path, workers_import_tests: None) -> None:
    marker = tmp_path / "kill"
    marker.touch()
    out = tmp_path / "run"
    exp = Experiment.from_dict(_ray_config(marker))
    plan = make_plan(exp)
    killed = next(j for j in plan.jobs if (j.variant, j.probe) == ("pruned50", "kill_worker"))
    first = run_experiment(exp, out, report=False)

    # the task of (pruned50, kill_worker) died; every other pair is stored, pruned50's accuracy too
    assert first.new == 5 and first.cached == 0
    assert first.failed == [first.failed[0]] and first.failed[0].startswith("pruned50 x kill_worker: ")
    with Store(out) as store:
        for job in plan.jobs:
            stored = store.result(job.key)
            assert stored is not None
            if job == killed:
                assert stored.status == "error"
                assert (
                    stored.error is not None and "ray task of pruned50 x kill_worker failed" in stored.error
                )
                assert "died" in stored.error or "Crashed" in stored.error, stored.error
            else:
                assert stored.status == "ok", stored.error
        assert store.meta("status") == "failed"
        for vp in plan.variants:  # every variant's weights, stored as soon as it was built
            assert (store.models_dir / f"{vp.key}.pt").is_file()

    # a rerun retries only the failed job and rebuilds nothing it has
    marker.unlink()
    second = run_experiment(exp, out, report=False)
    assert (second.new, second.cached, second.failed, second.trained) == (1, 5, [], [])
    with Store(out) as store:
        assert all(store.has_result(j.key) for j in plan.jobs)
        assert store.meta("status") == "complete"
        assert store.variant_info(plan.variants[0].key) is not None


def test_failed_build_records_an_error_for_each_of_its_variants_jobs(
    tmp_path: Path, workers_import_tests: None
) -> None:
    checkpoint = tmp_path / "baseline.pt"  # untrained: no training before the tasks
    torch.save(tiny_cnn().state_dict(), checkpoint)
    cfg = _ray_config(tmp_path / "no-marker")
    cfg["model"] = {"name": "student_cnn", "params": {"width": 0.5}, "checkpoint": str(checkpoint)}
    cfg["variants"] = [cfg["variants"][0], {"name": "broken", "steps": [{"method": "break_build"}]}]
    exp = Experiment.from_dict(cfg)
    plan = make_plan(exp)
    summary = run_experiment(exp, tmp_path / "run", report=False)

    # broken's build raised: each of its jobs has the error row a local run gives it (see
    # tests/test_error_policy.py); the others are stored
    assert summary.new == 4 and len(summary.failed) == 2
    with Store(tmp_path / "run") as store:
        for job in plan.jobs:
            stored = store.result(job.key)
            assert stored is not None
            if job.variant == "broken":
                assert stored.status == "error"
                assert stored.error == "build of broken failed: RuntimeError: broken on purpose"
            else:
                assert stored.status == "ok", stored.error
        assert store.variant_info(plan.variants[1].key) is None
        assert not (store.models_dir / f"{plan.variants[1].key}.pt").exists()


@pytest.mark.slow
def test_ray_gives_the_local_executors_numbers(tmp_path: Path, workers_import_tests: None) -> None:
    # the tests run torch on 2 threads (conftest); so do the tasks here: float sums over another
    # thread count may differ in the last digits after training
    # a sweep whose level the driver selects from the accuracy the tasks measured
    cfg = tiny_config()
    cfg["variants"].append(
        {
            "name": "p",
            "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
            "sweep": {"param": "sparsity", "values": [0.3, 0.9]},
            "select": {"within": 0.05},
        }
    )
    cfg["probes"] = [{"name": "accuracy"}]
    run_experiment(Experiment.from_dict(cfg), tmp_path / "local", report=False)
    run_experiment(
        Experiment.from_dict({**cfg, "executor": "ray", "ray": {"num_cpus": 2, "cpus_per_task": 2}}),
        tmp_path / "ray",
        report=False,
    )
    with Store(tmp_path / "local") as a, Store(tmp_path / "ray") as b:
        rows_a, rows_b = a.metric_rows(), b.metric_rows()
    key = lambda r: (r["variant"], r["metric"], r.get("split"))  # noqa: E731
    assert len(rows_a) > 0 and any(r["metric"] == "selected_level" for r in rows_a)
    assert sorted(rows_a, key=key) == sorted(rows_b, key=key)


@pytest.mark.slow
def test_transfer_examples_are_crafted_once_and_shared_with_the_tasks(
    tmp_path: Path, workers_import_tests: None
) -> None:
    """The baseline's adversarial task crafts the transfer examples; the driver keeps them in the
    run folder's cache and sends them to the variants' tasks: the same files as a local run, and
    the same numbers."""
    cfg = tiny_config()
    cfg["model"]["train"]["epochs"] = 1
    attacks = [{"attack": "fgsm", "eps": [0.1]}, {"attack": "pgd", "eps": [0.1], "params": {"steps": 3}}]
    cfg["probes"] = [
        {"name": "adversarial", "params": {"samples": 32, "attacks": attacks, "sanity_steps": 2}}
    ]
    run_experiment(Experiment.from_dict(cfg), tmp_path / "local", report=False)
    ray_cfg = {**cfg, "executor": "ray", "ray": {"num_cpus": 2, "cpus_per_task": 2}}
    run_experiment(Experiment.from_dict(ray_cfg), tmp_path / "ray", report=False)
    local = sorted((tmp_path / "local" / "cache").glob("*.pt"))
    remote = sorted((tmp_path / "ray" / "cache").glob("*.pt"))
    assert len(local) == 2 and [p.name for p in local] == [p.name for p in remote]
    for a, b in zip(local, remote, strict=True):
        ta, tb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert torch.equal(ta["adv"], tb["adv"])
    with Store(tmp_path / "local") as sa, Store(tmp_path / "ray") as sb:
        rows_a = [r for r in sa.metric_rows() if not r.get("noisy")]
        rows_b = [r for r in sb.metric_rows() if not r.get("noisy")]
    key = lambda r: str(sorted(r.items()))  # noqa: E731
    assert len(rows_a) > 0 and sorted(rows_a, key=key) == sorted(rows_b, key=key)


# ---------------------------------------------------------------- without a cluster


def test_executor_and_ray_settings_change_no_key() -> None:
    local = make_plan(Experiment.from_dict(tiny_config()))
    ray = make_plan(
        Experiment.from_dict(tiny_config(executor="ray", ray={"address": "auto", "cpus_per_task": 2}))
    )
    assert [(v.key, v.step_keys) for v in local.all_variants] == [
        (v.key, v.step_keys) for v in ray.all_variants
    ]
    assert [j.key for j in local.jobs] == [j.key for j in ray.jobs]
    assert "executor" not in Experiment.from_dict(tiny_config()).to_yaml()


def test_ray_executor_without_ray_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(
        ConfigError, match=r"^experiment: executor: ray needs the ray extra: pip install 'compaudit\[ray\]'$"
    ):
        run_experiment(Experiment.from_dict(tiny_config(executor="ray")), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_executor_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import assert_one_line_error, run_cli

    exp = write_yaml(tmp_path / "e.yaml", tiny_config())
    monkeypatch.setitem(sys.modules, "ray", None)
    for args, needle in [
        (["--executor", "ray"], "executor: ray needs the ray extra: pip install 'compaudit[ray]'"),
        (["--address", "auto"], "executor: ray needs the ray extra"),
        (["--executor", "local", "--address", "auto"], "--address names a Ray cluster"),
        (["--executor", "dask"], "--executor: unknown executor 'dask'"),
    ]:
        code, _, err = run_cli(["run", str(exp), "--out", str(tmp_path / "run"), *args], capsys)
        assert code == 2
        assert_one_line_error(err, needle)
        assert not (tmp_path / "run").exists()
