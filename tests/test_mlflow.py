"""Logging runs to MLflow (extra ``mlflow``): what lands where, read back with ``MlflowClient``;
and without the extra, one line naming it before any work is done."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from compaudit import build_model
from compaudit.cli import main
from compaudit.config import Experiment
from compaudit.errors import CompauditError
from compaudit.export import export_frame
from compaudit.integrations.mlflow import (
    MAX_KEY_LENGTH,
    MAX_PARAM_LENGTH,
    MISSING_EXTRA,
    _params,
    _unique,
    flatten,
    log_run,
    metric_key,
    mlflow_key,
)
from compaudit.probes.base import Metric, ProbeResult
from compaudit.run.validate import load_experiment
from compaudit.store import Store
from tests.conftest import tiny_config, write_yaml
from tests.test_cli import assert_one_line_error, run_cli


def _cfg() -> dict[str, Any]:
    """A tiny experiment with an ``mlflow:`` key and a noisy metric; its base model comes from
    ``student.pt`` beside the file (see :func:`write_experiment`), so nothing is trained."""
    return tiny_config(
        name="tinyml",
        description="logged to MLflow by the tests",
        model={"name": "student_cnn", "params": {"width": 0.5}, "checkpoint": "student.pt"},
        variants=[
            {"name": "pruned50", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]}
        ],
        probes=[
            {"name": "accuracy", "params": {"splits": ["test"]}},
            {"name": "efficiency", "params": {"batch_sizes": [1], "repeats": 1, "warmup": 0}},
        ],
        mlflow={"experiment": "from-the-file"},
    )


def write_experiment(folder: Path, cfg: dict[str, Any]) -> Path:
    """``folder/exp.yaml`` and the untrained checkpoint ``folder/student.pt`` it names."""
    model = build_model("student_cnn", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.5})
    torch.save(model.state_dict(), folder / "student.pt")
    return write_yaml(folder / "exp.yaml", cfg)


@dataclass(frozen=True)
class Logged:
    run_dir: Path
    uri: str  #: the tracking URI the CLI logged to


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    yield
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)  # set by client(); monkeypatch restores a user's


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """``compaudit run EXP --mlflow-uri STORE``, once: the one training of this module."""
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("mlflow")
    exp = write_experiment(tmp, _cfg())
    run_dir, store = tmp / "run", tmp / "store"
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        with pytest.raises(SystemExit) as exc:
            main(["run", str(exp), "--out", str(run_dir), "--quiet", "--mlflow-uri", str(store)])
        assert exc.value.code == 0
        assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set only while logging
    yield Logged(run_dir, store.resolve().as_uri())


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # removed again by _clean_env
    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    """The one parent run of ``experiment`` and its children."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} at {uri}"
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


# ---------------------------------------------------------------- what lands where


def test_parent_run_has_the_experiment_as_params_and_the_run_as_tags(logged: Logged) -> None:
    parent, _ = runs_of(logged.uri, "from-the-file")  # the experiment file's mlflow.experiment
    assert parent.info.run_name == "tinyml"
    assert parent.info.status == "FINISHED"
    params, tags = parent.data.params, parent.data.tags
    assert params["model.name"] == "student_cnn"
    assert params["data.params.size"] == "16"
    assert params["variants.0.steps.0.params.sparsity"] == "0.5"
    assert params["probes.1.params.batch_sizes.0"] == "1"
    assert params["mlflow.experiment"] == "from-the-file"
    assert tags["compaudit.status"] == "complete"
    assert tags["compaudit.run_dir"] == str(logged.run_dir.resolve())
    assert tags["compaudit.env.device"] == "cpu" and tags["compaudit.env.seed"] == "0"
    assert tags["mlflow.note.content"] == "logged to MLflow by the tests"
    with Store(logged.run_dir) as store:
        assert parent.info.start_time == int(store.meta("started") * 1000)


def test_parent_run_has_the_report_the_experiment_file_and_the_table(logged: Logged, tmp_path: Path) -> None:
    parent, _ = runs_of(logged.uri, "from-the-file")
    c = client(logged.uri)
    names = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"report.html", "experiment.yaml", "results.csv"} <= names
    got = Path(c.download_artifacts(parent.info.run_id, "experiment.yaml", str(tmp_path)))
    with Store(logged.run_dir) as store:
        assert got.read_text(encoding="utf-8") == store.meta("experiment")
    table = Path(c.download_artifacts(parent.info.run_id, "results.csv", str(tmp_path)))
    # the column types, the header, one line per record
    assert len(table.read_text(encoding="utf-8").splitlines()) == len(export_frame(logged.run_dir)) + 2


def test_one_child_run_per_variant_with_every_metric_of_the_results_table(logged: Logged) -> None:
    _, children = runs_of(logged.uri, "from-the-file")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"baseline", "pruned50"}
    frame = export_frame(logged.run_dir)
    for name, child in by_name.items():
        assert child.data.tags["compaudit.variant"] == name
        rows = frame[frame["variant"] == name]
        metrics = child.data.metrics
        assert len(metrics) == len(rows)  # every record, none lost to a key collision
        test_acc = rows[(rows["metric"] == "accuracy") & (rows["split"] == "test")]["value"].item()
        assert metrics["accuracy/accuracy.split-test"] == test_acc
        latency = rows[rows["metric"] == "latency"]  # noisy wall-clock metrics are logged too
        assert bool(latency["noisy"].all())
        keys = [k for k in metrics if k.startswith("efficiency/latency.batch_size-1.model-")]
        assert [metrics[k] for k in keys] == list(latency["value"])
    pruned = by_name["pruned50"].data.params
    assert pruned["steps.0.method"] == "prune_unstructured"
    assert pruned["steps.0.params.sparsity"] == "0.5"
    assert by_name["baseline"].data.params == {}


def test_log_run_defaults_to_a_file_store_in_the_working_folder_and_adds_a_run_each_call(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = log_run(logged.run_dir)
    second = log_run(logged.run_dir, experiment="again")
    assert first != second
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    uri = (tmp_path / "mlruns").as_uri()
    parent, children = runs_of(uri, "from-the-file")
    assert parent.info.run_id == first and len(children) == 2
    parent, _ = runs_of(uri, "again")
    assert parent.info.run_id == second


def test_tracking_uri_from_the_environment(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = (tmp_path / "env-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = log_run(logged.run_dir)
    assert runs_of(uri, "from-the-file")[0].info.run_id == run_id


def test_mlflow_command_logs_an_existing_run(
    logged: Logged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "cli-store"
    code, out, _ = run_cli(["mlflow", str(logged.run_dir), "--uri", str(store), "--experiment", "x"], capsys)
    assert code == 0
    parent, children = runs_of(store.as_uri(), "x")
    assert out.strip() == parent.info.run_id and len(children) == 2


def test_a_database_store_without_sqlalchemy_says_what_to_install(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else find_spec(name, *a)
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, _, err = run_cli(["mlflow", str(logged.run_dir), "--uri", uri], capsys)
    assert code == 2
    assert_one_line_error(err, uri, "needs the full MLflow package (pip install mlflow)")
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_command_on_a_non_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlflow")
    code, _, err = run_cli(["mlflow", str(tmp_path), "--uri", str(tmp_path / "store")], capsys)
    assert code == 2
    assert_one_line_error(err, "not a compaudit run folder")


# ---------------------------------------------------------------- keys and values


def _synthetic_run(root: Path, metrics: list[Metric]) -> Path:
    """A run folder holding one stored result with ``metrics`` (no training)."""
    exp = Experiment.from_dict({"name": "synthetic", "description": "x" * 9000})
    with Store(root, create=True) as store:
        store.put_result(
            "k1", variant_key="v1", variant="base/line", probe="odd probe",
            spec={}, result=ProbeResult(metrics=metrics), seconds=0.0,
        )  # fmt: skip
        store.set_meta(
            experiment=exp.to_yaml(), name=exp.name, status="complete", started=1.0, finished=2.0,
            plan=[{"variant": "base/line", "probe": "odd probe", "key": "k1", "variant_key": "v1"}],
        )  # fmt: skip
    return root


def test_awkward_names_nan_and_duplicates_are_logged(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    metrics = [
        Metric("acc=1", 0.5, {"attack": "pgd/linf", "eps": 8 / 255}),
        Metric("acc?1", 0.25, {"attack": "pgd/linf", "eps": 8 / 255}),  # the same key once sanitized
        Metric("acc#1", 0.75, {"attack": "pgd/linf", "eps": 8 / 255}),
        Metric("missing", math.nan, {"layers": ["conv", "linear"], "flag": True}),
        Metric("x" * 300, 1.0, {"k": ".."}),
    ]
    run = _synthetic_run(tmp_path / "run", metrics)
    uri = (tmp_path / "store").as_uri()
    run_id = log_run(run, tracking_uri=uri)
    parent, children = runs_of(uri, "synthetic")
    assert parent.info.run_id == run_id
    assert parent.data.tags["mlflow.note.content"].startswith("x" * 100)  # cut to MLflow's limit
    (child,) = children
    assert child.info.run_name == "base/line"
    got = child.data.metrics
    assert len(got) == 5
    key = "odd probe/acc_1.attack-pgd_linf.eps-0.03137254901960784"
    assert got[key] == 0.5 and got[f"{key}.2"] == 0.25 and got[f"{key}.3"] == 0.75
    assert math.isnan(got["odd probe/missing.flag-true.layers-conv_linear"])  # params sorted by name
    assert child.data.tags["compaudit.nan_metrics"] == "1"
    assert all(len(k) <= MAX_KEY_LENGTH for k in got)


def test_metric_key_names_probe_metric_and_identifying_params() -> None:
    row = {"variant": "v", "probe": "adversarial", "metric": "robust_accuracy", "value": 0.5}
    row |= {"attack": "pgd", "eps": 0.1, "unit": "", "noisy": False, "split": None}
    assert metric_key(row) == "adversarial/robust_accuracy.attack-pgd.eps-0.1"
    assert mlflow_key("a=b") == "a_b"
    assert mlflow_key("a//b") == "a__b" and mlflow_key("a/../b") == "a_.._b"
    assert mlflow_key("..") == "_.." and mlflow_key("..x/y") == "_..x_y" and mlflow_key("") == "_"
    assert len(mlflow_key("y" * 400)) == MAX_KEY_LENGTH
    seen: set[str] = set()
    assert [_unique("k", seen) for _ in range(3)] == ["k", "k.2", "k.3"]
    long = "z" * MAX_KEY_LENGTH
    assert _unique(long, seen) == long and _unique(long, seen) == "z" * (MAX_KEY_LENGTH - 2) + ".2"


def test_params_flatten_the_experiment_file_and_are_cut_to_mlflows_limit() -> None:
    nested = {"model": {"name": "m", "params": {}}, "variants": [{"steps": [{"p": None}]}], "ok": True}
    assert list(flatten(nested)) == [
        ("model.name", "m"),
        ("model.params", {}),
        ("variants.0.steps.0.p", None),
        ("ok", True),
    ]
    params = dict(_params(flatten({**nested, "long": "w" * 7000})))
    assert params["model.params"] == "{}" and params["variants.0.steps.0.p"] == "null"
    assert params["ok"] == "true"
    assert len(params["long"]) == MAX_PARAM_LENGTH and params["long"].endswith("...")


# ---------------------------------------------------------------- without the extra


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the mlflow extra were not installed: ``import mlflow`` fails."""
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)


@pytest.mark.parametrize("how", ["flag", "uri", "file"])
def test_without_the_extra_run_fails_in_one_line_before_any_work(
    how: str, no_mlflow: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg() if how == "file" else {k: v for k, v in _cfg().items() if k != "mlflow"}
    exp = write_experiment(tmp_path, cfg)
    out = tmp_path / "out"
    extra = {"flag": ["--mlflow"], "uri": ["--mlflow-uri", str(tmp_path / "s")], "file": []}[how]
    code, _, err = run_cli(["run", str(exp), "--out", str(out), *extra], capsys)
    assert code == 2
    assert err.strip() == f"compaudit: error: {MISSING_EXTRA}"
    assert_one_line_error(err)
    assert not out.exists()


def test_without_the_extra_the_mlflow_command_and_log_run_say_so(
    no_mlflow: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["mlflow", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip() == f"compaudit: error: {MISSING_EXTRA}"
    with pytest.raises(CompauditError, match="pip install 'compaudit\\[mlflow\\]'"):
        log_run(tmp_path)


def test_without_the_extra_everything_else_works(
    no_mlflow: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compaudit.cli import _mlflow_target

    exp_path = write_experiment(tmp_path, _cfg())
    code, out, _ = run_cli(["check", str(exp_path)], capsys)  # a file with mlflow: validates
    assert code == 0 and "valid" in out
    exp = load_experiment(exp_path)
    assert exp.mlflow is not None
    assert _mlflow_target(exp, False, None, None) is None  # --no-mlflow needs no extra
    code, _, err = run_cli(["run", str(exp_path), "--no-mlflow", "--mlflow-uri", "x"], capsys)
    assert code == 2
    assert_one_line_error(err, "--no-mlflow")
