"""Repeated seeds (seed 002 reports mean ± std over 3 runs): one baseline and one set of variants
per seed, the report's overview as mean ± sample std over the seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from compaudit import ConfigError, Experiment, Store, run_experiment
from compaudit.export import export_frame
from compaudit.report.build import collect
from compaudit.report.overview import seed_groups
from compaudit.results import VariantId
from compaudit.run.plan import make_plans

from .conftest import tiny_config as _tiny


def tiny_config(**overrides: object) -> dict[str, object]:
    cfg = _tiny(**overrides)
    if "seeds" in overrides and "seed" not in overrides:
        del cfg["seed"]
    return cfg


def test_seeds_plan_one_cell_per_seed_with_their_own_keys() -> None:
    exp = Experiment.from_dict(tiny_config(seeds=[0, 1, 2]))
    plans = make_plans(exp)
    assert [p.baseline.name for p in plans] == ["seed0/baseline", "seed1/baseline", "seed2/baseline"]
    assert [p.experiment.seed for p in plans] == [0, 1, 2]
    keys = [j.key for p in plans for j in p.jobs]
    assert len(keys) == len(set(keys)) == 3 * 3 * 2  # 3 seeds x (baseline + 2 variants) x 2 probes
    # one seed is the plain experiment with that seed: the same keys, no prefix
    single = make_plans(Experiment.from_dict(tiny_config(seeds=[1])))[0]
    plain = make_plans(Experiment.from_dict(tiny_config(seed=1)))[0]
    assert [j.key for j in single.jobs] == [j.key for j in plain.jobs]
    assert single.baseline.name == "baseline"
    assert "seeds" not in Experiment.from_dict(tiny_config()).to_yaml()
    again = Experiment.from_yaml_text(exp.to_yaml())  # a stored experiment file reads back
    assert again.seeds == [0, 1, 2] and "\nseed:" not in exp.to_yaml()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seeds": [0, 0]}, "seeds: a seed is listed twice"),
        ({"seeds": [0, 1], "seed": 3}, "seeds: give either seed or seeds"),
        ({"seeds": []}, "seeds"),
    ],
)
def test_bad_seeds_are_one_line_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Experiment.from_dict(tiny_config(**overrides))
    assert "\n" not in str(info.value)


def test_seed_groups_read_identity_not_names() -> None:
    ids = {
        "seed0/baseline": VariantId("baseline", seed=0),
        "seed1/baseline": VariantId("baseline", seed=1),
        "a/seed0/int8": VariantId("int8", "a", 0),
        "a/seed1/int8": VariantId("int8", "a", 1),
        # a domain called seed0: grouping by name parsing would merge it with the seeds
        "seed0/x": VariantId("x", "seed0", None),
    }
    groups = seed_groups(list(ids), ids)
    assert groups == {
        "baseline": ["seed0/baseline", "seed1/baseline"],
        "a/int8": ["a/seed0/int8", "a/seed1/int8"],
        "seed0/x": ["seed0/x"],
    }


def test_overview_shows_mean_and_std_over_seeds(tmp_path: Path) -> None:
    cfg: dict[str, Any] = tiny_config(seeds=[0, 1])
    cfg["model"]["train"]["epochs"] = 2
    cfg["probes"] = [{"name": "accuracy", "params": {"splits": ["test"]}}]
    summary = run_experiment(Experiment.from_dict(cfg), tmp_path / "run")
    assert not summary.failed and summary.trained.count("seed0/baseline") == 1
    records = export_frame(tmp_path / "run")
    acc = records[(records.metric == "accuracy") & (records.split == "test")].set_index("variant")["value"]
    with Store(tmp_path / "run") as store:
        data = collect(store)
    assert data.overview is not None and data.overview.table is not None
    table = data.overview.table
    assert "mean ± std over seeds" in table.title
    rows = {r[0].text: r for r in table.rows}
    assert list(rows) == ["baseline", "pruned50", "pruned80-ft"]
    col = table.columns.index("Clean accuracy")
    for v, row in rows.items():
        runs = [acc[f"seed0/{v}"], acc[f"seed1/{v}"]]
        assert row[col].value == pytest.approx(statistics.mean(runs))
        # a fraction in percent, its spread over seeds in percentage points (compaudit.units)
        assert row[col].text == f"{100 * statistics.mean(runs):.1f}% ± {100 * statistics.stdev(runs):.1f} pp"
    # the two seeds trained two different baselines
    assert acc["seed0/baseline"] != acc["seed1/baseline"] or acc["seed0/pruned50"] != acc["seed1/pruned50"]


def test_sweep_curves_over_seeds_are_one_figure_of_means(tmp_path: Path) -> None:
    """A sweep under several seeds is drawn once, each level the mean over seeds (not once per
    seed), and its CSV keeps every seed's value."""
    cfg: dict[str, Any] = tiny_config(seeds=[0, 1])
    cfg["model"]["train"]["epochs"] = 1
    cfg["variants"] = [
        {
            "name": "sparse",
            "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.3}}],
            "sweep": {"param": "sparsity", "values": [0.3, 0.6, 0.95]},
        }
    ]
    cfg["probes"] = [{"name": "accuracy", "params": {"splits": ["test"]}}]
    summary = run_experiment(Experiment.from_dict(cfg), tmp_path / "run")
    assert not summary.failed
    with Store(tmp_path / "run") as store:
        data = collect(store)
    assert len(data.sweeps) == 1
    fig = data.sweeps[0]
    assert fig.title.startswith("Sweep sparse: metrics against sparsity, mean ± std over 2 seeds")
    csv = fig.csv.splitlines()
    for seed in (0, 1):
        for level in ("0.3", "0.6", "0.95"):
            assert any(f"seed{seed}/sparse@{level}," in row for row in csv), (seed, level)
        assert any(
            row.startswith("sparse,sparsity,baseline,") and f"seed{seed}/baseline" in row for row in csv
        )
